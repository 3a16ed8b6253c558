"""``SharedPool``: a pool of shared entries leased and given back from any thread.

What lives here: :class:`SharedPool`, a :class:`~ttlpool.ResourcePool`
whose entries every event loop shares (``per_loop=False``), with four
operations that ``WorkerLoopPool`` builds its two-hop dispatch on. A hit
and a release need no event loop: the shared ledger
(:class:`~ttlpool._locked_ledger.LockedLedger`) takes its own lock around
each step, so a plain thread may take a reference and a worker thread may
give it back. What needs a loop is split off: a miss (the factory, waited
for on the caller's loop) and what a release decides beyond the common
case (arming the idle timer, finalizing), which
:meth:`SharedPool.release_from_any_thread` hands back as a callable for
the caller to run on a loop of its choice.

What it must not know: workers, the adapter and its control loop (it
imports none of :mod:`ttlpool._worker_loop`, :mod:`ttlpool._control`,
:mod:`ttlpool.worker`); and the pool's insides beyond the partition map
it reaches as a subclass (``_map``, through the methods of
:class:`~ttlpool._partitions.Partitions` and
:class:`~ttlpool._partition.Partition`).

State that two threads reach
----------------------------

``SharedPool`` holds none of its own. An entry's count lives in the shared
ledger and changes only under that ledger's lock, whichever thread leases
or gives back; a partition (and the timer and jobs it owns) is touched
only on its own loop's thread (the follow-up of a release acts on the
partition of the loop that runs it).
A lease is given back in the process that took it: after ``os.fork()``
the child's pool starts with a new ledger, and none of the child's threads
holds a lease of the parent's (its callers and workers stayed there).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Hashable
from typing import TypeVar

from ttlpool._core import Entry
from ttlpool._locked_ledger import LockedLedger
from ttlpool.clock import Clock
from ttlpool.pool import ResourcePool

__all__ = ["SharedPool"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SharedPool(ResourcePool[K, T]):
    """A :class:`~ttlpool.ResourcePool` whose entries every loop shares,
    with leases that threads without an event loop take and give back.

    A lease here is an :class:`~ttlpool._core.Entry` holding one reference:
    taken by :meth:`lease_from_any_thread` (hits only) or :meth:`lease_here`
    (on an event loop, making the resource on a miss), given back exactly
    once by :meth:`release_from_any_thread`. The pool's public API works as
    for any pool with ``per_loop=False``.
    """

    __slots__ = ()

    def __init__(
        self,
        factory: Callable[[K], T],
        *,
        finalizer: Callable[[T], object] | None,
        ttl: float | None,
        clock: Clock,
        max_lifetime: float | None = None,
    ) -> None:
        super().__init__(
            factory,
            finalizer=finalizer,
            ttl=ttl,
            per_loop=False,
            clock=clock,
            max_lifetime=max_lifetime,
        )

    def _ledger(self) -> LockedLedger[K, T]:
        ledger = self._map.shared
        assert ledger is not None  # per_loop=False: one ledger, shared
        return ledger

    def lease_from_any_thread(self, key: K) -> Entry[K, T] | None:
        """Take one reference of ``key``'s live entry, from any thread.

        Returns ``None`` (taking nothing, counting nothing) on a miss and
        once the pool is closed: the caller then acquires on an event loop
        with :meth:`lease_here`, which counts the miss or the hit. ``key``
        must be hashable. No event loop, no lock but the ledger's.
        """
        if self._map.closed:
            return None
        ledger = self._ledger()
        if ledger.guarded:  # (max_lifetime: a hit needs the time)
            return ledger.hit(key, self._map.settings.clock.now())
        return ledger.hit(key)

    async def lease_here(self, key: K, operation: str) -> Entry[K, T]:
        """On an event loop: take one reference of ``key``'s entry, making
        it on a miss (concurrent acquirers share one factory call).

        The same acquire as ``async with pool.get(key)`` (its counts, its
        single flight, its cancellation: a cancelled waiter holds nothing),
        handing back the entry instead of a lease object. Raises
        :class:`~ttlpool.PoolClosedError` once the pool is closed, naming
        ``operation`` and ``key``, and what the factory raises.
        """
        partitions = self._map
        part, found = partitions.start_acquire(key, operation, None)
        if isinstance(found, Entry):
            return found
        _, entry = await partitions.wait_for(part, found, key, operation)
        return entry

    def release_from_any_thread(self, entry: Entry[K, T]) -> Callable[[], None] | None:
        """Give back one reference of ``entry``, from any thread.

        Returns ``None`` in the common case, where nothing more is to be
        done. Otherwise the release decided more (arm the idle timer, or
        finalize: the entry is out of the pool already, and a later lease
        gets a fresh one), and returns a callable that must run on an event
        loop's thread: it does that on the running loop's partition, and
        the finalizers run on in that partition's jobs (``clear`` and
        ``aclose`` wait for them; they count as finalized when they end).
        An entry that ``clear`` or ``aclose`` evicted while leased gives
        back nothing.
        """
        action = self._ledger().release(entry, self._map.settings.clock.now())
        if not action:
            return None
        return functools.partial(self._after_release_here, entry, action)

    def _after_release_here(self, entry: Entry[K, T], action: int) -> None:
        # A BaseException a sync finalizer raises comes out once every
        # finalizer was started (Partition.finalize).
        part = self._map.home(asyncio.get_running_loop())
        part.after_release(entry, action)
