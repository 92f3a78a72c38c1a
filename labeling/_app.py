"""The ASGI app that ``cleanloop argilla up`` serves: Argilla's app, with the SQLite search engine registered.

The engine must be registered before ``argilla_server`` builds its app, hence the import order.
"""

from cleanloop.labeling import _sqlite_driver

_sqlite_driver.setup()  # the in-loop SQLite driver and pragmas, before argilla_server creates its engines

from cleanloop.labeling import search_engine  # noqa: E402,F401  (registers the "sqlite" engine)

from argilla_server import app  # noqa: E402

__all__ = ["app"]
