"""``WorkerLoopPool``: warm event loops on daemon threads, pooled by key.

Running a coroutine on an event loop of its own (a library that must own
its loop, sync code that calls async code) used to mean a new loop and a new
thread for every call, then a teardown. ``WorkerLoopPool`` keeps that loop
and thread warm in a :class:`~ttlpool.ResourcePool` entry and reuses it for
every dispatch until it has been idle for ``ttl`` seconds.

Theory of operation
-------------------

*Entries.* Each entry of the underlying ``ResourcePool`` is a
``_WorkerLoop``: one event loop and the daemon thread ``"{name}-{n}"`` that
runs it. The pool's factory starts one; its finalizer retires one.

*The control loop.* A private event loop on a daemon thread
``"{name}-control"``, started at the first dispatch and ended by
:meth:`WorkerLoopPool.stop`, hosts what must not depend on a caller's loop:

- the pool's idle timer (its clock arms every timer there, whichever loop
  released the worker), so an idle worker is reaped even after the loop
  that used it has closed, and its teardown is never cancelled halfway by a
  caller loop's shutdown;
- the leases of ``run_sync`` and ``lease`` callers, who may have no loop.

Workers are loop-agnostic (a loop and a thread), so the pool shares its
entries across loops (``per_loop=False``).

*A dispatch.* :meth:`~WorkerLoopPool.run` takes its lease straight from the
caller's loop (a pool hit: no thread hop), posts the call to the worker
loop, which runs ``fn(*args, **kwargs)`` as a task in a copy of the
caller's context, and the worker thread hands the outcome back with
``call_soon_threadsafe``: the same two hops as ``run_coroutine_threadsafe``.
:meth:`~WorkerLoopPool.run_sync` posts its request to the control loop,
where a control task holds the lease while the worker runs the call; the
outcome comes back to the blocked thread through a released lock, and the
control task releases the lease.

*Cancellation.* Cancelling a ``run`` cancels the task on the worker and
waits for it to finish unwinding, as ``asyncio.TaskGroup`` and
``asyncio.timeout`` wait for what they cancel: when ``run`` raises
``CancelledError``, nothing of the call runs any more. A second cancellation
stops the wait.

*Teardown of one worker* (the pool's finalizer: on the control loop when
the TTL reaps it, inside the release with ``ttl=0``): mark
the worker retiring (it admits no new call), then, on the worker loop,
:func:`~ttlpool.drain_tasks` with ``drain_timeout`` and ``loop.stop()``.
The worker's own thread then shuts down async generators and the default
executor and closes its loop, and signals the finalizer, which waits for
that signal for at most ``drain_timeout + join_timeout`` without blocking.
A call still unfinished when its worker goes (a task that ignored its
cancellation) fails with ``RuntimeError`` instead of hanging its caller.
Because the pool takes an entry out before finalizing it, a dispatch that
arrives during a teardown gets a fresh worker at once.

*Stop.* ``stop()`` closes the ``ResourcePool`` on the control loop (which
retires every worker concurrently, in-flight work included), then drains and
stops the control loop itself, and waits for its thread to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
)
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from ttlpool.clock import TimerCallback
from ttlpool.drain import _check_timeout, drain_tasks
from ttlpool.errors import PoolClosedError
from ttlpool.pool import ResourcePool
from ttlpool.stats import PoolStats

__all__ = ["DEFAULT_KEY", "WorkerLoopPool"]

T = TypeVar("T")

log = logging.getLogger("ttlpool")

#: The key of ``run``, ``run_sync`` and ``lease`` when none is given.
DEFAULT_KEY = "worker"
#: How often to look whether a thread that signalled its exit has ended.
_DEATH_POLL = 0.001


def _wake_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Complete ``future`` from any thread; if its loop closed, nobody waits."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_wake_here, future)


def _wake_here(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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


async def _until_dead(thread: threading.Thread, bound: float) -> bool:
    """Wait, without blocking the loop, for a thread in its last statements."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while thread.is_alive():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_DEATH_POLL)
    return True


def _start_thread(worker: _WorkerLoop) -> None:
    try:
        worker.thread.start()
    except BaseException:
        worker.loop.close()
        raise


class _Request(Protocol):
    """What a worker tracks: a call or a lease it must end if it goes away."""

    def abandon(self, reason: str) -> None: ...


