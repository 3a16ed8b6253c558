"""The optional competitors and tools, each found or skipped with a reason.

Nothing here is faked: a module that does not import gives a column that
says "skipped" and why. ``--without NAME`` (a CLI flag) makes a module
count as missing, which is how the skip path is exercised on a machine
that has everything installed.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType
from typing import Any

__all__ = ["OPTIONAL", "describe", "load", "pretend_missing", "version_of"]

#: Module to import for each optional name (``worker`` is ttlpool's own
#: adapter, which may not exist yet in a checkout).
OPTIONAL = {
    "wool": "wool.runtime.resourcepool",
    "uvloop": "uvloop",
    "anyio": "anyio.from_thread",
    "asgiref": "asgiref.sync",
    "matplotlib": "matplotlib",
    "cachetools": "cachetools",
    "worker": "ttlpool.worker",
}

_DISTRIBUTION = {"worker": "ttlpool"}

_missing_on_purpose: set[str] = set()
_cache: dict[str, tuple[ModuleType | None, str | None]] = {}


def pretend_missing(names: set[str]) -> None:
    """Treat these optional names as not installed (``--without``)."""
    unknown = names - set(OPTIONAL)
    if unknown:
        raise ValueError(f"--without: unknown name(s) {sorted(unknown)}")
    _missing_on_purpose.clear()
    _missing_on_purpose.update(names)
    _cache.clear()


def load(name: str) -> tuple[ModuleType | None, str | None]:
    """The module for ``name``, or ``None`` with the reason it is skipped."""
    if name in _missing_on_purpose:
        return None, f"{name} skipped (--without {name})"
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(OPTIONAL[name]), None
        except Exception as exc:  # ImportError, or a module that breaks on import
            why = f"{type(exc).__name__}: {exc}"
            _cache[name] = None, f"{name} not available ({why})"
    return _cache[name]


def attr(module: ModuleType, name: str) -> Any:
    """An attribute of an optional module (typed ``Any`` on purpose)."""
    return getattr(module, name)


def version_of(name: str) -> str | None:
    try:
        return metadata.version(_DISTRIBUTION.get(name, name))
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict[str, str]:
    """Each optional name with its version or the reason it is skipped."""
    described: dict[str, str] = {}
    for name in OPTIONAL:
        module, why = load(name)
        if module is None:
            described[name] = why or "skipped"
        else:
            described[name] = version_of(name) or "installed"
    return described
