"""The ``cleanloop`` command line.

Built on click directly: typer 0.9 (the newest that argilla-server 2.8 allows)
cannot parse options with the click release that huggingface_hub needs.
Each command offers the options of the :class:`~cleanloop.config.Config` groups it uses
(``--learning-rate`` of ``[training]``, ``--dataset`` of ``[data]``...), generated from the dataclasses.
Each ``cli/<area>.py`` module adds its commands to :data:`app` when imported.
"""

from __future__ import annotations

import os
import sys

import click

from cleanloop.cli import active  # noqa: F401
from cleanloop.cli import argilla  # noqa: F401  (registers commands)
from cleanloop.cli import core  # noqa: F401  (registers commands)
from cleanloop.cli import flag  # noqa: F401
from cleanloop.cli import loop  # noqa: F401
from cleanloop.cli import predict  # noqa: F401
from cleanloop.cli.options import app
from cleanloop.errors import CleanloopError

__all__ = ["app", "main"]


def main() -> None:
    # what cleanloop writes (models, scores, journal, versions, the Argilla home) and every process
    # it starts is the user's alone: files 0600, folders 0700
    os.umask(0o077)
    try:
        app(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing half-written was kept", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CleanloopError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
