"""`cleanloop serve`: the FastAPI app under the test client, micro-batching, 4xx on bad input,
a property-based fuzz that finds no 5xx, and one real uvicorn process on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanloop.model.predict import Predictor
from cleanloop.model.serve import MicroBatcher, create_app
from test_predict import LABELS, TEXTS, predictor, reference, tiny_model  # noqa: F401  (shared fixtures)

MAX_TEXTS, MAX_CHARS = 8, 200


@pytest.fixture(scope="module")
def client(predictor):
    app = create_app(predictor, max_texts=MAX_TEXTS, max_chars=MAX_CHARS, max_wait_ms=20, model_name="tiny")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _probs(results: list[dict]) -> np.ndarray:
    return np.array([[r["probabilities"][n] for n in LABELS] for r in results])


def test_predict_in_order_and_agrees_with_score(client, reference):
    r = client.post("/predict", json={"texts": TEXTS[:MAX_TEXTS]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == MAX_TEXTS
    np.testing.assert_allclose(_probs(results), reference[:MAX_TEXTS], atol=1e-5)
    assert [x["label"] for x in results] == [LABELS[i] for i in reference[:MAX_TEXTS].argmax(1)]
    assert not any(x["truncated"] for x in results) and "top_k" not in results[0]


def test_top_k(client, reference):
    r = client.post("/predict", json={"texts": [TEXTS[0]], "top_k": 3})
    top = r.json()["results"][0]["top_k"]
    assert [t["label"] for t in top] == [LABELS[i] for i in np.argsort(-reference[0])[:3]]


def test_docstring_examples_run():
    import doctest

    import cleanloop.model.serve as serve

    res = doctest.testmod(serve)
    assert res.failed == 0 and res.attempted >= 2


def test_health_labels_and_openapi(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["packed"] is True  # groups run without padding
    assert client.get("/labels").json() == {"labels": LABELS}
    schema = client.get("/openapi.json").json()
    texts = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
    assert texts["minItems"] == 1 and texts["maxItems"] == MAX_TEXTS and texts["items"]["maxLength"] == MAX_CHARS
    assert {"/predict", "/health", "/labels"} <= set(schema["paths"])


def test_concurrent_requests_are_batched_and_answered_in_order(client, reference):
    batcher = client.app.state.batcher
    before = batcher.groups
    answers: dict[int, dict] = {}

    def ask(i):
        answers[i] = client.post("/predict", json={"texts": [TEXTS[i]]}).json()["results"][0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(TEXTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(_probs([answers[i] for i in range(len(TEXTS))]), reference, atol=1e-5)
    assert batcher.groups - before < len(TEXTS)  # some requests shared a model call


def test_micro_batcher_groups_requests(predictor, reference):
    batcher = MicroBatcher(predictor, max_wait_ms=200, max_batch=64, max_gap_ms=200)
    try:
        futures = [batcher.submit([t]) for t in TEXTS]
        got = np.concatenate([f.result(timeout=30) for f in futures])
        np.testing.assert_allclose(got, reference, atol=1e-5)
        assert batcher.groups <= 2 and batcher.pending == 0
    finally:
        batcher.close()


def test_micro_batcher_stops_gathering_after_a_lull(predictor, reference):
    # a lone request is not held for max_wait_ms (a minute here): no company came within max_gap_ms
    batcher = MicroBatcher(predictor, max_wait_ms=60_000, max_batch=64, max_gap_ms=200)
    try:
        np.testing.assert_allclose(batcher.submit([TEXTS[0]]).result(timeout=30), reference[:1], atol=1e-5)
        # a request that comes within the gap joins the group
        first = batcher.submit([TEXTS[0]])
        time.sleep(0.005)
        second = batcher.submit([TEXTS[1]])
        first.result(timeout=30), second.result(timeout=30)
        assert batcher.groups == 2
    finally:
        batcher.close()


def test_truncate_mode_cuts_and_says_so(predictor):
    app = create_app(predictor, max_chars=12, truncate=True)
    long_text = "i feel so happy and grateful today"
    with TestClient(app) as c:
        res = c.post("/predict", json={"texts": [long_text, "ok"]}).json()["results"]
    assert [r["truncated"] for r in res] == [True, False]
    cut = predictor.predict([long_text[:12]])[0]
    assert res[0]["probabilities"] == pytest.approx(cut.probabilities, abs=1e-5)


BAD = [
    # (body, raw bytes or None, content type, status, words in detail)
    ({"texts": []}, None, None, 422, "'texts' is empty"),
    ({"texts": ["ok", 3]}, None, None, 422, "texts[1] must be a string, got a number"),
    ({"texts": [None]}, None, None, 422, "texts[0] must be a string, got null"),
    ({"texts": [["nested"]]}, None, None, 422, "texts[0] must be a string, got a list"),
    ({"texts": "just one"}, None, None, 422, "'texts' must be a list of strings"),
    ({"texts": ["a"] * (MAX_TEXTS + 1)}, None, None, 413, f"over the limit of {MAX_TEXTS} per request"),
    ({"texts": ["x" * (MAX_CHARS + 1)]}, None, None, 413, "--truncate"),
    ({"text": ["typo"]}, None, None, 422, "'texts' is missing"),
    ({"texts": ["a"], "top_k": 0}, None, None, 422, "'top_k' must be an integer from 1 to 6"),
    ({"texts": ["a"], "top_k": "2"}, None, None, 422, "'top_k' must be an integer"),
    (["a", "b"], None, None, 422, "expected a JSON object"),
    ({"texts": ["\ud800"]}, None, None, 422, "not valid Unicode"),
    (None, b'{"texts": ["unclosed', "application/json", 400, "malformed JSON"),
    (None, b"\xff\xfe\x00", "application/json", 400, "malformed JSON"),
    (None, b"texts=hello", "application/x-www-form-urlencoded", 422, "expected a JSON object"),
    (None, b"", "application/json", 422, "no body"),
    (None, b"[" * 5_000, "application/json", 400, "malformed JSON"),  # too deep to parse
]


@pytest.mark.parametrize("body, raw, ctype, status, words", BAD)
def test_bad_input_gets_its_4xx(client, body, raw, ctype, status, words):
    if raw is None:
        r = client.post("/predict", json=body)
    else:
        r = client.post("/predict", content=raw, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert "unclosed" not in r.text and "typo" not in r.text  # bodies are not echoed back


def test_oversized_body_is_refused_before_reading(client):
    r = client.post("/predict", content=b"x" * 30_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_app_survives_a_second_lifespan(predictor):
    app = create_app(predictor)
    for _ in range(2):
        with TestClient(app) as c:
            assert c.post("/predict", json={"texts": ["ok"]}).status_code == 200


def test_wrong_method_and_path_are_4xx(client):
    assert client.get("/predict").status_code == 405
    assert client.post("/nothing", json={}).status_code == 404


# --- fuzz ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
texts_values = st.lists(st.text(max_size=MAX_CHARS + 20) | json_values, max_size=MAX_TEXTS + 2) | json_values
bodies = (
    st.fixed_dictionaries({"texts": texts_values}, optional={"top_k": json_values | st.integers(-2, 9)})
    | st.dictionaries(st.sampled_from(["texts", "top_k", "x"]), json_values, max_size=3)
    | json_values
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_fuzz_json_bodies_never_5xx(client, body):
    r = client.post("/predict", json=body)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code == 200:
        assert len(r.json()["results"]) == len(body["texts"])
    else:
        assert isinstance(r.json()["detail"], str)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200), ctype=st.sampled_from(["application/json", "text/plain", "", "application/x+json"]))
def test_fuzz_raw_bytes_never_5xx(client, raw, ctype):
    r = client.post("/predict", content=raw, headers={"content-type": ctype} if ctype else {})
    assert 400 <= r.status_code < 500 or r.status_code == 200, (r.status_code, r.text)


# --- a real process -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_process(tiny_model, reference, tmp_path):
    port = _free_port()
    exe = Path(sys.executable).with_name("cleanloop")
    log_file = tmp_path / "serve.log"
    marker = "zebra-marker-4711"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [str(exe), "serve", "--model", tiny_model, "--port", str(port), "--max-texts", "4", "--precision", "fp32"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log_file.read_text()
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not start: " + log_file.read_text()
                time.sleep(0.2)
            r = httpx.post(f"{base}/predict", json={"texts": TEXTS[:3]}, timeout=30)
            assert r.status_code == 200
            np.testing.assert_allclose(_probs(r.json()["results"]), reference[:3], atol=1e-5)
            bad = httpx.post(f"{base}/predict", content=b'{"texts": ["' + marker.encode() + b'"', timeout=10,
                             headers={"content-type": "application/json"})
            assert bad.status_code == 400
            assert httpx.post(f"{base}/predict", json={"texts": [marker] * 5}, timeout=10).status_code == 413
            assert httpx.post(f"{base}/predict", json={"texts": [marker]}, timeout=10).status_code == 200
            assert httpx.get(f"{base}/labels", timeout=5).json()["labels"] == LABELS  # still alive
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log_file.read_text()
    assert "POST /predict" in text and " 413" in text  # the access log has paths and statuses...
    assert marker not in text  # ...but no request bodies


def test_truncate_still_bounds_text_length(predictor):
    from cleanloop.model.serve import TRUNCATE_FACTOR

    app = create_app(predictor, max_chars=12, truncate=True)
    with TestClient(app) as c:
        ok = c.post("/predict", json={"texts": ["x" * 12 * TRUNCATE_FACTOR]})
        over = c.post("/predict", json={"texts": ["x" * (12 * TRUNCATE_FACTOR + 1)]})
    assert ok.status_code == 200 and ok.json()["results"][0]["truncated"]
    assert over.status_code == 413 and f"over the limit of {12 * TRUNCATE_FACTOR}" in over.json()["detail"]


def test_chunked_body_is_counted_as_it_is_read(predictor):
    """A chunked upload (no Content-Length) gets its 413 once it passes the limit, not after it ends."""
    import uvicorn

    from cleanloop.model.serve import listen_socket

    app = create_app(predictor, max_texts=2, max_chars=10)
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 65536  # over the ~4 kB limit; the body never ends (no 0-size chunk follows)
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            reply = b""
            while b"over the limit" not in reply:
                part = conn.recv(4096)
                if not part:
                    break
                reply += part
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"over the limit" in reply
        with TestClient(app) as c:  # a small chunked body still goes through
            small = c.post("/predict", content=iter([b'{"texts": ', b'["ok"]}']),
                           headers={"content-type": "application/json"})
        assert small.status_code == 200, small.text
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_serve_on_a_taken_port_fails_before_loading_the_model(tmp_path):
    exe = Path(sys.executable).with_name("cleanloop")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        done = subprocess.run([str(exe), "serve", "--model", str(tmp_path / "no-model-here"), "--port", str(port)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: port ") and "in use" in lines[0], done.stderr
    assert "no model" not in done.stderr  # the port is checked first
    assert time.monotonic() - t0 < 60
