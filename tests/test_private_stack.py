"""The embedded stack is private: Redis on a password-protected unix socket only, a 0700 home with
0600 files, the rq scheduler running, users and webhooks made to match on every 'up' (real server)."""

from __future__ import annotations

import os
import socket
import stat

import httpx
import pytest
import redis

from cleanloop.labeling import embedded as server
from cleanloop.labeling.argilla_io import ReviewWaker


def _listening_tcp_inodes() -> set[str]:
    """Socket inodes of every TCP socket in LISTEN state on this machine (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A":  # LISTEN
                inodes.add(cols[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _redis(argilla_server, password: str | None):
    sock = argilla_server.home / "run" / "redis.sock"
    return redis.Redis(unix_socket_path=str(sock), password=password, socket_timeout=5)


def test_redis_refuses_a_client_without_the_password_and_has_no_tcp_port(argilla_server):
    home = argilla_server.home
    secret = (home / "redis_secret").read_text().strip()
    with pytest.raises(redis.exceptions.AuthenticationError):
        _redis(argilla_server, None).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        _redis(argilla_server, "not-the-password").ping()
    assert _redis(argilla_server, secret).ping() is True
    pid = server.status(argilla_server.cfg, home).processes["redis"]
    assert not (_socket_inodes(pid) & _listening_tcp_inodes()), "redis-server listens on a TCP port"
    assert stat.S_IMODE(os.stat(home / "run" / "redis.sock").st_mode) == 0o700
    assert "redis_port" not in (home / "run" / "stack.json").read_text()


def test_rq_worker_runs_the_scheduler(argilla_server):
    secret = (argilla_server.home / "redis_secret").read_text().strip()
    r = _redis(argilla_server, secret)
    # rq's scheduler holds one lock per queue it schedules for (Argilla's webhook retries are scheduled jobs)
    assert r.exists("rq:scheduler-lock:high") or r.exists("rq:scheduler-lock:default")


def test_home_is_0700_and_every_file_0600(argilla_server):
    home = argilla_server.home
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    for name in ("argilla.db", "search.sqlite", "credentials.json", "auth_secret_key", "redis_secret",
                 "run/stack.json", "run/redis.conf", "logs/server.log", "logs/worker.log", "logs/redis.log"):
        mode = stat.S_IMODE(os.stat(home / name).st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    loose = [p for p in home.rglob("*") if not p.is_symlink() and os.stat(p).st_mode & 0o077]
    assert not loose, f"readable by others: {loose}"


def _make_webhooks(argilla_server, live_url: str, dead_url: str) -> dict[str, str]:
    http = argilla_server.http(argilla_server.owner_key)
    made = {}
    for name, url, description in (("dead", dead_url, ReviewWaker.DESCRIPTION),
                                   ("live", live_url, ReviewWaker.DESCRIPTION),
                                   ("foreign", dead_url, "someone else's webhook")):
        r = http.post("/api/v1/webhooks", json={"url": url, "events": ["response.created"], "description": description})
        assert r.status_code == 201, r.text
        made[name] = r.json()["id"]
    return made


def test_up_syncs_users_and_removes_webhooks_of_dead_listeners(argilla_server, monkeypatch):
    cfg, home = argilla_server.cfg, argilla_server.home
    with_extra = cfg.replace(argilla_annotators=["annotator", "reviewer-2"])

    st = server.up(with_extra, home)
    assert not st.started and st.synced["created"] == ["reviewer-2"]
    key = server.credentials(with_extra, home)["reviewer-2"].api_key
    assert argilla_server.http(key).get("/api/v1/me").status_code == 200

    monkeypatch.setenv("CLEANLOOP_ARGILLA_REVIEWER_2_PASSWORD", "a-new-password-123")
    monkeypatch.setenv("CLEANLOOP_ARGILLA_REVIEWER_2_API_KEY", "reviewer-2-key-from-the-environment")
    st = server.up(with_extra, home)
    assert st.synced["updated"] == ["reviewer-2"] and not st.synced["created"]
    assert argilla_server.http("reviewer-2-key-from-the-environment").get("/api/v1/me").status_code == 200
    assert argilla_server.http(key).get("/api/v1/me").status_code == 401  # the old key no longer works
    login = httpx.post(f"{argilla_server.url}/api/v1/token", timeout=30,
                       data={"username": "reviewer-2", "password": "a-new-password-123"})
    assert login.status_code in (200, 201), login.text

    client = argilla_server.client()
    with socket.socket() as live, socket.socket() as gone:
        live.bind(("127.0.0.1", 0))
        live.listen()
        gone.bind(("127.0.0.1", 0))  # bound, never listening: like the port of a killed listener
        dead_url = f"http://127.0.0.1:{gone.getsockname()[1]}/hook"
        made = _make_webhooks(argilla_server, f"http://127.0.0.1:{live.getsockname()[1]}/hook", dead_url)
        try:
            st = server.up(cfg, home)  # reviewer-2 left argilla_annotators
            left = {str(h.id) for h in client.webhooks}
        finally:
            for hook in client.webhooks:
                if str(hook.id) in made.values():
                    hook.delete()
    assert st.synced["webhooks_removed"] == [dead_url]
    assert made["dead"] not in left and made["live"] in left and made["foreign"] in left

    assert st.synced["disabled"] == ["reviewer-2"]
    assert argilla_server.http("reviewer-2-key-from-the-environment").get("/api/v1/me").status_code == 401
    login = httpx.post(f"{argilla_server.url}/api/v1/token", timeout=30,
                       data={"username": "reviewer-2", "password": "a-new-password-123"})
    assert login.status_code == 401
    # the owner and the annotator still in the config keep their access
    assert argilla_server.http(argilla_server.owner_key).get("/api/v1/me").status_code == 200
    assert argilla_server.http().get("/api/v1/me").status_code == 200


def test_server_failure_mid_step_is_one_line_with_the_fix(argilla_server):
    import argilla as rg

    from cleanloop.errors import CleanloopError
    from cleanloop.labeling.argilla_io import server_errors

    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{gone.getsockname()[1]}"
        with pytest.raises(CleanloopError) as err:
            with server_errors(url, "pull"):
                httpx.get(f"{url}/api/v1/me", timeout=5)  # what the SDK raises when the server went away
    msg = str(err.value)
    assert msg.startswith(f"Argilla at {url} failed during pull (") and "fix: check it runs" in msg
    assert "\n" not in msg
    with pytest.raises(CleanloopError, match="failed during pull .*Credentials"):
        with server_errors(argilla_server.url, "pull"):
            rg.Argilla(api_url=argilla_server.url, api_key="wrong-key", timeout=30).me  # noqa: B018