class _WorkerLoop:
    """An event loop and the daemon thread that runs it until it is retired.

    The thread runs the loop until :meth:`retire` has drained it; a stray
    ``loop.stop()`` by user code only restarts it. Then the thread closes
    the loop itself (async generators, default executor, ``close``) and
    calls the exit callbacks. Requests handed to the worker are tracked
    until they end, so that whatever is unfinished when the thread exits is
    ended with an error instead of being waited for forever.
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

    def admit(self, request: _Request, start: Callable[[], object] | None) -> bool:
        """Track ``request`` and run ``start`` on the loop, unless retiring.

        Admission and :meth:`retire` take the same lock, so everything
        admitted is posted to the loop before the drain is, and starts
        before the drain looks at the loop's tasks.
        """
        with self._lock:
            if self._retiring:
                return False
            self._requests.add(request)
            if start is not None:
                self.loop.call_soon_threadsafe(start)
        return True

    def forget(self, request: _Request) -> None:
        with self._lock:
            self._requests.discard(request)

    def retire(self) -> None:
        """Admit nothing more; drain the loop, then stop it (idempotent)."""
        with self._lock:
            if self._retiring:
                return
            self._retiring = True
            self.loop.call_soon_threadsafe(self._start_drain)

    def add_exit_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the thread has closed its loop (or now)."""
        with self._lock:
            if not self._exited:
                self._exit_callbacks.append(callback)
                return
        callback()

    def abandon(self, reason: str) -> None:
        """End every request still tracked, with ``reason``."""
        with self._lock:
            requests, self._requests = self._requests, set()
        for request in requests:
            request.abandon(reason)

    # -- the worker's own thread ---------------------------------------------

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
                self.abandon(f"worker loop {self.thread.name} closed")
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


class _Call:
    """One dispatch of ``fn(*args, **kwargs)`` to a worker loop.

    Three threads touch it: the caller makes it and waits, the control loop
    attaches it to a leased worker, the worker thread runs it and records
    the outcome. ``_lock`` settles the two races: a cancellation from the
    caller against the start on the worker, and which end comes first (the
    task's, or an abandonment's).
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

    # -- control loop ---------------------------------------------------------

    def attach(self, worker: _WorkerLoop, on_finish: Callable[[], object]) -> None:
        """Run on ``worker``; call ``on_finish`` (any thread) once ended."""
        self._on_finish = on_finish
        self._worker = worker
        if not worker.admit(self, self._start):
            self.fail(PoolClosedError("run: the worker loop was retired (stop)"))

    def fail(self, error: BaseException) -> bool:
        return self._finish(error=error)

    # -- worker thread --------------------------------------------------------

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

    # -- any thread -------------------------------------------------------------

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
        # The lease's release is posted to the control loop before the
        # caller hears of the outcome, hence before the caller's next
        # dispatch: with ttl=0, sequential dispatches get fresh loops.
        if self._on_finish is not None:
            self._on_finish()
        self._notify()
        return True

    def abandon(self, reason: str) -> None:
        self._finish(error=RuntimeError(f"{reason} while {self._fn!r} was running"))

    # -- the caller -------------------------------------------------------------

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


def _nothing() -> None:
    """``run`` releases its lease itself, on the caller's loop."""


class _ControlTimer:
    """A timer armed on the control loop for a pool timer of any loop."""

    __slots__ = ("_cancelled", "_handle", "_loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: TimerCallback
    ) -> None:
        self._loop = loop
        self._cancelled = False
        self._handle: asyncio.TimerHandle | None = None
        loop.call_soon_threadsafe(self._arm, when, callback)

    def _arm(self, when: float, callback: TimerCallback) -> None:
        if not self._cancelled:
            self._handle = self._loop.call_later(
                max(0.0, when - time.monotonic()), callback
            )

    def cancel(self) -> None:
        self._cancelled = True
        handle = self._handle
        if handle is not None:
            with contextlib.suppress(RuntimeError):  # the control loop closed
                self._loop.call_soon_threadsafe(handle.cancel)


class _ControlClock:
    """The pool's clock: ``time.monotonic``, with every timer on the control
    loop, whichever loop's release armed it."""

    __slots__ = ("_workers",)

    now = staticmethod(time.monotonic)

    def __init__(self, workers: WorkerLoopPool) -> None:
        self._workers = workers

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: TimerCallback
    ) -> _ControlTimer:
        control = self._workers._control
        assert control is not None  # started before any lease
        return _ControlTimer(control.loop, when, callback)


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


