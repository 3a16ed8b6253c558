"""The package's layout: imports point one way, and modules stay small.

DESIGN.md: modules split by concern, imports pointing down one list, no
cycles; a module that others import never imports them back, not even for
a private helper (under ``TYPE_CHECKING`` included). Around 450 lines is a
soft limit for a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ttlpool

PACKAGE = Path(ttlpool.__file__).parent

#: Every module, each importing only modules above it in this list.
LAYERS = [
    "errors",
    "stats",
    "clock",
    "testing",
    "_checks",
    "_aio",
    "_idle",
    "_lifetime",
    "_entries",
    "_core",
    "_locked_ledger",
    "_snapshot",
    "_handover",
    "_jobs",
    "_driver",
    "_finalizer",
    "_partition",
    "_partitions",
    "_clear",
    "_leaks",
    "_lease",
    "pool",
    "_shared_pool",
    "drain",
    "_worker_loop",
    "_requests",
    "_control",
    "worker",
    "_reaper",
    "_threads",
    "sync",
    "__init__",
]

#: The soft limit, with a little room: a module past it is doing two jobs.
MAX_LINES = 460


def _modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


def _imports(module: str) -> set[str]:
    """The ttlpool modules ``module`` imports, wherever the import stands."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "ttlpool":  # from ttlpool import _clear
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("ttlpool."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ttlpool."):
                    found.add(alias.name.split(".")[1])
    return found & set(_modules())


def test_every_module_has_a_place_in_the_layers() -> None:
    missing = sorted(set(_modules()) - set(LAYERS))
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"


@pytest.mark.parametrize("module", _modules())
def test_a_module_imports_only_modules_above_it(module: str) -> None:
    rank = {name: index for index, name in enumerate(LAYERS)}
    upward = sorted(
        name for name in _imports(module) if rank.get(name, -1) >= rank.get(module, 0)
    )
    assert not upward, f"ttlpool.{module} imports modules at or below it: {upward}"


@pytest.mark.parametrize("module", _modules())
def test_a_module_stays_under_the_soft_size_limit(module: str) -> None:
    lines = len((PACKAGE / f"{module}.py").read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"ttlpool/{module}.py has {lines} lines"
