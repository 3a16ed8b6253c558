"""``ResourcePool`` and ``Resource``: the public async API.

What lives here: the arguments a pool is built with, checked where they
enter; the lease (:class:`Resource`) and its hot path; statistics; and the
fork hook. Everything a pool does across event loops lives in
:class:`ttlpool._partitions.Partitions`, which each pool owns one of and
which each lease reads its loop's partition from (``parts``, one dict
lookup: see that module for who touches what).
"""

from __future__ import annotations

import weakref
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
from ttlpool._leaks import warn_unclosed
from ttlpool._lease import Resource
from ttlpool._partition import REAP_SLICE
from ttlpool._partitions import Partitions
from ttlpool._snapshot import snapshot
from ttlpool.clock import Clock, MonotonicClock
from ttlpool.stats import PoolStats, RemovalCause

__all__ = ["REAP_SLICE", "ErrorHook", "Resource", "ResourcePool"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


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

    Lifecycle options, off by default and free when off (SPEC 10):
    ``validate(resource)`` (sync or async) is asked before an idle entry is
    handed out again, and a false answer or an exception retires it (cause
    ``INVALID``) for a new one, one validation at a time per key;
    ``max_lifetime`` seconds after its creation (drawn from the last tenth)
    an entry is no longer handed out, and leaves at its last release;
    ``on_remove(key, resource, cause)`` runs before each finalizer with a
    :class:`~ttlpool.RemovalCause`; ``leak_timeout`` seconds after a lease
    was entered without being left, a warning names its key and the stack
    that acquired it (and a lease or pool collected while holding entries
    emits a ``ResourceWarning``).

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
        validate: Callable[[T], bool | Awaitable[bool]] | None = None,
        max_lifetime: float | None = None,
        on_remove: Callable[[K, T, RemovalCause], object] | None = None,
        leak_timeout: float | None = None,
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
        validate: Callable[[T], bool | Awaitable[bool]] | None = None,
        max_lifetime: float | None = None,
        on_remove: Callable[[K, T, RemovalCause], object] | None = None,
        leak_timeout: float | None = None,
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
        validate: Callable[[T], bool | Awaitable[bool]] | None = None,
        max_lifetime: float | None = None,
        on_remove: Callable[[K, T, RemovalCause], object] | None = None,
        leak_timeout: float | None = None,
    ) -> None:
        where = "ResourcePool()"
        self._ttl = check_ttl(ttl, where)
        check_callable(factory, "factory", where, optional=False)
        check_callable(finalizer, "finalizer", where, optional=True)
        check_callable(on_error, "on_error", where, optional=True)
        check_callable(validate, "validate", where, optional=True)
        check_callable(on_remove, "on_remove", where, optional=True)
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
            validate=validate,
            max_lifetime=check_seconds(
                max_lifetime, "max_lifetime", where, positive=True
            ),
            on_remove=on_remove,
            leak_timeout=check_seconds(
                leak_timeout, "leak_timeout", where, positive=True
            ),
        )
        if leak_timeout is not None:
            weakref.finalize(self, warn_unclosed, self._map).atexit = False

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
        partitions = self._map
        part = partitions.current()
        try:
            entry = part.ledger.hit(key) if part is not None else None
        except TypeError:
            raise unhashable("acquire", key) from None
        if part is None or entry is None:
            part, found = partitions.start_acquire(key, "acquire", part)
            if isinstance(found, Entry):
                entry = found
            else:
                part, entry = await partitions.wait_for(part, found, key, "acquire")
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
        part = self._map.current()
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
            removed = list(partitions.retired_removed)
            ledgers = partitions.ledgers()
        return snapshot(ledgers, totals, removed, partitions.settings.errors)

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
