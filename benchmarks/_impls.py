"""The pools under test, behind the one shape the measurements use.

ttlpool's and wool's ``ResourcePool`` take the same constructor
(``factory, *, finalizer=None, ttl=...``) and both hand out leases with
``pool.get(key)``, so every measurement runs the very same code against
each; only closing differs (``aclose`` / ``clear``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ttlpool
from benchmarks._optional import attr, load

__all__ = [
    "PoolMaker",
    "Thing",
    "close_pool",
    "discard",
    "discard_async",
    "pool_makers",
    "resource",
    "resource_async",
]

#: ``maker(factory, finalizer=..., ttl=...)`` -> a pool with ``get(key)``.
PoolMaker = Callable[..., Any]


def pool_makers() -> tuple[dict[str, PoolMaker], dict[str, str]]:
    """The pool classes to measure, and the skipped ones with their reason."""
    makers: dict[str, PoolMaker] = {"ttlpool": ttlpool.ResourcePool}
    skipped: dict[str, str] = {}
    wool, why = load("wool")
    if wool is not None:
        makers["wool"] = attr(wool, "ResourcePool")
    else:
        skipped["wool"] = why or "wool skipped"
    return makers, skipped


async def close_pool(pool: Any) -> None:
    """Finalize what a pool still holds (ttlpool: ``aclose``; wool: ``clear``)."""
    if hasattr(pool, "aclose"):
        await pool.aclose()
    elif hasattr(pool, "clear"):
        await pool.clear()


class Thing:
    """A resource: truthy (wool releases only truthy resources), tiny."""

    __slots__ = ()


def resource(key: object) -> object:
    """A sync factory."""
    return Thing()


def discard(thing: object) -> None:
    """A sync finalizer."""


async def resource_async(key: object) -> object:
    """An async factory (a coroutine function)."""
    return Thing()


async def discard_async(thing: object) -> None:
    """An async finalizer (a coroutine function)."""
