"""The review queue in Argilla's web UI (headless Debian chromium): an annotator sees the records most
suspicious first (ranks 1, 2, 3), with the label in the data and the other copies of a text on screen
and the model's suggestion pre-selected; one answer on a record of copies settles every copy.

Argilla shows pending records in a per-annotator shuffle, so cleanloop keeps one record pending at a
time (``review_wave`` 1) and pushes the next as each is answered (``WavePusher`` in the wait step).
"""

from __future__ import annotations

import logging
import threading
import time

import datasets
import pandas as pd
import pytest
from test_argilla_browser import _browser, sign_in

from cleanloop.labeling import argilla_io as aio
from cleanloop.labeling.journal import Journal
from cleanloop.loops.review import pull_step, wait_for_reviews, wave_pusher

log = logging.getLogger(__name__)
NAMES = ["joy", "sadness", "anger"]
QUEUE = [  # id, text, given, suggested, copies (id, label, text)
    ("train-00007", "i feel so miserable and alone tonight", "joy", "sadness", []),
    ("train-00003", "this traffic makes me furious", "sadness", "anger",
     [("train-00011", "anger", "This traffic makes me  furious")]),
    ("train-00005", "what a wonderful sunny morning", "anger", "joy", []),
    ("train-00001", "i cried all day after the news", "joy", "sadness", []),
]


def review_queue() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [q[0] for q in QUEUE], "text": [q[1] for q in QUEUE], "given_label": [q[2] for q in QUEUE],
        "suggested_label": [q[3] for q in QUEUE], "suggested_score": 0.9, "label_quality": 0.05, "loss": 3.0,
        "flagged_by": ["cleanlab", "duplicate", "cleanlab", "cleanlab"],
        "copy_ids": [[c[0] for c in q[4]] for q in QUEUE], "copy_labels": [[c[1] for c in q[4]] for q in QUEUE],
        "copy_texts": [[c[2] for c in q[4]] for q in QUEUE], "queue_rank": range(1, len(QUEUE) + 1),
    })


class _ShownOrReload:
    """The queue entry on screen, or None. Argilla's UI does not look for new records by itself: an
    annotator who answers before the next wave arrives sees an empty queue ("The task is completed!")
    and reloads, as the README says; so does this test: at once on that page, and after ``every``
    seconds on any other page that shows no queue record (a slow machine renders slowly)."""

    def __init__(self, feeder, url, every=20.0):
        self.feeder, self.url, self.every, self.last = feeder, url, every, time.monotonic()

    def __call__(self, browser):
        from selenium.webdriver.common.by import By

        body = browser.find_element(By.TAG_NAME, "body").text
        shown = next((q for q in QUEUE if q[1] in body), None)
        assert shown or self.feeder.is_alive(), "the feeder stopped before the next record was pushed"
        if shown is None and ("task is completed" in body or time.monotonic() - self.last > self.every):
            log.info("reloading at %s", browser.current_url)
            browser.get(self.url)  # the dataset opened again: a plain reload did not always show the record
            self.last = time.monotonic()
        return shown


def test_annotator_sees_the_queue_most_suspicious_first(argilla_server, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    cfg = argilla_server.cfg.replace(argilla_dataset="review-order", review_wave=1)
    client = argilla_server.client()
    pusher = wave_pusher(client, cfg, review_queue(), None, NAMES, 1, set(), wave=cfg.review_wave)
    pusher.feed(0)
    assert pusher.pushed == 1
    feeder = threading.Thread(target=wait_for_reviews, daemon=True,
                              args=(client, cfg, pusher.ids, 3, 900, 0.3), kwargs={"feed": pusher.feed})
    feeder.start()  # feeds until 3 are answered: a slow CI machine must not outlast it
    dataset = aio.get_dataset(client, cfg)

    browser = _browser(tmp_path / "chromium-profile")
    seen = []
    try:
        wait = sign_in(browser, argilla_server)
        queue_url = f"{argilla_server.url}/dataset/{dataset.id}/annotation-mode"
        shown_or_reload = _ShownOrReload(feeder, queue_url)
        browser.get(queue_url)
        for rank, (_, text, given, suggested, copies) in enumerate(QUEUE[:3], start=1):
            try:
                shown = wait.until(shown_or_reload)
            except TimeoutException:
                body = browser.find_element(By.TAG_NAME, "body").text
                raise AssertionError(f"no queue record on screen after {seen} at {browser.current_url}; "
                                     f"the page says: {body[:500]!r}") from None
            seen.append(QUEUE.index(shown) + 1)
            assert shown[1] == text, f"record {rank} the annotator saw is rank {seen[-1]}: {seen}"
            body = browser.find_element(By.TAG_NAME, "body").text
            assert f"Label in the data: {given}" in body
            for _, label, copy_text in copies:
                assert label in body and " ".join(copy_text.split()) in body
            assert browser.find_element(By.ID, f"label_{suggested}").is_selected(), "suggestion not pre-selected"
            wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button.button--submit"))).click()
            wait.until(lambda b, t=text: t not in b.find_element(By.TAG_NAME, "body").text)
    finally:
        browser.quit()
    feeder.join(timeout=30)
    assert seen == [1, 2, 3]
    # the answer on rank 2 (its suggestion, "anger") settles its copy too
    responses = aio.pull(client, dataset)
    assert {(r.example_id, r.label) for r in responses} == {
        ("train-00007", "sadness"), ("train-00003", "anger"), ("train-00005", "joy")}
    assert next(r for r in responses if r.example_id == "train-00003").copies == ("train-00011",)
    ids = sorted({q[0] for q in QUEUE} | {c[0] for q in QUEUE for c in q[4]})
    given = {q[0]: q[2] for q in QUEUE} | {c[0]: c[1] for q in QUEUE for c in q[4]}
    texts = {q[0]: q[1] for q in QUEUE} | {c[0]: c[2] for q in QUEUE for c in q[4]}  # the pushed texts: fingerprints match
    original = datasets.Dataset.from_dict(
        {"id": ids, "text": [texts[i] for i in ids], "label": [NAMES.index(given[i]) for i in ids]},
        features=datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=NAMES)}))
    with Journal(tmp_path / "journal.sqlite") as journal:
        pull_step(client, cfg, journal, original, 1)
        assert journal.reviewed_ids() == {"train-00007", "train-00003", "train-00011", "train-00005"}


@pytest.mark.parametrize("wave", [0, 2])
def test_wave_pusher_keeps_wave_records_pending(argilla_server, wave):
    cfg = argilla_server.cfg.replace(argilla_dataset=f"review-wave-{wave}", review_wave=wave)
    client = argilla_server.client()
    pusher = wave_pusher(client, cfg, review_queue(), None, NAMES, 1, {"train-00005"}, wave=wave)
    assert pusher.ids == ["train-00007", "train-00003", "train-00001"]
    assert pusher.feed(0) == (3 if wave == 0 else 2)
    assert pusher.feed(1) == 3
    dataset = aio.get_dataset(client, cfg)
    assert sorted(r.id for r in dataset.records) == sorted(pusher.ids)
