"""Shared CLI plumbing: the Config options every command takes, and the root group."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from typing import get_origin

import click

from cleanloop.config import Config, field_types, load_config


def config_options(func):
    """Add ``--config`` and one option per Config field; pass the built Config as ``cfg``."""
    types = field_types()
    for f in reversed(dataclasses.fields(Config)):
        opt = "--" + f.name.replace("_", "-")
        typ = types[f.name]
        help_ = f.metadata.get("help", "")
        if typ is bool:
            func = click.option(f"{opt}/--no-{opt[2:]}", f.name, default=None, help=help_)(func)
        elif get_origin(typ) is list:
            func = click.option(opt, f.name, type=str, default=None, help=help_ + " (comma-separated)")(func)
        else:
            func = click.option(opt, f.name, type=typ, default=None, help=help_)(func)
    func = click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), default=None,
        help="TOML config (default: ./cleanloop.toml when present).",
    )(func)

    @functools.wraps(func)
    def wrapper(config_path, **kwargs):
        names = {f.name for f in dataclasses.fields(Config)}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        cfg = load_config(config_path, **overrides)
        return func(cfg=cfg, **kwargs)

    return wrapper


def writes_workdir(func):
    """Hold the workdir's write lock (:meth:`cleanloop.workdir.Workdir.lock`) while the command runs.

    Put it right above the function, below the option decorators: it needs the built ``cfg``.
    Under ``accelerate launch`` only the main process (rank 0, the one that saves) takes it.
    """

    @functools.wraps(func)
    def wrapper(cfg: Config, **kwargs):
        from cleanloop.workdir import Workdir

        if int(os.environ.get("RANK", "0")) > 0:
            return func(cfg=cfg, **kwargs)
        with Workdir.of(cfg).lock(click.get_current_context().command_path):
            return func(cfg=cfg, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="cleanloop")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def app(verbose: bool) -> None:
    """cleanloop: find and fix wrong labels in text data, with a model and annotators in Argilla."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr, force=True
    )
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # the Argilla SDK logs every field and metadata property it creates at INFO, and its client
    # "Logged in as ..." on the root logger: only with --verbose
    logging.getLogger("argilla").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_argilla_client)


def _quiet_argilla_client(record: logging.LogRecord) -> bool:
    """Drop the Argilla SDK client's INFO messages, which it sends to the root logger ("Argilla: ...")."""
    return record.levelno > logging.INFO or record.name != "root" or not str(record.msg).startswith("Argilla: ")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.umask(0o077)  # what cleanloop and the processes it starts create is the user's only: files 0600, folders 0700


