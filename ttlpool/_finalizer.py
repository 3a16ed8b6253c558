"""Finalizing a partition's evicted entries in jobs of its loop.

:class:`Finalizer` is the base of :class:`~ttlpool._partition.Partition`
(which sets every slot declared here): the same ownership rules apply, so
everything here runs on the partition's loop, or on its adopter's once that
loop closed. The calls into user code (``on_remove``, the finalizer) are
:class:`~ttlpool._driver.Driver`'s; what a finalizer returns is awaited
here, in a :class:`~ttlpool._aio.FinishingTask` (once started, a finalizer
runs to its end, and counts as finalized only then), started eagerly
(:func:`~ttlpool._aio.start_task`).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from ttlpool._aio import start_task
from ttlpool._core import Entry
from ttlpool._driver import Driver
from ttlpool._handover import Mailbox, Owner
from ttlpool._jobs import Finalization, FinalizationTask, Job, enter

__all__ = ["Finalizer"]

K = TypeVar("K")
T = TypeVar("T")


class Finalizer(Driver[K, T]):
    """What a partition finalizes with (see the module doc)."""

    __slots__ = ("jobs", "ledger", "loop", "mailbox", "now", "settings")

    jobs: set[Job]
    loop: asyncio.AbstractEventLoop
    mailbox: Mailbox

    def _forsaken(self) -> bool:
        return self.mailbox.owner is Owner.FORKED

    def _start_finalization(
        self, entry: Entry[K, T], awaitable: Any
    ) -> FinalizationTask:
        return self.start_job(Finalization(entry, awaitable))

    def start_job(self, job: Finalization) -> FinalizationTask:
        self.jobs.add(job)
        task = start_task(self.loop, self._run_finalization(job), finishing=True)
        job.task = task
        return task

    async def _run_finalization(self, job: Finalization) -> BaseException | None:
        """Await a finalizer's awaitable; return the ``BaseException`` for
        whoever waits for the job to re-raise (not raised here: the task
        would take it out of the loop before the other jobs ended)."""
        assert job.awaitable is not None
        enter(job.entry, job.awaitable)
        try:
            await job.awaitable
        except GeneratorExit:
            raise  # collected with its closed loop: the adopter settled it
        except BaseException as exc:
            self.jobs.discard(job)
            self.ledger.finalized(job.entry, False)
            return self._failed(exc, job.entry.key)
        self.jobs.discard(job)
        self.ledger.finalized(job.entry, True)
        return None
