"""One warm event loop on its daemon thread, and the worker side of a dispatch.

What lives here: :class:`_WorkerLoop`, an event loop and the daemon thread
that runs it until it is retired; it *admits* requests (what must be ended
if the loop goes away) and callbacks until it starts retiring, then drains,
stops, and its thread closes the loop and ends every request still
tracked. :class:`_Call`, one dispatch of ``fn(*args, **kwargs)`` run as a
task on a worker loop. :class:`_LeaseRequest`, a lease of a worker's raw
loop. :class:`_LoopWaiter` and :func:`_wake_soon`, which wake a task up on
another thread's loop.

What it must not know: the pool and the adapter (it imports neither
:mod:`ttlpool.pool` nor :mod:`ttlpool.worker`), keys, the TTL, and whether
a loop is a worker or the adapter's control loop: a ``_WorkerLoop`` is the
same either way, and a request gives its lease back only through the
``on_finish`` callback it is attached with.

State that two threads reach
----------------------------

``_WorkerLoop``
    ``_retiring``, ``_requests``, ``_exit_callbacks``, ``_exited``: any
    thread, under ``_lock``. ``loop``: run by ``thread`` alone; other
    threads post to it through ``admit``, ``post`` and ``retire``, under
    ``_lock`` and only while not retiring, so never to a closed loop (the
    one other poster, ``_Call.cancel``, tolerates a closed loop).
    ``_drainer``: its thread only.
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
import functools
import inspect
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ttlpool.drain import drain_tasks
from ttlpool.errors import PoolClosedError

__all__ = [
    "_Call",
    "_LeaseRequest",
    "_LoopWaiter",
    "_Request",
    "_WorkerLoop",
    "_wake_soon",
]

T = TypeVar("T")

log = logging.getLogger("ttlpool")

#: How often to look whether a thread that signalled its exit has ended.
_DEATH_POLL = 0.001


def _wake_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Complete ``future`` from any thread; if its loop closed, nobody waits."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_wake_here, future)


def _wake_here(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Request(Protocol):
    """What a loop tracks: a call or a lease to end if the loop goes away."""

    def loop_gone(self, reason: str) -> None:
        """The loop this request was admitted to is gone, or given up on."""
        ...


class _WorkerLoop:
    """An event loop and the daemon thread that runs it until it is retired.

    The thread runs the loop until :meth:`retire` has drained it; a stray
    ``loop.stop()`` by user code only restarts it. Then the thread closes
    the loop itself (async generators, default executor, ``close``), ends
    every request still tracked (:meth:`fail_all_requests`) and calls the
    exit callbacks, so that nothing waits for it forever.
    """

    __slots__ = (
        "_drain_timeout",
        "_drainer",
        "_executor_timeout",
        "_exit_callbacks",
        "_exited",
        "_lock",
        "_requests",
        "_retiring",
        "loop",
        "thread",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        drain_timeout: float | None,
        executor_timeout: float | None,
    ) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._drain_timeout = drain_timeout
        self._executor_timeout = executor_timeout
        self._lock = threading.Lock()
        self._retiring = False
        self._exited = False
        self._drainer: asyncio.Task[None] | None = None
        self._exit_callbacks: list[Callable[[], object]] = []
        self._requests: set[_Request] = set()

    def __repr__(self) -> str:
        state = "exited" if self._exited else "retiring" if self._retiring else "warm"
        return f"<_WorkerLoop {self.thread.name} {state}>"

    # -- any thread ----------------------------------------------------------

    def start(self) -> None:
        """Start the thread; if it cannot start, close the loop and raise."""
        try:
            self.thread.start()
        except BaseException:
            self.loop.close()
            raise

    @property
    def retiring(self) -> bool:
        """It admits nothing more (read without the lock: a hint)."""
        return self._retiring

    def admit(
        self, request: _Request | None, start: Callable[[], object] | None = None
    ) -> bool:
        """Track ``request`` and run ``start`` on the loop, unless retiring.

        Admission and retirement take the same lock, so everything
        admitted is posted to the loop before the drain is, and starts
        before the drain looks at the loop's tasks.
        """
        with self._lock:
            if self._retiring:
                return False
            if request is not None:
                self._requests.add(request)
            if start is not None:
                self.loop.call_soon_threadsafe(start)
        return True

    def post(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` on the loop, unless retiring: :meth:`admit` alone."""
        return self.admit(None, callback)

    def forget(self, request: _Request) -> bool:
        """Stop tracking ``request``; return whether none is tracked now."""
        with self._lock:
            self._requests.discard(request)
            return not self._requests

    def retire(self) -> None:
        """Admit nothing more; drain the loop, then stop it (idempotent)."""
        with self._lock:
            self._retire_locked()

    def retire_if_idle(self) -> bool:
        """:meth:`retire`, only if no request is tracked; return whether it
        started retiring now."""
        with self._lock:
            if self._retiring or self._requests:
                return False
            self._retire_locked()
            return True

    def _retire_locked(self) -> None:
        if not self._retiring:
            self._retiring = True
            self.loop.call_soon_threadsafe(self._start_drain)

    def add_exit_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the thread has closed its loop (or now)."""
        with self._lock:
            if not self._exited:
                self._exit_callbacks.append(callback)
                return
        callback()

    def fail_all_requests(self, reason: str) -> None:
        """End every request still tracked, telling each ``reason``."""
        with self._lock:
            requests, self._requests = self._requests, set()
        for request in requests:
            request.loop_gone(reason)

    def disown_after_fork(self) -> None:
        """In a forked child, where this loop's thread does not exist.

        The loop admits nothing and counts as exited, so that nothing in
        the child posts to it or waits for it. The lock is a fresh one: the
        parent's may have been held by another thread at the fork.
        """
        self._lock = threading.Lock()
        self._retiring = True
        self._exited = True
        self._exit_callbacks = []

    async def wait_ended(self, timeout: float | None, grace: float) -> bool:
        """Wait, without blocking the running loop, until the thread ends.

        At most ``timeout`` seconds (``None``: no bound) for the thread to
        close its loop and signal its exit, then at most ``grace`` seconds
        for it to run its last statements. Returns whether it ended.
        """
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        self.add_exit_callback(functools.partial(_wake_soon, loop, exited))
        done, _ = await asyncio.wait({exited}, timeout=timeout)
        if not done:
            exited.cancel()
            return False
        deadline = loop.time() + grace
        while self.thread.is_alive():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_DEATH_POLL)
        return True

    # -- the loop's own thread -----------------------------------------------

    def _start_drain(self) -> None:
        self._drainer = self.loop.create_task(
            self._drain_then_stop(), name=f"{self.thread.name}-drain"
        )

    async def _drain_then_stop(self) -> None:
        try:
            await drain_tasks(timeout=self._drain_timeout)
        finally:
            self.loop.stop()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            while True:
                loop.run_forever()
                if self._drainer is not None and self._drainer.done():
                    break
        finally:
            with self._lock:
                self._retiring = True
            try:
                self._close_loop()
            finally:
                with self._lock:
                    self._exited = True
                    callbacks, self._exit_callbacks = self._exit_callbacks, []
                self.fail_all_requests(f"event loop {self.thread.name} closed")
                for callback in callbacks:
                    callback()

    def _close_loop(self) -> None:
        loop = self.loop
        try:
            if self._drainer is None:  # run_forever raised: drain here instead
                loop.run_until_complete(drain_tasks(timeout=self._drain_timeout))
            loop.run_until_complete(loop.shutdown_asyncgens())
            if sys.version_info >= (3, 12):
                loop.run_until_complete(
                    loop.shutdown_default_executor(self._executor_timeout)
                )
            else:
                loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            log.exception("ttlpool: closing event loop of %s failed", self.thread.name)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _as_coroutine(value: object, fn: object) -> Coroutine[Any, Any, Any]:
    if asyncio.iscoroutine(value):
        return value
    if inspect.isawaitable(value):
        return _await(value)
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
        # The lease's release is posted before the caller hears of the
        # outcome, hence before the caller's next dispatch: with ttl=0,
        # sequential dispatches get fresh loops.
        if self._on_finish is not None:
            self._on_finish()
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
