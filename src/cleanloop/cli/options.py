"""Shared CLI plumbing: the config options a command takes (by group), and the root group."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from typing import get_origin

import click

from cleanloop.config import GROUPS, Config, group_fields, group_types, load_config, option_name

# Config's own fields: --workdir on every command, --seed on those that sample, split or train
_SEEDED = ("data", "training", "flagging", "active")


def config_options(*groups: str, fields: tuple[str, ...] = ()):
    """Add ``--config``, ``--workdir`` and one option per field of the named config ``groups``
    (``"data"``, ``"model"``, ... see :data:`cleanloop.config.GROUPS`) and of the single flat
    ``fields``; pass the built Config as ``cfg``. Options come from the dataclass fields: their
    help, type and default (shown, never repeated here). An option whose field is in several of
    the groups (the review wait of ``[review]`` and ``[loop]``) sets it in each.

    Bare ``@config_options`` offers every group.
    """
    if len(groups) == 1 and callable(groups[0]):
        return config_options(*GROUPS)(groups[0])
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown config group(s) {unknown}; known: {', '.join(GROUPS)}")
    defaults = Config()
    params: dict[str, tuple[dataclasses.Field, type, object]] = {}  # option -> (field, type, default)
    targets: dict[str, list[tuple[str, str]]] = {}  # option -> [(group or "", field)]

    def add(group: str, f: dataclasses.Field, typ, default) -> None:
        opt = option_name(f)
        if opt not in params:
            params[opt] = (f, typ, default)
        targets.setdefault(opt, []).append((group, f.name))

    top = {f.name: f for f in dataclasses.fields(Config)}
    add("", top["workdir"], str, defaults.workdir)
    if any(g in _SEEDED for g in groups):
        add("", top["seed"], int, defaults.seed)
    for group in groups:
        types = group_types(group)
        for f in group_fields(group):
            add(group, f, types[f.name], getattr(getattr(defaults, group), f.name))
    for name in fields:
        group = next(g for g in GROUPS if name in group_types(g))
        f = next(f for f in group_fields(group) if f.name == name)
        add(group, f, group_types(group)[name], getattr(getattr(defaults, group), name))

    def decorate(func):
        for i, (opt, (f, typ, default)) in reversed(list(enumerate(params.items()))):
            shown = ", ".join(default) if isinstance(default, list) else default
            help_ = f.metadata.get("help", "") + (" (comma-separated)" if get_origin(typ) is list else "")
            help_ += f"  [default: {shown}]" if shown not in ("", []) else ""
            dest = f"cfg_{i}"
            if typ is bool:
                func = click.option(f"{opt}/--no-{opt[2:]}", dest, default=None, help=help_)(func)
            elif get_origin(typ) is list:
                func = click.option(opt, dest, type=str, default=None, help=help_)(func)
            else:
                choices = f.metadata.get("choices")
                choices = choices() if callable(choices) else choices
                func = click.option(opt, dest, type=click.Choice(list(choices)) if choices else typ, default=None,
                                    help=help_)(func)
        func = click.option(
            "--config", "config_path", type=click.Path(dir_okay=False), default=None,
            help="TOML config (default: ./cleanloop.toml when present).",
        )(func)

        @functools.wraps(func)
        def wrapper(config_path, **kwargs):
            top_values: dict[str, object] = {}
            group_values: dict[str, dict[str, object]] = {}
            for i, opt in enumerate(params):
                value = kwargs.pop(f"cfg_{i}")
                for group, name in targets[opt]:
                    if group:
                        group_values.setdefault(group, {})[name] = value
                    else:
                        top_values[name] = value
            cfg = load_config(config_path, groups=group_values, **top_values)
            return func(cfg=cfg, **kwargs)

        return wrapper

    return decorate


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
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        # transformers' load report of every fine-tune ("classifier.weight MISSING ... newly initialized"):
        # expected for a new classification head, so only with --verbose; its errors still show
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers first logs
        logging.getLogger("transformers").setLevel(logging.ERROR)  # when it already has
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_argilla_client)


def _quiet_argilla_client(record: logging.LogRecord) -> bool:
    """Drop the Argilla SDK client's INFO messages, which it sends to the root logger ("Argilla: ...")."""
    return record.levelno > logging.INFO or record.name != "root" or not str(record.msg).startswith("Argilla: ")


