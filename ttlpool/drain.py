"""``drain_tasks``: cancel a loop's tasks, generation after generation.

Tearing an event loop down cleanly means cancelling every task on it and
letting each one run its ``finally`` blocks. Those blocks may start new
tasks (a connection closing politely, a supervisor restarting a child) or
cancel other tasks, so one round of ``cancel()`` is not enough: the drain
repeats rounds until no task is left or its time budget is spent. Each round
that finds tasks not yet asked to stop is one *generation*.

How it works. A round takes a snapshot of the loop's unfinished tasks (all
but the caller and ``exclude``), calls ``cancel()`` once on each task it has
not cancelled before, and then waits, with a single ``asyncio.wait`` bounded
by what is left of the budget, for every task of the snapshot to end. The
loop is iterative: however many generations there are, and however the tasks
cancel each other, there is never more than one wait in flight, no nested
gather, and no recursion. A task that swallows its cancellation is asked
only once; it holds its round until it ends or the budget runs out, and is
then reported as left.

Everything the drain waited for is looked at once it ends: an exception a
task ended with is retrieved (so asyncio never logs "Task exception was
never retrieved" for it) and logged on the ``ttlpool`` logger with its
traceback, since nobody else is going to see it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import attrs

from ttlpool._checks import check_seconds

__all__ = ["DrainReport", "drain_tasks"]

log = logging.getLogger("ttlpool")


@attrs.frozen(slots=True)
class DrainReport:
    """What :func:`drain_tasks` did.

    - ``generations``: rounds that found tasks not yet cancelled and
      cancelled them (a task whose cancellation starts another task makes a
      second generation, and so on).
    - ``cancelled``: tasks the drain called ``cancel()`` on.
    - ``failed``: tasks that ended with an exception other than
      ``CancelledError`` while the drain waited (each one is logged).
    - ``left``: tasks still unfinished when the drain gave up, in name order.
    - ``elapsed``: seconds the drain took, on the loop's clock.
    """

    generations: int
    cancelled: int
    failed: int
    left: tuple[asyncio.Task[Any], ...]
    elapsed: float

    @property
    def complete(self) -> bool:
        """No task was left behind."""
        return not self.left


def _describe_task(task: asyncio.Task[Any]) -> str:
    """``'name' (coroutine qualname at file:line)`` for logs."""
    coro = task.get_coro()
    what = getattr(coro, "__qualname__", None) or type(coro).__name__
    frame = getattr(coro, "cr_frame", None)
    if frame is not None:
        what = f"{what} at {frame.f_code.co_filename}:{frame.f_lineno}"
    return f"{task.get_name()!r} ({what})"


async def drain_tasks(
    *, timeout: float | None, exclude: Iterable[asyncio.Task[Any]] = ()
) -> DrainReport:
    """Cancel and await the running loop's tasks until none are left.

    Every unfinished task of the running loop, except the calling task and
    those in ``exclude``, is cancelled and awaited; tasks that appear
    meanwhile (started by a ``finally`` block of a cancelled task, say) are
    cancelled and awaited in the next generation, and so on until no task is
    left or ``timeout`` seconds have passed (``None``: no bound; ``0``:
    cancel the current generation and return at once). Each task is
    cancelled at most once.

    If tasks are left, one WARNING on the ``ttlpool`` logger names every one
    of them (name, coroutine and where it is suspended). A task that ends
    with an exception is logged with its traceback and counted in
    ``failed``.

    The calling task is never cancelled, but a task that awaits it is, and
    cancelling that one cancels the caller too: call ``drain_tasks`` from
    the outermost task, or pass such tasks in ``exclude``.

    Returns a :class:`DrainReport`.
    """
    budget = check_seconds(timeout, "timeout", "drain_tasks")
    loop = asyncio.get_running_loop()
    spared = set(exclude)
    current = asyncio.current_task(loop)
    if current is not None:
        spared.add(current)
    started = loop.time()
    deadline = None if budget is None else started + budget
    asked: set[asyncio.Task[Any]] = set()
    generations = cancelled = failed = 0
    while True:
        pending = asyncio.all_tasks(loop) - spared
        if not pending:
            break
        asked &= pending  # forget tasks that ended: keep no reference to them
        fresh = pending - asked
        if fresh:
            generations += 1
            cancelled += len(fresh)
            asked |= fresh
            for task in fresh:
                task.cancel()
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            break
        done, _ = await asyncio.wait(pending, timeout=remaining)
        failed += _collect(done)
    elapsed = loop.time() - started
    left = tuple(sorted(pending, key=lambda task: task.get_name()))
    if left:
        log.warning(
            "drain_tasks gave up after %.3fs with %d task(s) left: %s",
            elapsed,
            len(left),
            "; ".join(_describe_task(task) for task in left),
        )
    return DrainReport(
        generations=generations,
        cancelled=cancelled,
        failed=failed,
        left=left,
        elapsed=elapsed,
    )


def _collect(done: Iterable[asyncio.Task[Any]]) -> int:
    """Retrieve and log the exceptions of ended tasks; return how many."""
    failed = 0
    for task in done:
        if task.cancelled():
            continue
        exc = task.exception()
        if exc is not None:
            failed += 1
            log.error(
                "task %s raised while being drained", _describe_task(task), exc_info=exc
            )
    return failed
