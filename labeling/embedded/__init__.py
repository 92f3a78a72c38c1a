"""The embedded Argilla server: Redis, argilla-server on SQLite and its worker, run by cleanloop on 127.0.0.1.

Public: :func:`up`, :func:`down`, :func:`status` (:mod:`.server`); :func:`credentials`,
:func:`resolve_home`, :func:`mask` (:mod:`.accounts`). Importing this package does not import
``argilla_server``; the modules that do (:mod:`._app`, :mod:`._serve`, :mod:`._worker`,
:mod:`.search_engine`, :mod:`.patches` when applied) run in the stack's own processes, after
:func:`.boot.boot`.
"""

from cleanloop.labeling.embedded.accounts import OWNER, Credential, credentials, mask, resolve_home
from cleanloop.labeling.embedded.server import StackStatus, down, status, up

__all__ = ["OWNER", "Credential", "StackStatus", "credentials", "down", "mask", "resolve_home", "status", "up"]
