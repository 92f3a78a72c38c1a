"""Where an embedded Argilla stack lives, who its users are, and their credentials and secrets: one module for all three.

The *Argilla home* is ``home`` when a caller passes one, else ``$CLEANLOOP_ARGILLA_HOME``, else
``<workdir>/argilla`` (:func:`resolve_home`); every command and loop finds it the same way.

Users: an owner (``owner``) and the annotators of ``Config.argilla_annotators``. A user's
password and API key come from ``CLEANLOOP_ARGILLA_<USER>_PASSWORD`` /
``CLEANLOOP_ARGILLA_<USER>_API_KEY`` (``<USER>`` in upper case, non-alphanumerics as ``_``) when
set, else they are generated once and kept in ``<home>/credentials.json`` (0600). The stack's
other secrets, the key that signs UI logins and the password of its private Redis, are generated
into the home too (0600). Secrets are never logged in full: :func:`mask`.

This module imports no part of ``argilla_server``: the CLI, the SDK adapter and the server
processes all read credentials through it.

>>> from cleanloop.config import Config
>>> resolve_home(Config(workdir="/tmp/run"), "/srv/argilla").as_posix()
'/srv/argilla'
>>> mask("s3cr3t-api-key-0123456789")
's3cr…(25 chars)'
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cleanloop.atomic import write_text
from cleanloop.config import Config
from cleanloop.errors import CleanloopError

__all__ = ["HOME_ENV", "OWNER", "Credential", "credentials", "mask", "resolve_home", "user_secrets"]

OWNER = "owner"
HOME_ENV = "CLEANLOOP_ARGILLA_HOME"


@dataclass(frozen=True)
class Credential:
    """One Argilla user: ``source`` is ``"generated"`` (kept in credentials.json) or the env variable."""

    username: str
    role: str
    password: str = field(repr=False)
    api_key: str = field(repr=False)
    source: str = "generated"


def resolve_home(cfg: Config, home: str | Path | None = None) -> Path:
    """The Argilla home as an absolute path: ``home``, else ``$CLEANLOOP_ARGILLA_HOME``, else ``<workdir>/argilla``."""
    from cleanloop.workdir import Workdir

    chosen = home or os.environ.get(HOME_ENV)
    return Path(chosen).expanduser().absolute() if chosen else Workdir.of(cfg).argilla_home


def mask(secret: str) -> str:
    """The first four characters of a secret and its length: enough to tell keys apart, not to use one."""
    return f"{secret[:4]}…({len(secret)} chars)"


def _env_name(username: str, what: str) -> str:
    return f"CLEANLOOP_ARGILLA_{re.sub(r'[^A-Za-z0-9]', '_', username).upper()}_{what}"


def _users(cfg: Config) -> list[tuple[str, str]]:
    """``(username, role)`` of the owner and the configured annotators, names checked."""
    wanted = [(OWNER, "owner")] + [(name, "annotator") for name in cfg.argilla_annotators if name != OWNER]
    for name, _ in wanted:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?", name):
            raise CleanloopError(
                f"Argilla user name {name!r} is not allowed; fix: use lower-case letters, digits, '-' and '_' "
                "(argilla_annotators in the config)"
            )
    return wanted


def credentials(cfg: Config, home: str | Path | None = None, *, create: bool = False) -> dict[str, Credential]:
    """The owner's and the annotators' credentials, from the environment or ``<home>/credentials.json``.

    With ``create=True`` missing ones are generated and saved (0600); otherwise a user
    with neither is left out.
    """
    path = resolve_home(cfg, home) / "credentials.json"
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
        write_text(path, json.dumps(stored, indent=2) + "\n")
    return result


def user_secrets(home: Path, username: str) -> tuple[str, str]:
    """``(password, api_key)`` of one user, as :func:`credentials` resolves them (the server's user sync reads this)."""
    stored = {}
    path = home / "credentials.json"
    if path.exists():
        stored = json.loads(path.read_text()).get(username, {})
    return (os.environ.get(_env_name(username, "PASSWORD")) or stored["password"],
            os.environ.get(_env_name(username, "API_KEY")) or stored["api_key"])


def _home_secret(home: Path, name: str) -> str:
    path = home / name
    if not path.exists():
        write_text(path, secrets.token_hex(32))
    return path.read_text().strip()


def auth_secret_key(home: Path) -> str:
    """What signs the UI's login tokens: ``$ARGILLA_AUTH_SECRET_KEY``, else ``<home>/auth_secret_key`` (made once)."""
    return os.environ.get("ARGILLA_AUTH_SECRET_KEY") or _home_secret(home, "auth_secret_key")


def redis_secret(home: Path) -> str:
    """The password of the stack's private Redis, ``<home>/redis_secret`` (made once)."""
    return _home_secret(home, "redis_secret")
