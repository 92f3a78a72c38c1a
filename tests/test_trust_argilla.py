"""Example identity and Argilla edge cases on the real embedded server: answers for another text are
refused with nothing written; withdrawn and changed answers become new journal decisions; a draft
dataset left by a crash is recreated by the next push."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest

from cleanloop.errors import CleanloopError
from cleanloop.identity import example_fingerprint
from cleanloop.labeling import argilla_io as aio
from cleanloop.labeling.journal import Journal
from cleanloop.loops.review import pull_step, push_step
from cleanloop.loops.versions import load_version, write_version

NAMES = ["neg", "pos"]
TEXTS = ["what a lovely morning", "the food was cold and bland", "a wonderful film",
         "i missed the train again", "great news from home", "the queue took hours"]
LABELS = [1, 0, 1, 0, 0, 1]  # the last two are wrong


def train_split(texts=TEXTS):
    feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"id": [f"t{i}" for i in range(len(texts))], "text": list(texts),
                                       "label": LABELS}, features=feats)


def queue_of(ds) -> pd.DataFrame:
    return pd.DataFrame({"id": ds["id"], "text": ds["text"], "given_label": [NAMES[i] for i in ds["label"]],
                         "suggested_label": [NAMES[1 - i] for i in ds["label"]], "suggested_score": 0.8,
                         "label_quality": 0.2, "loss": 1.5})


def answer(http, dataset_id, ex_id: str, body: dict) -> str:
    """The annotator answers ``ex_id`` through the UI's endpoint; returns the response id."""
    resp = http.post(f"/api/v1/me/datasets/{dataset_id}/records/search", params={"limit": 100}, json={})
    rec = {i["record"]["external_id"]: i["record"]["id"] for i in resp.json()["items"]}[ex_id]
    r = http.post(f"/api/v1/records/{rec}/responses", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def label(value: str, status: str = "submitted") -> dict:
    return {"values": {"label": {"value": value}}, "status": status}


def test_pull_refuses_answers_for_another_text_then_takes_withdrawn_and_changed_answers(tmp_path, argilla_server):
    cfg = argilla_server.cfg.replace(workdir=str(tmp_path / "work"), argilla_dataset="trust-identity")
    client = argilla_server.client()
    train = train_split()
    assert push_step(client, cfg, queue_of(train), None, NAMES, 1, set()) == train["id"]
    dataset = aio.get_dataset(client, cfg)
    with argilla_server.http() as http:
        r4 = answer(http, dataset.id, "t4", label("pos"))  # corrected neg -> pos
        r5 = answer(http, dataset.id, "t5", {"status": "discarded"})  # removed
        answer(http, dataset.id, "t0", label("pos"))  # confirmed
        r1 = answer(http, dataset.id, "t1", label("neg"))  # confirmed, changed later

    # the local data changed under the same ids (a row inserted: t4 is now another text)
    moved = train_split(TEXTS[:4] + ["a row the user inserted", "great news from home"])
    with Journal(tmp_path / "journal.sqlite") as journal:
        with pytest.raises(CleanloopError, match=r"2 answered record.*another text.*\(t4, t5\); nothing was written"):
            pull_step(client, cfg, journal, moved, 1)
        assert journal.votes() == [] and journal.pulls() == []

        first = pull_step(client, cfg, journal, train, 1)
        assert {d.example_id: d.action for d in first.decisions} == {
            "t4": "corrected", "t5": "removed", "t0": "confirmed", "t1": "confirmed"}
        root = tmp_path / "versions"
        dd = datasets.DatasetDict({"train": train})
        v1 = load_version(write_version(dd, journal, root, 1))[0]["train"]
        assert v1["label_source"][4:] == ["corrected", "removed"]

        with argilla_server.http() as http:  # withdrawn: back to draft, deleted; changed: another label
            assert http.put(f"/api/v1/responses/{r4}", json=label("pos", "draft")).status_code == 200
            assert http.delete(f"/api/v1/responses/{r5}").status_code == 200
            assert http.put(f"/api/v1/responses/{r1}", json=label("pos")).status_code == 200
        second = pull_step(client, cfg, journal, train, 2)
        assert {d.example_id: d.action for d in second.decisions} == {"t4": "open", "t5": "open", "t1": "corrected"}
        history = journal.history()  # append-only: the first decisions are still there, superseded
        assert len(history) == 7 and sorted(d.action for d in history[:4]) == ["confirmed", "confirmed", "corrected", "removed"]
        assert {i for i, d in journal.current().items() if d.action != "open"} == {"t0", "t1"}
        v2 = load_version(write_version(dd, journal, root, 2))[0]["train"]
        assert v2["label_source"] == ["original", "corrected", "original", "original", "original", "original"]
        assert v2["label"] == [1, 1, 1, 0, 0, 1]

        assert pull_step(client, cfg, journal, train, 2).decisions == []  # pulling again adds nothing


def test_a_draft_dataset_left_by_a_crash_is_recreated_by_the_next_push(tmp_path, argilla_server):
    from argilla._models import DatasetModel

    cfg = argilla_server.cfg.replace(workdir=str(tmp_path / "work"), argilla_dataset="trust-draft")
    client = argilla_server.client()
    ws = client.workspaces(cfg.argilla_workspace)
    client.api.datasets.create(DatasetModel(name=cfg.argilla_dataset, workspace_id=ws.id))  # created, never published
    assert client.api.datasets.get(aio.get_dataset(client, cfg).id).status == "draft"
    train = train_split()
    assert push_step(client, cfg, queue_of(train), None, NAMES, 1, set()) == train["id"]
    dataset = aio.get_dataset(client, cfg)
    assert client.api.datasets.get(dataset.id).status == "ready"
    meta = {r.external_id: {m.name: m.value for m in r.metadata} for r in aio._record_models(client, dataset)}
    assert len(meta) == len(TEXTS) and meta["t0"]["fingerprint"] == example_fingerprint("train", TEXTS[0])


def test_a_dataset_made_before_fingerprints_gets_the_property_on_the_next_push(tmp_path, argilla_server):
    import argilla as rg

    cfg = argilla_server.cfg.replace(workdir=str(tmp_path / "work"), argilla_dataset="trust-old")
    client = argilla_server.client()
    settings = aio.dataset_settings(NAMES, client=client)
    settings.metadata.remove(aio.FINGERPRINT)
    rg.Dataset(cfg.argilla_dataset, workspace=cfg.argilla_workspace, settings=settings, client=client).create()
    train = train_split()
    assert push_step(client, cfg, queue_of(train), None, NAMES, 1, set()) == train["id"]
    dataset = aio.get_dataset(client, cfg)
    meta = {r.external_id: {m.name: m.value for m in r.metadata} for r in aio._record_models(client, dataset)}
    assert meta["t5"]["fingerprint"] == example_fingerprint("train", TEXTS[5])
