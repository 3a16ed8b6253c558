"""When entries retire for age (``max_lifetime``), with no timer per entry.

An entry of a pool with ``max_lifetime`` is a :class:`LifetimeEntry`: it
carries ``retire_at``, drawn at its creation from the last tenth of the
lifetime (entries created together do not retire together). Those times
do not follow release order, so :class:`Lifetimes` keeps them in a heap:
the ledger's one timer wakes for the earlier of the idle front's deadline
and the heap's top, and whatever is due then leaves the heap. Entries that
left the pool some other way stay in the heap until their time comes or a
compaction drops them (once the heap outgrows twice the live entries: O(1)
amortized), so a churn of short-lived entries does not grow it for good.

A pool without ``max_lifetime`` has no :class:`Lifetimes` and plain
five-slot entries: the option costs nothing when off.

Nothing here knows about event loops or threads; the owner of the ledger
is the owner of its lifetimes (see :mod:`ttlpool._core`).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

from ttlpool._idle import Entry

__all__ = ["LifetimeEntry", "Lifetimes"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

_INF: Final = math.inf

#: Entries' lifetimes are drawn from ``(1 - SPREAD) * max_lifetime`` to
#: ``max_lifetime``.
SPREAD: Final = 0.1


class LifetimeEntry(Entry[K, T]):
    """An entry that is no longer handed out from ``retire_at`` on."""

    __slots__ = ("retire_at",)

    retire_at: float


class Lifetimes(Generic[K, T]):
    """The entries of one ledger by the time they retire (see the module doc)."""

    __slots__ = ("heap", "jitter", "max_lifetime", "order")

    def __init__(self, max_lifetime: float, jitter: Callable[[], float]) -> None:
        self.max_lifetime = max_lifetime
        #: A number in ``[0, 1)`` per entry (``random.random``; a test's own).
        self.jitter = jitter
        self.heap: list[tuple[float, int, LifetimeEntry[K, T]]] = []
        self.order = itertools.count()  # ties retire in creation order

    def new_entry(
        self, key: K, resource: T, refs: int, now: float, live: int
    ) -> LifetimeEntry[K, T]:
        """An entry created at ``now``, with its retirement time; ``live``
        is how many entries the ledger holds (for the compaction)."""
        entry: LifetimeEntry[K, T] = LifetimeEntry(key, resource, refs)
        entry.retire_at = now + self.max_lifetime * (1 - SPREAD * self.jitter())
        heap = self.heap
        heapq.heappush(heap, (entry.retire_at, next(self.order), entry))
        if len(heap) > 2 * live + 32:
            heap[:] = [item for item in heap if item[2].refs >= 0]
            heapq.heapify(heap)
        return entry

    def next_due(self) -> float:
        """The earliest retirement time still in the heap (inf: none)."""
        return self.heap[0][0] if self.heap else _INF

    def due(self, now: float, limit: int) -> list[LifetimeEntry[K, T]]:
        """Take out at most ``limit`` entries whose time has come, earliest
        first (the ledger skips those that left the pool already)."""
        heap: list[tuple[float, int, LifetimeEntry[K, T]]] = self.heap
        due: list[LifetimeEntry[K, T]] = []
        while heap and heap[0][0] <= now and len(due) < limit:
            due.append(heapq.heappop(heap)[2])
        return due
