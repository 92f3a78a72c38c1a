"""The Argilla adapter: the mapping without a server, then push/pull against the real embedded server."""

import uuid

import numpy as np
import pandas as pd
import pytest

from cleanloop.errors import CleanloopError
from cleanloop.labeling import argilla_io as aio

NAMES = ["anger", "joy", "sadness"]


def record(i=1, vector=None):
    return aio.ReviewRecord(f"train-{i:05d}", f"text {i}", "joy", aio.Suggestion("sadness", 0.8, "cleanloop-test"),
                            label_quality=0.1, loss=2.5, round=2, flagged_by=("cleanlab",), vector=vector)


# --- mapping, no server -------------------------------------------------------------------------------


@pytest.fixture
def offline_client(monkeypatch):
    """An SDK client on a closed port: the SDK's settings objects need a client, building them
    sends nothing; only the constructor's login check is skipped."""
    import argilla as rg
    from argilla._api._client import APIClient

    monkeypatch.setattr(APIClient, "_validate_connection", lambda self: None)
    return rg.Argilla(api_url="http://127.0.0.1:9", api_key="offline")


def test_settings_hold_the_task(offline_client):
    s = aio.dataset_settings(NAMES, vector_dim=4, client=offline_client)
    assert [f.name for f in s.fields] == ["text", "given"]  # the label in the data, in the record itself
    assert s.fields["given"].use_markdown and not s.fields["given"].required
    assert list(s.questions["label"].labels) == NAMES
    assert {m.name for m in s.metadata} == {"given_label", "suggested_label", "label_quality", "loss", "round", "flagged_by",
                                            "fingerprint", "queue_rank", "copies"}
    assert s.vectors["embedding"].dimensions == 4
    assert "Discard" in s.guidelines and "no emotion" in s.guidelines
    assert aio.dataset_settings(NAMES, client=offline_client).vectors["embedding"] is None
    with pytest.raises(CleanloopError, match="at least two label names"):
        aio.dataset_settings(["only"], client=offline_client)


def test_record_mapping():
    r = aio.to_argilla_record(record(vector=(0.5, 0.25, 0.0, 1.0)))
    assert r.id == "train-00001" and r.fields["text"] == "text 1"
    assert r.metadata == {"given_label": "joy", "suggested_label": "sadness", "round": 2, "label_quality": 0.1,
                          "loss": 2.5, "flagged_by": ["cleanlab"]}
    s = r.suggestions["label"]
    assert (s.value, s.score, s.agent) == ("sadness", 0.8, "cleanloop-test")
    assert r.vectors["embedding"] == [0.5, 0.25, 0.0, 1.0]
    assert r.fields["given"] == "**Label in the data: joy**"
    bare = aio.to_argilla_record(aio.ReviewRecord("x", "t", "joy", loss=float("nan")))
    assert "loss" not in bare.metadata and not list(bare.suggestions) and not bare.vectors
    unlabelled = aio.to_argilla_record(aio.ReviewRecord("u", "t", None))
    assert "given" not in unlabelled.fields


def test_copies_are_shown_and_read_back():
    from argilla._models import RecordModel, UserResponseModel
    from argilla._models._record._metadata import MetadataModel

    rec = aio.ReviewRecord("train-00003", "so *angry*", "sadness", aio.Suggestion("anger", 0.9, "m"),
                           copies=(("train-00011", "anger", "So  *angry*"),), queue_rank=2)
    r = aio.to_argilla_record(rec)
    assert r.metadata["copies"] == ["train-00011"] and r.metadata["queue_rank"] == 2
    assert r.fields["given"] == ("**Label in the data: sadness**\n\n**1 other copy** of this text in the data; your "
                                 "answer applies to all of them:\n\n- *anger*: So \\*angry\\* (train\\-00011)")
    a = uuid.uuid4()
    model = RecordModel(external_id="train-00003", fields={"text": "t"},
                        metadata=[MetadataModel(name="copies", value=["train-00011"])])
    model.responses = [UserResponseModel(values={"label": {"value": "anger"}}, status="submitted", user_id=a)]
    [resp] = aio.responses_from_record(model, {str(a): "ann"})
    assert resp.copies == ("train-00011",)


