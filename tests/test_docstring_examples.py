"""Run the ``Examples:`` blocks of every camegrad_mini module that has them, as doctests.

Modules are found by walking the package (importing a module has no side effects); a module
whose import needs an optional dependency that is missing here is skipped, not failed.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import camegrad_mini

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(camegrad_mini.__path__, prefix="camegrad_mini."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        if any(test.examples for test in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_the_optimizer_package_has_examples() -> None:
    expected = {"camegrad_mini.optim.functional", "camegrad_mini.optim.simplex",
                "camegrad_mini.optim.aggregators", "camegrad_mini.optim.wrapper"}
    assert expected <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    with np.printoptions(legacy=False):  # the examples are written for numpy's default repr
        torch.manual_seed(0)
        failures, tried = doctest.testmod(module, optionflags=FLAGS, report=True, verbose=False)
    assert tried > 0
    assert failures == 0, f"{failures} of {tried} docstring examples failed in {name}"
