"""The SQLite search engine, through the real embedded Argilla server.

The owner works through the ``argilla`` SDK; the annotator through the REST endpoints
the web UI calls (``/api/v1/me/datasets/{id}/records/search``, ``/api/v1/records/{id}/responses``).
Every expected answer below follows from how the 40 records are built, not from the engine.
"""

from __future__ import annotations

import math

import pytest

from cleanloop.labeling.embedded.search_engine import _epoch, to_fts_query

N = 40
WORDS = ["happy", "sad", "angry", "calm"]
LABELS = ["joy", "sadness", "anger", "calm"]


def _vector(i: int) -> list[float]:
    theta = 2 * math.pi * i / N  # record i sits at angle theta: neighbours are known exactly
    return [math.cos(theta), math.sin(theta)] + [0.0] * 6


def _expected(pred) -> set[str]:
    return {f"r{i}" for i in range(N) if pred(i)}


@pytest.fixture(scope="module")
def review(argilla_server):
    """A published dataset of 40 records with two text fields, 4 metadata properties, suggestions and vectors."""
    import argilla as rg

    client = argilla_server.client()
    settings = rg.Settings(
        fields=[rg.TextField("text"), rg.TextField("note")],
        questions=[rg.LabelQuestion("label", labels=LABELS)],
        metadata=[
            rg.TermsMetadataProperty("split"),
            rg.IntegerMetadataProperty("length"),
            rg.FloatMetadataProperty("loss"),
            rg.TermsMetadataProperty("source"),
        ],
        vectors=[rg.VectorField("emb", dimensions=8)],
    )
    dataset = rg.Dataset("engine-review", workspace="cleanloop", settings=settings, client=client).create()
    dataset.records.log(
        [
            rg.Record(
                id=f"r{i}",
                fields={"text": f"record {i} feels {WORDS[i % 4]}", "note": f"note {'urgent' if i % 5 == 0 else 'routine'}"},
                metadata={"split": "train" if i < 30 else "test", "length": i, "loss": i / 10, "source": ["web", "mail"][i % 2]},
                suggestions=[rg.Suggestion("label", LABELS[i % 4], score=(i % 10) / 10, agent="model-a" if i < 20 else "model-b")],
                vectors={"emb": _vector(i)},
            )
            for i in range(N)
        ]
    )
    ids = {r.id: str(r._server_id) for r in dataset.records}
    return dataset, ids


def _ext(client_dataset, query) -> set[str]:
    return {r.id for r in client_dataset.records(query=query)}


