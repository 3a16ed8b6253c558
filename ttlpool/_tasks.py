"""The pool's machinery around the ledger: partitions, finalizations in
flight, tasks that cannot be lost, and wake-ups across threads.

Everything here is private to :mod:`ttlpool.pool`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from inspect import CO_ITERABLE_COROUTINE, CORO_CREATED, getcoroutinestate
from types import GeneratorType
from typing import TYPE_CHECKING, Any, Generic, TypeGuard, TypeVar, cast

from ttlpool._core import Entry, Ledger

if TYPE_CHECKING:
    from ttlpool.pool import ResourcePool

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")


def spawn(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, R]
) -> asyncio.Task[R]:
    """A task that, where Python allows, runs eagerly until its first await."""
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, eager_start=True)
    return loop.create_task(coro)


async def awaited(awaitable: Awaitable[R]) -> R:
    return await awaitable


def leftover(
    work: Callable[[], Coroutine[Any, Any, R]], begun: list[Coroutine[Any, Any, R]]
) -> Callable[[], Coroutine[Any, Any, R]]:
    """What is left of a hand-over that the other loop dropped as it stopped.

    ``work()`` ran there when the task was created (evictions, finalizer
    calls); if the coroutine it returned never started, that coroutine is
    what is left. Otherwise ``work()`` again, for whatever remains.
    """
    if begun:
        wrapper, coro = begun
        if getcoroutinestate(wrapper) == CORO_CREATED:
            wrapper.close()  # its task never ran, and never will
        if getcoroutinestate(coro) == CORO_CREATED:
            return lambda: coro
    return work


#: Whether instances of a type are awaitable, per type seen so far.
_AWAITABLE_TYPES: dict[type, bool] = {}


def is_awaitable(obj: object) -> TypeGuard[Awaitable[Any]]:
    """``inspect.isawaitable``, remembering the answer for each type.

    ``hasattr(type, "__await__")`` costs ~250 ns on a plain object (the
    AttributeError it swallows); a dict hit costs ~40 ns.
    """
    kind = type(obj)
    known = _AWAITABLE_TYPES.get(kind)
    if known is not None:
        return known
    if kind is GeneratorType:  # generator-based coroutines: per object
        return bool(obj.gi_code.co_flags & CO_ITERABLE_COROUTINE)  # type: ignore[attr-defined]
    answer = _AWAITABLE_TYPES[kind] = hasattr(kind, "__await__")
    return answer


class Partition(Generic[K, T]):
    """One event loop's view of the pool: ledger, timer and tracked tasks."""

    __slots__ = ("ledger", "loop", "now", "tasks", "thread", "timer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ledger: Ledger[K, T],
        now: Callable[[], float],
    ) -> None:
        self.loop = loop
        self.ledger = ledger
        self.now = now
        self.timer: Any = None
        self.tasks: set[asyncio.Task[Any]] = set()
        #: The thread that runs ``loop`` (the one that made the partition).
        self.thread = threading.current_thread()

    def is_here(self) -> bool:
        """Whether its work may run on the calling thread right now.

        True for the running loop's own partition and for a loop that can
        never run again: closed, or stopped with its thread here or gone.
        A loop that is merely stopped in another live thread may run again
        (``asyncio.run`` stops and restarts its loop while shutting down),
        so its ledger is left to it.
        """
        loop = self.loop
        if loop.is_closed():
            return True
        if loop.is_running():
            return loop is asyncio.get_running_loop()
        return self.thread is threading.current_thread() or not self.thread.is_alive()


class Finalizing:
    """A finalizer's awaitable still to await, with its bookkeeping.

    If the task meant to run it is cancelled before it starts (its loop
    shuts down first, before Python 3.12), ``abandon`` closes the awaitable
    (nothing is left un-awaited) and hands the entry back to the pool, whose
    next ``clear`` or sweep from a live loop finalizes it.
    """

    __slots__ = ("awaitable", "entry", "ledger", "pool", "started")

    def __init__(
        self,
        pool: ResourcePool[Any, Any],
        ledger: Ledger[Any, Any],
        entry: Entry[Any, Any],
        awaitable: Awaitable[object],
    ) -> None:
        self.pool = pool
        self.ledger = ledger
        self.entry = entry
        self.awaitable = awaitable
        self.started = False

    def __await__(self) -> Generator[Any, None, None]:
        return self.run().__await__()

    async def run(self) -> None:
        self.started = True
        failed = False
        try:
            await self.awaitable
        except Exception as exc:
            failed = True
            self.pool._report(exc, "finalize", self.entry.key)
        finally:  # a cancelled finalizer counts as done, not as an error
            self.ledger.finalized(self.entry, not failed)

    def abandon(self, task: asyncio.Task[None]) -> None:
        if self.started or not task.cancelled():
            return
        close = getattr(self.awaitable, "close", None)
        if close is not None:
            close()  # it never ran: the next live loop calls the finalizer again
        self.pool._requeue(self.ledger, self.entry)


def has_work(part: Partition[Any, Any]) -> bool:
    ledger = part.ledger
    return bool(ledger.entries or ledger.creating or part.tasks or part.timer)


def keys_of(part: Partition[Any, Any]) -> list[object]:
    ledger = part.ledger
    return [
        *ledger.entries,
        *ledger.creating,
        *(e.key for e in list(ledger.finalizing)),
    ]


def _started(
    loop: asyncio.AbstractEventLoop, aw: Awaitable[Any]
) -> asyncio.Future[Any]:
    """A task running ``aw`` (a future as it is), safe to cancel unstarted."""
    if isinstance(aw, asyncio.Future):
        return aw
    if isinstance(aw, Finalizing):
        task = spawn(loop, aw.run())
        task.add_done_callback(aw.abandon)
        return task
    task = spawn(loop, cast("Coroutine[Any, Any, Any]", aw))
    if sys.version_info < (3, 12):  # from 3.12 the task starts eagerly
        task.add_done_callback(_close_unstarted)
    return task


def _close_unstarted(task: asyncio.Task[Any]) -> None:
    coro = cast("Coroutine[Any, Any, Any]", task.get_coro())
    if task.cancelled() and getcoroutinestate(coro) == CORO_CREATED:
        coro.close()


def wake(waiter: asyncio.Future[None]) -> None:
    loop = waiter.get_loop()
    try:
        if loop is asyncio.get_running_loop():
            if not waiter.done():
                waiter.set_result(None)
            return
    except RuntimeError:
        pass
    with contextlib.suppress(RuntimeError):  # that loop closed: its waiter is gone
        loop.call_soon_threadsafe(_wake_here, waiter)


def _wake_here(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def copy_outcome(
    target: concurrent.futures.Future[Any], task: asyncio.Task[Any]
) -> None:
    if task.cancelled():
        target.set_exception(asyncio.CancelledError())
    elif task.exception() is not None:
        target.set_exception(task.exception())
    else:
        target.set_result(task.result())


async def gather_raising(awaitables: Iterable[Awaitable[Any]]) -> None:
    """Await all concurrently; report nothing, re-raise the first failure
    once all have ended.

    One is awaited right here. Several run in tasks started now, each of
    which settles what it carries even if it is cancelled before its first
    step (Python < 3.12, a loop shutting down): nothing is left un-awaited.
    """
    aws = list(awaitables)
    if not aws:
        return
    if len(aws) == 1:
        await aws[0]
        return
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(
        *(_started(loop, aw) for aw in aws), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
