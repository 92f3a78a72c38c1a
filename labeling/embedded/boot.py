"""The one start-up sequence of every process that imports ``argilla_server`` (server, worker, user sync).

``argilla_server`` builds its settings, database engines and Redis connection when it is imported,
from the ``ARGILLA_*`` environment that :func:`cleanloop.labeling.embedded.server.up` sets; so
:func:`boot` runs first: it registers the in-loop SQLite driver and the SQLite pragmas
(:mod:`._sqlite_driver`), then the ``sqlite`` search engine (:mod:`.search_engine`). The server
process then patches and serves the app (:mod:`._app`, :mod:`.patches`).
"""

from __future__ import annotations

__all__ = ["boot"]


def boot() -> None:
    """Prepare this process for ``argilla_server``: SQLite driver and pragmas, then the search engine. Idempotent."""
    from cleanloop.labeling.embedded import _sqlite_driver

    _sqlite_driver.setup()  # before argilla_server creates its engines
    from cleanloop.labeling.embedded import search_engine  # noqa: F401  (registers the "sqlite" engine)