def test_responses_from_record_keeps_submitted_and_discarded():
    from argilla._models import RecordModel, SuggestionModel, UserResponseModel
    from argilla._models._record._metadata import MetadataModel

    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    r = RecordModel(external_id="train-00001", fields={"text": "t"},
                    metadata=[MetadataModel(name="given_label", value="joy"), MetadataModel(name="round", value=2)],
                    suggestions=[SuggestionModel(value="sadness", question_name="label", score=0.8, agent="m")])
    r.responses = [
        UserResponseModel(values={"label": {"value": "anger"}}, status="submitted", user_id=a),
        UserResponseModel(values={}, status="discarded", user_id=b),
        UserResponseModel(values={"label": {"value": "joy"}}, status="draft", user_id=c),
    ]
    got = aio.responses_from_record(r, {str(a): "ann-a", str(b): "ann-b"})
    assert [(x.annotator, x.label, x.status) for x in got] == [("ann-a", "anger", "submitted"), ("ann-b", None, "discarded")]
    assert got[0].given_label == "joy" and got[0].round == 2 and got[0].suggestion.label == "sadness"


def test_queue_to_records_and_suggestion_probs():
    queue = pd.DataFrame({"id": ["train-00003"], "text": ["t"], "given_label": ["joy"], "suggested_label": ["anger"],
                          "suggested_score": [0.7], "label_quality": [0.2], "loss": [1.5]})
    [rec] = aio.records_from_queue(queue, round=1, agent="m", embeddings=np.ones((1, 3)))
    assert rec.suggestion == aio.Suggestion("anger", 0.7, "m") and rec.vector == (1.0, 1.0, 1.0)
    assert rec.flagged_by == ("cleanlab",) and rec.copies == () and rec.queue_rank == 1  # a queue is in order
    queue = queue.assign(flagged_by=["cleanlab,duplicate"], copy_ids=[["train-00009"]], copy_labels=[["anger"]],
                         copy_texts=[["T"]], queue_rank=[1])
    [rec] = aio.records_from_queue(queue, round=1, agent="m")
    assert rec.flagged_by == ("cleanlab", "duplicate") and rec.copies == (("train-00009", "anger", "T"),)
    assert rec.queue_rank == 1
    np.testing.assert_allclose(aio.suggestion_probs(rec.suggestion, NAMES), [0.7, 0.15, 0.15])
    with pytest.raises(CleanloopError, match="2 embeddings for a queue of 1"):
        aio.records_from_queue(queue, 1, "m", np.ones((2, 3)))
    with pytest.raises(CleanloopError, match="the review queue: column 'suggested_score' is missing"):
        aio.records_from_queue(queue.drop(columns="suggested_score"), 1, "m")


def test_api_key_from_environment_wins(tmp_path, monkeypatch):
    from cleanloop.config import Config

    cfg = Config(workdir=str(tmp_path), argilla_url="https://argilla.example.org")
    monkeypatch.delenv("ARGILLA_API_KEY", raising=False)
    with pytest.raises(CleanloopError, match="ARGILLA_API_KEY is not set"):
        aio.api_key(cfg)
    monkeypatch.setenv("ARGILLA_API_KEY", "k-from-env")
    assert aio.api_key(cfg) == "k-from-env"


# --- against the real embedded server -------------------------------------------------------------------


def annotate(argilla_server, dataset_id, answers):
    """Answer as the annotator through the UI's REST endpoints: {example id: label or None (discard)}."""
    with argilla_server.http() as http:
        resp = http.post(f"/api/v1/me/datasets/{dataset_id}/records/search", params={"limit": 1000}, json={})
        assert resp.status_code == 200, resp.text
        items = {i["record"]["external_id"]: i["record"]["id"] for i in resp.json()["items"]}
        for ex_id, label in answers.items():
            body = ({"values": {"label": {"value": label}}, "status": "submitted"} if label is not None
                    else {"status": "discarded"})
            r = http.post(f"/api/v1/records/{items[ex_id]}/responses", json=body)
            assert r.status_code == 201, r.text


def aio_query(example_id):
    import argilla as rg

    return rg.Query(filter=rg.Filter(("id", "==", example_id)))


