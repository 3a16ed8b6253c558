"""``WorkerLoopPool``, the public adapter: warm event loops pooled by key.

What lives here: :class:`WorkerLoopPool` and its glue to the pool (the
pool's factory and finalizer, a clock that arms the pool's idle timer on
the control loop, the control loop). What it must not know: how a loop
runs its thread or a call its task (:mod:`ttlpool._worker_loop`, which
never imports this module), and the pool's insides: it uses
:class:`~ttlpool.ResourcePool` only through its public API and the
:class:`~ttlpool.clock.Clock` protocol.

Theory of operation
-------------------

*Entries.* Each entry of the ``ResourcePool`` is a ``_WorkerLoop`` (a loop
and its daemon thread ``"{name}-{n}"``); the pool's factory starts one, its
finalizer retires one. Workers are loop-agnostic, so the pool shares its
entries across loops (``per_loop=False``).

*The control loop* (a ``_WorkerLoop`` on ``"{name}-control"``, started at
the first dispatch and ended by :meth:`WorkerLoopPool.stop`) hosts what
must not depend on a caller's loop: the pool's idle timer, whichever loop
released the worker (so an idle worker is reaped after the loop that used
it has closed, and its teardown is never cut off by that loop's shutdown),
and the leases of ``run_sync`` and ``lease`` callers, who may have no loop.

*A dispatch.* ``run`` leases straight from the caller's loop (a pool hit:
no thread hop); ``run_sync`` and ``lease`` post their request to the
control loop, where a task holds the lease while the worker runs the call
or the caller holds the loop.

*Cancellation.* Cancelling a ``run`` cancels the task on the worker and
waits for it to unwind, as ``asyncio.TaskGroup`` does; a second
cancellation stops the wait. A call still unfinished when its worker goes
(its task ignored the cancellation) fails with ``RuntimeError`` instead of
hanging its caller.

*Teardown of one worker* (the finalizer: on the control loop when the TTL
reaps it, inside the release with ``ttl=0``): the worker admits no new
call and drains; its thread closes its loop and signals the finalizer,
which waits for that without blocking. The pool takes an entry out before
finalizing it, so a dispatch during a teardown gets a fresh worker at once.

*Stop* closes the pool on the control loop (every worker retires, in-flight
work is cancelled), then drains and stops the control loop itself, and
waits for its thread to end.

State that two threads reach
----------------------------

``WorkerLoopPool``
    ``_control``, ``_closed``, ``_stopping``, ``_threads``: any thread,
    under ``_lock``, which guards bookkeeping only: never held across an
    ``await`` or while user code runs. ``_serving``, ``_shutdown_task``:
    the control loop's thread only.
``_ControlTimer``
    ``_cancelled``, ``_handle``: the control loop's thread arms it, any
    thread may cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, TypeVar, cast

from ttlpool._worker_loop import (
    _Call,
    _LeaseRequest,
    _LoopWaiter,
    _wake_soon,
    _WorkerLoop,
)
from ttlpool.clock import TimerCallback
from ttlpool.drain import _check_timeout
from ttlpool.errors import PoolClosedError
from ttlpool.pool import ResourcePool
from ttlpool.stats import PoolStats

__all__ = ["DEFAULT_KEY", "WorkerLoopPool"]

T = TypeVar("T")

log = logging.getLogger("ttlpool")

#: The key of ``run``, ``run_sync`` and ``lease`` when none is given.
DEFAULT_KEY = "worker"
#: How long a thread that signalled its exit may take to end, at most.
_EXIT_GRACE = 5.0


def _released_by_caller() -> None:
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
            call.attach(worker, _released_by_caller)
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
        grace = _EXIT_GRACE if bound is None else min(bound, _EXIT_GRACE)
        if await control.wait_ended(bound, grace):
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
        control.start()
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
        worker.start()
        with self._lock:
            self._threads.add(worker.thread)
        return worker

    async def _retire_worker(self, worker: _WorkerLoop) -> None:
        """The pool's finalizer: tear ``worker`` down, wait for its thread."""
        worker.retire()
        drain, join = self._drain_timeout, self._join_timeout
        bound = None if drain is None or join is None else drain + join
        if await worker.wait_ended(bound, _EXIT_GRACE if join is None else join):
            return
        worker.fail_all_requests(f"worker loop {worker.thread.name} was abandoned")
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
