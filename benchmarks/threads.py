"""Measurements S1-S3: ``SyncResourcePool`` from plain threads, no event loop.

The floor here is the least a keyed pool for threads does, written the
plain way: a dict and a ``threading.Lock``, and ``with floor.get(key)`` on
a slotted lease whose ``__enter__`` does, under ``with lock:``, one dict
lookup and one integer increment, and whose ``__exit__`` does nothing (the
sync twin of :mod:`benchmarks.floor`). A ``SyncResourcePool`` hit takes the
lock twice (on entry, and again on exit to give the reference back) and
reads the clock on exit; "2x the floor" is about that much more work.
(``lock.acquire()`` with ``try``/``finally: lock.release()`` costs about
half of ``with lock:`` on CPython 3.10-3.13; the floor takes the lock the
way such code is usually written, as the async floor uses ``async with``.)

cachetools' ``TTLCache`` under a ``threading.Lock`` is the other
comparison for a hit: a lookup under a lock, no reference count, nothing
on exit. It is optional (the ``bench`` extra); without it its column says
"skipped" and why.

For churn (``ttl=0``) the floor calls the factory on entry and the
finalizer on exit and keeps nothing (no lock: nothing is shared).

Every variant runs the same loop (``with get(key): pass``), and the
variants take turns repetition by repetition (:func:`interleave_sync`).
The threaded rows start their threads before the clock and release them
together at a barrier; a sample is the time from the first thread's first
lease to the last thread's last lease, divided by all threads' leases:
the pool's throughput, one lease at a time under the GIL (a thread holding
the pool's lock when the interpreter switches threads makes the others
wait for it: the contention of the one-key row).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable, Mapping
from types import TracebackType
from typing import Any

import ttlpool
from benchmarks._impls import Thing, discard, resource
from benchmarks._measure import Results, Sample, interleave_sync, now_ns, quiet_gc
from benchmarks._optional import attr, load
from benchmarks._pin import CpuPin
from benchmarks._settings import Settings
from benchmarks.targets import SHORT, SYNC_CACHE, SYNC_POOL

__all__ = ["SyncFloorChurnPool", "SyncFloorPool", "measure_threads"]

Progress = Callable[[str], None]
Case = Callable[[], Sample]
Get = Callable[[Hashable], Any]

FLOOR = "floor"
#: The variants, in the table's order.
VARIANTS = [SYNC_POOL, FLOOR, SYNC_CACHE]

#: Threads of the threaded rows, and each one's leases per sample, in units
#: of ``settings.batch``: a sample then spans many of the interpreter's
#: thread switches (5 ms apart by default; in --quick, 8 x 2 x 5,000 leases
#: take 50-100 ms on a 2-core machine).
THREADS = 8
PER_THREAD = 2
#: The one-thread rows (S1, S3) split ``settings.batch`` leases into this many
#: short samples, and take ``SPLIT`` times ``settings.reps`` of them: a ratio
#: is taken within a repetition, and a short repetition is less often cut by
#: another process of a busy machine (as the dispatch figures do; on a busy
#: 2-core machine it cut the run-to-run spread of S1's ratio about 3x).
SPLIT = 10
TTL = 30.0
CACHE_TTL = 3600.0
HOT = "hot"


# -- the floor and cachetools, as sync context managers -----------------------


class _FloorEntry:
    __slots__ = ("refs", "resource")

    def __init__(self, resource: object) -> None:
        self.resource = resource
        self.refs = 0


class _FloorLease:
    __slots__ = ("_key", "_pool")

    def __init__(self, pool: SyncFloorPool, key: Hashable) -> None:
        self._pool = pool
        self._key = key

    def __enter__(self) -> object:
        pool = self._pool
        with pool.lock:
            entry = pool.entries[self._key]  # one dict lookup
            entry.refs += 1  # one integer increment
        return entry.resource

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class SyncFloorPool:
    """Cached entries only, under one lock: ``put`` them, then ``get`` them."""

    __slots__ = ("entries", "lock")

    def __init__(self) -> None:
        self.entries: dict[Hashable, _FloorEntry] = {}
        self.lock = threading.Lock()

    def put(self, key: Hashable, resource: object) -> None:
        self.entries[key] = _FloorEntry(resource)

    def get(self, key: Hashable) -> _FloorLease:
        return _FloorLease(self, key)


class _FloorChurnLease:
    __slots__ = ("_key", "_pool", "_resource")

    def __init__(self, pool: SyncFloorChurnPool, key: Hashable) -> None:
        self._pool = pool
        self._key = key
        self._resource: Any = None

    def __enter__(self) -> object:
        self._resource = resource = self._pool.factory(self._key)
        return resource

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.finalizer(self._resource)


class SyncFloorChurnPool:
    """Create on entry, finalize on exit, keep nothing (the ``ttl=0`` floor)."""

    __slots__ = ("factory", "finalizer")

    def __init__(
        self, factory: Callable[[Any], Any], finalizer: Callable[[Any], Any]
    ) -> None:
        self.factory = factory
        self.finalizer = finalizer

    def get(self, key: Hashable) -> _FloorChurnLease:
        return _FloorChurnLease(self, key)


class _CacheLease:
    __slots__ = ("_key", "_pool")

    def __init__(self, pool: _LockedCache, key: Hashable) -> None:
        self._pool = pool
        self._key = key

    def __enter__(self) -> object:
        pool = self._pool
        with pool.lock:
            return pool.cache[self._key]  # TTLCache's lookup (and its clock)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _LockedCache:
    """A cachetools ``TTLCache`` under a ``threading.Lock``."""

    __slots__ = ("cache", "lock")

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.lock = threading.Lock()

    def get(self, key: Hashable) -> _CacheLease:
        return _CacheLease(self, key)


def _locked_cache(keys: list[Hashable]) -> tuple[_LockedCache | None, str | None]:
    """A warm ``TTLCache`` holding ``keys``, or why there is none."""
    cachetools, why = load("cachetools")
    if cachetools is None:
        return None, why
    # A TTLCache's time to live counts from insertion, not from the last
    # lookup: an hour, so that no key of a slow run expires midway.
    cache = attr(cachetools, "TTLCache")(maxsize=1024, ttl=CACHE_TTL)
    for key in keys:
        cache[key] = Thing()
    return _LockedCache(cache), None


# -- the loops ----------------------------------------------------------------


def _leases(get: Get, key: Hashable, n: int) -> int:
    """``n`` sequential leases of ``key``: the loop every figure here times."""
    start = now_ns()
    for _ in range(n):
        with get(key):
            pass
    return now_ns() - start


def _one_thread(group: str, get: Get, key: Hashable, n: int) -> Case:
    def case() -> Sample:
        # No collection first: these loops make no cyclic garbage, and a
        # full collection would take longer than the sample and leave the
        # CPU caches cold for it.
        with quiet_gc(collect=False):
            elapsed = _leases(get, key, n)
        return {group: elapsed / n}

    return case


def _threads(group: str, get: Get, keys: list[Hashable], n: int) -> Case:
    """``len(keys)`` threads, thread ``i`` leasing ``keys[i]`` ``n`` times."""
    count = len(keys)

    def case() -> Sample:
        barrier = threading.Barrier(count)
        starts, ends = [0] * count, [0] * count
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                barrier.wait()
                starts[i] = now_ns()
                _leases(get, keys[i], n)
                ends[i] = now_ns()
            except BaseException as exc:  # reported by the measuring thread
                errors.append(exc)
                barrier.abort()

        workers = [
            threading.Thread(target=run, args=(i,), name=f"bench-sync-{i}")
            for i in range(count)
        ]
        with quiet_gc():
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        if errors:
            raise errors[0]
        return {group: (max(ends) - min(starts)) / (count * n)}

    return case


# -- the groups ---------------------------------------------------------------


def _run_group(
    results: Results,
    settings: Settings,
    say: Progress,
    group: str,
    cases: Mapping[str, Case],
    skipped: Mapping[str, str],
    reps: int,
) -> None:
    say(SHORT[group])
    interleave_sync(results, reps, cases)
    for name, why in skipped.items():
        results.groups[group].skip(name, why)
    results.groups[group].order(VARIANTS)


def _hits(
    results: Results,
    settings: Settings,
    say: Progress,
    group: str,
    keys: list[Hashable],
    n: int,
) -> None:
    """One warm-hit row: one thread on ``keys[0]`` if that is the only key,
    else a thread per item of ``keys`` (the same key repeated: a shared key).
    """
    pool: ttlpool.SyncResourcePool[Hashable, object] = ttlpool.SyncResourcePool(
        resource, finalizer=discard, ttl=TTL, name="bench-sync-hit"
    )
    try:
        distinct = list(dict.fromkeys(keys))
        floor = SyncFloorPool()
        for key in distinct:
            floor.put(key, Thing())
            with pool.get(key):
                pass
        cache, why = _locked_cache(distinct)
        gets: dict[str, Get] = {SYNC_POOL: pool.get, FLOOR: floor.get}
        if cache is not None:
            gets[SYNC_CACHE] = cache.get
        if len(keys) == 1:
            cases = {
                name: _one_thread(group, get, keys[0], n) for name, get in gets.items()
            }
            reps = settings.reps * SPLIT
        else:
            cases = {name: _threads(group, get, keys, n) for name, get in gets.items()}
            reps = settings.reps
        skipped = {} if why is None else {SYNC_CACHE: why}
        _run_group(results, settings, say, group, cases, skipped, reps)
    finally:
        pool.close()


def _churn(results: Results, settings: Settings, say: Progress) -> None:
    pool: ttlpool.SyncResourcePool[Hashable, object] = ttlpool.SyncResourcePool(
        resource, finalizer=discard, ttl=0, name="bench-sync-churn"
    )
    try:
        floor = SyncFloorChurnPool(resource, discard)
        n = max(1, settings.batch // SPLIT)  # as in S1
        cases = {
            SYNC_POOL: _one_thread("sync_churn", pool.get, HOT, n),
            FLOOR: _one_thread("sync_churn", floor.get, HOT, n),
        }
        reps = settings.reps * SPLIT
        _run_group(results, settings, say, "sync_churn", cases, {}, reps)
    finally:
        pool.close()


def measure_threads(
    results: Results, settings: Settings, say: Progress, pin: CpuPin
) -> None:
    """Measurements S1-S3 into ``results``, from this thread and new ones."""
    switch = f"{sys.getswitchinterval() * 1000:g} ms"
    short = max(1, settings.batch // SPLIT)
    sampled = f"{settings.reps * SPLIT} repetitions of {short:,} leases"
    floor_note = (
        "floor: a dict under a threading.Lock, one lookup and one increment "
        "on entry, nothing on exit; cachetools: TTLCache(ttl=3600) lookup "
        f"under a threading.Lock, nothing on exit; {sampled}"
    )
    results.group(
        "sync_hit",
        f"S1. SyncResourcePool warm hit, 1 thread: with pool.get(k), cached key, "
        f"ttl={TTL:g}",
        "ns",
        SYNC_POOL,
    ).note = floor_note
    per_thread = PER_THREAD * settings.batch
    threaded = (
        f"per lease, all threads' leases; {THREADS} threads released at a "
        f"barrier, {per_thread:,} leases each; thread switch interval {switch}; "
        f"{pin.short}"
    )
    results.group(
        "sync_threads_keys",
        f"S2a. SyncResourcePool warm hit, {THREADS} threads, each on its own key, "
        f"ttl={TTL:g}",
        "ns",
        SYNC_POOL,
    ).note = threaded
    results.group(
        "sync_threads_shared",
        f"S2b. SyncResourcePool warm hit, {THREADS} threads on one key (one lock "
        f"contended), ttl={TTL:g}",
        "ns",
        SYNC_POOL,
    ).note = threaded
    results.group(
        "sync_churn",
        "S3. SyncResourcePool churn, ttl=0 (create + finalize each lease)",
        "ns",
        SYNC_POOL,
    ).note = (
        "floor: calls the factory on entry and the finalizer on exit, nothing "
        f"else; {sampled}"
    )
    _hits(results, settings, say, "sync_hit", [HOT], short)
    with pin.applied():
        own_keys: list[Hashable] = [f"key-{i}" for i in range(THREADS)]
        _hits(results, settings, say, "sync_threads_keys", own_keys, per_thread)
        shared: list[Hashable] = [HOT] * THREADS
        _hits(results, settings, say, "sync_threads_shared", shared, per_thread)
    _churn(results, settings, say)
