"""Every ``>>>`` example in surgery's docstrings runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
from types import ModuleType

import pytest

import surgery

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(surgery.__path__, prefix="surgery.")
)
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        # An integration with a library that is not installed here says so.
        if name.startswith("surgery.integrations."):
            pytest.skip(str(error))
        raise


def test_every_module_is_listed() -> None:
    assert {"surgery._api", "surgery._gate", "surgery._select"} <= set(MODULES)


@pytest.mark.parametrize("name", ["surgery", *MODULES])
def test_docstring_examples_run(name: str) -> None:
    module = _import(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test, out=out.write)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, out.getvalue()


def test_the_examples_of_the_core_verbs_are_found() -> None:
    # Guards the test above against finding nothing and passing vacuously.
    from surgery import _api, _gate, _randomops

    found = {
        test.name.rpartition(".")[2]
        for module in (_api, _gate, _randomops)
        for test in doctest.DocTestFinder().find(module)
        if test.examples
    }
    assert {"find", "strip", "set_dropout", "GatedDropout", "RandomOpCounter"} <= found
