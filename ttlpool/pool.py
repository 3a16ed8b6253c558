"""``ResourcePool`` and ``Resource``: the public async API.

What lives here: the arguments a pool is built with, checked where they
enter; the lease (:class:`Resource`) and its hot path; statistics; and the
fork hook. Everything a pool does across event loops lives in
:class:`ttlpool._partitions.Partitions`, which each pool owns one of and
which each lease reads its loop's partition from (``parts``, one dict
lookup: see that module for who touches what).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from ttlpool import _clear
from ttlpool._checks import (
    check_callable,
    check_key,
    check_max_idle,
    check_seconds,
    check_ttl,
    unhashable,
)
from ttlpool._core import Entry
from ttlpool._jobs import ErrorHook, wait_finalizations
from ttlpool._partition import REAP_SLICE, Partition
from ttlpool._partitions import TOTALS, Partitions
from ttlpool.clock import Clock, MonotonicClock
from ttlpool.stats import PoolStats

__all__ = ["REAP_SLICE", "ErrorHook", "Resource", "ResourcePool"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: A lease's ``_entry`` while its slow path awaits the acquire.
_ENTERING: Any = object()
_get_running_loop = asyncio.get_running_loop


class Resource(Generic[T]):
    """One lease of a pooled resource: a single-use async context manager.

    Entering acquires the key's resource (creating it if needed) and returns
    it; leaving releases exactly that acquisition, whatever the resource's
    truth value. A lease belongs to the entry it acquired: if ``clear``
    retired that entry, leaving is a no-op and never touches a newer entry
    of the same key. Entering twice, or leaving before entering or twice,
    raises ``RuntimeError``. Leaving never swallows the body's exception.
    """

    # ``_entry``: None (new), _ENTERING, then the entry acquired, for good.
    # ``_part``: unset until entered (one store fewer per lease on the hot
    # path), the partition while entered, None once left.
    __slots__ = ("_entry", "_key", "_map", "_part")

    def __init__(self, partitions: Partitions[Any, T], key: Hashable) -> None:
        self._map = partitions
        self._key = key
        self._entry: Entry[Any, T] | None = None
        self._part: Partition[Any, T] | None

    async def __aenter__(self) -> T:
        if self._entry is not None:
            raise RuntimeError(
                "Cannot re-acquire a resource that has already been acquired "
                f"(get({self._key!r}): a lease can be entered only once)"
            )
        partitions, key = self._map, self._key
        loop = _get_running_loop()
        part = partitions.parts.get(loop)
        if part is not None:
            try:
                entry = part.ledger.hit(key)
            except TypeError:
                raise unhashable("get", key) from None
            if entry is not None:
                self._part = part
                self._entry = entry
                return entry.resource
        self._entry = _ENTERING
        try:
            part, found = partitions.start_acquire(key, loop, "get", part)
            if isinstance(found, Entry):
                entry = found
            else:
                part, entry = await partitions.wait_for(part, found, key, loop, "get")
        except BaseException:
            self._entry = None
            raise
        self._part = part
        self._entry = entry
        return entry.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            part = self._part
        except AttributeError:  # never entered
            part = None
        if part is None:
            raise RuntimeError(
                "Cannot release a resource that "
                f"{'has already been released' if self._left() else 'was not acquired'}"
                f" (get({self._key!r}): a lease can be left only once, after entering)"
            )
        self._part = None
        entry: Entry[Any, T] = self._entry  # type: ignore[assignment]
        if exc_type is GeneratorExit:  # its coroutine is being closed: no await
            self._map.release_from_anywhere(part, entry)
            return
        action = part.ledger.release(entry, part.now())
        if action:
            tasks = part.after_release(entry, action)
            if tasks:  # a sync finalizer leaves nothing to wait for
                await wait_finalizations(tasks)

    def _left(self) -> bool:
        return isinstance(self._entry, Entry) and getattr(self, "_part", 0) is None

    def __repr__(self) -> str:
        entry = self._entry
        state = (
            "new"
            if entry is None
            else "entering"
            if entry is _ENTERING
            else "left"
            if self._left()
            else "entered"
        )
        return f"<Resource key={self._key!r} {state}>"


class ResourcePool(Generic[K, T]):
    """Keyed, reference-counted resources kept warm for an idle time-to-live.

    ``factory(key)`` makes a key's resource and ``finalizer(resource)``
    retires it; either may be sync or return any awaitable, which is
    awaited. Concurrent acquirers of a missing key share one factory call,
    run with no lock held. An entry nobody holds stays warm for ``ttl``
    seconds (``0``: finalized at its last release; ``None`` or ``math.inf``:
    until ``expire``, ``max_idle``, ``clear`` or ``aclose``), then the pool
    finalizes it by itself. ``max_idle`` bounds the idle entries; the one
    released longest ago goes first. A finalizer, once started, runs to its
    end, whoever waits for it and whatever happens to them.

    Errors the pool catches are logged on the ``ttlpool`` logger, counted in
    :attr:`stats` and passed to ``on_error(exception, operation, key)``.

    By default every event loop has its own entries (``per_loop=True``), as
    most asyncio resources belong to the loop that made them; with
    ``per_loop=False`` all loops share them. ``clock`` replaces the time
    source and timer, for tests (:class:`ttlpool.testing.ManualClock`).
    Constructing a pool needs no running event loop.
    """

    __slots__ = ("__weakref__", "_map", "_per_loop", "_ttl")

    @overload
    def __init__(
        self,
        factory: Callable[[K], Awaitable[T]],
        *,
        finalizer: Callable[[T], object] | None = None,
        ttl: float | None = 0.0,
        max_idle: int | None = None,
        on_error: ErrorHook | None = None,
        per_loop: bool = True,
        clock: Clock | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        factory: Callable[[K], T],
        *,
        finalizer: Callable[[T], object] | None = None,
        ttl: float | None = 0.0,
        max_idle: int | None = None,
        on_error: ErrorHook | None = None,
        per_loop: bool = True,
        clock: Clock | None = None,
    ) -> None: ...

    def __init__(
        self,
        factory: Callable[[K], T | Awaitable[T]],
        *,
        finalizer: Callable[[T], object] | None = None,
        ttl: float | None = 0.0,
        max_idle: int | None = None,
        on_error: ErrorHook | None = None,
        per_loop: bool = True,
        clock: Clock | None = None,
    ) -> None:
        where = "ResourcePool()"
        self._ttl = check_ttl(ttl, where)
        check_callable(factory, "factory", where, optional=False)
        check_callable(finalizer, "finalizer", where, optional=True)
        check_callable(on_error, "on_error", where, optional=True)
        if not isinstance(cast(object, per_loop), bool):
            raise TypeError(f"{where}: per_loop must be a bool, not {per_loop!r}")
        self._per_loop = per_loop
        self._map: Partitions[K, T] = Partitions(
            factory=factory,
            finalizer=finalizer,
            on_error=on_error,
            clock=clock if clock is not None else MonotonicClock(),
            ttl=self._ttl,
            max_idle=check_max_idle(max_idle, where),
            per_loop=per_loop,
        )

    if not TYPE_CHECKING:

        def __class_getitem__(cls, params):
            # wool's pool is generic in the resource alone: ResourcePool[Conn]
            # there means ResourcePool[Any, Conn] here, so annotations that
            # are evaluated at run time keep working after the switch.
            if not isinstance(params, tuple):
                params = (Any, params)
            return super().__class_getitem__(params)

    # -- public API ----------------------------------------------------------

    @property
    def ttl(self) -> float:
        """The idle time-to-live in seconds (``math.inf`` for never)."""
        return self._ttl

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._map.closed

    def get(self, key: K) -> Resource[T]:
        """A single-use lease of ``key``'s resource, for ``async with``.

        Raises ``TypeError`` at once if ``key`` is unhashable.
        """
        try:
            hash(key)  # inline: this is the hot path
        except TypeError:
            raise unhashable("get", key) from None
        return Resource(self._map, key)

    async def acquire(self, key: K) -> T:
        """Acquire ``key``'s resource, creating it on a miss.

        Pair every acquire with one :meth:`release` of the same key on the
        same event loop, or use :meth:`get`.
        """
        loop = _get_running_loop()
        partitions = self._map
        part = partitions.parts.get(loop)
        try:
            entry = part.ledger.hit(key) if part is not None else None
        except TypeError:
            raise unhashable("acquire", key) from None
        if part is None or entry is None:
            part, found = partitions.start_acquire(key, loop, "acquire", part)
            if isinstance(found, Entry):
                entry = found
            else:
                part, entry = await partitions.wait_for(
                    part, found, key, loop, "acquire"
                )
        part.ledger.hold(entry)
        return entry.resource

    async def release(self, key: K) -> None:
        """Release one acquisition of ``key``.

        A key with no entry is a no-op; a key whose entry holds no reference
        raises ``ValueError``. At the last release the entry is finalized
        within this call (``ttl == 0`` or marked by :meth:`expire`; if the
        caller is cancelled meanwhile, the finalizer still runs to its end
        first) or becomes idle until its deadline.
        """
        part = self._map.parts.get(_get_running_loop())
        if part is None:
            check_key(key, "release")
            return
        try:
            entry, action = part.ledger.release_key(key, part.now())
        except TypeError:
            raise unhashable("release", key) from None
        if entry is not None and action:
            tasks = part.after_release(entry, action)
            if tasks:
                await wait_finalizations(tasks)

    async def expire(self, key: K) -> None:
        """Retire ``key`` in every event loop's entries, draining leases first.

        An idle entry is finalized now and this returns after its finalizer
        (another loop's entry on that loop). A referenced entry, or one
        being created, is marked: its last release finalizes it, unless it
        is acquired again first. Unknown keys are a no-op. An event loop
        that is stopped (not closed) in another thread retires the key when
        it runs again; this does not wait for it.
        """
        check_key(key, "expire")
        await _clear.expire(self._map, key)

    async def clear(self, *, timeout: float | None = None) -> None:
        """Finalize every entry of every event loop now, referenced or not.

        Repeats, generation after generation, until nothing it found or
        that appeared while it ran is left: finalizers may acquire other
        keys, and creations in flight finish and are finalized in turn.
        Finalizers run concurrently, each loop's on that loop while it runs
        (a closed loop's on this one). An ``Exception`` from one is reported
        and the rest go on; a ``BaseException`` is re-raised once every
        entry is evicted. Holders keep their objects; their later release is
        a no-op. Called from inside a factory or finalizer of this pool, it
        does not wait for that creation or finalization itself.

        An event loop that is stopped but not closed in another thread (it
        may run again) clears its own entries when it runs again: this does
        not wait for it. Raises ``TimeoutError`` naming what is left if
        ``timeout`` seconds pass first.
        """
        await _clear.clear(
            self._map, check_seconds(timeout, "timeout", "clear"), "clear"
        )

    async def aclose(self) -> None:
        """Close the pool for good, then :meth:`clear` it.

        Every later acquire raises :class:`PoolClosedError`; releases of
        outstanding leases become no-ops. Returns once every finalizer in
        flight has ended, except on event loops that are stopped (not
        closed) in other threads: their entries are finalized when each
        runs again, and a warning names them. Idempotent.
        """
        self._map.close()
        await _clear.clear(self._map, None, "aclose")

    async def __aenter__(self) -> ResourcePool[K, T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def stats(self) -> PoolStats:
        """A snapshot of gauges and running totals over every event loop.

        O(number of event loops); safe from any thread. Entries left by a
        loop that closed count until a pool operation on a live loop (a
        miss, a reap, ``expire``, ``clear`` or ``aclose``) finalizes them.
        """
        partitions = self._map
        with partitions.lock:
            totals = dict(partitions.retired)
            ledgers = partitions.ledgers()
        gauges = dict.fromkeys(_GAUGES, 0)
        for ledger in ledgers:
            for name, attr in TOTALS.items():
                totals[name] += getattr(ledger, attr)
            gauges["total_entries"] += len(ledger.entries)
            gauges["referenced_entries"] += ledger.referenced
            gauges["idle_entries"] += len(ledger.idle)
            gauges["creating"] += len(ledger.creating)
            gauges["pending_cleanup"] += ledger.pending_cleanup_count()
        return PoolStats(**gauges, **totals, errors=partitions.settings.errors)

    @property
    def pending_cleanup(self) -> dict[K, float | None]:
        """Each key with pending cleanup: its idle deadline (on the pool's
        clock, ``time.monotonic`` by default), or ``None`` while finalizing."""
        with self._map.lock:
            ledgers = self._map.ledgers()
        pending: dict[K, float | None] = {}
        for ledger in ledgers:
            pending.update(ledger.pending_cleanup())
        return pending

    def __len__(self) -> int:
        with self._map.lock:
            ledgers = self._map.ledgers()
        return sum(len(ledger.entries) for ledger in ledgers)

    def __contains__(self, key: object) -> bool:
        check_key(key, "contains (`key in pool`)")
        with self._map.lock:
            ledgers = self._map.ledgers()
        return any(key in ledger.entries for ledger in ledgers)

    def __bool__(self) -> bool:
        # A pool is a pool, empty or not: `if pool:` must not skip an empty one.
        return True

    def __repr__(self) -> str:
        s = self.stats
        state = "closed" if self._map.closed else "open"
        return (
            f"<ResourcePool {state} entries={s.total_entries} "
            f"referenced={s.referenced_entries} idle={s.idle_entries} "
            f"creating={s.creating} ttl={self._ttl} "
            f"{'per-loop' if self._per_loop else 'shared'}>"
        )


_GAUGES = (
    "total_entries",
    "referenced_entries",
    "idle_entries",
    "pending_cleanup",
    "creating",
)