def _search(http, dataset_id: str, body: dict, *, me: bool = True, **params) -> dict:
    path = f"/api/v1/me/datasets/{dataset_id}/records/search" if me else f"/api/v1/datasets/{dataset_id}/records/search"
    resp = http.post(path, json=body, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _ext_ids(result: dict) -> list[str]:
    return [item["record"]["external_id"] for item in result["items"]]


def _terms(scope: dict, values: list) -> dict:
    return {"filters": {"and": [{"type": "terms", "scope": scope, "values": values}]}}


# --- pure helpers ---------------------------------------------------------------------------


def test_fts_query_translation():
    assert to_fts_query('happy "so sad" -angry lov*') == ('"happy" AND "so sad" AND "lov"*', '"angry"')
    assert to_fts_query("joy | love") == ('"joy" OR "love"', None)
    assert to_fts_query("-x") == (None, '"x"')
    assert to_fts_query("!!! ...") == (None, None)


def test_dates_parse_like_elasticsearch():
    assert _epoch("1970-01-01T00:00:10Z") == 10.0
    assert _epoch("1970-01-01T00:00:10") == 10.0  # naive = UTC, as Argilla stores dates
    assert _epoch(10_000) == 10.0  # ES reads a number on a date field as epoch millis


# --- text queries ----------------------------------------------------------------------------


def test_text_query_on_all_fields(review):
    import argilla as rg

    dataset, _ = review
    assert _ext(dataset, rg.Query(query="happy")) == _expected(lambda i: i % 4 == 0)
    assert _ext(dataset, rg.Query(query="urgent")) == _expected(lambda i: i % 5 == 0)  # from the note field
    assert _ext(dataset, rg.Query(query="happy urgent")) == _expected(lambda i: i % 20 == 0)  # AND across fields


def test_text_query_syntax(review):
    import argilla as rg

    dataset, _ = review
    assert _ext(dataset, rg.Query(query="happy | sad")) == _expected(lambda i: i % 4 in (0, 1))
    assert _ext(dataset, rg.Query(query="happy -urgent")) == _expected(lambda i: i % 4 == 0 and i % 5 != 0)
    assert _ext(dataset, rg.Query(query="hap*")) == _expected(lambda i: i % 4 == 0)
    assert _ext(dataset, rg.Query(query='"feels sad"')) == _expected(lambda i: i % 4 == 1)


def test_text_query_on_one_field(argilla_server, review):
    _, ids = review
    ds_id = _dataset_id(argilla_server, review)
    with argilla_server.http() as http:
        in_note = _search(http, ds_id, {"query": {"text": {"q": "urgent", "field": "note"}}}, limit=100)
        in_text = _search(http, ds_id, {"query": {"text": {"q": "urgent", "field": "text"}}}, limit=100)
    assert set(_ext_ids(in_note)) == _expected(lambda i: i % 5 == 0) and in_note["total"] == 8
    assert in_text["total"] == 0 and in_text["items"] == []


def _dataset_id(argilla_server, review) -> str:
    return str(review[0].id)


# --- filters ---------------------------------------------------------------------------------


def test_filter_metadata_terms(review):
    import argilla as rg

    dataset, _ = review
    assert _ext(dataset, rg.Query(filter=rg.Filter(("metadata.split", "==", "test")))) == _expected(lambda i: i >= 30)
    assert _ext(dataset, rg.Query(filter=rg.Filter(("metadata.source", "in", ["mail"])))) == _expected(lambda i: i % 2)


def test_filter_metadata_range(review):
    import argilla as rg

    dataset, _ = review
    ints = rg.Filter([("metadata.length", ">=", 10), ("metadata.length", "<=", 19)])
    assert _ext(dataset, rg.Query(filter=ints)) == _expected(lambda i: 10 <= i <= 19)
    assert _ext(dataset, rg.Query(filter=rg.Filter(("metadata.loss", ">=", 3.5)))) == _expected(lambda i: i >= 35)


def test_filter_suggestion_value_score_agent(review):
    import argilla as rg

    dataset, _ = review
    assert _ext(dataset, rg.Query(filter=rg.Filter(("label.suggestion", "==", "joy")))) == _expected(lambda i: i % 4 == 0)
    assert _ext(dataset, rg.Query(filter=rg.Filter(("label.score", ">=", 0.8)))) == _expected(lambda i: i % 10 >= 8)
    assert _ext(dataset, rg.Query(filter=rg.Filter(("label.agent", "==", "model-b")))) == _expected(lambda i: i >= 20)


def test_filter_combined_with_text(review):
    import argilla as rg

    dataset, _ = review
    query = rg.Query(query="happy", filter=rg.Filter([("metadata.split", "==", "train"), ("label.score", "<=", 0.4)]))
    assert _ext(dataset, query) == _expected(lambda i: i % 4 == 0 and i < 30 and i % 10 <= 4)


def test_filter_record_dates(argilla_server, review):
    ds_id = _dataset_id(argilla_server, review)
    scope = {"entity": "record", "property": "inserted_at"}
    with argilla_server.http() as http:
        everything = _search(http, ds_id, {"filters": {"and": [{"type": "range", "scope": scope, "ge": "2000-01-01T00:00:00"}]}})
        nothing = _search(http, ds_id, {"filters": {"and": [{"type": "range", "scope": scope, "le": "2000-01-01T00:00:00"}]}})
    assert everything["total"] == N and nothing["total"] == 0


@pytest.fixture(scope="module")
def responded(argilla_server, review):
    """The annotator answers through the UI's endpoint: r1, r2 submitted (joy), r3 discarded, r4 draft."""
    _, ids = review
    answers = {"r1": ("joy", "submitted"), "r2": ("joy", "submitted"), "r3": ("anger", "discarded"), "r4": ("calm", "draft")}
    created = {}
    with argilla_server.http() as http:
        for ext, (label, status) in answers.items():
            resp = http.post(f"/api/v1/records/{ids[ext]}/responses", json={"values": {"label": {"value": label}}, "status": status})
            assert resp.status_code == 201, resp.text
            created[ext] = resp.json()["id"]
    return created


def test_filter_response_status_per_user(argilla_server, review, responded):
    ds_id = _dataset_id(argilla_server, review)
    status = {"entity": "response", "property": "status"}
    with argilla_server.http() as http:
        def total(values, **kw):
            return _search(http, ds_id, _terms(status, values), **kw)["total"]

        assert total(["submitted"]) == 2
        assert total(["discarded"]) == 1
        assert total(["draft"]) == 1
        assert total(["pending"]) == N - 4  # pending for the annotator = no response of theirs
        assert total(["pending", "draft"]) == N - 3
        assert set(_ext_ids(_search(http, ds_id, _terms(status, ["submitted"])))) == {"r1", "r2"}
    with argilla_server.http(argilla_server.owner_key) as http:  # the owner has answered nothing
        assert _search(http, ds_id, _terms(status, ["pending"]))["total"] == N
        # on the all-users endpoint, "pending" means no response from anyone
        assert _search(http, ds_id, _terms(status, ["pending"]), me=False)["total"] == N - 4


def test_filter_response_values(argilla_server, review, responded):
    ds_id = _dataset_id(argilla_server, review)
    with argilla_server.http() as http:
        result = _search(http, ds_id, _terms({"entity": "response", "question": "label"}, ["joy"]))
    assert set(_ext_ids(result)) == {"r1", "r2"}


def test_filter_record_status(review, responded):
    import argilla as rg

    dataset, _ = review  # one submitted response completes a record (overlap, min_submitted=1)
    assert _ext(dataset, rg.Query(filter=rg.Filter(("status", "==", "completed")))) == {"r1", "r2"}
    assert len(_ext(dataset, rg.Query(filter=rg.Filter(("status", "==", "pending"))))) == N - 2


def test_progress(argilla_server, review, responded):
    dataset, _ = review
    ds_id = _dataset_id(argilla_server, review)
    progress = dataset.progress()
    assert (progress["total"], progress["completed"], progress["pending"]) == (N, 2, N - 2)
    with argilla_server.http() as http:
        mine = http.get(f"/api/v1/me/datasets/{ds_id}/metrics").json()
    assert mine["responses"] == {"total": N, "submitted": 2, "discarded": 1, "draft": 1, "pending": N - 4}


def test_response_update_and_delete_seen_at_once(argilla_server, review, responded):
    ds_id = _dataset_id(argilla_server, review)
    question = {"entity": "response", "question": "label"}
    with argilla_server.http() as http:
        resp = http.put(f"/api/v1/responses/{responded['r2']}", json={"values": {"label": {"value": "sadness"}}, "status": "submitted"})
        assert resp.status_code == 200, resp.text
        assert set(_ext_ids(_search(http, ds_id, _terms(question, ["sadness"])))) == {"r2"}
        assert set(_ext_ids(_search(http, ds_id, _terms(question, ["joy"])))) == {"r1"}
        # put it back as it was for the other tests
        http.put(f"/api/v1/responses/{responded['r2']}", json={"values": {"label": {"value": "joy"}}, "status": "submitted"})
        extra = http.post(f"/api/v1/records/{review[1]['r9']}/responses", json={"values": {"label": {"value": "joy"}}, "status": "submitted"})
        assert _search(http, ds_id, _terms(question, ["joy"]))["total"] == 3
        assert http.delete(f"/api/v1/responses/{extra.json()['id']}").status_code == 200
        assert _search(http, ds_id, _terms(question, ["joy"]))["total"] == 2
        assert _search(http, ds_id, _terms({"entity": "response", "property": "status"}, ["pending"]))["total"] == N - 4


def test_suggestion_update_and_delete_seen_at_once(argilla_server, review):
    dataset, ids = review
    ds_id = _dataset_id(argilla_server, review)
    question_id = str(dataset.questions["label"].id)
    agent = {"entity": "suggestion", "question": "label", "property": "agent"}
    with argilla_server.http(argilla_server.owner_key) as http:
        resp = http.put(f"/api/v1/records/{ids['r7']}/suggestions",
                        json={"question_id": question_id, "value": "calm", "score": 0.99, "agent": "human"})
        assert resp.status_code in (200, 201), resp.text
        assert _ext_ids(_search(http, ds_id, _terms(agent, ["human"]), me=False)) == ["r7"]
        assert _search(http, ds_id, _terms(agent, ["model-a"]), me=False)["total"] == 19
        assert http.delete(f"/api/v1/suggestions/{resp.json()['id']}").status_code == 200
        assert _search(http, ds_id, _terms(agent, ["human"]), me=False)["total"] == 0
        restore = {"question_id": question_id, "value": LABELS[7 % 4], "score": 0.7, "agent": "model-a"}
        assert http.put(f"/api/v1/records/{ids['r7']}/suggestions", json=restore).status_code in (200, 201)
        assert _search(http, ds_id, _terms(agent, ["model-a"]), me=False)["total"] == 20


# --- sorting and paging ----------------------------------------------------------------------------


def _sorted(argilla_server, review, scope: dict, order: str, **params) -> list[str]:
    with argilla_server.http() as http:
        result = _search(http, _dataset_id(argilla_server, review), {"sort": [{"scope": scope, "order": order}]}, limit=100, **params)
    return _ext_ids(result)


def test_sort_by_metadata(argilla_server, review):
    length = {"entity": "metadata", "metadata_property": "length"}
    assert _sorted(argilla_server, review, length, "desc") == [f"r{i}" for i in reversed(range(N))]
    assert _sorted(argilla_server, review, {"entity": "metadata", "metadata_property": "loss"}, "asc")[:3] == ["r0", "r1", "r2"]


def test_sort_by_record_property(argilla_server, review):
    ext = {"entity": "record", "property": "external_id"}
    assert _sorted(argilla_server, review, ext, "asc") == sorted(f"r{i}" for i in range(N))
    inserted = _sorted(argilla_server, review, {"entity": "record", "property": "inserted_at"}, "asc")
    assert sorted(inserted) == sorted(f"r{i}" for i in range(N))


def test_sort_by_suggestion_score(argilla_server, review):
    scope = {"entity": "suggestion", "question": "label", "property": "score"}
    top = _sorted(argilla_server, review, scope, "desc")
    assert set(top[:4]) == _expected(lambda i: i % 10 == 9)
    assert set(_sorted(argilla_server, review, scope, "asc")[:4]) == _expected(lambda i: i % 10 == 0)


def test_offset_limit_total(argilla_server, review):
    length = {"entity": "metadata", "metadata_property": "length"}
    ds_id = _dataset_id(argilla_server, review)
    with argilla_server.http() as http:
        page = _search(http, ds_id, {"sort": [{"scope": length, "order": "asc"}]}, offset=35, limit=3)
        tail = _search(http, ds_id, {"sort": [{"scope": length, "order": "asc"}]}, offset=38, limit=10)
    assert _ext_ids(page) == ["r35", "r36", "r37"] and page["total"] == N
    assert _ext_ids(tail) == ["r38", "r39"] and tail["total"] == N


def test_unsorted_order_is_stable_per_user(argilla_server, review):
    ds_id = _dataset_id(argilla_server, review)
    with argilla_server.http() as http:
        first = _ext_ids(_search(http, ds_id, {}, limit=100))
        again = _ext_ids(_search(http, ds_id, {}, limit=100))
    assert first == again and sorted(first) == sorted(f"r{i}" for i in range(N))


# --- metrics and similarity --------------------------------------------------------------------


def test_metadata_metrics(argilla_server, review):
    dataset, _ = review
    with argilla_server.http() as http:
        def metrics(name):
            prop = dataset.settings.metadata[name]
            resp = http.get(f"/api/v1/metadata-properties/{prop.id}/metrics")
            assert resp.status_code == 200, resp.text
            return resp.json()

        split = metrics("split")
        length = metrics("length")
        loss = metrics("loss")
    assert split["total"] == N and {v["term"]: v["count"] for v in split["values"]} == {"train": 30, "test": 10}
    assert (length["min"], length["max"]) == (0, 39)
    assert loss["min"] == pytest.approx(0.0) and loss["max"] == pytest.approx(3.9)


def test_similarity_search(review):
    import argilla as rg

    dataset, _ = review
    most = [r.id for r, _ in dataset.records(query=rg.Query(similar=rg.Similar("emb", _vector(0))), limit=5)]
    assert most[0] == "r0" and set(most[1:3]) == {"r1", "r39"}
    least = [r.id for r, _ in dataset.records(query=rg.Query(similar=rg.Similar("emb", _vector(0), most_similar=False)), limit=3)]
    assert least[0] == "r20" and set(least[1:3]) == {"r19", "r21"}
    filtered = rg.Query(similar=rg.Similar("emb", _vector(0)), filter=rg.Filter(("metadata.split", "==", "test")))
    assert [r.id for r, _ in dataset.records(query=filtered, limit=2)] == ["r39", "r38"]


def test_similarity_search_by_record_excludes_it(argilla_server, review):
    _, ids = review
    ds_id = _dataset_id(argilla_server, review)
    body = {"query": {"vector": {"name": "emb", "record_id": ids["r10"], "order": "most_similar"}}}
    with argilla_server.http() as http:
        result = _search(http, ds_id, body, limit=2)
    assert set(_ext_ids(result)) == {"r9", "r11"}
    assert all(0.9 < item["query_score"] <= 1.0 for item in result["items"])  # ES cosine score (1 + cos) / 2


def test_annotator_removed_from_workspace_loses_access_at_the_next_request(argilla_server):
    # the embedded app remembers workspace membership on each request's user object (labeling/embedded/patches.py)
    import argilla as rg

    client = argilla_server.client()
    ws = rg.Workspace(name="members-check", client=client).create()
    ws.add_user(argilla_server.annotator)
    settings = rg.Settings(fields=[rg.TextField("text")], questions=[rg.LabelQuestion("label", labels=LABELS)],
                           metadata=[rg.FloatMetadataProperty("loss"), rg.TermsMetadataProperty("split")])
    dataset = rg.Dataset("members-check", workspace=ws.name, settings=settings, client=client).create()
    dataset.records.log([rg.Record(id=f"m{i}", fields={"text": f"text {i}"}, metadata={"loss": i / 2, "split": "a"})
                         for i in range(6)])
    with argilla_server.http() as http:
        path = f"/api/v1/me/datasets/{dataset.id}/records/search"
        items = http.post(path, json={}, params={"limit": 10}).json()["items"]
        assert len(items) == 6 and all(set(i["record"]["metadata"]) == {"loss", "split"} for i in items)
        ws.remove_user(argilla_server.annotator)
        assert http.post(path, json={}, params={"limit": 10}).status_code == 403


def test_relogging_updates_suggestions_vectors_and_metadata_in_place(argilla_server):
    # a bulk upsert of known ids updates their rows (labeling/embedded/patches.py runs upsert_many with the rows as parameters)
    import argilla as rg

    client = argilla_server.client()
    settings = rg.Settings(fields=[rg.TextField("text")], questions=[rg.LabelQuestion("label", labels=LABELS)],
                           metadata=[rg.FloatMetadataProperty("loss")], vectors=[rg.VectorField("emb", dimensions=8)])
    dataset = rg.Dataset("relog", workspace="cleanloop", settings=settings, client=client).create()

    def log(label: str, score: float, shift: int) -> None:
        dataset.records.log([
            rg.Record(id=f"u{i}", fields={"text": f"text {i}"}, metadata={"loss": score + i},
                      suggestions=[rg.Suggestion("label", label, score=score, agent=f"model-{label}")],
                      vectors={"emb": _vector(i + shift)})
            for i in range(12)
        ], batch_size=5)

    log("joy", 0.25, 0)
    log("anger", 0.75, N // 2)  # every vector turned by half a circle
    records = list(dataset.records(with_suggestions=True, with_vectors=True))
    assert sorted(r.id for r in records) == sorted(f"u{i}" for i in range(12))
    for r in records:
        i = int(r.id[1:])
        suggestion = r.suggestions["label"]
        assert (suggestion.value, suggestion.score, suggestion.agent) == ("anger", 0.75, "model-anger")
        assert r.metadata["loss"] == 0.75 + i
        assert r.vectors["emb"] == pytest.approx(_vector(i + N // 2))
    value = {"entity": "suggestion", "question": "label", "property": "value"}
    with argilla_server.http(argilla_server.owner_key) as http:
        assert _search(http, str(dataset.id), _terms(value, ["anger"]), me=False)["total"] == 12
        assert _search(http, str(dataset.id), _terms(value, ["joy"]), me=False)["total"] == 0
    nearest = [r.id for r, _ in dataset.records(query=rg.Query(similar=rg.Similar("emb", _vector(N // 2))), limit=1)]
    assert nearest == ["u0"]
