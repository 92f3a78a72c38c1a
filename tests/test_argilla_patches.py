"""The argilla-server patch registry (labeling/embedded/patches.py): its canary, its checks, and the
Starlette changes staying on the app they were made for."""

from __future__ import annotations

import doctest
import json
import logging

import pytest
from fastapi import FastAPI, Request

from cleanloop.errors import CleanloopError
from cleanloop.labeling.embedded import accounts, patches


def test_canary_every_patch_target_is_the_code_it_was_written_for():
    # fails on an argilla-server / FastAPI / Starlette upgrade that touches a patched target:
    # re-read the target, adapt the patch (or drop it), then update its fingerprint
    changed = {name: diffs for name, diffs in patches.check().items() if diffs}
    assert not changed, "patched targets changed:\n" + "\n".join(f"{n}: {'; '.join(d)}" for n, d in changed.items())
    assert len({p.name for p in patches.PATCHES}) == len(patches.PATCHES) == 8


def _probe(sha: str) -> tuple[patches.Patch, list]:
    installed = []
    return patches.Patch("probe", (patches.Target("json", "dumps", sha),), installed.append), installed


def test_a_changed_target_skips_its_patch_with_one_warning_line(caplog, monkeypatch):
    import json as json_module

    monkeypatch.setenv(patches.SWITCH, "on")  # also when the suite runs with the patches off

    good, installed = _probe(patches.fingerprint(json_module.dumps))
    assert patches.apply("app", registry=[good]) == {"probe": "applied"} and installed == ["app"]

    stale, installed = _probe("0123456789abcdef")
    with caplog.at_level(logging.WARNING, logger="cleanloop.argilla.patches"):
        outcome = patches.apply("app", registry=[stale])
    assert installed == [] and outcome["probe"].startswith("skipped: json.dumps changed")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "'probe' skipped" in line and "json.dumps" in line and "\n" not in line

    gone = patches.Patch("gone", (patches.Target("json", "no_such_function", "0123456789abcdef"),), installed.append)
    assert patches.apply("app", registry=[gone])["gone"].startswith("skipped: json.no_such_function is gone")


def test_the_switch_turns_the_optional_patches_off(monkeypatch, tmp_path):
    optional, installed = _probe("0123456789abcdef")  # not even checked when off
    monkeypatch.setenv(patches.SWITCH, "off")
    assert patches.apply("app", tmp_path / "patches.json", registry=[optional]) == {"probe": "off"}
    assert installed == [] and json.loads((tmp_path / "patches.json").read_text()) == {"probe": "off"}
    monkeypatch.setenv(patches.SWITCH, "of")
    with pytest.raises(CleanloopError, match="CLEANLOOP_ARGILLA_PATCHES is 'of'; fix: set it to 'on'"):
        patches.enabled()


def test_starlette_changes_stay_on_the_patched_app():
    from fastapi.testclient import TestClient
    from starlette import requests, responses

    render, json_module = responses.JSONResponse.render, requests.json

    def make() -> FastAPI:
        app = FastAPI()
        sub = FastAPI()

        @sub.post("/echo")
        async def echo(request: Request):
            body = await request.json()
            return {"request": type(request).__name__, "x_is_nan": body["x"] != body["x"], "y": body["y"], "small": 1e-7}

        app.mount("/api", sub)  # as Argilla mounts its API at /api/v1
        return app

    patched, plain = make(), make()
    by_name = {p.name: p for p in patches.PATCHES}
    for name in ("orjson-request-bodies", "orjson-json-responses"):
        by_name[name].install(patched)
    assert responses.JSONResponse.render is render and requests.json is json_module  # Starlette itself untouched

    body = b'{"x": NaN, "y": [1, 2]}'  # NaN: orjson refuses it, the standard library reads it
    got = TestClient(patched).post("/api/echo", content=body, headers={"content-type": "application/json"})
    assert got.status_code == 200 and got.json()["request"] == "OrjsonRequest"
    assert got.json()["x_is_nan"] and got.json()["y"] == [1, 2] and b'"small":1e-7' in got.content  # orjson: 1e-7
    other = TestClient(plain).post("/api/echo", content=body, headers={"content-type": "application/json"})
    assert other.json()["request"] == "Request" and other.json()["x_is_nan"]
    assert b'"small":1e-07' in other.content  # the standard library's spelling


def test_the_test_server_applied_every_patch_or_none_when_switched_off(argilla_server):
    outcome = json.loads((argilla_server.home / "run" / "patches.json").read_text())
    assert set(outcome) == {p.name for p in patches.PATCHES}
    wanted = "applied" if patches.enabled() else "off"
    assert all(outcome[p.name] == wanted for p in patches.PATCHES), outcome

    from click.testing import CliRunner

    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app

    args = ["--workdir", argilla_server.cfg.workdir, "--argilla-url", argilla_server.url, "--home", str(argilla_server.home)]
    shown = CliRunner().invoke(app, ["argilla", "status", *args]).output
    applied = sum(o == "applied" for o in outcome.values())
    assert f"argilla-server patches: {applied} applied" in shown, shown


def test_home_resolution_is_one_rule_for_every_command(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cleanloop.cli  # noqa: F401  (registers the commands)
    from cleanloop.cli.options import app
    from cleanloop.config import Config
    from cleanloop.labeling import argilla_io

    cfg = Config(workdir=str(tmp_path / "work"))
    shared = tmp_path / "shared-home"
    monkeypatch.delenv("ARGILLA_API_KEY", raising=False)
    monkeypatch.delenv(accounts.HOME_ENV, raising=False)
    assert accounts.resolve_home(cfg) == tmp_path / "work" / "argilla"
    monkeypatch.setenv(accounts.HOME_ENV, str(shared))
    assert accounts.resolve_home(cfg) == shared
    assert accounts.resolve_home(cfg, tmp_path / "explicit") == tmp_path / "explicit"  # --home wins

    owner = accounts.credentials(cfg, create=True)["owner"]  # written into the shared home
    assert (shared / "credentials.json").exists() and not (tmp_path / "work" / "argilla").exists()
    assert argilla_io.api_key(cfg) == owner.api_key  # what push, pull and the loops connect with

    commands = [app.commands[name] for name in ("push", "pull", "retrain-loop", "active")]
    commands += app.commands["argilla"].commands.values()
    homes = [[p for p in cmd.params if "--home" in p.opts] for cmd in commands]
    assert all(len(found) == 1 for found in homes)
    assert len({(tuple(found[0].opts), found[0].help, found[0].envvar) for found in homes}) == 1  # one option everywhere
    assert "CLEANLOOP_ARGILLA_HOME" in CliRunner().invoke(app, ["pull", "--help"]).output


def test_accounts_doctests_run():
    assert doctest.testmod(accounts).failed == 0
