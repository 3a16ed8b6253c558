"""What a partition runs on its loop, and what it runs it with.

A *job* is a creation or a finalization that a partition awaits in a task
of its loop. This module holds the job records, the context variable that
tells code which jobs it runs inside of, the :class:`Settings` every
partition of a pool shares (factory, finalizer, clock, error reporting),
and small helpers about jobs' tasks. It knows nothing of partitions,
ledgers' decisions or other loops.

Who touches what: a job belongs to the partition that started it (its
loop's thread). ``Settings`` is fixed at construction, except ``errors``,
which any thread adds to under ``errors_lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from inspect import CORO_CREATED, getcoroutinestate
from typing import Any, cast

from ttlpool._core import Creation, Entry
from ttlpool.clock import Clock
from ttlpool.stats import RemovalCause

__all__ = [
    "INSIDE",
    "CreationJob",
    "CreationLost",
    "ErrorHook",
    "Finalization",
    "FinalizationTask",
    "InsideOf",
    "Job",
    "RemoveHook",
    "Settings",
    "cycle_message",
    "enter",
    "forget_task",
    "inside_of",
    "never_started",
    "wait_finalizations",
]

log = logging.getLogger("ttlpool")

#: The jobs (creations and finalizations) the current code runs inside of.
INSIDE: ContextVar[tuple[InsideOf, ...]] = ContextVar("ttlpool_inside", default=())

#: ``on_error(exception, operation, key)``.
ErrorHook = Callable[[BaseException, str, Any], None]
#: ``on_remove(key, resource, cause)``.
RemoveHook = Callable[[Any, Any, RemovalCause], object]


class CreationLost(RuntimeError):
    """The loop running a creation closed before it ended (shared entries):
    its waiters on other loops start a new one."""


class Settings:
    """What every partition of one pool shares, fixed at construction."""

    __slots__ = (
        "clock",
        "errors",
        "errors_lock",
        "factory",
        "finalizer",
        "leak_timeout",
        "on_error",
        "on_remove",
        "timer_fired",
        "validate",
    )

    def __init__(
        self,
        factory: Callable[[Any], Any],
        finalizer: Callable[[Any], object] | None,
        on_error: ErrorHook | None,
        clock: Clock,
        timer_fired: Callable[[Any], list[FinalizationTask]] | None,
        *,
        validate: Callable[[Any], object] | None = None,
        on_remove: RemoveHook | None = None,
        leak_timeout: float | None = None,
    ) -> None:
        self.factory = factory
        self.finalizer = finalizer
        self.on_error = on_error
        self.clock = clock
        self.validate = validate
        self.on_remove = on_remove
        self.leak_timeout = leak_timeout
        #: What a partition's timer calls (the pool picks the partition of
        #: the loop the clock called back on, and reaps there); ``None`` for
        #: a pool with no event loop.
        self.timer_fired = timer_fired
        #: Every error the pool caught, from any thread (under ``errors_lock``).
        self.errors = 0
        self.errors_lock = threading.Lock()

    def renewed(
        self, timer_fired: Callable[[Any], list[FinalizationTask]] | None
    ) -> Settings:
        """The same settings with a new lock and no errors counted (a
        child's after ``os.fork()``)."""
        return Settings(
            self.factory,
            self.finalizer,
            self.on_error,
            self.clock,
            timer_fired,
            validate=self.validate,
            on_remove=self.on_remove,
            leak_timeout=self.leak_timeout,
        )

    def report(
        self, exc: BaseException, operation: str, key: object
    ) -> BaseException | None:
        """Log, count and hand to ``on_error`` an error the pool caught.

        Returns a ``BaseException`` that ``on_error`` raised, for the caller
        to re-raise once its own bookkeeping is done; an ``Exception`` from
        the hook is logged and dropped.
        """
        with self.errors_lock:
            self.errors += 1
        log.error("ttlpool: %s of key %r failed", operation, key, exc_info=exc)
        if self.on_error is None:
            return None
        try:
            self.on_error(exc, operation, key)
        except Exception:
            log.exception(
                "ttlpool: on_error hook failed for %s of key %r", operation, key
            )
        except BaseException as interrupt:
            return interrupt
        return None


class CreationJob:
    """A factory's awaitable, awaited in a task of the partition."""

    __slots__ = ("awaitable", "creation", "task")

    def __init__(self, creation: Creation[Any, Any], awaitable: Awaitable[Any]) -> None:
        self.creation = creation
        self.awaitable = awaitable
        self.task: asyncio.Task[None] | None = None


#: A finalization job's task: it returns the BaseException to re-raise.
FinalizationTask = asyncio.Task["BaseException | None"]


class Finalization:
    """A finalizer's awaitable, awaited in a finishing task of the partition."""

    __slots__ = ("awaitable", "entry", "task")

    def __init__(self, entry: Entry[Any, Any], awaitable: Awaitable[object]) -> None:
        self.entry = entry
        self.awaitable = awaitable
        self.task: FinalizationTask | None = None


Job = CreationJob | Finalization
#: What code can run inside of: a creation (its factory), or the finalization
#: of an entry (its finalizer).
InsideOf = Creation[Any, Any] | Entry[Any, Any]


def enter(marker: InsideOf, awaitable: Awaitable[Any]) -> None:
    """Called first thing in a job's task: from now on the code it runs
    (the awaitable's) is inside ``marker`` (see :data:`INSIDE`).

    The job's task runs in a copy of its starter's context, so this touches
    nothing else. The factory or finalizer *call* ran without the marker
    (setting a context variable costs more than a warm hit, and a sync call
    has no job to be inside of); a task that the call started and returned
    as its awaitable runs in a context of its own: it gets the marker too.
    """
    INSIDE.set((*INSIDE.get(), marker))
    if isinstance(awaitable, asyncio.Task):
        context: contextvars.Context | None = getattr(awaitable, "_context", None)
        if sys.version_info >= (3, 12):
            context = awaitable.get_context()
        if context is not None:
            with contextlib.suppress(RuntimeError):  # entered: it is this one
                context.run(INSIDE.set, (*context.run(INSIDE.get), marker))


def inside_of(job: Job) -> InsideOf:
    """What code running in ``job`` is inside of (see :data:`INSIDE`)."""
    return job.creation if isinstance(job, CreationJob) else job.entry


def never_started(task: asyncio.Task[Any]) -> bool:
    coro = cast("Coroutine[Any, Any, Any]", task.get_coro())
    return getcoroutinestate(coro) == CORO_CREATED


def forget_task(task: asyncio.Task[Any]) -> None:
    """A task of a closed loop that will never end: close its coroutine if it
    never started, and keep asyncio from logging its destruction (the pool
    reports what it cut off itself)."""
    if never_started(task):
        cast("Coroutine[Any, Any, Any]", task.get_coro()).close()
    setattr(task, "_log_destroy_pending", False)  # noqa: B010 (no public way)


def cycle_message(creation: Creation[Any, Any], inside: tuple[InsideOf, ...]) -> str:
    chain = [
        job.key for job in inside[inside.index(creation) :] if isinstance(job, Creation)
    ]
    cycle = " -> ".join(repr(key) for key in [*chain, creation.key])
    return (
        f"acquire({creation.key!r}): the factory of key {creation.key!r} acquires "
        f"that key itself (cycle: {cycle}); it would wait for itself forever"
    )


async def wait_finalizations(tasks: list[FinalizationTask]) -> None:
    """Wait for finalization jobs, every one of them, even if the caller is
    cancelled meanwhile (they refuse to be cancelled, so its
    ``CancelledError`` comes once they ended); re-raise the first
    ``BaseException`` one of them returned."""
    if len(tasks) == 1:
        interrupt = await tasks[0]
    elif tasks:
        interrupt = next(filter(None, await asyncio.gather(*tasks)), None)
    else:
        return
    if interrupt is not None:
        raise interrupt
