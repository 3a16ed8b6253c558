"""The floor: the least a keyed async pool can do, for apples-to-apples ratios.

A warm hit of the floor is ``async with floor.get(key)`` on a slotted lease
whose ``__aenter__`` does one dict lookup and one integer increment and whose
``__aexit__`` does nothing. No pool can do less work and keep a count, so
"ttlpool at 1.8x the floor" means ttlpool's bookkeeping costs 0.8 of that
bare shape.

For churn (``ttl=0``) the floor calls the factory on entry and the
finalizer on exit and keeps nothing; it is sync or async at construction,
so it never inspects a result.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any, NamedTuple

__all__ = ["FloorChurnPool", "FloorPool", "FloorStats"]


class _FloorEntry:
    __slots__ = ("refs", "resource")

    def __init__(self, resource: object) -> None:
        self.resource = resource
        self.refs = 0


class FloorStats(NamedTuple):
    total_entries: int
    acquisitions: int


class _FloorLease:
    __slots__ = ("_key", "_pool")

    def __init__(self, pool: FloorPool, key: Hashable) -> None:
        self._pool = pool
        self._key = key

    async def __aenter__(self) -> object:
        entry = self._pool.entries[self._key]  # one dict lookup
        entry.refs += 1  # one integer increment
        return entry.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class FloorPool:
    """Cached entries only: ``put`` them, then ``get`` them."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[Hashable, _FloorEntry] = {}

    def put(self, key: Hashable, resource: object) -> None:
        self.entries[key] = _FloorEntry(resource)

    def get(self, key: Hashable) -> _FloorLease:
        return _FloorLease(self, key)

    @property
    def stats(self) -> FloorStats:
        entries = self.entries
        return FloorStats(len(entries), 0)


class _SyncChurnLease:
    __slots__ = ("_key", "_pool", "_resource")

    def __init__(self, pool: FloorChurnPool, key: Hashable) -> None:
        self._pool = pool
        self._key = key
        self._resource: Any = None

    async def __aenter__(self) -> object:
        self._resource = resource = self._pool.factory(self._key)
        return resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.finalizer(self._resource)


class _AsyncChurnLease(_SyncChurnLease):
    __slots__ = ()

    async def __aenter__(self) -> object:
        self._resource = resource = await self._pool.factory(self._key)
        return resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._pool.finalizer(self._resource)


class FloorChurnPool:
    """Create on entry, finalize on exit, keep nothing (the ``ttl=0`` floor)."""

    __slots__ = ("_lease", "factory", "finalizer")

    def __init__(
        self,
        factory: Callable[[Any], Any],
        finalizer: Callable[[Any], Any],
        *,
        is_async: bool,
    ) -> None:
        self.factory = factory
        self.finalizer = finalizer
        self._lease = _AsyncChurnLease if is_async else _SyncChurnLease

    def get(self, key: Hashable) -> _SyncChurnLease:
        return self._lease(self, key)
