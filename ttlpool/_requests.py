"""The worker side of a dispatch: a call run on a worker loop, or a lease.

What lives here: :class:`_Call`, one dispatch of ``fn(*args, **kwargs)``
run as a task on a worker loop. :class:`_LeaseRequest`, a lease of a
worker's raw loop. Both are requests a ``_WorkerLoop`` admits and ends
(``loop_gone``) if it goes away first. :class:`_LoopWaiter`, which wakes
the caller's task up from the thread that ends its request.

What it must not know: the pool, the adapter and its control loop (it
imports none of :mod:`ttlpool.pool`, :mod:`ttlpool.worker`,
:mod:`ttlpool._control`), keys and the TTL: a request gives its lease back
only through the ``on_finish`` callback it is attached with, and tells its
caller only through ``notify``.

State that two threads reach
----------------------------

``_Call``
    ``_cancelled``, ``_done``, ``_task``: any thread, under ``_lock``.
    ``result``, ``error``: written once under ``_lock`` by the thread that
    ends the call, read by the caller once notified. ``_worker`` and
    ``_on_finish``: written by ``attach`` before the worker admits the call
    (which publishes them to its thread), then only read.
``_LeaseRequest``
    ``_state``, ``_worker``, ``_on_finish``, ``error``: any thread, under
    ``_lock``; the caller reads ``worker`` and ``error`` once notified.
``_LoopWaiter``
    ``future``, ``woken``: the waiting loop's thread only; other threads
    call ``notify``, which posts to that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ttlpool._aio import as_coroutine, is_awaitable
from ttlpool._worker_loop import _WorkerLoop
from ttlpool.errors import PoolClosedError

__all__ = ["_Call", "_LeaseRequest", "_LoopWaiter"]

T = TypeVar("T")


def _as_coroutine(value: object, fn: object) -> Coroutine[Any, Any, Any]:
    if is_awaitable(value):
        return as_coroutine(value)
    raise TypeError(
        f"run: {fn!r} returned {type(value).__name__}, not an awaitable; "
        "pass a coroutine function"
    )


class _Call:
    """One dispatch of ``fn(*args, **kwargs)`` to a worker loop.

    Three threads touch it: the caller makes it and waits, the thread that
    leased a worker attaches it there, the worker thread runs it and records
    the outcome. ``_lock`` settles the two races: a cancellation from the
    caller against the start on the worker, and which end comes first (the
    task's, or one forced by a loop that went away).
    """

    __slots__ = (
        "_args",
        "_cancelled",
        "_context",
        "_done",
        "_fn",
        "_kwargs",
        "_lock",
        "_notify",
        "_on_finish",
        "_task",
        "_worker",
        "error",
        "result",
    )

    def __init__(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        notify: Callable[[], object],
    ) -> None:
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._context = contextvars.copy_context()
        self._notify = notify
        self._lock = threading.Lock()
        self._cancelled = False
        self._done = False
        self._task: asyncio.Task[Any] | None = None
        self._worker: _WorkerLoop | None = None
        self._on_finish: Callable[[], object] | None = None
        self.result: Any = None
        self.error: BaseException | None = None

    # -- the thread that leased the worker ----------------------------------------

    def attach(self, worker: _WorkerLoop, on_finish: Callable[[], object]) -> None:
        """Run on ``worker``; call ``on_finish`` (any thread) once ended."""
        self._on_finish = on_finish
        self._worker = worker
        if not worker.admit(self, self._start):
            self.fail(PoolClosedError("run: the worker loop was retired (stop)"))

    def fail(self, error: BaseException) -> bool:
        """End the call with ``error`` unless it has ended; return whether."""
        return self._finish(error=error)

    def loop_gone(self, reason: str) -> None:
        self._finish(error=RuntimeError(f"{reason} while {self._fn!r} was running"))

    # -- the worker thread --------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._done:
                return
            cancelled = self._cancelled
        if cancelled:
            self._finish(error=asyncio.CancelledError())
            return
        worker = self._worker
        assert worker is not None
        context = self._context
        try:
            coro = _as_coroutine(
                context.run(self._fn, *self._args, **self._kwargs), self._fn
            )
        except BaseException as exc:  # handed to the caller
            self._finish(error=exc)
            return
        if sys.version_info >= (3, 11):
            task = worker.loop.create_task(coro, context=context)
        else:
            task = context.run(worker.loop.create_task, coro)
        task.add_done_callback(self._task_done)
        with self._lock:
            self._task = task
            cancelled = self._cancelled
        if cancelled:
            task.cancel()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        try:
            result = task.result()
        except BaseException as exc:  # handed to the caller
            self._finish(error=exc)
        else:
            self._finish(result=result)

    # -- any thread ---------------------------------------------------------------

    def _finish(self, result: Any = None, error: BaseException | None = None) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
            self._task = None
            self.result = result
            self.error = error
        if self._worker is not None:
            self._worker.forget(self)
        # The lease goes back before the caller hears of the outcome, hence
        # before the caller's next dispatch: with ttl=0, sequential
        # dispatches get fresh loops. The caller hears of it whatever the
        # release does.
        try:
            if self._on_finish is not None:
                self._on_finish()
        finally:
            self._notify()
        return True

    # -- the caller ---------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the worker task to cancel (before it starts, or while it runs)."""
        with self._lock:
            if self._done:
                return
            self._cancelled = True
            task = self._task
        if task is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                task.get_loop().call_soon_threadsafe(task.cancel)

    def outcome(self) -> Any:
        """The result, or raise the error (with the worker's frames)."""
        error = self.error
        if error is None:
            return self.result
        self.error = None  # no cycle: this frame -> call -> error -> traceback
        try:
            raise error
        finally:
            del error


_WAITING, _GRANTED, _DONE = 0, 1, 2


class _LeaseRequest:
    """A lease of a worker's raw loop, held for the caller until released."""

    __slots__ = ("_lock", "_notify", "_on_finish", "_state", "_worker", "error")

    def __init__(self, notify: Callable[[], object]) -> None:
        self._notify = notify
        self._lock = threading.Lock()
        self._state = _WAITING
        self._worker: _WorkerLoop | None = None
        self._on_finish: Callable[[], object] | None = None
        self.error: BaseException | None = None

    @property
    def worker(self) -> _WorkerLoop:
        assert self._worker is not None
        return self._worker

    def attach(self, worker: _WorkerLoop, on_finish: Callable[[], object]) -> None:
        """Grant ``worker`` to the caller; ``on_finish`` gives it back."""
        with self._lock:
            waiting = self._state == _WAITING
            granted = waiting and worker.admit(self, None)
            if granted:
                self._state = _GRANTED
                self._worker = worker
                self._on_finish = on_finish
            elif waiting:
                self._state = _DONE
                self.error = PoolClosedError(
                    "lease: the worker loop was retired (stop)"
                )
        if not granted:
            on_finish()  # the caller gave up, or the worker is going: let go now
        if waiting:
            self._notify()

    def fail(self, error: BaseException) -> bool:
        """Refuse the lease with ``error`` if still waiting; return whether."""
        with self._lock:
            if self._state != _WAITING:
                return False
            self._state = _DONE
            self.error = error
        self._notify()
        return True

    def release(self) -> None:
        """Give the lease back (or give up waiting for it). Idempotent."""
        with self._lock:
            state, self._state = self._state, _DONE
            on_finish, self._on_finish = self._on_finish, None
            worker = self._worker
        if state == _GRANTED and worker is not None and on_finish is not None:
            worker.forget(self)
            on_finish()

    def loop_gone(self, reason: str) -> None:
        # Still waiting: the caller hears why. Granted: its loop is gone,
        # so the lease goes back (the caller's own release is then a no-op).
        if not self.fail(RuntimeError(f"lease: {reason}")):
            self.release()


class _LoopWaiter:
    """Wakes a task on ``loop`` up from any thread, and remembers it did."""

    __slots__ = ("future", "loop", "woken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.woken = False

    def notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop closed
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.woken = True
        if not self.future.done():
            self.future.set_result(None)

    async def wait_again(self) -> None:
        """After the first wait was cancelled: wait unless woken already."""
        if not self.woken:
            self.future = self.loop.create_future()
            await self.future
