"""One event loop's share of a pool: its ledger, its timer, its jobs.

A :class:`Partition` is the unit that owns one loop's slot of a pool, the
way a connection holder owns its connection: it calls the factory and the
finalizer and awaits what they return, keeps the one idle timer of its loop
armed for the ledger's next deadline, and tracks every task it starts (a
*job*: a creation or a finalization) so that ``clear`` can wait for them.
It knows nothing of other partitions, of the pool's partition map, or of
how work reaches it from other threads (:mod:`ttlpool._handover` does).

Who touches what. Everything here runs on the partition's own loop, in its
thread, while the partition is LIVE; after its loop closed, only the one
partition that adopted it (:meth:`Partition.adopt`, on the adopter's loop)
touches it. ``jobs``, ``timer`` and ``watcher`` follow that rule; ``ledger``
too, unless it is the ``LockedLedger`` every loop shares, which locks
itself. ``given_back`` takes appends from any thread (one step each).

Jobs run in tasks: a creation in an ordinary task (a loop that shuts down
may cut its factory off: nothing is cached then), a finalization in a
:class:`~ttlpool._aio.FinishingTask` (once started, a finalizer runs to its
end, and counts as finalized only then). Both start eagerly
(:func:`~ttlpool._aio.start_task`). A job's code knows which job it runs inside of (see
:data:`~ttlpool._jobs.INSIDE`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncGenerator, Iterable
from typing import Any, TypeVar

from ttlpool._aio import is_awaitable, resolve, resolve_threadsafe, start_task
from ttlpool._core import Creation, Entry, Ledger
from ttlpool._driver import factory_failed
from ttlpool._finalizer import Finalizer
from ttlpool._handover import Mailbox, Owner
from ttlpool._jobs import (
    CreationJob,
    CreationLost,
    Finalization,
    FinalizationTask,
    InsideOf,
    Job,
    Settings,
    enter,
    forget_task,
    inside_of,
    never_started,
    wait_finalizations,
)
from ttlpool.clock import TimerHandle

__all__ = ["REAP_SLICE", "Partition"]

K = TypeVar("K")
T = TypeVar("T")

log = logging.getLogger("ttlpool")

#: Expired entries finalized per timer callback before yielding to the loop.
REAP_SLICE = 128


class Partition(Finalizer[K, T]):
    """One event loop's ledger, idle timer and jobs."""

    __slots__ = (
        "given_back",
        "inline",
        "own_ledger",
        "thread",
        "timer",
        "watcher",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ledger: Ledger[K, T],
        settings: Settings,
        lock: Any,
    ) -> None:
        self.loop = loop
        self.ledger = ledger
        self.settings = settings
        self.now = settings.clock.now
        #: Its ledger is its own (not one every loop shares, which locks).
        self.own_ledger = type(ledger) is Ledger
        #: A lease may do its hit and release inline: no lifetime to check,
        #: no leak to watch (a reuse of an idle entry still asks
        #: ``ledger.validates``).
        self.inline = (
            self.own_ledger
            and ledger.lifetimes is None
            and settings.leak_timeout is None
        )
        self.mailbox = Mailbox(loop, lock)
        self.jobs: set[Job] = set()
        self.timer: TimerHandle | None = None
        self.watcher: AsyncGenerator[None, None] | None = None
        #: Leases given back from anywhere (a collected lease), posted to
        #: this loop and not released yet: appended by any thread, removed
        #: here; once the loop closed, the adopter releases what is left.
        self.given_back: list[Entry[K, T]] = []
        #: The thread that made the partition (its loop's, then): for repr.
        self.thread = threading.current_thread().name

    def __repr__(self) -> str:
        return (
            f"<Partition {self.mailbox.owner.value} of {self.thread!r} "
            f"entries={len(self.ledger.entries)} jobs={len(self.jobs)}>"
        )

    # -- creation --------------------------------------------------------------

    def create_at_once(self, key: K) -> Entry[K, T] | Creation[K, T]:
        """A miss on this loop's own ledger, with no creation of ``key`` in
        flight: call the factory now. A sync result is the entry (holding
        the caller's reference); an awaitable starts a creation whose job
        awaits it. What the factory raises is the caller's."""
        ledger = self.ledger
        try:
            result = self.settings.factory(key)
        except BaseException as exc:
            ledger.failed_at_once()
            factory_failed(exc, key)
            raise
        if not is_awaitable(result):
            return ledger.created_at_once(key, result)
        creation, _ = ledger.lookup(key, missed=True)
        assert isinstance(creation, Creation)
        creation.owner = self
        self._start_creation(creation, result)
        if creation.done and creation.entry is not None:
            return creation.entry  # its task ran to the end eagerly
        return creation

    def _start_creation(self, creation: Creation[K, T], awaitable: Any) -> None:
        job = CreationJob(creation, awaitable)
        self.jobs.add(job)
        job.task = start_task(self.loop, self._run_creation(job))

    async def _run_creation(self, job: CreationJob) -> None:
        creation = job.creation
        enter(creation, job.awaitable)
        try:
            resource = await job.awaitable
        except GeneratorExit:
            raise  # collected with its closed loop: the adopter settled it
        except BaseException as exc:
            if creation.stale is not None:  # validate raised
                resource = exc
            else:
                self._creation_failed(job, exc)
                return
        self.jobs.discard(job)
        if creation.stale is not None:  # validate answered
            try:
                if not self.validated(creation, resource):
                    self.create(creation)
            except Exception:
                raise
            except BaseException:  # a KeyboardInterrupt: the waiters have it
                pass
            return
        action = self.creation_ended(creation, resource)
        if action and creation.entry is not None:
            await wait_finalizations(self.after_release(creation.entry, action))

    def _creation_failed(self, job: CreationJob, exc: BaseException) -> None:
        # Every waiter gets it; the task itself ends quietly, so that a
        # KeyboardInterrupt does not leave the event loop from here.
        creation = job.creation
        self.jobs.discard(job)
        self.creation_ended(creation, error=exc)
        if creation.waiters == 0 and isinstance(exc, Exception):
            self.settings.report(exc, "create", creation.key)  # nobody else

    def _wake(self, creation: Creation[K, T]) -> None:
        """Wake every waiter of a creation that ended."""
        for waiter in creation.listeners:
            if waiter.get_loop() is self.loop:
                resolve(waiter, None)
            else:  # a shared ledger's waiter on another loop
                resolve_threadsafe(waiter, None)

    async def wait(self, creation: Creation[K, T]) -> Entry[K, T] | None:
        """Wait, as a counted waiter, for a creation this caller joined.

        Returns the entry (holding this waiter's reference), or ``None`` when
        the creation was lost with its loop and the caller must start over.
        A cancelled waiter leaves no reference behind. Joining a creation
        that the calling code runs inside of is a cycle: ``RuntimeError``.
        """
        self.joining(creation)
        if not creation.done:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self.ledger.listen(creation, waiter):
                try:
                    await waiter
                except asyncio.CancelledError:
                    self.gave_up(creation)
                    raise
        if isinstance(creation.error, CreationLost):
            return None
        if creation.error is not None:
            raise creation.error
        return creation.entry

    # -- the loop's shutdown ----------------------------------------------------

    async def shutting_down(self) -> None:
        """The loop shuts down (:func:`~ttlpool._aio.on_shutdown`): from now
        on it claims no request and its timer starts nothing (what is left
        goes to whoever adopts the partition once the loop closed); wait
        for every job and request in flight to end, so that a finalizer
        started during the shutdown still runs to its end on its own loop."""
        mailbox = self.mailbox
        if mailbox.owner is not Owner.LIVE:
            return
        with mailbox.lock:
            mailbox.closing = True
        if self.timer is not None:
            self.cancel_timer()
            if not self.own_ledger:  # the next release, on any loop, re-arms
                self.ledger.timer_gone()
        while pending := [
            job.task for job in list(self.jobs) if job.task and not job.task.done()
        ] + list(mailbox.busy):
            await asyncio.wait(pending)

    # -- the idle timer ------------------------------------------------------------

    def arm(self) -> None:
        """Arm this loop's timer for the ledger's next deadline, if it has one."""
        deadline = self.ledger.timer_deadline
        if deadline is not None:
            # One timer per loop: with shared entries, a clear from another
            # loop empties the ledger's deadline but cannot cancel this one.
            self.cancel_timer()
            assert self.settings.timer_fired is not None
            fired = functools.partial(self.settings.timer_fired, self)
            self.timer = self.settings.clock.call_at(self.loop, deadline, fired)

    def cancel_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def reap(self) -> list[FinalizationTask]:
        """Finalize one slice of expired entries, then re-arm (for the next
        deadline, or at once when more have expired: the loop runs other
        callbacks in between). Runs on this partition's loop."""
        expired, _ = self.ledger.timer_fired(self.now(), REAP_SLICE)
        self.arm()
        return self.finalize(expired)

    # -- work that clear, expire and adoption hand to the partition -----------------

    def clear(self, skip: Iterable[InsideOf]) -> tuple[bool, list[asyncio.Task[Any]]]:
        """Evict every entry now and start its finalizer; return whether
        there was anything to do, and the jobs to wait for (every job of
        this partition but those in ``skip``, which the caller is inside
        of)."""
        self.cancel_timer()
        evicted = self.ledger.evict_all()
        # Those started now are waited for even if they are done already (a
        # job that started eagerly may have ended with what to re-raise).
        started: list[asyncio.Task[Any]] = list(self.finalize(evicted))
        skipped = set(skip)
        waits = started + [
            job.task
            for job in list(self.jobs)
            if inside_of(job) not in skipped
            and job.task is not None
            and job.task not in started
            and not job.task.done()
        ]
        return bool(evicted or waits), waits

    def expire(self, key: K) -> list[FinalizationTask]:
        """Retire ``key``: finalize its idle entry now, or mark it."""
        entry = self.ledger.expire(key)
        return self.finalize([entry]) if entry is not None else []

    def adopt(self, dead: Partition[K, T]) -> list[FinalizationTask]:
        """Take over, on this loop, what a partition whose loop closed left.

        Its jobs never run again: a finalization that never started starts
        here, one that started is reported as cut off (never run twice); a
        creation is dropped (on a shared ledger, failed: its waiters on live
        loops start over). Per loop, its entries are finalized here; on a
        shared ledger they stay, and the timer it held is armed here.
        """
        # The ledger first: every finalization in flight is then ours.
        if dead.ledger is self.ledger:
            lost = CreationLost("the event loop running this creation closed")
            for creation in self.ledger.fail_creations(dead, lost):
                for waiter in creation.listeners:
                    resolve_threadsafe(waiter, None)
            evicted = self.ledger.take_victims()  # entries they were validating
            if dead.timer is not None:  # it held the shared timer
                dead.cancel_timer()  # (a clock may run it on another loop)
                if self.ledger.timer_lost(self.now()) is not None:
                    self.arm()
            given_back, dead.given_back = dead.given_back, []
            for entry in given_back:  # leases it never got to release
                self.release_soon(entry)
        else:
            dead.cancel_timer()
            evicted = dead.ledger.retire_into(self.ledger)
        restart: list[Finalization] = []
        for job in list(dead.jobs):
            assert job.task is not None
            started = not never_started(job.task)
            forget_task(job.task)
            if isinstance(job, Finalization):
                if started:
                    self.ledger.abandoned(job.entry)
                    log.warning(
                        "ttlpool: the finalizer of key %r was cut off: its event "
                        "loop closed while it ran; it is not run again",
                        job.entry.key,
                    )
                else:
                    restart.append(job)
            elif not started and asyncio.iscoroutine(job.awaitable):
                job.awaitable.close()  # the factory's coroutine never ran
        dead.jobs.clear()
        for task in dead.mailbox.busy:  # its answers: the callers route again
            forget_task(task)
        dead.mailbox.busy.clear()
        tasks = [self.start_job(job) for job in restart]
        return tasks + self.finalize(evicted)