_WAITING, _GRANTED, _DONE = 0, 1, 2


class _LeaseRequest:
    """A lease of a worker's raw loop, held by a control task until released."""

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

    def abandon(self, reason: str) -> None:
        self.release()


_POOLS: weakref.WeakSet[WorkerLoopPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class WorkerLoopPool:
    """Warm event loops on daemon threads, reused across dispatches.

    Each key (``"worker"`` unless given) has one event loop running on a
    daemon thread named ``"{name}-{n}"``, created at its first dispatch and
    kept warm while dispatches keep coming. A loop idle for ``ttl`` seconds
    is retired by itself (``None``: never; ``0``: after every dispatch); a
    dispatch that arrives meanwhile gets a fresh loop at once and never
    waits for the old one's teardown.

    Retiring a loop cancels every task on it, generation after generation,
    for up to ``drain_timeout`` seconds (see :func:`~ttlpool.drain_tasks`),
    then stops it; its own thread shuts down async generators and the
    default executor and closes it; the thread is waited for without
    blocking anyone, for up to ``drain_timeout + join_timeout`` in all (and
    left to run on as a daemon thread, with a warning, past that).
    ``loop_factory()`` makes the worker loops (``asyncio.new_event_loop``
    by default; ``uvloop.new_event_loop`` works).

    Use :meth:`run` from async code, :meth:`run_sync` from threads without
    an event loop, :meth:`lease` for the raw loop, and :meth:`stop` (or
    ``async with``) to retire every loop. After ``stop`` every dispatch
    raises :class:`~ttlpool.PoolClosedError`. Construction needs no running
    event loop and starts no thread.
    """

    def __init__(
        self,
        ttl: float | None = 30.0,
        *,
        drain_timeout: float | None = 5.0,
        join_timeout: float | None = 5.0,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        name: str = "ttlpool-worker",
    ) -> None:
        self._drain_timeout = _check_timeout(drain_timeout, "drain_timeout")
        self._join_timeout = _check_timeout(join_timeout, "join_timeout")
        if loop_factory is not None and not callable(loop_factory):
            raise TypeError(
                f"loop_factory must be callable or None, not {loop_factory!r}"
            )
        if not isinstance(cast(object, name), str):  # it names threads
            raise TypeError(f"name must be a str, not {name!r}")
        self._loop_factory = loop_factory
        self._name = name
        # run() leases straight from the caller's loop and run_sync/lease
        # from the control loop, so the (loop-agnostic) workers are shared
        # across loops; the idle timer always lives on the control loop, so
        # reaping never depends on a caller's loop staying alive.
        self._pool: ResourcePool[Hashable, _WorkerLoop] = ResourcePool(
            self._create_worker,
            finalizer=self._retire_worker,
            ttl=ttl,
            per_loop=False,
            clock=_ControlClock(self),
        )
        self._forget_threads()
        _POOLS.add(self)

    def _forget_threads(self) -> None:
        """Start with no thread: at construction, and in a forked child."""
        self._lock = threading.Lock()
        self._control: _WorkerLoop | None = None
        self._closed = False
        self._stopping = False
        self._numbers = itertools.count(1)
        #: Every thread started, to name those alive if stop times out.
        self._threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        #: Control tasks serving a request (control loop only).
        self._serving: set[asyncio.Task[None]] = set()
        self._shutdown_task: asyncio.Task[None] | None = None

    # -- public API ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The prefix of this pool's thread names."""
        return self._name

    @property
    def ttl(self) -> float:
        """Seconds an idle loop stays warm (``math.inf``: forever)."""
        return self._pool.ttl

    @property
    def closed(self) -> bool:
        """``stop`` was called: every later dispatch raises."""
        return self._closed

    @property
    def stats(self) -> PoolStats:
        """The underlying pool's statistics (entries are warm loops)."""
        return self._pool.stats

    async def run(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        key: Hashable = DEFAULT_KEY,
        **kwargs: Any,
    ) -> T:
        """Run ``await fn(*args, **kwargs)`` on ``key``'s warm loop.

        Returns its result or raises its exception (with the frames of the
        worker in its traceback). It runs in a copy of the caller's context,
        so context variables set by the caller are visible inside. If the
        caller is cancelled, the task on the worker is cancelled and waited
        for before ``CancelledError`` propagates (a second cancellation
        stops the wait). If ``stop`` cancels the task, this raises
        ``CancelledError``; if the worker loop goes away with the task
        still running (it ignored its cancellation), ``RuntimeError``.
        """
        loop = asyncio.get_running_loop()
        waiter = _LoopWaiter(loop)
        call = _Call(fn, args, kwargs, waiter.notify)
        self._control_loop("run", key)
        async with self._pool.get(key) as worker:
            call.attach(worker, _nothing)
            result: T = await self._outcome(call, waiter)
        return result

    async def _outcome(self, call: _Call, waiter: _LoopWaiter) -> Any:
        """Wait for a dispatched call; a cancelled caller cancels it."""
        try:
            await waiter.future
        except asyncio.CancelledError:
            call.cancel()
            await waiter.wait_again()
            error = call.error
            if error is not None and not isinstance(error, asyncio.CancelledError):
                call.error = None
                try:
                    raise error  # a failure while unwinding beats the cancellation
                finally:
                    del error
            raise
        return call.outcome()

    def run_sync(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        key: Hashable = DEFAULT_KEY,
        **kwargs: Any,
    ) -> T:
        """:meth:`run`, for a thread with no running event loop: blocks.

        No event loop is made in the calling thread: the call is posted
        to the control loop and the caller waits on a plain lock that the
        worker thread releases with the outcome. A ``KeyboardInterrupt``
        during the wait cancels the worker task and propagates at once.
        Called from a thread whose event loop is running, it raises
        ``RuntimeError`` (it would block that loop): use ``await run()``.
        """
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(
                "run_sync: an event loop is running in this thread and would be "
                "blocked; use `await WorkerLoopPool.run(...)` instead"
            )
        finished = threading.Lock()
        finished.acquire()
        call = _Call(fn, args, kwargs, finished.release)
        self._dispatch("run_sync", key, call)
        try:
            finished.acquire()
        except BaseException:
            call.cancel()
            raise
        result: T = call.outcome()
        return result

    @contextlib.asynccontextmanager
    async def lease(
        self, key: Hashable = DEFAULT_KEY
    ) -> AsyncGenerator[asyncio.AbstractEventLoop, None]:
        """``async with loops.lease(key) as loop:`` the raw warm loop of ``key``.

        The loop is not retired while leased (``stop`` excepted). Use it
        from other threads only, with ``asyncio.run_coroutine_threadsafe``
        or ``loop.call_soon_threadsafe``; tasks left on it are cancelled
        when it is retired.
        """
        waiter = _LoopWaiter(asyncio.get_running_loop())
        request = _LeaseRequest(waiter.notify)
        self._dispatch("lease", key, request)
        try:
            await waiter.future
        except BaseException:
            request.release()  # a lease granted meanwhile goes straight back
            raise
        if request.error is not None:
            error, request.error = request.error, None
            try:
                raise error
            finally:
                del error
        try:
            yield request.worker.loop
        finally:
            request.release()

    async def stop(self, timeout: float | None = None) -> None:
        """Retire every loop now and wait for their threads to end.

        In-flight work is cancelled (its ``run`` raises ``CancelledError``)
        and each loop is torn down as described in the class docstring, all
        concurrently; then the control thread ends too. Waits without
        blocking the event loop, for at most ``timeout`` seconds (``None``:
        until done, which each loop's own bounds limit), then raises
        ``TimeoutError`` naming the threads still alive; the teardown goes
        on in the background. Idempotent; every dispatch after it raises
        :class:`~ttlpool.PoolClosedError`.
        """
        bound = _check_timeout(timeout, "timeout")
        with self._lock:
            self._closed = True
            control = self._control
            if control is not None and not self._stopping:
                self._stopping = True
                control.loop.call_soon_threadsafe(self._shutdown_soon)
        if control is None:
            return
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        control.add_exit_callback(functools.partial(_wake_soon, loop, exited))
        started = loop.time()
        done, _ = await asyncio.wait({exited}, timeout=bound)
        if done:
            remaining = math.inf if bound is None else bound - (loop.time() - started)
            if await _until_dead(control.thread, max(0.0, min(remaining, 5.0))):
                return
        with self._lock:
            threads = list(self._threads)
        alive = sorted(t.name for t in threads if t.is_alive())
        raise TimeoutError(
            f"stop: timed out after {timeout}s with threads of {self._name!r} "
            f"still running: {', '.join(alive)}"
        )

    async def __aenter__(self) -> WorkerLoopPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._closed else "running"
        stats = self._pool.stats
        return (
            f"<WorkerLoopPool {self._name!r} {state} loops={stats.total_entries} "
            f"busy={stats.referenced_entries} ttl={self._pool.ttl}>"
        )

    # -- caller side -------------------------------------------------------------

    def _dispatch(self, operation: str, key: Hashable, request: Any) -> None:
        """Hand ``request`` for ``key`` to the control loop (any thread)."""
        control = self._control_loop(operation, key)
        control.call_soon_threadsafe(self._serve_soon, key, request)

    def _control_loop(
        self, operation: str, key: Hashable | None = None
    ) -> asyncio.AbstractEventLoop:
        """The control loop, started on first use; raises once stopped."""
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"{operation}: key {key!r} is unhashable") from None
        with self._lock:
            if self._closed:
                raise PoolClosedError(
                    f"{operation}: WorkerLoopPool {self._name!r} is stopped "
                    f"(key {key!r})"
                )
            control = self._control
            if control is None:
                control = self._control = self._start_control()
            return control.loop

    def _start_control(self) -> _WorkerLoop:
        control = _WorkerLoop(
            asyncio.new_event_loop(),
            f"{self._name}-control",
            self._drain_timeout,
            self._join_timeout,
        )
        _start_thread(control)
        self._threads.add(control.thread)  # under self._lock (see _dispatch)
        return control

    # -- control loop --------------------------------------------------------------

    def _serve_soon(self, key: Hashable, request: _Call | _LeaseRequest) -> None:
        # Not an eager task: the step of a control task releasing a lease,
        # woken up before this request was posted, must run before this
        # task's acquire (a release then a dispatch, in that order).
        task = asyncio.get_running_loop().create_task(self._serve(key, request))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, key: Hashable, request: _Call | _LeaseRequest) -> None:
        """Hold a lease of ``key``'s worker for as long as ``request`` runs."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        try:
            async with self._pool.get(key) as worker:
                request.attach(worker, functools.partial(_wake_soon, loop, finished))
                await finished
        except Exception as exc:
            if not request.fail(exc):  # the request was over: a release failed
                log.error("ttlpool: releasing worker %r failed", key, exc_info=exc)
        except BaseException as exc:
            request.fail(exc)
            raise

    def _create_worker(self, key: Hashable) -> _WorkerLoop:
        """The pool's factory: a new loop on a new daemon thread."""
        factory = self._loop_factory or asyncio.new_event_loop
        worker = _WorkerLoop(
            factory(),
            f"{self._name}-{next(self._numbers)}",
            self._drain_timeout,
            self._join_timeout,
        )
        _start_thread(worker)
        with self._lock:
            self._threads.add(worker.thread)
        return worker

    async def _retire_worker(self, worker: _WorkerLoop) -> None:
        """The pool's finalizer: tear ``worker`` down, wait for its thread."""
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        worker.add_exit_callback(functools.partial(_wake_soon, loop, exited))
        worker.retire()
        drain, join = self._drain_timeout, self._join_timeout
        bound = None if drain is None or join is None else drain + join
        done, _ = await asyncio.wait({exited}, timeout=bound)
        if done and await _until_dead(worker.thread, 5.0 if join is None else join):
            return
        worker.abandon(f"worker loop {worker.thread.name} was abandoned")
        log.warning(
            "ttlpool: worker thread %s did not end within %s of its teardown "
            "(drain_timeout + join_timeout); it is left running as a daemon thread",
            worker.thread.name,
            "its bounds" if bound is None else f"{bound:g}s",
        )

    def _shutdown_soon(self) -> None:
        self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown())

    async def _shutdown(self) -> None:
        """Close the pool, let the requests end, then retire the control loop."""
        try:
            await self._pool.aclose()
        except Exception:
            log.exception("ttlpool: closing the pool of %r failed", self._name)
        finally:
            if self._serving:
                # Every worker is gone, so every request has ended or is
                # ending; the control loop's drain cancels any straggler.
                await asyncio.wait(set(self._serving), timeout=self._join_timeout)
            assert self._control is not None
            self._control.retire()
