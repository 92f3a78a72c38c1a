"""``cleanloop argilla up | down | status``: the embedded Argilla server for reviewing flagged examples."""

from __future__ import annotations

import click

from cleanloop.cli.options import app, config_options
from cleanloop.config import Config

home_option = click.option(
    "--home", type=click.Path(file_okay=False), default=None,
    help="Embedded Argilla home: its database, credentials (the owner's API key; ARGILLA_API_KEY wins) and logs "
         "(default: $CLEANLOOP_ARGILLA_HOME, else WORKDIR/argilla).",
)


def _echo_processes(st) -> None:
    for name, pid in st.processes.items():
        click.echo(f"  {name:<7} {'pid ' + str(pid) if pid else 'not running'}")
    if st.patches:
        applied = sum(outcome == "applied" for outcome in st.patches.values())
        others = [f"{name} ({outcome})" for name, outcome in st.patches.items() if outcome != "applied"]
        click.echo(f"argilla-server patches: {applied} applied" + (f"; not applied: {', '.join(others)}" if others else ""))


@app.group()
def argilla() -> None:
    """Run Argilla (the annotation server) here, without Docker: up, down, status."""


@argilla.command("up")
@config_options("argilla")
@home_option
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for a healthy server.")
def argilla_up(cfg: Config, home: str | None, timeout: float) -> None:
    """Start Redis, the Argilla server and its worker on 127.0.0.1 and wait until healthy.

    Running again is safe: a running stack keeps running, and its users are made to match the
    config and the CLEANLOOP_ARGILLA_<USER>_PASSWORD / _API_KEY environment.
    """
    from cleanloop.labeling.embedded import credentials, mask, up

    st = up(cfg, home, timeout=timeout)
    if st.started:
        click.echo(f"Argilla is up at {st.url} ({st.seconds:.1f} s); home {st.home}")
    else:
        click.echo(f"Argilla already runs at {st.url}; home {st.home}")
    _echo_processes(st)
    for what in ("created", "updated", "disabled"):
        if st.synced.get(what):
            click.echo(f"users {what}: {', '.join(st.synced[what])}")
    if st.synced.get("webhooks_removed"):
        click.echo(f"removed {len(st.synced['webhooks_removed'])} webhook(s) of review listeners that no longer run")
    users = credentials(cfg, st.home)
    click.echo(f"users (workspace '{cfg.argilla_workspace}'); passwords and API keys in {st.credentials_file}:")
    for c in users.values():
        click.echo(f"  {c.username:<12} {c.role:<10} api key {mask(c.api_key)}  [{c.source}]")


@argilla.command("down")
@config_options("argilla")
@home_option
def argilla_down(cfg: Config, home: str | None) -> None:
    """Stop what 'argilla up' started for this home; the data stays."""
    from cleanloop.labeling.embedded import down, resolve_home

    stopped = down(cfg, home)
    where = resolve_home(cfg, home)
    click.echo(f"stopped {', '.join(stopped)} ({where})" if stopped else f"nothing was running for {where}")


@argilla.command("status")
@config_options("argilla")
@home_option
def argilla_status(cfg: Config, home: str | None) -> None:
    """Say whether the embedded Argilla runs for this home, and where."""
    from cleanloop.labeling.embedded import status

    st = status(cfg, home)
    state = "running" if st.running else ("partly running" if any(st.processes.values()) else "not running")
    click.echo(f"Argilla {state} at {st.url}; API {'healthy' if st.healthy else 'not answering'}; home {st.home}")
    _echo_processes(st)