def test_push_pull_round_trip(argilla_server, monkeypatch):
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    cfg = argilla_server.cfg.replace(argilla_url=argilla_server.url, argilla_dataset="io-round-trip")
    client = aio.connect(cfg)
    ds = aio.ensure_dataset(client, cfg, NAMES, vector_dim=4)
    recs = [record(i, vector=(float(i), 1.0, 0.0, 0.0)) for i in range(4)]
    assert aio.push(client, ds, recs, skip_ids={"train-00003"}) == ["train-00000", "train-00001", "train-00002"]
    assert aio.progress(client, ds) == (0, 3)
    annotate(argilla_server, ds.id, {"train-00000": "anger", "train-00001": None})
    got = sorted(aio.pull(client, ds), key=lambda r: r.example_id)
    assert [(r.example_id, r.annotator, r.label, r.status) for r in got] == [
        ("train-00000", "annotator", "anger", "submitted"), ("train-00001", "annotator", None, "discarded")]
    assert got[0].suggestion == aio.Suggestion("sadness", 0.8, "cleanloop-test") and got[0].given_label == "joy"
    assert aio.progress(client, ds) == (2, 3) and aio.progress(client, ds, ["train-00000"]) == (1, 1)
    # pushing again updates by id: no duplicates, answers kept
    again = aio.ensure_dataset(client, cfg, NAMES, vector_dim=4)
    aio.push(client, again, [record(i, vector=(0.0, 0.0, 1.0, 1.0)) for i in range(4)])
    assert len(list(aio._record_models(client, again))) == 4
    assert len(aio.pull(client, again)) == 2
    r2 = next(r for r in again.records(with_vectors=True, query=aio_query("train-00002")))
    assert r2.id == "train-00002" and r2.vectors["embedding"] == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(CleanloopError, match="asks for labels"):
        aio.ensure_dataset(client, cfg, ["x", "y"], vector_dim=4)


def test_push_sends_bulk_requests_in_parallel_and_loses_none(argilla_server, monkeypatch):
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    cfg = argilla_server.cfg.replace(argilla_url=argilla_server.url, argilla_dataset="io-parallel")
    client = aio.connect(cfg)
    ds = aio.ensure_dataset(client, cfg, NAMES, vector_dim=4)
    recs = [record(i, vector=(float(i), 1.0, 0.0, 0.0)) for i in range(1100)]  # 3 bulk requests of at most 500
    assert aio.push(client, ds, recs, threads=3) == [r.id for r in recs]
    models = list(aio._record_models(client, ds))
    assert sorted(str(m.external_id) for m in models) == sorted(r.id for r in recs)
    assert aio.progress(client, ds) == (0, 1100)


def test_log_records_refused_by_the_server_is_a_clear_error(argilla_server, monkeypatch):
    import argilla as rg

    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    cfg = argilla_server.cfg.replace(argilla_url=argilla_server.url, argilla_dataset="io-refused")
    client = aio.connect(cfg)
    ds = aio.ensure_dataset(client, cfg, NAMES, vector_dim=4)
    good = rg.Record(id="ok-1", fields={"text": "fine"}, vectors={aio.VECTOR: [1.0, 0.0, 0.0, 0.0]})
    assert aio.log_records(client, ds, [good]) == 1
    bad = rg.Record(id="bad-1", fields={"text": "three numbers"}, vectors={aio.VECTOR: [1.0, 0.0, 0.0]})
    with pytest.raises(CleanloopError, match=r"refused 1 records \(bad-1 \.\.\.\).*HTTP 422.*fix:"):
        aio.log_records(client, ds, [bad])
    # a new record's suggestion and response are checked against the dataset's question (labeling/embedded/patches.py)
    unknown = rg.Record(id="bad-2", fields={"text": "x"}, suggestions=[rg.Suggestion(aio.QUESTION, "no-such-label")])
    with pytest.raises(CleanloopError, match=r"HTTP 422.*no-such-label"):
        aio.log_records(client, ds, [unknown])
    me = client.me.id
    answered = rg.Record(id="ok-2", fields={"text": "y"}, responses=[rg.Response(aio.QUESTION, NAMES[1], user_id=me)])
    assert aio.log_records(client, ds, [answered]) == 1
    wrong = rg.Record(id="bad-3", fields={"text": "z"}, responses=[rg.Response(aio.QUESTION, "nope", user_id=me)])
    with pytest.raises(CleanloopError, match=r"HTTP 422.*nope"):
        aio.log_records(client, ds, [wrong])
    assert sorted(str(m.external_id) for m in aio._record_models(client, ds)) == ["ok-1", "ok-2"]


