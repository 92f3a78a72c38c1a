"""Every example in a docstring runs: the doctests of every cleanloop module pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest


ENTRY_POINTS = ("__main__", "_app", "_serve", "_worker")  # a server process's entry: importing one sets it up


def _modules() -> list[str]:
    names = []
    for pkg in ("cleanloop", "cleanloop.model", "cleanloop.loops", "cleanloop.labeling"):
        path = importlib.import_module(pkg).__path__
        names += [m.name for m in pkgutil.walk_packages(path, pkg + ".") if m.name.rsplit(".", 1)[1] not in ENTRY_POINTS]
    return sorted(set(names))


MODULES = _modules()


def test_the_modules_are_found():
    assert {"cleanloop.loops.signals", "cleanloop.model.train", "cleanloop.labeling.journal"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"
