"""Every partition of one pool, by event loop, and the routes between them.

What lives here: the map from event loops to their partitions, how an
operation reaches another loop's partition (through :mod:`ttlpool._handover`,
whose guarantee this module relies on), the adoption of partitions whose
loops closed, the generations of ``clear`` and the spread of ``expire``.
What does not: decisions about counts and deadlines (:mod:`ttlpool._core`),
what needs one loop (:mod:`ttlpool._partition`), and the public API
(:mod:`ttlpool.pool`, which owns one :class:`Partitions`).

Who touches what:

- ``all`` (every partition not yet adopted, by loop), ``retired`` (the
  running totals of adopted per-loop ledgers) and ``closed`` are written
  only under ``lock``.
- ``parts`` is ``all`` while the pool is open and an empty dict once it is
  closed. It is replaced only under ``lock`` and read without it by the hot
  path: one dict lookup, which no thread interleaves.
- A partition's ledger, timer and jobs belong to its loop's thread, then to
  the partition that adopted it; other threads read them only through
  copies and counters (:meth:`Partitions.ledgers`).
- After ``os.fork()`` the child calls :meth:`Partitions.forget`: the
  parent's partitions are marked FORKED (they finalize nothing) and every
  lock they could take is new.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
import weakref
from _thread import get_ident
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from ttlpool._aio import call_soon_threadsafe, on_shutdown
from ttlpool._checks import unhashable
from ttlpool._core import Creation, Entry, Ledger
from ttlpool._handover import Answer, Owner, Request, Route
from ttlpool._jobs import (
    ErrorHook,
    FinalizationTask,
    RemoveHook,
    Settings,
)
from ttlpool._locked_ledger import LockedLedger
from ttlpool._partition import Partition
from ttlpool._snapshot import add_totals, new_totals
from ttlpool.clock import Clock
from ttlpool.errors import PoolClosedError

__all__ = ["Partitions"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

log = logging.getLogger("ttlpool")

#: Every pool's partitions, for the fork hook at the end of this module.
_EVERY: weakref.WeakSet[Partitions[Any, Any]] = weakref.WeakSet()


class Partitions(Generic[K, T]):
    """Every partition of one pool, by event loop (see the module doc)."""

    __slots__ = (
        "__weakref__",
        "all",
        "by_thread",
        "closed",
        "lock",
        "max_idle",
        "parts",
        "policies",
        "retired",
        "retired_removed",
        "settings",
        "shared",
        "ttl",
    )

    def __init__(
        self,
        *,
        factory: Callable[[Any], Any],
        finalizer: Callable[[Any], object] | None,
        on_error: ErrorHook | None,
        clock: Clock,
        ttl: float,
        max_idle: int | None,
        per_loop: bool,
        validate: Callable[[Any], object] | None = None,
        max_lifetime: float | None = None,
        on_remove: RemoveHook | None = None,
        leak_timeout: float | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_idle = max_idle
        #: What every ledger of the pool is built with beyond ttl and max_idle.
        self.policies: dict[str, Any] = {
            "validates": validate is not None,
            "max_lifetime": max_lifetime,
        }
        self.settings = Settings(
            factory,
            finalizer,
            on_error,
            clock,
            self.timer_fired,
            validate=validate,
            on_remove=on_remove,
            leak_timeout=leak_timeout,
        )
        self.lock = threading.Lock()
        self.closed = False
        self.all: dict[asyncio.AbstractEventLoop, Partition[K, T]] = {}
        self.parts = self.all
        #: Each thread's partition, as of its last acquire (before 3.12).
        self.by_thread: dict[int, Partition[K, T]] = {}
        self.shared: LockedLedger[K, T] | None = (
            None
            if per_loop
            else LockedLedger(ttl, max_idle, threading.Lock(), **self.policies)
        )
        self.retired, self.retired_removed = new_totals()
        _EVERY.add(self)

    def forget(self) -> None:
        """Start empty, in a child after ``os.fork()``.

        The parent's partitions are marked FORKED (their resources are the
        parent's: they finalize nothing), and every lock they could take is
        replaced: a thread of the parent may have held it at the fork, and
        that thread does not exist here.
        """
        for part in self.all.values():
            part.mailbox.owner = Owner.FORKED
            part.mailbox.lock = threading.Lock()
        settings = self.settings
        self.settings = settings.renewed(self.timer_fired)
        settings.errors_lock = threading.Lock()
        if self.shared is not None:
            self.shared.lock = threading.Lock()
            self.shared = LockedLedger(
                self.ttl, self.max_idle, threading.Lock(), **self.policies
            )
        self.lock = threading.Lock()
        self.all = {}
        self.parts = {} if self.closed else self.all
        self.by_thread = {}
        self.retired, self.retired_removed = new_totals()

    def close(self) -> None:
        """Every later acquire raises: hits miss, and misses see ``closed``."""
        with self.lock:
            self.closed = True
            self.parts = {}
            self.by_thread = {}

    # -- acquiring -----------------------------------------------------------

    if sys.version_info >= (3, 12):

        def current(self) -> Partition[K, T] | None:
            """The running loop's partition (``None``: it has none yet, or
            the pool is closed). Called from a coroutine on that loop."""
            return self.parts.get(asyncio.get_running_loop())

    else:

        def current(self) -> Partition[K, T] | None:
            # Before 3.12, asking asyncio for the running loop costs a
            # getpid() system call (a third of a warm hit). A thread runs one
            # loop at a time, so each thread's last partition is kept, and
            # trusted while its loop says it runs on this very thread (a
            # loop that exposes no ``_thread_id``, like uvloop's, is always
            # asked for). ``forget`` and ``close`` drop every one of them.
            thread = get_ident()
            part = self.by_thread.get(thread)  # (the lease inlines these lines)
            if part is not None and part.loop._thread_id == thread:  # type: ignore[attr-defined]
                return part
            loop = asyncio.get_running_loop()
            part = self.parts.get(loop)
            if part is not None and getattr(loop, "_thread_id", None) == thread:
                self.by_thread[thread] = part
            return part

    def start_acquire(
        self, key: K, operation: str, missed_in: Partition[K, T] | None
    ) -> tuple[Partition[K, T], Entry[K, T] | Creation[K, T]]:
        """The synchronous start of a slow acquire (new loop, miss, closed
        pool): the entry (a hit, or a creation a sync factory settled at
        once), or the creation to wait for with :meth:`wait_for`.
        ``missed_in``: the partition whose ``hit`` missed."""
        part = missed_in
        if part is None or self.closed:
            part = self.partition_for(asyncio.get_running_loop(), key, operation)
        ledger = part.ledger
        found: Entry[K, T] | Creation[K, T] | None = None
        started = False
        try:
            if ledger.guarded:
                found, started = ledger.lookup(key, part is missed_in, part.now())
                if ledger.victims:  # an idle entry past its lifetime
                    part.finalize(ledger.take_victims())
            elif not part.own_ledger or key in ledger.creating:
                found, started = ledger.lookup(key, part is missed_in)
            elif part is not missed_in:
                found = ledger.hit(key)
        except TypeError:
            raise unhashable(operation, key) from None
        if found is None or started:
            if len(self.all) > 1:
                self.sweep(part)
            if found is None:
                # This loop's thread alone touches its ledger, and no other
                # acquire can run during a sync call: the factory is called
                # before any creation exists (only an awaitable makes one).
                return part, part.create_at_once(key)
            assert isinstance(found, Creation)
            found.owner = part
            part.create(found)
        if isinstance(found, Creation) and found.done and found.entry is not None:
            return part, found.entry  # no coroutine for a sync factory
        return part, found

    async def wait_for(
        self, part: Partition[K, T], creation: Creation[K, T], key: K, operation: str
    ) -> tuple[Partition[K, T], Entry[K, T]]:
        """Wait for a creation; if it was lost with another loop (shared
        entries), start over."""
        while True:
            entry = await part.wait(creation)
            if entry is not None:
                return part, entry
            part, found = self.start_acquire(key, operation, None)
            if isinstance(found, Entry):
                return part, found
            creation = found

    def partition_for(
        self, loop: asyncio.AbstractEventLoop, key: K, operation: str
    ) -> Partition[K, T]:
        """The partition of ``loop`` for an acquire; raises once closed."""
        with self.lock:
            if self.closed:
                raise PoolClosedError(f"{operation}({key!r}): the pool is closed")
            part = self.all.get(loop)
            if part is None:
                part = self.new_partition(loop)
        if len(self.all) > 1:
            self.sweep(part)
        return part

    def home(self, loop: asyncio.AbstractEventLoop) -> Partition[K, T]:
        """The partition of ``loop``, made even when the pool is closed (it
        takes over what closed loops left)."""
        part = self.all.get(loop)
        if part is None:
            with self.lock:
                part = self.all.get(loop) or self.new_partition(loop)
        return part

    def new_partition(self, loop: asyncio.AbstractEventLoop) -> Partition[K, T]:
        """A partition for ``loop``, the running loop (``_lock`` held)."""
        ledger: Ledger[K, T] = self.shared or Ledger(
            self.ttl, self.max_idle, **self.policies
        )
        part = self.all[loop] = Partition(loop, ledger, self.settings, self.lock)
        part.watcher = on_shutdown(loop, part.shutting_down)
        return part

    # -- work that crosses loops -----------------------------------------------

    @staticmethod
    def release_from_anywhere(
        part: Partition[Any, Any], entry: Entry[Any, Any]
    ) -> None:
        """Release a lease whose coroutine is being closed, maybe by the
        garbage collector, on any thread, in the middle of anything (even of
        a step that holds a lock this release would take): so nothing here
        awaits or takes a lock. The release is noted in the partition's
        ``given_back`` and posted to its loop, its own included; if that loop
        closes first, whoever adopts the partition finds it there."""
        part.given_back.append(entry)  # one step: no thread interleaves it
        call_soon_threadsafe(part.loop, Partitions.release_posted, part, entry)

    @staticmethod
    def release_posted(part: Partition[Any, Any], entry: Entry[Any, Any]) -> None:
        # A loop that shuts down finishes nothing new: the adopter does it.
        mailbox = part.mailbox
        if mailbox.owner is Owner.LIVE and not mailbox.closing:
            part.given_back.remove(entry)
            part.release_soon(entry)

    def sweep(self, here: Partition[K, T]) -> bool:
        """Adopt every partition whose loop closed into ``here`` (on its
        running loop) and start finalizing what they left. Returns whether
        there was any."""
        with self.lock:
            dead = [
                part
                for part in list(self.all.values())
                if part is not here and part.mailbox.route(here.loop) is Route.ADOPT
            ]
        if dead:
            self.adopt(here, dead)
        return bool(dead)

    def adopt(
        self, here: Partition[K, T], dead: list[Partition[K, T]]
    ) -> list[FinalizationTask]:
        """``here`` takes over partitions routed ``ADOPT`` to this caller;
        returns the finalization jobs started. Unanswered requests to them
        are answered (there was nothing left for their owner to do)."""
        tasks: list[FinalizationTask] = []
        interrupt: BaseException | None = None
        for part in dead:
            with self.lock:
                requests = part.mailbox.take_requests()
                if self.all.get(part.loop) is part:
                    del self.all[part.loop]
                if part.ledger is not self.shared:
                    add_totals(self.retired, self.retired_removed, part.ledger)
            try:
                tasks += here.adopt(part)
            except BaseException as exc:  # a sync finalizer's: after the rest
                interrupt = interrupt or exc
            for request in requests:
                request.answer(False)
        if interrupt is not None:
            raise interrupt
        return tasks

    def send_all(
        self,
        here: Partition[K, T],
        work: Callable[[Partition[K, T]], bool | Awaitable[bool]],
        skip: Iterable[Partition[K, T]] = (),
    ) -> tuple[
        list[tuple[Partition[K, T], asyncio.Future[Answer]]],
        list[Partition[K, T]],
        list[Partition[K, T]],
    ]:
        """Send ``work`` to the owner of every other partition but ``skip``
        (those hold it already; one whose loop has closed since is adopted).

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
        with self.lock:
            for part in list(self.all.values()):
                if part is here:
                    continue
                if part in skipped:  # it holds the request already
                    if part.mailbox.route(loop) is Route.ADOPT:  # closed since
                        adopted.append(part)
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

    # -- the timer --------------------------------------------------------------

    def timer_fired(self, part: Partition[K, T]) -> list[FinalizationTask]:
        """A partition's timer went off (on the loop its clock called back
        on: its own, or, with a shared ledger and a foreign clock, another)."""
        part.timer = None
        if part.mailbox.owner is not Owner.LIVE or part.mailbox.closing:
            return []
        loop = asyncio.get_running_loop()
        here = part if part.loop is loop else self.home(loop)
        if len(self.all) > 1:
            self.sweep(here)
        return here.reap()

    # -- observation -----------------------------------------------------------

    def ledgers(self) -> list[Ledger[K, T]]:
        """Each ledger once (called with ``_lock`` held)."""
        if self.shared is not None:
            return [self.shared]
        return [part.ledger for part in self.all.values()]


def _after_fork_in_child() -> None:
    for partitions in list(_EVERY):
        partitions.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
