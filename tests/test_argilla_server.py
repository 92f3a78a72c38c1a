"""The embedded Argilla stack: up/down/status, credentials, port errors, restarts (against the real server)."""

from __future__ import annotations

import os
import socket
import stat

import pytest
from click.testing import CliRunner

from cleanloop.cli.options import app
from cleanloop.config import Config
from cleanloop.errors import CleanloopError
from cleanloop.labeling import embedded as server


def _cli_args(argilla_server) -> list[str]:
    return ["--workdir", argilla_server.cfg.workdir, "--argilla-url", argilla_server.url, "--home", str(argilla_server.home)]


def _cli():
    import cleanloop.cli  # noqa: F401  (registers the command groups)

    return CliRunner()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat_line.rsplit(") ", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def test_status_reports_every_process(argilla_server):
    st = server.status(argilla_server.cfg, argilla_server.home)
    assert st.running and st.healthy and st.url == argilla_server.url
    assert set(st.processes) == {"redis", "server", "worker"} and all(st.processes.values())
    for name, pid in st.processes.items():
        assert (argilla_server.home / "run" / f"{name}.pid").read_text().strip() == str(pid)
    result = _cli().invoke(app, ["argilla", "status", *_cli_args(argilla_server)])
    assert result.exit_code == 0, result.output
    assert f"Argilla running at {argilla_server.url}" in result.output


def test_second_up_is_a_noop_and_never_prints_secrets(argilla_server):
    before = server.status(argilla_server.cfg, argilla_server.home).processes
    result = _cli().invoke(app, ["argilla", "up", *_cli_args(argilla_server)])
    assert result.exit_code == 0, result.output
    assert "already runs" in result.output
    assert server.status(argilla_server.cfg, argilla_server.home).processes == before
    assert argilla_server.owner_key not in result.output and argilla_server.annotator_key not in result.output
    assert argilla_server.owner_key[:4] in result.output  # masked: first 4 characters only
    logs = "".join(p.read_text(errors="replace") for p in (argilla_server.home / "logs").glob("*.log"))
    assert argilla_server.owner_key not in logs and argilla_server.annotator_password not in logs


def test_secrets_are_private_files(argilla_server):
    for name in ("credentials.json", "auth_secret_key"):
        mode = stat.S_IMODE(os.stat(argilla_server.home / name).st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_credentials_from_environment_are_not_written(tmp_path, monkeypatch):
    cfg = Config(workdir=str(tmp_path), argilla_annotators=["ann-1"])
    monkeypatch.setenv("CLEANLOOP_ARGILLA_ANN_1_PASSWORD", "from-the-env-123")
    creds = server.credentials(cfg, create=True)
    assert creds["ann-1"].password == "from-the-env-123"
    assert creds["ann-1"].source == "CLEANLOOP_ARGILLA_ANN_1_PASSWORD"
    assert "from-the-env-123" not in (tmp_path / "argilla" / "credentials.json").read_text()
    assert server.credentials(cfg)["owner"].api_key == creds["owner"].api_key  # generated once, then kept
    monkeypatch.setenv("CLEANLOOP_ARGILLA_OWNER_PASSWORD", "short")
    with pytest.raises(CleanloopError, match="8 characters"):
        server.credentials(cfg)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = Config(workdir=str(tmp_path), argilla_url=f"http://127.0.0.1:{port}")
        with pytest.raises(CleanloopError, match=f"port {port} on 127.0.0.1 is in use"):
            server.up(cfg)
    assert not (tmp_path / "argilla" / "run" / "stack.json").exists()  # nothing was started


def test_remote_url_is_refused(tmp_path):
    with pytest.raises(CleanloopError, match="127.0.0.1 only"):
        server.up(Config(workdir=str(tmp_path), argilla_url="https://argilla.example.com"))


def test_down_with_nothing_running(tmp_path):
    assert server.down(Config(workdir=str(tmp_path))) == []
    result = _cli().invoke(app, ["argilla", "status", "--workdir", str(tmp_path)])
    assert result.exit_code == 0 and "not running" in result.output


def _search_total(http, dataset_id: str, q: str) -> int:
    resp = http.post(f"/api/v1/me/datasets/{dataset_id}/records/search", json={"query": {"text": {"q": q}}})
    assert resp.status_code == 200, resp.text
    return resp.json()["total"]


def test_restart_keeps_data_logins_and_index(argilla_server):
    import argilla as rg
    import httpx

    cfg, home = argilla_server.cfg, argilla_server.home
    client = argilla_server.client()  # first: the SDK's Settings use the latest client
    settings = rg.Settings(fields=[rg.TextField("text")], questions=[rg.LabelQuestion("label", labels=["a", "b"])])
    dataset = rg.Dataset("restart", workspace="cleanloop", settings=settings, client=client).create()
    dataset.records.log([{"text": f"kept across restarts {i}", "id": f"k{i}"} for i in range(5)])
    ds_id = str(dataset.id)
    record_id = str(next(iter(dataset.records))._server_id)
    with argilla_server.http() as http:
        assert http.post(f"/api/v1/records/{record_id}/responses",
                         json={"values": {"label": {"value": "b"}}, "status": "submitted"}).status_code == 201
    # a UI login: its token must stay valid across restarts (stable ARGILLA_AUTH_SECRET_KEY)
    token = httpx.post(f"{argilla_server.url}/api/v1/token",
                       data={"username": argilla_server.annotator, "password": argilla_server.annotator_password}).json()
    bearer = {"Authorization": f"Bearer {token['access_token']}"}

    pids = server.status(cfg, home).processes
    workers = _children(pids["server"])
    assert len(workers) >= cfg.argilla_workers == 2  # uvicorn's server processes
    assert server.down(cfg, home) == ["server", "worker", "redis"]
    assert not any(server.status(cfg, home).processes.values())
    assert all(not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
               for pid in [*pids.values(), *workers])
    st = server.up(cfg, home, timeout=240)
    assert st.started and st.running
    assert httpx.get(f"{argilla_server.url}/api/v1/me", headers=bearer).status_code == 200
    with argilla_server.http() as http:
        assert _search_total(http, ds_id, "restarts") == 5
        status_filter = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                               "values": ["submitted"]}]}}
        assert http.post(f"/api/v1/me/datasets/{ds_id}/records/search", json=status_filter).json()["total"] == 1
    assert "re-indexed" not in (home / "logs" / "server.log").read_text()

    # a lost index is rebuilt from the database at the next start
    server.down(cfg, home)
    for path in home.glob("search.sqlite*"):
        path.unlink()
    server.up(cfg, home, timeout=240)
    with argilla_server.http() as http:
        assert _search_total(http, ds_id, "restarts") == 5
        assert http.post(f"/api/v1/me/datasets/{ds_id}/records/search", json=status_filter).json()["total"] == 1
    assert "re-indexed dataset 'restart'" in (home / "logs" / "server.log").read_text()


