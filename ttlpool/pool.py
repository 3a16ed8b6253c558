"""``ResourcePool`` and ``Resource``: the public async API.

What lives here: the map from event loops to their partitions, the routes
that work takes between loops, the generations of ``clear``, statistics and
fork handling. What does not: every decision about counts and deadlines
(:mod:`ttlpool._core`), everything that needs one loop (factories,
finalizers, the timer: :mod:`ttlpool._partition`), and how work crosses
threads (:mod:`ttlpool._handover`, whose guarantee this module relies on).

Who touches what:

- ``_partitions`` (every partition not yet adopted, by loop), ``_retired``
  (the running totals of adopted per-loop ledgers) and ``_closed`` are
  written only under ``_lock``.
- ``_parts`` is ``_partitions`` while the pool is open and an empty dict
  once it is closed. It is replaced only under ``_lock`` and read without
  it by the hot path: one dict lookup, which no thread interleaves.
- A partition's ledger, timer and jobs belong to its loop's thread, then to
  the partition that adopted it (see :mod:`ttlpool._partition`); other
  threads read them only through copies and counters (``stats``, ``len``,
  ``in``, ``pending_cleanup``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from ttlpool._aio import call_soon_threadsafe
from ttlpool._checks import (
    check_callable,
    check_key,
    check_max_idle,
    check_seconds,
    check_ttl,
    unhashable,
)
from ttlpool._core import Creation, Entry, Ledger, LockedLedger
from ttlpool._handover import Answer, Owner, Request, Route, answer_of
from ttlpool._partition import (
    INSIDE,
    REAP_SLICE,
    ErrorHook,
    InsideOf,
    Partition,
    Settings,
    finish,
)
from ttlpool.clock import Clock, MonotonicClock
from ttlpool.errors import PoolClosedError
from ttlpool.stats import PoolStats

__all__ = ["REAP_SLICE", "ErrorHook", "Resource", "ResourcePool"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

log = logging.getLogger("ttlpool")

#: A lease's ``_entry`` while its slow path awaits the acquire, and once left.
_ENTERING: Any = object()
_RELEASED: Any = object()
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

    # ``_entry``: None (new), _ENTERING, the entry (entered), _RELEASED.
    # ``_part``: the partition while entered, else None.
    __slots__ = ("_entry", "_key", "_part", "_pool")

    def __init__(self, pool: ResourcePool[Any, T], key: Hashable) -> None:
        self._pool = pool
        self._key = key
        self._entry: Entry[Any, T] | None = None
        self._part: Partition[Any, T] | None = None

    async def __aenter__(self) -> T:
        if self._entry is not None:
            raise RuntimeError(
                "Cannot re-acquire a resource that has already been acquired "
                f"(get({self._key!r}): a lease can be entered only once)"
            )
        pool, key = self._pool, self._key
        loop = _get_running_loop()
        part = pool._parts.get(loop)
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
            # No coroutine for the slow path when the factory is sync.
            part, found = pool._begin(key, loop, "get", part)
            if isinstance(found, Entry):
                entry = found
            elif found.done and found.entry is not None:
                entry = found.entry
            else:
                part, entry = await pool._wait_for(part, found, key, loop, "get")
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
        part = self._part
        if part is None:
            done = self._entry is _RELEASED
            raise RuntimeError(
                f"Cannot release a resource that "
                f"{'has already been released' if done else 'was not acquired'} "
                f"(get({self._key!r}): a lease can be left only once, after entering)"
            )
        entry: Entry[Any, T] = self._entry  # type: ignore[assignment]
        self._part = None
        self._entry = _RELEASED
        if exc_type is GeneratorExit:  # its coroutine is being closed: no await
            self._pool._release_from_anywhere(part, entry)
            return
        action = part.ledger.release(entry, part.now())
        if action:
            await finish(part.carry_out(entry, action))

    def __repr__(self) -> str:
        entry = self._entry
        state = (
            "new"
            if entry is None
            else "entering"
            if entry is _ENTERING
            else "left"
            if entry is _RELEASED
            else "entered"
        )
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

    __slots__ = (
        "__weakref__",
        "_clock",
        "_closed",
        "_factory",
        "_finalizer",
        "_lock",
        "_max_idle",
        "_on_error",
        "_partitions",
        "_parts",
        "_per_loop",
        "_retired",
        "_settings",
        "_shared",
        "_ttl",
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
        where = "ResourcePool()"
        self._ttl = check_ttl(ttl, where)
        self._max_idle = check_max_idle(max_idle, where)
        check_callable(factory, "factory", where, optional=False)
        check_callable(finalizer, "finalizer", where, optional=True)
        check_callable(on_error, "on_error", where, optional=True)
        if not isinstance(cast(object, per_loop), bool):
            raise TypeError(f"{where}: per_loop must be a bool, not {per_loop!r}")
        self._factory = factory
        self._finalizer = finalizer
        self._on_error = on_error
        self._per_loop = per_loop
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._closed = False
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
        """Start empty: at construction, and in a child after ``os.fork()``.

        The partitions of the parent are marked FORKED (they finalize
        nothing: their resources are the parent's), and every lock they
        could take is replaced, since a thread of the parent may have held
        it at the fork and that thread does not exist here.
        """
        parts: dict[Any, Partition[K, T]] = getattr(self, "_partitions", {})
        for part in parts.values():
            part.mailbox.owner = Owner.FORKED
            part.mailbox.lock = threading.Lock()
            part.settings.errors_lock = threading.Lock()
        shared: LockedLedger[K, T] | None = getattr(self, "_shared", None)
        if shared is not None:
            shared.lock = threading.Lock()
        self._lock = threading.Lock()
        self._settings = Settings(
            self._factory,
            self._finalizer,
            self._on_error,
            self._clock,
            self._timer_fired,
        )
        self._partitions: dict[asyncio.AbstractEventLoop, Partition[K, T]] = {}
        self._parts = {} if self._closed else self._partitions
        self._shared: LockedLedger[K, T] | None = (
            None
            if self._per_loop
            else LockedLedger(self._ttl, self._max_idle, threading.Lock())
        )
        self._retired: dict[str, int] = dict.fromkeys(_TOTALS, 0)

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
        loop = _get_running_loop()
        part = self._parts.get(loop)
        try:
            entry = part.ledger.hit(key) if part is not None else None
        except TypeError:
            raise unhashable("acquire", key) from None
        if part is None or entry is None:
            part, found = self._begin(key, loop, "acquire", part)
            if isinstance(found, Entry):
                entry = found
            elif found.done and found.entry is not None:
                entry = found.entry
            else:
                part, entry = await self._wait_for(part, found, key, loop, "acquire")
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
        part = self._parts.get(_get_running_loop())
        if part is None:
            check_key(key, "release")
            return
        try:
            entry, action = part.ledger.release_key(key, part.now())
        except TypeError:
            raise unhashable("release", key) from None
        if entry is not None and action:
            await finish(part.carry_out(entry, action))

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
        loop = _get_running_loop()
        here = self._home(loop)
        self._sweep(here)
        tasks = here.expire(key)
        asked: list[tuple[Partition[K, T], asyncio.Future[Answer]]] = []
        if self._shared is None:
            work = functools.partial(self._expire_work, key)
            asked, _, adopted = self._send_all(here, work)
            tasks += self._adopt(here, adopted)
        await finish(tasks)
        for part, reply in asked:
            answer = await answer_of(part.mailbox, reply, None)
            if answer is not None and answer[1] is not None:
                raise answer[1]

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
        await self._clear(check_seconds(timeout, "timeout", "clear"), "clear")

    async def aclose(self) -> None:
        """Close the pool for good, then :meth:`clear` it.

        Every later acquire raises :class:`PoolClosedError`; releases of
        outstanding leases become no-ops. Returns once every finalizer in
        flight has ended, except on event loops that are stopped (not
        closed) in other threads: their entries are finalized when each
        runs again, and a warning names them. Idempotent.
        """
        with self._lock:
            self._closed = True
            self._parts = {}
        await self._clear(None, "aclose")

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
        with self._lock:
            totals = dict(self._retired)
            ledgers = self._ledgers()
        gauges = dict.fromkeys(_GAUGES, 0)
        for ledger in ledgers:
            for name, attr in _TOTALS.items():
                totals[name] += getattr(ledger, attr)
            gauges["total_entries"] += len(ledger.entries)
            gauges["referenced_entries"] += ledger.referenced
            gauges["idle_entries"] += len(ledger.idle)
            gauges["creating"] += len(ledger.creating)
            gauges["pending_cleanup"] += ledger.pending_cleanup_count()
        return PoolStats(**gauges, **totals, errors=self._settings.errors)

    @property
    def pending_cleanup(self) -> dict[K, float | None]:
        """Each key with pending cleanup: its idle deadline (on the pool's
        clock, ``time.monotonic`` by default), or ``None`` while finalizing."""
        with self._lock:
            ledgers = self._ledgers()
        pending: dict[K, float | None] = {}
        for ledger in ledgers:
            pending.update(ledger.pending_cleanup())
        return pending

    def __len__(self) -> int:
        with self._lock:
            ledgers = self._ledgers()
        return sum(len(ledger.entries) for ledger in ledgers)

    def __contains__(self, key: object) -> bool:
        check_key(key, "`key in pool`")
        with self._lock:
            ledgers = self._ledgers()
        return any(key in ledger.entries for ledger in ledgers)

    def __bool__(self) -> bool:
        # A pool is a pool, empty or not: `if pool:` must not skip an empty one.
        return True

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
        operation: str,
        missed_in: Partition[K, T] | None,
    ) -> tuple[Partition[K, T], Entry[K, T] | Creation[K, T]]:
        """The synchronous start of a slow acquire (new loop, miss, closed
        pool): a hit, or the creation to wait for, already settled when the
        factory is sync. ``missed_in``: the partition whose ``hit`` missed."""
        part = missed_in
        if part is None or self._closed:
            part = self._partition_for(loop, key, operation)
        try:
            found, started = part.ledger.lookup(key, part is missed_in)
        except TypeError:
            raise unhashable(operation, key) from None
        if started:
            assert isinstance(found, Creation)
            found.owner = part
            if len(self._partitions) > 1:
                self._sweep(part)
            part.create(found)
        return part, found

    async def _wait_for(
        self,
        part: Partition[K, T],
        creation: Creation[K, T],
        key: K,
        loop: asyncio.AbstractEventLoop,
        operation: str,
    ) -> tuple[Partition[K, T], Entry[K, T]]:
        """Wait for a creation; if it was lost with another loop (shared
        entries), start over."""
        while True:
            entry = await part.wait(creation)
            if entry is not None:
                return part, entry
            part, found = self._begin(key, loop, operation, None)
            if isinstance(found, Entry):
                return part, found
            creation = found

    def _partition_for(
        self, loop: asyncio.AbstractEventLoop, key: K, operation: str
    ) -> Partition[K, T]:
        """The partition of ``loop`` for an acquire; raises once closed."""
        with self._lock:
            if self._closed:
                raise PoolClosedError(f"{operation}({key!r}): the pool is closed")
            part = self._partitions.get(loop)
            if part is None:
                part = self._new_partition(loop)
        if len(self._partitions) > 1:
            self._sweep(part)
        return part

    def _home(self, loop: asyncio.AbstractEventLoop) -> Partition[K, T]:
        """The partition of ``loop``, made even when the pool is closed (it
        takes over what closed loops left)."""
        part = self._partitions.get(loop)
        if part is None:
            with self._lock:
                part = self._partitions.get(loop) or self._new_partition(loop)
        return part

    def _new_partition(self, loop: asyncio.AbstractEventLoop) -> Partition[K, T]:
        """A partition for ``loop``, the running loop (``_lock`` held)."""
        ledger: Ledger[K, T] = self._shared or Ledger(self._ttl, self._max_idle)
        part = self._partitions[loop] = Partition(
            loop, ledger, self._settings, self._lock
        )
        part.watch_shutdown()
        return part

    # -- work that crosses loops -----------------------------------------------

    def _release_from_anywhere(self, part: Partition[K, T], entry: Entry[K, T]) -> None:
        """Release a lease whose coroutine is being closed, maybe by the
        garbage collector on any thread: nothing here may await or take the
        pool's lock. The release goes to the partition's loop; a loop that
        closed drops it, and whoever adopts the partition evicts the entry."""
        if asyncio._get_running_loop() is part.loop:
            self._release_posted(part, entry)
        else:
            call_soon_threadsafe(part.loop, self._release_posted, part, entry)

    @staticmethod
    def _release_posted(part: Partition[Any, Any], entry: Entry[Any, Any]) -> None:
        # A loop that shuts down finishes nothing new: the adopter evicts it.
        mailbox = part.mailbox
        if mailbox.owner is Owner.LIVE and not mailbox.closing:
            part.release_soon(entry)

    def _sweep(self, here: Partition[K, T]) -> bool:
        """Adopt every partition whose loop closed into ``here`` (on its
        running loop) and start finalizing what they left. Returns whether
        there was any."""
        with self._lock:
            dead = [
                part
                for part in list(self._partitions.values())
                if part is not here and part.mailbox.route(here.loop) is Route.ADOPT
            ]
        if dead:
            self._adopt(here, dead)
        return bool(dead)

    def _adopt(
        self, here: Partition[K, T], dead: list[Partition[K, T]]
    ) -> list[asyncio.Task[None]]:
        """``here`` takes over partitions routed ``ADOPT`` to this caller;
        returns the finalization jobs started. Unanswered requests to them
        are answered (there was nothing left for their owner to do)."""
        tasks: list[asyncio.Task[None]] = []
        interrupt: BaseException | None = None
        for part in dead:
            with self._lock:
                requests = part.mailbox.take_requests()
                if self._partitions.get(part.loop) is part:
                    del self._partitions[part.loop]
                if part.ledger is not self._shared:
                    for name, attr in _TOTALS.items():
                        self._retired[name] += getattr(part.ledger, attr)
            try:
                tasks += here.adopt(part)
            except BaseException as exc:  # a sync finalizer's: after the rest
                interrupt = interrupt or exc
            for request in requests:
                request.answer(False)
        if interrupt is not None:
            raise interrupt
        return tasks

    def _send_all(
        self,
        here: Partition[K, T],
        work: Callable[[Partition[K, T]], bool | Awaitable[bool]],
        skip: Iterable[Partition[K, T]] = (),
    ) -> tuple[
        list[tuple[Partition[K, T], asyncio.Future[Answer]]],
        list[Partition[K, T]],
        list[Partition[K, T]],
    ]:
        """Send ``work`` to the owner of every other partition but ``skip``.

        Returns the requests to wait for (their loops run), the partitions
        whose loops are stopped (they carry the request out when they run
        again: nobody waits for them), and the partitions this caller must
        adopt (their loops closed).
        """
        loop = here.loop
        asked: list[tuple[Partition[K, T], asyncio.Future[Answer]]] = []
        left: list[Partition[K, T]] = []
        adopted: list[Partition[K, T]] = []
        skipped = set(skip)
        with self._lock:
            for part in list(self._partitions.values()):
                if part is here or part in skipped:
                    continue
                reply: asyncio.Future[Answer] = loop.create_future()
                route = part.mailbox.send(
                    Request(functools.partial(work, part), reply), loop
                )
                if route is Route.ASK:
                    asked.append((part, reply))
                elif route is Route.LEAVE:
                    left.append(part)
                elif route is Route.ADOPT:
                    adopted.append(part)
        return asked, left, adopted

    @staticmethod
    def _expire_work(key: Any, part: Partition[Any, Any]) -> bool | Awaitable[bool]:
        tasks = part.expire(key)
        return _finished(tasks) if tasks else False

    @staticmethod
    def _clear_work(
        skip: tuple[InsideOf, ...], part: Partition[Any, Any]
    ) -> bool | Awaitable[bool]:
        did, waits = part.clear(skip)
        return _waited(waits) if waits else did

    # -- clear ------------------------------------------------------------------

    async def _clear(self, timeout: float | None, operation: str) -> None:
        """``clear`` and ``aclose``: generations until nothing is left."""
        loop = _get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        skip = INSIDE.get()
        here = self._home(loop)
        left: set[Partition[K, T]] = set()
        interrupt: BaseException | None = None
        while True:
            did, waits, asked, raised = self._clear_generation(here, skip, left)
            interrupt = interrupt or raised
            try:
                if waits:
                    remaining = None if deadline is None else deadline - loop.time()
                    done, pending = await asyncio.wait(waits, timeout=remaining)
                    interrupt = interrupt or _raised(done)
                    if pending:
                        raise TimeoutError
                for part, reply in asked:
                    answer = await answer_of(part.mailbox, reply, deadline)
                    if answer is None:
                        did = True  # it stopped or closed: route it again
                        continue
                    did = did or answer[0]
                    interrupt = interrupt or answer[1]
            except TimeoutError:
                raise TimeoutError(
                    f"{operation}: timed out after {timeout}s with keys still being "
                    f"finalized or created: {self._keys_left()}"
                ) from None
            if not did:
                break
        if left:
            self._report_left(operation, left)
        if interrupt is not None:
            raise interrupt

    def _clear_generation(
        self,
        here: Partition[K, T],
        skip: tuple[InsideOf, ...],
        left: set[Partition[K, T]],
    ) -> tuple[
        bool,
        list[asyncio.Task[Any]],
        list[tuple[Partition[K, T], asyncio.Future[Answer]]],
        BaseException | None,
    ]:
        """What one generation of ``clear`` does before it waits.

        Asks every running loop to clear its own partition, leaves a request
        with every stopped one (added to ``left``, and not asked again),
        adopts the partitions of closed loops, and clears ``here``. Returns
        whether it found anything, the jobs here to wait for, the requests
        to wait for, and a ``BaseException`` a sync finalizer raised (after
        all of that was done).
        """
        work = functools.partial(self._clear_work, skip)
        asked, stopped, adopted = self._send_all(here, work, left)
        left.update(stopped)
        interrupt: BaseException | None = None
        try:
            self._adopt(here, adopted)
        except BaseException as exc:  # a sync finalizer's
            interrupt = exc
        try:
            found, waits = here.clear(skip)
        except BaseException as exc:  # a sync finalizer's
            interrupt = interrupt or exc
            found, waits = True, []
        return bool(adopted) or found, waits, asked, interrupt

    def _report_left(self, operation: str, left: Iterable[Partition[K, T]]) -> None:
        stopped = [p for p in left if p.mailbox.owner is Owner.LIVE]
        keys = sorted({repr(k) for p in stopped for k in _keys_of(p.ledger)})
        if not keys:
            return
        level = logging.WARNING if operation == "aclose" else logging.INFO
        log.log(
            level,
            "ttlpool: %s left the entries of %d event loop(s) that are stopped, not "
            "closed, to those loops: they are finalized when each runs again "
            "(keys %s); if a loop is closed first, call clear() or aclose() again "
            "from a running loop to finalize its entries",
            operation,
            len(stopped),
            ", ".join(keys),
        )

    def _keys_left(self) -> str:
        with self._lock:
            ledgers = self._ledgers()
        keys = sorted({repr(k) for ledger in ledgers for k in _keys_of(ledger)})
        return ", ".join(keys) or "(finalizer tasks)"

    # -- the timer --------------------------------------------------------------

    def _timer_fired(self, part: Partition[K, T]) -> list[asyncio.Task[None]]:
        """A partition's timer went off (on the loop its clock called back
        on: its own, or, with a shared ledger and a foreign clock, another)."""
        part.timer = None
        if part.mailbox.owner is not Owner.LIVE or part.mailbox.closing:
            return []
        loop = _get_running_loop()
        here = part if part.loop is loop else self._home(loop)
        if len(self._partitions) > 1:
            self._sweep(here)
        return here.reap()

    # -- observation -----------------------------------------------------------

    def _ledgers(self) -> list[Ledger[K, T]]:
        """Each ledger once (called with ``_lock`` held)."""
        if self._shared is not None:
            return [self._shared]
        return [part.ledger for part in self._partitions.values()]


def _keys_of(ledger: Ledger[Any, Any]) -> list[object]:
    """Every key a ledger holds, creates or finalizes (copies: any thread)."""
    return [
        *ledger.entries.copy(),
        *ledger.creating.copy(),
        *(entry.key for entry in ledger.finalizing.copy()),
    ]


async def _finished(tasks: list[asyncio.Task[None]]) -> bool:
    await finish(tasks)
    return True


async def _waited(waits: list[asyncio.Task[Any]]) -> bool:
    done, _ = await asyncio.wait(waits)
    interrupt = _raised(done)
    if interrupt is not None:
        raise interrupt
    return True


def _raised(tasks: Iterable[asyncio.Task[Any]]) -> BaseException | None:
    """The first ``BaseException`` a job ended with (jobs catch and report
    every ``Exception`` themselves), marking each one retrieved."""
    raised = None
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raised = raised or task.exception()
    return raised


_TOTALS = {
    "hits": "hits",
    "misses": "misses",
    "created": "created_total",
    "finalized": "finalized_total",
    "expired": "expired_total",
    "evicted": "evicted_total",
    "factory_errors": "factory_errors",
    "finalizer_errors": "finalizer_errors",
    "abandoned": "abandoned_total",
}
_GAUGES = (
    "total_entries",
    "referenced_entries",
    "idle_entries",
    "pending_cleanup",
    "creating",
)
