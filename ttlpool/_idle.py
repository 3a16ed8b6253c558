"""The idle entries of a ledger, in release order, and their deadlines.

:class:`Entry` is one key's record; :class:`IdleOrder` (the base of
:class:`~ttlpool._core.Ledger`) keeps the idle ones in the order of their
last release, so that the front is always the next to expire and the one
released longest ago, with no work on a hit and O(1) on a release:

- ``queue`` is a deque of entries appended at each release. An entry
  acquired again stays where it was: its occurrence goes *stale*, as does
  every earlier occurrence of an entry released again (``entry.queued``
  counts its occurrences; the last one is the valid one). Stale occurrences
  are dropped when the front reaches them, or by a compaction once they
  outnumber the idle entries (O(1) amortized). An entry released again
  while it is last in the queue keeps its place (a warm key costs nothing).
- Deadlines are ``now + ttl`` rounded up to a multiple of ``1 / GRID``
  seconds, and releases within one grid step share one float object: an
  idle entry's deadline costs no memory of its own in a burst.

Nothing here knows about event loops or threads; the owner of the ledger
is the owner of its idle order (see :mod:`ttlpool._core`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

__all__ = ["GRID", "Entry", "IdleOrder"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: Idle deadlines are rounded up to a multiple of ``1 / GRID`` seconds.
GRID: Final = 1024.0

_INF: Final = math.inf
_ceil = math.ceil

#: How many stale occurrences the queue may hold beyond one per idle entry
#: before it is compacted.
_SLACK: Final = 32


class Entry(Generic[K, T]):
    """One key's resource, its reference count and its idle deadline.

    Five slots and nothing else, since a pool holds one per key: whether it
    is marked by ``expire`` and how many of its references were taken by
    key live in the ledger (few entries have either).
    """

    __slots__ = ("deadline", "key", "queued", "refs", "resource")

    def __init__(self, key: K, resource: T, refs: int) -> None:
        self.key = key
        self.resource = resource
        #: Leases held; -1 once evicted.
        self.refs = refs
        #: When the entry, idle, expires (``_INF``: never).
        self.deadline = _INF
        #: Its occurrences in the ledger's release queue.
        self.queued = 0

    @property
    def live(self) -> bool:
        """Not evicted: it may still be handed out."""
        return self.refs >= 0

    def __repr__(self) -> str:
        state = f"refs={self.refs}" if self.refs >= 0 else "evicted"
        return f"<Entry {self.key!r} {state}>"


class IdleOrder(Generic[K, T]):
    """Idle entries in release order (see the module doc)."""

    __slots__ = (
        "idle_count",
        "last_deadline",
        "queue",
        "reusable",
        "reuse_before",
        "timer_deadline",
        "ttl",
        "ttl_is_zero",
    )

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.ttl_is_zero = ttl == 0
        #: Idle entries in release order, with stale occurrences.
        self.queue: deque[Entry[K, T]] = deque()
        self.idle_count: int = 0
        #: The latest deadline handed out: releases within its grid step
        #: share it.
        self.last_deadline: float = -_INF
        #: The deadline the driver has a timer armed for (``None``: none).
        self.timer_deadline: float | None = None
        #: Whether a release may take the shortcut below (the ledger says).
        self.reusable = False
        #: A release at ``now <= reuse_before`` of the entry last in the
        #: queue needs nothing but its count, its idle count and
        #: ``last_deadline`` as its deadline: no entry is marked to go at
        #: its release, a timer is armed (or none is needed: an infinite
        #: ``ttl``, and ``inf`` here), and that deadline is at least
        #: ``now + ttl``. ``-inf`` when that may not hold; the ledger sets
        #: it after each slow release.
        self.reuse_before = -_INF

    def queue_idle(self, entry: Entry[K, T], now: float) -> float:
        """``entry`` just became idle at ``now``: give it its deadline and
        its place at the back of the order; return the deadline."""
        deadline = now + self.ttl
        if deadline <= self.last_deadline:  # in the same grid step: share it
            deadline = self.last_deadline
        else:
            if deadline != _INF:
                deadline = _ceil(deadline * GRID) / GRID
            self.last_deadline = deadline
        entry.deadline = deadline
        queue = self.queue
        if not queue or queue[-1] is not entry:  # else it is last already
            queue.append(entry)
            entry.queued += 1
            if len(queue) > 2 * self.idle_count + _SLACK:
                self._compact()
        return deadline

    def next_wake(self) -> float | None:
        """When the timer must wake next: the front's deadline (``None``:
        nothing idle expires)."""
        front = self._front()
        if front is None or front.deadline == _INF:
            return None
        return front.deadline

    def timer_lost(self, now: float) -> float | None:
        """The armed timer can no longer fire (its loop closed): re-arm for now."""
        self.timer_deadline = None
        if self.next_wake() is not None:
            self.timer_deadline = now
        return self.timer_deadline

    def timer_gone(self) -> None:
        """The armed timer was cancelled with its loop: none is armed now."""
        self.timer_deadline = None

    def forget_order(self) -> None:
        """No entry is idle any more (all were evicted, but one a creation
        validates: it may come back, and must find no place of its own)."""
        for entry in self.queue:
            entry.queued = 0
        self.queue.clear()
        self.idle_count = 0
        self.reuse_before = -_INF

    def _front(self) -> Entry[K, T] | None:
        """The idle entry released longest ago, dropping the stale queue
        occurrences before it; ``None`` if nothing is idle."""
        queue = self.queue
        while queue:
            entry = queue[0]
            if entry.queued > 1:  # released again since: a later one counts
                queue.popleft()
                entry.queued -= 1
            elif entry.refs != 0:  # acquired again since, or evicted
                queue.popleft()
                entry.queued = 0
            else:
                return entry
        return None

    def _pop_front(self) -> Entry[K, T]:
        """Take the front idle entry out of the queue (there is one)."""
        entry = self._front()
        assert entry is not None
        self.queue.popleft()
        entry.queued = 0
        return entry

    def _compact(self) -> None:
        """Drop every stale occurrence, keeping release order: O(queue)."""
        kept: deque[Entry[K, T]] = deque()
        for entry in self.queue:
            if entry.queued > 1:
                entry.queued -= 1
            elif entry.refs != 0:
                entry.queued = 0
            else:
                kept.append(entry)
        self.queue = kept

    @property
    def idle(self) -> dict[K, Entry[K, T]]:
        """The idle entries, by key, in release order: O(queue), from a copy
        (another thread may read this while the owner works)."""
        queue = self.queue.copy()  # one step: no thread interleaves it
        seen: set[Entry[K, T]] = set()
        last: list[Entry[K, T]] = []
        for entry in reversed(queue):  # an entry's last occurrence counts
            if entry.refs == 0 and entry not in seen:
                seen.add(entry)
                last.append(entry)
        return {entry.key: entry for entry in reversed(last)}
