"""``ResourcePool`` and ``Resource``: the asyncio driver around the ledger.

Every decision (hit or miss, idle or finalize, what has expired) is made by
:mod:`ttlpool._core`; this module only does what needs an event loop: it
calls factories and finalizers and awaits what they return, keeps one timer
per loop armed for the earliest idle deadline, and hands work that belongs
to another loop over to that loop.

Threads and loops. Each event loop gets a *partition* (its own ledger, timer
and tasks). Only the loop's own thread touches a per-loop ledger, so a hit
and a release take no lock. Work that crosses loops (``clear``, ``expire``,
the entries of a loop that closed) is rare: it runs on the owning loop when
that loop is running, and on the caller's loop otherwise. With
``per_loop=False`` every partition shares one :class:`LockedLedger`, so any
loop sees every entry and each ledger step holds a thread lock. The pool
lock (``_lock``) guards only the partition map; no lock is ever held across
an ``await`` or while user code runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
import sys
import threading
import weakref
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from ttlpool._core import ARM, EVICTED, FINALIZE, Creation, Entry, Ledger, LockedLedger
from ttlpool._tasks import (
    Finalizing,
    Partition,
    awaited,
    copy_outcome,
    gather_raising,
    has_work,
    is_awaitable,
    keys_of,
    leftover,
    spawn,
    wake,
)
from ttlpool.clock import Clock, MonotonicClock
from ttlpool.errors import PoolClosedError
from ttlpool.stats import PoolStats

__all__ = ["ErrorHook", "Resource", "ResourcePool"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("ttlpool")

#: ``on_error(exception, operation, key)``: called for every error the pool
#: catches (a failing finalizer, a failure in a task the pool runs).
ErrorHook = Callable[[BaseException, str, Any], None]

#: Expired entries finalized per timer callback before yielding to the loop.
REAP_SLICE = 128
#: How often a cross-loop hand-over checks that the other loop still runs.
_HANDOVER_POLL = 0.05

#: A lease's ``_entry`` while its slow path awaits the acquire.
_ENTERING: Any = object()
_get_running_loop = asyncio.get_running_loop


def _check_ttl(ttl: object) -> float:
    if ttl is None:
        return math.inf
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {ttl!r}")
    if math.isnan(ttl) or ttl < 0:
        raise ValueError(f"ttl must be >= 0 seconds (or None/inf), not {ttl!r}")
    return float(ttl)


def _check_max_idle(max_idle: object) -> int | None:
    if max_idle is None:
        return None
    if isinstance(max_idle, bool) or not isinstance(max_idle, int):
        raise TypeError(f"max_idle must be an int or None, not {max_idle!r}")
    if max_idle < 0:
        raise ValueError(f"max_idle must be >= 0, not {max_idle!r}")
    return max_idle


def _key_error(operation: str, key: object) -> TypeError:
    return TypeError(f"{operation}: key {key!r} is unhashable")


class Resource(Generic[T]):
    """One lease of a pooled resource: a single-use async context manager.

    Entering acquires the key's resource (creating it if needed) and returns
    it; leaving releases exactly that acquisition, whatever the resource's
    truth value. A lease belongs to the entry it acquired: if ``clear``
    retired that entry, leaving is a no-op and never touches a newer entry
    of the same key. Entering twice, or leaving before entering or twice,
    raises ``RuntimeError``. Leaving never swallows the body's exception.
    """

    # ``_entry`` is None until entering starts; ``_part`` is set once entered
    # and back to None once left.
    __slots__ = ("_entry", "_key", "_part", "_pool")

    def __init__(self, pool: ResourcePool[Any, T], key: Hashable) -> None:
        self._pool = pool
        self._key = key
        self._entry: Entry[Any, T] | None = None
        self._part: Partition[Any, T] | None

    async def __aenter__(self) -> T:
        if self._entry is not None:
            raise RuntimeError(f"get({self._key!r}): a lease can be entered only once")
        pool, key = self._pool, self._key
        loop = _get_running_loop()
        part = pool._parts.get(loop)
        if part is not None:
            try:
                entry = part.ledger.hit(key)
            except TypeError:
                raise _key_error("get", key) from None
            if entry is not None:
                self._part = part
                self._entry = entry
                return entry.resource
        self._entry = _ENTERING
        try:
            # No coroutine for the slow path: a sync factory ends in _begin.
            part, found = pool._begin(key, loop, "get", part)
            if isinstance(found, Entry):
                entry = found
            elif found.done and found.entry is not None:
                entry = found.entry
            else:
                entry = await pool._wait(part, found)
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
        except AttributeError:
            part = None
        if part is None:
            raise RuntimeError(
                f"get({self._key!r}): a lease can be left only once, after entering"
            )
        self._part = None
        entry: Entry[Any, T] = self._entry  # type: ignore[assignment]
        action = part.ledger.release(entry, part.now())
        if action:
            pending = self._pool._carry_out(part, entry, action)
            if pending:  # a sync finalizer leaves nothing to await
                await gather_raising(pending)

    def __repr__(self) -> str:
        state = "new" if self._entry is None else "entered"
        if state == "entered" and getattr(self, "_part", None) is None:
            state = "left" if self._entry is not _ENTERING else "entering"
        return f"<Resource key={self._key!r} {state}>"


_POOLS: weakref.WeakSet[ResourcePool[Any, Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_everything()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ResourcePool(Generic[K, T]):
    """Keyed, reference-counted resources kept warm for an idle time-to-live.

    ``factory(key)`` makes a key's resource and ``finalizer(resource)``
    retires it; either may be sync or return any awaitable, which is
    awaited. Concurrent acquirers of a missing key share one factory call,
    run with no lock held. An entry nobody holds stays warm for ``ttl``
    seconds (``0``: finalized at its last release; ``None`` or ``math.inf``:
    until ``expire``, ``max_idle``, ``clear`` or ``aclose``), then the pool
    finalizes it by itself. ``max_idle`` bounds the idle entries; the one
    released longest ago goes first.

    Errors the pool catches are logged on the ``ttlpool`` logger, counted in
    :attr:`stats` and passed to ``on_error(exception, operation, key)``.

    By default every event loop has its own entries (``per_loop=True``), as
    most asyncio resources belong to the loop that made them; with
    ``per_loop=False`` all loops share them. ``clock`` replaces the time
    source and timer, for tests (:class:`ttlpool.testing.ManualClock`).
    Constructing a pool needs no running event loop.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_closed",
        "_closing",
        "_errors",
        "_factory",
        "_finalizer",
        "_lock",
        "_max_idle",
        "_now",
        "_on_error",
        "_parts",
        "_per_loop",
        "_retired",
        "_shared",
        "_strays",
        "_ttl",
        "_unfinalized",
    )

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
        self._ttl = _check_ttl(ttl)
        self._max_idle = _check_max_idle(max_idle)
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {factory!r}")
        if finalizer is not None and not callable(finalizer):
            raise TypeError(f"finalizer must be callable or None, not {finalizer!r}")
        self._factory = factory
        self._finalizer = finalizer
        self._on_error = on_error
        self._per_loop = per_loop
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._now = self._clock.now
        self._forget_everything()
        _POOLS.add(self)

    if not TYPE_CHECKING:

        def __class_getitem__(cls, params):
            # wool's pool is generic in the resource alone: ResourcePool[Conn]
            # there means ResourcePool[Any, Conn] here, so annotations that
            # are evaluated at run time keep working after the switch.
            if not isinstance(params, tuple):
                params = (Any, params)
            return super().__class_getitem__(params)

    def _forget_everything(self) -> None:
        """Start empty: at construction, and in a forked child."""
        self._lock = threading.Lock()
        self._parts: dict[asyncio.AbstractEventLoop, Partition[K, T]] = {}
        #: Partitions taken out of ``_parts`` by ``aclose``, until cleared.
        self._closing: list[Partition[K, T]] = []
        self._shared: LockedLedger[K, T] | None = (
            None
            if self._per_loop
            else LockedLedger(self._ttl, self._max_idle, threading.Lock())
        )
        self._closed = False
        #: Running totals of ledgers that were dropped (loops that closed).
        self._retired: dict[str, int] = dict.fromkeys(_TOTALS, 0)
        self._errors = 0
        #: Tasks of ``clear`` calls that timed out, kept until they end.
        self._strays: set[asyncio.Task[Any]] = set()
        #: Entries whose finalizer task was cancelled before it started.
        self._unfinalized: list[tuple[Ledger[K, T], Entry[K, T]]] = []

    # -- public API ----------------------------------------------------------

    @property
    def ttl(self) -> float:
        """The idle time-to-live in seconds (``math.inf`` for never)."""
        return self._ttl

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def get(self, key: K) -> Resource[T]:
        """A single-use lease of ``key``'s resource, for ``async with``."""
        return Resource(self, key)

    async def acquire(self, key: K) -> T:
        """Acquire ``key``'s resource, creating it on a miss.

        Pair every acquire with one :meth:`release` of the same key on the
        same event loop, or use :meth:`get`.
        """
        loop = asyncio.get_running_loop()
        part = self._parts.get(loop)
        try:
            entry = part.ledger.hit(key) if part is not None else None
        except TypeError:
            raise _key_error("acquire", key) from None
        if part is None or entry is None:
            part, entry = await self._acquire(key, loop)
        part.ledger.hold(entry)
        return entry.resource

    async def release(self, key: K) -> None:
        """Release one acquisition of ``key``.

        A key with no entry is a no-op; a key whose entry holds no reference
        raises ``ValueError``. At the last release the entry is finalized
        within this call (``ttl == 0`` or marked by :meth:`expire`) or
        becomes idle until its deadline.
        """
        part = self._parts.get(asyncio.get_running_loop())
        try:
            if part is None:
                hash(key)
                return
            entry, action = part.ledger.release_key(key, self._now())
        except TypeError:
            raise _key_error("release", key) from None
        if entry is not None and action:
            pending = self._carry_out(part, entry, action)
            if pending:
                await gather_raising(pending)

    async def expire(self, key: K) -> None:
        """Retire ``key`` in every event loop's entries, draining leases first.

        An idle entry is finalized now and this returns after its finalizer.
        A referenced entry, or one being created, is marked: its last
        release finalizes it, unless it is acquired again first. Unknown
        keys are a no-op.
        """
        try:
            hash(key)
        except TypeError:
            raise _key_error("expire", key) from None
        loop = asyncio.get_running_loop()
        self._sweep(loop)
        parts = self._all_partitions()
        if self._shared is not None:
            parts = parts[:1]
        await gather_raising(
            self._on_loop(part, functools.partial(self._expire_in, part, key))
            for part in parts
        )

    async def clear(self, *, timeout: float | None = None) -> None:
        """Finalize every entry of every event loop now, referenced or not.

        Repeats, generation after generation, until nothing it found or
        that appeared while it ran is left: finalizers may acquire other
        keys, and creations in flight finish and are finalized in turn.
        Finalizers run concurrently, each loop's on that loop while it
        runs. An ``Exception`` from one is reported and the rest go on; a
        ``BaseException`` is re-raised once every entry is evicted. Holders
        keep their objects; their later release is a no-op.

        Raises ``TimeoutError`` naming what is left if ``timeout`` seconds
        pass first.
        """
        loop = asyncio.get_running_loop()
        self._sweep(loop)
        deadline = None if timeout is None else loop.time() + timeout
        interrupt: BaseException | None = None
        while True:
            parts = [p for p in self._all_partitions() if has_work(p)]
            strays_here = any(t.get_loop() is loop for t in self._strays)
            if not parts and not strays_here and not self._unfinalized:
                break
            try:
                generation = self._clear_generation(loop, parts)
            except BaseException as exc:  # a sync finalizer raised it
                interrupt = interrupt or exc
                continue
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                done, _ = await asyncio.wait({generation}, timeout=remaining)
            finally:
                if not generation.done():  # timed out, or the caller cancelled
                    self._strays.add(generation)
                    generation.add_done_callback(self._strays.discard)
            if not done:
                left = sorted(
                    {repr(k) for p in self._all_partitions() for k in keys_of(p)}
                )
                raise TimeoutError(
                    f"clear: timed out after {timeout}s with keys still being "
                    f"finalized or created: {', '.join(left) or '(finalizer tasks)'}"
                )
            if generation.exception() is not None:
                interrupt = interrupt or generation.exception()
        if interrupt is not None:
            raise interrupt

    async def aclose(self) -> None:
        """Close the pool for good, then :meth:`clear` it.

        Every later acquire raises :class:`PoolClosedError`; releases of
        outstanding leases become no-ops. Idempotent.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self._closing.extend(self._parts.values())
                self._parts = {}
        await self.clear()

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

        O(number of event loops). Idle entries of a loop that closed are
        counted as entries but not as pending cleanup: no timer of theirs
        can fire; the next pool operation from a live loop finalizes them.
        """
        totals = dict(self._retired)
        gauges = dict.fromkeys(_GAUGES, 0)
        for ledger, alive in self._ledgers():
            for name, attr in _TOTALS.items():
                totals[name] += getattr(ledger, attr)
            gauges["total_entries"] += len(ledger.entries)
            gauges["referenced_entries"] += ledger.referenced
            gauges["idle_entries"] += len(ledger.idle)
            gauges["creating"] += len(ledger.creating)
            gauges["pending_cleanup"] += (
                ledger.pending_cleanup_count() if alive else len(ledger.finalizing)
            )
        return PoolStats(**gauges, **totals, errors=self._errors)

    @property
    def pending_cleanup(self) -> dict[K, float | None]:
        """Each key with pending cleanup: its idle deadline (on the pool's
        clock, ``time.monotonic`` by default), or ``None`` while finalizing."""
        pending: dict[K, float | None] = {}
        for ledger, alive in self._ledgers():
            if alive:
                pending.update(ledger.pending_cleanup())
            else:
                pending.update(dict.fromkeys(e.key for e in list(ledger.finalizing)))
        return pending

    def __len__(self) -> int:
        return sum(len(ledger.entries) for ledger, _ in self._ledgers())

    def __contains__(self, key: object) -> bool:
        return any(key in ledger.entries for ledger, _ in self._ledgers())

    def __repr__(self) -> str:
        s = self.stats
        state = "closed" if self._closed else "open"
        return (
            f"<ResourcePool {state} entries={s.total_entries} "
            f"referenced={s.referenced_entries} idle={s.idle_entries} "
            f"creating={s.creating} ttl={self._ttl} "
            f"{'per-loop' if self._per_loop else 'shared'}>"
        )

    # -- acquiring -----------------------------------------------------------

    def _begin(
        self,
        key: K,
        loop: asyncio.AbstractEventLoop,
        operation: str = "acquire",
        missed_in: Partition[K, T] | None = None,
    ) -> tuple[Partition[K, T], Entry[K, T] | Creation[K, T]]:
        """The synchronous start of a slow acquire (new loop, miss, closed
        pool): a hit, or the creation to wait for, already settled when the
        factory is sync. ``missed_in``: the partition whose ``hit`` missed."""
        part = missed_in
        if part is None or self._closed:
            part = self._partition(loop, key, operation)
        try:
            found, started = part.ledger.lookup(key, part is missed_in)
        except TypeError:
            raise _key_error(operation, key) from None
        if started:
            creation = cast("Creation[K, T]", found)
            creation.owner = part
            if len(self._parts) > 1:
                self._sweep(loop)
            self._create(part, creation)
        return part, found

    async def _acquire(
        self, key: K, loop: asyncio.AbstractEventLoop, operation: str = "acquire"
    ) -> tuple[Partition[K, T], Entry[K, T]]:
        """The slow path of an acquire: new loop, miss, or closed pool."""
        part, found = self._begin(key, loop, operation)
        if isinstance(found, Entry):
            return part, found
        # A waiter is counted as a holder the moment the factory returns: if
        # clear retires the entry before the waiter resumes, the waiter keeps
        # the object like any other holder of a cleared entry.
        if found.done and found.entry is not None:
            return part, found.entry
        return part, await self._wait(part, found)

    def _create(self, part: Partition[K, T], creation: Creation[K, T]) -> None:
        """Call the factory; an awaitable result finishes in a pool task."""
        try:
            result = self._factory(creation.key)
        except BaseException as exc:
            self._settle(part, creation, error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        if is_awaitable(result):
            self._track(
                part, spawn(part.loop, self._finish_creation(part, creation, result))
            )
        else:
            self._settle(part, creation, result)

    async def _finish_creation(
        self, part: Partition[K, T], creation: Creation[K, T], awaitable: Awaitable[T]
    ) -> None:
        try:
            resource = await awaitable
        except BaseException as exc:
            self._settle(part, creation, error=exc)
            if not isinstance(exc, Exception):
                raise
            if creation.waiters == 0:
                self._report(exc, "create", creation.key)
            return
        action = self._settle(part, creation, resource)
        if action and creation.entry is not None:
            await gather_raising(self._carry_out(part, creation.entry, action))

    def _settle(
        self,
        part: Partition[K, T],
        creation: Creation[K, T],
        resource: Any = None,
        error: BaseException | None = None,
    ) -> int:
        """Record the factory's outcome and wake every waiter up."""
        ledger = part.ledger
        action = 0
        if error is not None:
            if sys.version_info >= (3, 11):
                error.add_note(f"ttlpool: factory for key {creation.key!r} failed")
            ledger.failed(creation, error)
        else:
            action = ledger.created(creation, resource, self._now())[1]
        for waiter in creation.listeners:
            wake(waiter)
        return action

    async def _wait(
        self, part: Partition[K, T], creation: Creation[K, T]
    ) -> Entry[K, T]:
        """Wait for a creation; a cancelled waiter leaves no reference behind."""
        ledger = part.ledger
        if not creation.done:
            waiter = asyncio.get_running_loop().create_future()
            if ledger.listen(creation, waiter):
                try:
                    await waiter
                except asyncio.CancelledError:
                    counted = ledger.withdraw(creation)
                    if counted is not None:
                        self._release_soon(part, counted)
                    raise
        if creation.error is not None:
            raise creation.error
        assert creation.entry is not None
        return creation.entry

    def _partition(
        self, loop: asyncio.AbstractEventLoop, key: K, operation: str
    ) -> Partition[K, T]:
        part = self._parts.get(loop)
        if part is None or self._closed:
            with self._lock:
                if self._closed:
                    raise PoolClosedError(f"{operation}({key!r}): the pool is closed")
                part = self._parts.get(loop)
                if part is None:
                    ledger: Ledger[K, T] = self._shared or Ledger(
                        self._ttl, self._max_idle
                    )
                    part = self._parts[loop] = Partition(loop, ledger, self._now)
            self._sweep(loop)
        return part

    # -- releasing and finalizing --------------------------------------------

    def _release_soon(self, part: Partition[K, T], entry: Entry[K, T]) -> None:
        """Release from a cancelled task: finalizers run in pool tasks."""
        action = part.ledger.release(entry, self._now())
        if action:
            self._run_later(part, self._carry_out(part, entry, action))

    def _carry_out(
        self, part: Partition[K, T], entry: Entry[K, T], action: int
    ) -> list[Finalizing]:
        """Do what a release decided (arm the timer, finalize now); return
        the finalizer awaits still to do."""
        if action & ARM:
            self._arm(part)
        doomed = [entry] if action & FINALIZE else []
        if action & EVICTED:
            doomed += part.ledger.take_victims()
        return self._start_finalizers(part, doomed)

    def _start_finalizers(
        self,
        part: Partition[K, T] | None,
        entries: Iterable[Entry[K, T]],
        ledger: Ledger[K, T] | None = None,
    ) -> list[Finalizing]:
        """Call the finalizer of each entry; return the awaits still to do.

        Counts go to ``ledger`` (``part``'s by default). Every finalizer is
        called even if one raises a ``BaseException``, which is re-raised
        after the last call.
        """
        pending: list[Finalizing] = []
        interrupt: BaseException | None = None
        if ledger is None:
            assert part is not None
            ledger = part.ledger
        finalizer = self._finalizer
        for entry in entries:
            if finalizer is None:
                ledger.finalized(entry, True)
                continue
            try:
                result = finalizer(entry.resource)
            except Exception as exc:
                self._report(exc, "finalize", entry.key)
                ledger.finalized(entry, False)
            except BaseException as exc:
                ledger.finalized(entry, True)
                interrupt = interrupt or exc
            else:
                if is_awaitable(result):
                    pending.append(Finalizing(self, ledger, entry, result))
                else:
                    ledger.finalized(entry, True)
        if interrupt is not None:
            self._run_later(part, pending)
            raise interrupt
        return pending

    async def _expire_in(self, part: Partition[K, T], key: K) -> None:
        entry = part.ledger.expire(key)
        if entry is not None:
            await gather_raising(self._start_finalizers(part, [entry]))

    # -- the timer -----------------------------------------------------------

    def _arm(self, part: Partition[K, T]) -> None:
        deadline = part.ledger.timer_deadline
        if deadline is not None:
            callback = functools.partial(self._on_timer, part)
            part.timer = self._clock.call_at(part.loop, deadline, callback)

    def _on_timer(self, part: Partition[K, T]) -> list[asyncio.Task[Any]] | None:
        """Finalize one slice of expired entries, then re-arm."""
        part.timer = None
        if part.ledger is not self._shared and self._parts.get(part.loop) is not part:
            return None  # retired by clear, aclose or a sweep meanwhile
        expired, _ = part.ledger.timer_fired(self._now(), REAP_SLICE)
        self._arm(part)
        return self._run_later(part, self._start_finalizers(part, expired)) or None

    def _cancel_timer(self, part: Partition[K, T]) -> None:
        timer, part.timer = part.timer, None
        if timer is not None:
            timer.cancel()

    # -- tasks, loops and partitions -----------------------------------------

    def _run_later(
        self, part: Partition[K, T] | None, pending: list[Finalizing]
    ) -> list[asyncio.Task[Any]]:
        """Finish each finalizer in a pool task on the running loop, tracked
        by ``part`` when that is its loop (so clear waits for it)."""
        loop = asyncio.get_running_loop()
        home = part if part is not None and part.loop is loop else self._parts.get(loop)
        tasks: list[asyncio.Task[Any]] = []
        for finalizing in pending:
            task = spawn(loop, finalizing.run())
            task.add_done_callback(finalizing.abandon)
            if home is not None:
                self._track(home, task)
            elif not task.done():
                self._strays.add(task)
                task.add_done_callback(self._strays.discard)
            tasks.append(task)
        return tasks

    def _track(
        self, part: Partition[K, T], task: asyncio.Task[Any]
    ) -> asyncio.Task[Any]:
        """Keep a pool task until it ends, so clear can wait for it."""
        if not task.done():
            part.tasks.add(task)
            task.add_done_callback(functools.partial(self._task_done, part))
        else:
            self._task_done(part, task)
        return task

    def _task_done(self, part: Partition[K, T], task: asyncio.Task[Any]) -> None:
        part.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._report(task.exception(), "pool task", None)  # type: ignore[arg-type]

    def _report(self, exc: BaseException, operation: str, key: object) -> None:
        """Log, count and hand to ``on_error`` an error the pool caught."""
        self._errors += 1
        log.error("ttlpool: %s of key %r failed", operation, key, exc_info=exc)
        if self._on_error is not None:
            try:
                self._on_error(exc, operation, key)
            except Exception:
                log.exception(
                    "ttlpool: on_error hook failed for %s of key %r", operation, key
                )

    def _all_partitions(self) -> list[Partition[K, T]]:
        with self._lock:
            return [*self._parts.values(), *self._closing]

    def _ledgers(self) -> list[tuple[Ledger[K, T], bool]]:
        """Each ledger once, with whether its timer can still fire."""
        parts = [*self._parts.values(), *self._closing]
        if self._shared is not None:
            # Shared idle deadlines are pending only while the loop that
            # holds the one armed timer can still fire it.
            ledger = self._shared
            armed = ledger.timer_deadline is None or any(
                p.timer is not None and not p.loop.is_closed() for p in parts
            )
            return [(ledger, armed)]
        return [(part.ledger, not part.loop.is_closed()) for part in parts]

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Retire the partitions of closed loops, finishing their work here.

        Per loop, what a closed loop left is finalized on ``loop``'s
        partition. Shared, the ledger lives on: a timer armed on the closed
        loop is re-armed here, and creations that loop was running fail.
        Without a partition on ``loop`` nothing moves: ``clear`` finalizes
        dead partitions itself.
        """
        here = self._parts.get(loop)
        if here is None:
            return
        with self._lock:
            # A partition whose entries another loop's clear or expire is
            # still finalizing is retired by a later sweep, once that is
            # done: its ledger counts those finalizations until then.
            dead = [
                p
                for p in self._parts.values()
                if p.loop.is_closed()
                and (p.ledger is self._shared or not p.ledger.finalizing)
            ]
            orphaned: dict[Partition[K, T], list[Entry[K, T]]] = {}
            for part in dead:
                del self._parts[part.loop]
                if part.ledger is not self._shared:
                    # Under the lock: a clear on another thread may be
                    # about to abandon the same dead ledger.
                    self._retire(part)
                    orphaned[part] = part.ledger.abandon()
        if self._unfinalized:
            self._run_later(here, self._take_unfinalized())
        for part in dead:
            if part.ledger is self._shared:
                self._retire_shared(part, here)
                continue
            orphans = orphaned[part]
            if orphans:
                log.debug(
                    "ttlpool: finalizing %d entries left by a closed loop",
                    len(orphans),
                )
                here.ledger.adopt(orphans)
                self._run_later(here, self._start_finalizers(here, orphans))

    def _requeue(self, ledger: Ledger[K, T], entry: Entry[K, T]) -> None:
        """An entry whose finalizer never started: finalize it again later."""
        with self._lock:
            self._unfinalized.append((ledger, entry))

    def _take_unfinalized(self) -> list[Finalizing]:
        """Call again the finalizers that never started; the awaits to do."""
        with self._lock:
            requeued, self._unfinalized = self._unfinalized, []
        pending: list[Finalizing] = []
        for ledger, entry in requeued:
            pending += self._start_finalizers(None, [entry], ledger)
        return pending

    def _retire(self, part: Partition[K, T]) -> None:
        """Keep the running totals of a per-loop ledger that goes away.

        Called with ``_lock`` held, once its ledger has nothing finalizing.
        """
        if part.ledger is not self._shared:
            for name, attr in _TOTALS.items():
                self._retired[name] += getattr(part.ledger, attr)

    def _retire_shared(self, dead: Partition[K, T], here: Partition[K, T]) -> None:
        ledger = dead.ledger
        gone = RuntimeError("acquire: the event loop running the factory closed")
        for creation in ledger.fail_creations(dead, gone):
            for waiter in creation.listeners:
                wake(waiter)
        if dead.timer is not None:
            dead.timer = None
            if ledger.timer_lost(self._now()) is not None:
                self._arm(here)

    async def _on_loop(
        self, part: Partition[K, T], work: Callable[[], Coroutine[Any, Any, R]]
    ) -> R:
        """Run ``work()`` on ``part``'s loop while it runs, else right here."""
        target = part.loop
        if part.is_here():
            return await work()
        handover: concurrent.futures.Future[R] = concurrent.futures.Future()
        begun: list[Coroutine[Any, Any, R]] = []

        def start() -> None:
            if handover.set_running_or_notify_cancel():
                try:
                    coro = work()
                except BaseException as exc:  # a sync finalizer raised it
                    handover.set_exception(exc)
                    return
                # Wrapped: if the task is cancelled or dropped before its
                # first step, coro is left unstarted (see leftover).
                wrapper = awaited(coro)
                begun.extend((wrapper, coro))
                task = target.create_task(wrapper)
                task.add_done_callback(functools.partial(copy_outcome, handover))

        try:
            target.call_soon_threadsafe(start)
        except RuntimeError:  # closed meanwhile
            return await work()
        result = asyncio.wrap_future(handover)
        while True:
            done, _ = await asyncio.wait({result}, timeout=_HANDOVER_POLL)
            if done:
                try:
                    return result.result()
                except asyncio.CancelledError:
                    # Not our cancellation (that comes out of wait()): the
                    # other loop cancelled the task as it shut down, as
                    # asyncio.run does with every task left. Hand what is
                    # left over again while it runs, else do it here.
                    return await self._on_loop(part, leftover(work, begun))
            if target.is_closed() or (part.is_here() and handover.cancel()):
                result.cancel()
                return await leftover(work, begun)()

    def _clear_generation(
        self, loop: asyncio.AbstractEventLoop, parts: list[Partition[K, T]]
    ) -> asyncio.Task[None]:
        """Evict every partition (this loop's right now, others' on their
        own loop) and return the task that finishes their finalizers.

        A ``BaseException`` from a sync finalizer is re-raised after every
        partition here was evicted.
        """
        me = asyncio.current_task()
        steps: list[Awaitable[Any]] = []
        interrupt: BaseException | None = None
        for part in parts:
            if part.is_here():
                try:
                    steps.append(self._clear_partition(part))
                except BaseException as exc:
                    interrupt = interrupt or exc
            else:
                work = functools.partial(self._clear_partition, part)
                steps.append(self._on_loop(part, work))
        strays = {t for t in self._strays if t is not me and t.get_loop() is loop}
        if strays:
            steps.append(asyncio.wait(strays))
        steps += self._take_unfinalized()
        task = spawn(loop, gather_raising(steps))
        if interrupt is not None:
            self._strays.add(task)
            task.add_done_callback(self._strays.discard)
            raise interrupt
        return task

    def _clear_partition(self, part: Partition[K, T]) -> Coroutine[Any, Any, None]:
        """Evict all of one partition now; return what finishes its clear.

        On its own running loop, the rest waits for the partition's pool
        tasks, so creations in flight finish (the next generation finalizes
        them). A partition whose loop no longer runs can finish nothing: its
        creations are dropped and its entries finalized on the caller's loop.
        """
        self._cancel_timer(part)
        ledger = part.ledger
        here = part.loop is asyncio.get_running_loop()
        waits: set[asyncio.Task[Any]] = set()
        if here or ledger is self._shared:
            evicted = ledger.evict_all()
            if here:
                waits = part.tasks - {asyncio.current_task()}
            else:  # its loop no longer runs: those tasks never end
                part.tasks.clear()
        else:
            with self._lock:  # a sweep on another thread may retire it meanwhile
                retired = (
                    part not in self._closing and self._parts.get(part.loop) is not part
                )
                evicted = [] if retired else ledger.abandon()
                ledger.adopt(evicted)
            part.tasks.clear()
        pending = self._start_finalizers(part, evicted)
        return self._finish_clear(part, pending, waits)

    async def _finish_clear(
        self,
        part: Partition[K, T],
        pending: list[Finalizing],
        waits: set[asyncio.Task[Any]],
    ) -> None:
        # Only this loop's tasks can be waited for (a hand-over that the
        # other loop dropped is finished here: see leftover).
        loop = asyncio.get_running_loop()
        waits = {t for t in waits if t.get_loop() is loop}
        try:
            await gather_raising(pending)
        finally:
            if waits:
                await asyncio.wait(waits)
            with self._lock:
                if (
                    part in self._closing
                    and not has_work(part)
                    and not part.ledger.finalizing
                ):
                    self._closing.remove(part)
                    self._retire(part)


_TOTALS = {
    "hits": "hits",
    "misses": "misses",
    "created": "created_total",
    "finalized": "finalized_total",
    "expired": "expired_total",
    "evicted": "evicted_total",
    "factory_errors": "factory_errors",
    "finalizer_errors": "finalizer_errors",
}
_GAUGES = (
    "total_entries",
    "referenced_entries",
    "idle_entries",
    "pending_cleanup",
    "creating",
)
