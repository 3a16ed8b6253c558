"""Finalizing a partition's evicted entries: ``on_remove``, the finalizer,
and the jobs that await what it returns.

:class:`Finalizer` is the base of :class:`~ttlpool._partition.Partition`
(which sets every slot declared here): the same ownership rules apply, so
everything here runs on the partition's loop, or on its adopter's once that
loop closed. A finalization runs in a :class:`~ttlpool._aio.FinishingTask`
(once started, a finalizer runs to its end, and counts as finalized only
then), started eagerly (:func:`~ttlpool._aio.start_task`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Generic, TypeVar

from ttlpool._aio import is_awaitable, start_task
from ttlpool._core import Entry, Ledger
from ttlpool._handover import Mailbox, Owner
from ttlpool._jobs import (
    Finalization,
    FinalizationTask,
    Job,
    RemoveHook,
    Settings,
    enter,
)

__all__ = ["Finalizer"]

K = TypeVar("K")
T = TypeVar("T")

log = logging.getLogger("ttlpool")


class Finalizer(Generic[K, T]):
    """What a partition finalizes with (see the module doc)."""

    __slots__ = ("jobs", "ledger", "loop", "mailbox", "settings")

    jobs: set[Job]
    ledger: Ledger[K, T]
    loop: asyncio.AbstractEventLoop
    mailbox: Mailbox
    settings: Settings

    def finalize(self, entries: Iterable[Entry[K, T]]) -> list[FinalizationTask]:
        """Call the finalizer of each evicted entry; return the jobs that
        await what the finalizers returned.

        Every entry is finalized (or its finalizer reported as failed) even
        if one finalizer or the ``on_error`` hook raises a ``BaseException``;
        that is re-raised after the last one. A partition that a fork left
        behind finalizes nothing: its resources are the parent's.
        """
        if self.mailbox.owner is Owner.FORKED:
            return []
        ledger, finalizer = self.ledger, self.settings.finalizer
        on_remove = self.settings.on_remove
        tasks: list[FinalizationTask] = []
        interrupt: BaseException | None = None
        for entry in entries:
            if on_remove is not None:
                raised = self._removed(on_remove, entry)
                interrupt = interrupt or raised
            if finalizer is None:
                ledger.finalized(entry, True)
                continue
            try:
                result = finalizer(entry.resource)
            except BaseException as exc:
                ledger.finalized(entry, False)
                raised = self._failed(exc, entry.key)
                interrupt = interrupt or raised
                continue
            if not is_awaitable(result):
                ledger.finalized(entry, True)
                continue
            job = Finalization(entry, result)
            tasks.append(self._start_finalization(job))
        if interrupt is not None:
            raise interrupt
        return tasks

    def _removed(
        self, on_remove: RemoveHook, entry: Entry[K, T]
    ) -> BaseException | None:
        """Call ``on_remove`` for an evicted entry, with the cause the ledger
        recorded; what it raises is reported like a finalizer's."""
        try:
            result = on_remove(entry.key, entry.resource, self.ledger.finalizing[entry])
            if is_awaitable(result):
                if asyncio.iscoroutine(result):
                    result.close()
                raise TypeError(
                    f"on_remove returned an awaitable ({result!r}) for key "
                    f"{entry.key!r}: on_remove must be a sync callable"
                )
        except BaseException as exc:
            return self._failed(exc, entry.key, "on_remove")
        return None

    def _failed(
        self, exc: BaseException, key: object, operation: str = "finalize"
    ) -> BaseException | None:
        """Report a finalizer's (or hook's) ``Exception``; return, logged,
        the ``BaseException`` to re-raise (``exc``, or one ``on_error`` raised)."""
        if isinstance(exc, Exception):
            interrupt = self.settings.report(exc, operation, key)
        else:
            interrupt = exc
        if interrupt is not None:
            log.error(
                "ttlpool: %s of key %r raised", operation, key, exc_info=interrupt
            )
        return interrupt

    def _start_finalization(self, job: Finalization) -> FinalizationTask:
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
