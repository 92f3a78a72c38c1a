"""The ASGI app that ``cleanloop argilla up`` serves: Argilla's app, booted, patched, and wrapped.

:func:`~cleanloop.labeling.embedded.boot.boot` runs before ``argilla_server`` is imported (it
builds its app then); :func:`~cleanloop.labeling.embedded.patches.apply` installs the checked
speed-ups (``<home>/run/patches.json`` says which). Around the app, :class:`BulkReplies` changes
how replies to bulk requests travel (uncompressed, closing their connection), not what they say.
Last, ``gc.freeze()``: a bulk request allocates hundreds of thousands of objects, which sets off
full collections of Python's cyclic garbage collector, and each one walked the ~300,000 objects
that importing Argilla, SQLAlchemy and pydantic leaves behind (about a quarter of the server's
CPU per logged record). Freezing moves those to the permanent generation, which collections
skip; everything allocated afterwards is collected as before.
"""

import gc
import os
from pathlib import Path

from cleanloop.labeling.embedded.boot import boot

boot()

from argilla_server import app as argilla_app  # noqa: E402

from cleanloop.labeling.embedded import patches  # noqa: E402

patches.apply(argilla_app, report=Path(os.environ["ARGILLA_HOME_PATH"]) / "run" / "patches.json")


class BulkReplies:
    """ASGI wrapper for replies to bulk requests (``.../records/bulk``): uncompressed, and they close their connection.

    * With several server processes (``argilla_workers``), each keep-alive connection stays with
      the process that accepted it, and two connections opened at once are often accepted by the
      same one: the SDK's threads then queue on one process while the other idles. A bulk
      request (up to 500 records, most of a second of work) that ends its connection makes the
      client's next one connect afresh, and only a process that is free accepts it.
    * A bulk reply echoes every record, vectors included (megabytes for 500 records); Argilla
      Brotli-compresses it at quality 7 for a client that accepts it, as the SDK does. The
      embedded server listens on 127.0.0.1 only, where that costs CPU and saves nothing, so
      the request's ``Accept-Encoding`` is dropped before Argilla's app sees it.

    Other requests and replies pass unchanged.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/records/bulk"):
            return await self.app(scope, receive, send)
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]}

        async def send_closing(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, send_closing)


app = BulkReplies(argilla_app)

gc.freeze()  # last: what importing and patching left behind is never garbage (see the module docstring)

__all__ = ["app"]