def test_bulk_replies_are_uncompressed_and_close_their_connection(argilla_server):
    # labeling/embedded/_app.py BulkReplies: keep-alive would pin a client's connection to one server process,
    # and Brotli on a localhost echo of 500 vectors only costs CPU
    import argilla as rg

    client = argilla_server.client()
    settings = rg.Settings(fields=[rg.TextField("text")], questions=[rg.LabelQuestion("label", labels=["a", "b"])])
    dataset = rg.Dataset("bulk-replies", workspace="cleanloop", settings=settings, client=client).create()
    headers = {"Accept-Encoding": "br, gzip"}
    items = [{"external_id": f"x{i}", "fields": {"text": "a long enough text " * 20}} for i in range(3)]
    with argilla_server.http(argilla_server.owner_key) as http:
        bulk = http.put(f"/api/v1/datasets/{dataset.id}/records/bulk", json={"items": items}, headers=headers)
        assert bulk.status_code == 200 and len(bulk.json()["items"]) == 3
        assert bulk.headers.get("connection") == "close" and "content-encoding" not in bulk.headers
        listed = http.get(f"/api/v1/datasets/{dataset.id}/records", headers=headers)  # the same records, not bulk
        assert listed.status_code == 200 and listed.json()["total"] == 3
        assert listed.headers.get("connection") != "close" and listed.headers.get("content-encoding") == "br"