def test_log_records_connection_lost_is_a_clear_error(argilla_server, monkeypatch):
    import argilla as rg
    import httpx

    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    cfg = argilla_server.cfg.replace(argilla_url=argilla_server.url, argilla_dataset="io-lost")
    client = aio.connect(cfg)
    ds = aio.ensure_dataset(client, cfg, NAMES, vector_dim=4)

    def drop(*args, **kwargs):  # the server going away mid-push
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    monkeypatch.setattr(client.http_client, "put", drop)
    with pytest.raises(CleanloopError, match=r"lost Argilla at .* while sending 1 records.*fix: check the server"):
        aio.log_records(client, ds, [rg.Record(id="x", fields={"text": "t"})])


def test_unreachable_server_is_a_clear_error(tmp_path):
    import socket

    from cleanloop.config import Config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = Config(workdir=str(tmp_path), argilla_url=f"http://127.0.0.1:{port}")
    with pytest.raises(CleanloopError, match="cannot reach Argilla"):
        aio.connect(cfg, key="whatever")


def test_webhooks_wake_the_waiting_loop(argilla_server):
    """An answer given in the UI reaches a listener on 127.0.0.1 through the server's rq worker."""
    cfg = argilla_server.cfg.replace(argilla_url=argilla_server.url, argilla_dataset="io-webhooks")
    client = argilla_server.client()
    ds = aio.ensure_dataset(client, cfg, NAMES)
    aio.push(client, ds, [record(7)])
    with aio.ReviewWaker(client) as waker:
        assert [h.url for h in client.webhooks if h.url.startswith(waker.url)] == [f"{waker.url}/cleanloop_review_event"]
        assert not waker.event.is_set()
        annotate(argilla_server, ds.id, {"train-00007": "anger"})
        assert waker.event.wait(60), "no webhook event within 60 s"
    assert not [h for h in client.webhooks if h.url.startswith(waker.url)]  # removed on stop


def test_cli_push_skips_reviewed_examples(argilla_server, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app
    from cleanloop.labeling.journal import Journal, Vote

    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.owner_key)
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"id": [f"train-{i:05d}" for i in range(6)], "text": [f"text {i}" for i in range(6)],
                  "label": ["anger", "joy", "sadness"] * 2}).to_parquet(data / "train.parquet")
    queue = pd.DataFrame({"id": ["train-00000", "train-00001"], "text": ["text 0", "text 1"],
                          "given_label": ["anger", "joy"], "suggested_label": ["joy", "anger"],
                          "suggested_score": [0.9, 0.8], "label_quality": [0.1, 0.2], "loss": [2.0, 1.5]})
    queue.to_parquet(tmp_path / "queue.parquet")
    with Journal(tmp_path / "work" / "journal.sqlite") as j:
        j.record_pull([Vote("train-00001", "someone", "anger")], {"train-00001": "joy"}, round=1)
    args = ["--dataset", str(data), "--id-column", "id", "--workdir", str(tmp_path / "work"),
            "--argilla-url", argilla_server.url, "--argilla-dataset", "io-cli-push"]
    res = CliRunner().invoke(app, ["push", *args, "--queue", str(tmp_path / "queue.parquet"), "--round", "2",
                                   "--review-wave", "0"])
    assert res.exit_code == 0, res.output
    assert "pushed 1 records" in res.output and "1 already reviewed, skipped" in res.output
    assert "Logged in as" not in res.output and "TextField title" not in res.output  # the SDK's INFO: only with -v
    # in waves (the default), push stays and feeds the queue until it is answered or the timeout passes
    res = CliRunner().invoke(app, ["push", *args, "--argilla-dataset", "io-cli-push-waves", "--queue",
                                   str(tmp_path / "queue.parquet"), "--round", "2", "--review-timeout", "1",
                                   "--non-interactive"])
    assert res.exit_code == 0, res.output
    assert "1 pending at a time" in res.output and res.output.strip().splitlines()[-1].startswith("pushed 1 of 1")
    client = argilla_server.client()
    cfg = argilla_server.cfg.replace(argilla_dataset="io-cli-push")
    models = list(aio._record_models(client, aio.get_dataset(client, cfg)))
    assert [m.external_id for m in models] == ["train-00000"]
