"""Small asyncio helpers: tasks that finish what they start, wake-ups across
threads, awaitables of any kind, and word of a loop's shutdown.

Nothing here knows about pools, partitions or ledgers. Nothing here holds
state that two threads share: every function acts on the objects it is
given, on the thread that calls it, except :func:`call_soon_threadsafe`,
which is asyncio's one thread-safe entry into another loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from inspect import CO_ITERABLE_COROUTINE
from types import GeneratorType
from typing import Any, TypeGuard, TypeVar, cast

__all__ = [
    "FinishingTask",
    "as_coroutine",
    "call_soon_threadsafe",
    "is_awaitable",
    "on_shutdown",
    "resolve",
    "resolve_threadsafe",
    "start_task",
]

R = TypeVar("R")


class FinishingTask(asyncio.Task[R]):
    """A task that runs to its end: :meth:`cancel` is refused.

    The pool runs finalizers in these. A finalizer, once started, must run
    to completion: not when the caller that waits for it is cancelled (that
    caller's own ``cancel()`` asks this task to cancel, is refused, and the
    caller gets its ``CancelledError`` once this task has ended), and not
    when ``asyncio.run`` cancels every task at shutdown (it then waits for
    this one to end, as it waits for any task that handles cancellation).
    A ``CancelledError`` raised from inside the coroutine still ends it.
    """

    def cancel(self, msg: Any = None) -> bool:
        return False


def start_task(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, R],
    *,
    finishing: bool = False,
    context: contextvars.Context | None = None,
) -> asyncio.Task[R]:
    """A task of ``coro`` on ``loop`` (the running loop), in ``context``.

    The task starts eagerly: it runs until its first suspension before this
    returns, as the task itself (``current_task()`` is this task, and
    ``asyncio.timeout`` inside it cancels this task), and a coroutine that
    never suspends is done without a trip through the loop. From Python
    3.12 asyncio does this (``eager_start``); before, :func:`_step_now`
    does it on asyncio's own loops, and other loops run the first step in
    turn. ``finishing`` makes it a :class:`FinishingTask`.
    """
    cls = cast("type[asyncio.Task[R]]", FinishingTask if finishing else asyncio.Task)
    if sys.version_info >= (3, 12):
        return cls(coro, loop=loop, context=context, eager_start=True)
    if sys.version_info >= (3, 11):
        task = cls(coro, loop=loop, context=context)
    elif context is not None:  # 3.10: a task copies the context it is made in
        task = context.run(cls, coro, loop=loop)
    else:
        task = cls(coro, loop=loop)
    _step_now(loop, task)
    return task


def _step_now(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Before Python 3.12: run the first step of ``task``, just made, now.

    A new task puts its first step at the back of its loop's ready queue.
    On asyncio's own loops (whose ready queue is ``_ready``, a deque of
    handles, on the versions this runs on, which change no more) that step
    is run here, with the running task set aside meanwhile, as 3.12's eager
    start does, and then cancelled where it waits in the queue (the loop
    skips it). It is not taken out: another thread's ``call_soon_threadsafe``
    may append to the queue at any moment, and a ``pop`` could take its
    handle instead. If the step is not last (such an append came first), or
    on any other loop (uvloop), the step runs in turn.
    """
    ready = getattr(loop, "_ready", None)
    if not ready:
        return
    step = ready[-1]  # one read: no thread interleaves it
    if getattr(getattr(step, "_callback", None), "__self__", None) is not task:
        return
    running = asyncio.current_task(loop)
    if running is not None:
        asyncio.tasks._leave_task(loop, running)
    try:
        step._run()
    finally:
        step.cancel()
        if running is not None:
            asyncio.tasks._enter_task(loop, running)


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


async def _await(awaitable: Awaitable[R]) -> R:
    return await awaitable


def as_coroutine(awaitable: Awaitable[R]) -> Coroutine[Any, Any, R]:
    """``awaitable`` itself if it is a coroutine, else one that awaits it."""
    if asyncio.iscoroutine(awaitable):
        return awaitable
    return _await(awaitable)


def resolve(future: asyncio.Future[R], value: R) -> None:
    """Set ``future``'s result unless it is done already (cancelled, say)."""
    if not future.done():
        future.set_result(value)


def call_soon_threadsafe(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any
) -> bool:
    """Schedule ``callback(*args)`` on ``loop`` from any thread.

    Returns False, scheduling nothing, if ``loop`` is closed.
    """
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise
        return False
    return True


def resolve_threadsafe(future: asyncio.Future[R], value: R) -> None:
    """:func:`resolve` from any thread; nothing if the future's loop closed."""
    call_soon_threadsafe(future.get_loop(), resolve, future, value)


async def _shutdown_hook(
    loop: asyncio.AbstractEventLoop, then: Callable[[], Awaitable[None]]
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        # Only the loop's shutdown_asyncgens() is news; a generator closed
        # anywhere else (collected with its keeper) has nothing to do.
        if asyncio._get_running_loop() is loop:
            await then()


def on_shutdown(
    loop: asyncio.AbstractEventLoop, then: Callable[[], Awaitable[None]]
) -> AsyncGenerator[None, None] | None:
    """Have ``loop`` (the running loop) await ``then()`` as it shuts down.

    An async generator is left at its ``yield``: ``loop.shutdown_asyncgens()``
    (which ``asyncio.run`` calls once it has cancelled the tasks, before it
    closes the loop) closes it, and its ``finally`` awaits ``then()`` there.
    Returns the generator, for the caller to keep (the loop holds it weakly),
    or ``None`` if the loop shuts down already (too late: it would warn).
    """
    if getattr(loop, "_asyncgens_shutdown_called", False):
        return None
    hook = _shutdown_hook(loop, then)
    with contextlib.suppress(StopIteration):  # it runs to its yield
        hook.asend(None).__await__().send(None)
    return hook
