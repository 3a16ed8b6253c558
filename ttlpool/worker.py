"""``WorkerLoopPool``, the public adapter: warm event loops pooled by key.

What lives here: :class:`WorkerLoopPool` and its glue to the pool (the
pool's factory and finalizer, a clock that arms the pool's idle timer on
the control loop, the life of the control loop). What it must not know:
how a loop runs its thread or a call its task (:mod:`ttlpool._worker_loop`,
which never imports this module), and the pool's insides: it uses
:class:`~ttlpool.ResourcePool` only through its public API and the
:class:`~ttlpool.clock.Clock` protocol.

Theory of operation
-------------------

*Entries.* Each entry of the ``ResourcePool`` is a ``_WorkerLoop`` (a loop
and its daemon thread ``"{name}-{n}"``); the pool's factory starts one, its
finalizer retires one. Workers are loop-agnostic, so the pool shares its
entries across loops (``per_loop=False``).

*The control loop* (a ``_WorkerLoop`` on ``"{name}-control"``) hosts what
must not depend on a caller's loop: the pool's idle timer, whichever loop
released the worker (so an idle worker is reaped after the loop that used
it has closed, and its teardown is never cut off by that loop's shutdown),
and the leases of ``run_sync`` and ``lease`` callers, who may have no loop.

*A dispatch* admits its request to the control loop (starting one if there
is none) and keeps it there until its lease is released. ``run`` leases
straight from the caller's loop (a pool hit: no thread hop); ``run_sync``
and ``lease`` are served by a task on the control loop that holds the
lease while the worker runs the call or the caller holds the loop.

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

*The control loop retires itself* once no request is admitted, no worker is
alive (in the pool, being made, or being torn down) and no pool timer is
pending. Whatever ends the last of these posts a check to the control
loop, which, under ``_lock``, retires it and sets ``_control`` to ``None``
in one step. A dispatch admits its request under the same lock: it comes
first and the check keeps the loop, or it finds no control loop (or one
that admits nothing) and starts a new one. It never gets a dead one.

*Stop* closes the pool on the control loop (every worker retires, in-flight
work is cancelled), retires the control loop, and waits for every control
thread, including one still retiring by itself.

State that two threads reach
----------------------------

``WorkerLoopPool``
    ``_control``, ``_controls``, ``_live_workers``, ``_pending_timers``,
    ``_closed``, ``_stopping``, ``_threads``, ``_numbers``: any thread,
    under ``_lock``. (The end of a dispatch reads ``_live_workers`` and
    ``_pending_timers`` without it, as hints: the retirement check reads
    them again under it.) ``_lock`` comes before any ``_WorkerLoop._lock``
    and guards bookkeeping only: never held across an ``await`` or while
    user code runs.
    ``_serving``: control-loop threads only. A serve task leaves it before
    its request leaves the control loop, so a retiring control loop's
    thread is done with it before the next control loop can start.
``_ControlTimer``
    ``_over``, ``_handle``, ``_control``: the control loop's thread (arming,
    firing) and the thread that cancels. Each checks ``_over`` first: a
    timer cancelled before it fires never runs its callback.
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
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Hashable
from types import TracebackType
from typing import Any, TypeVar, cast

from ttlpool._checks import check_seconds
from ttlpool._worker_loop import (
    _Call,
    _LeaseRequest,
    _LoopWaiter,
    _Request,
    _wake_soon,
    _WorkerLoop,
)
from ttlpool.clock import TimerCallback
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
    """A pool timer, armed on the control loop whichever loop asked for it."""

    __slots__ = ("_callback", "_control", "_handle", "_on_over", "_over", "_when")

    def __init__(
        self,
        when: float,
        callback: TimerCallback,
        on_over: Callable[[_ControlTimer], object],
    ) -> None:
        self._when = when
        self._callback = callback
        self._on_over = on_over
        self._over = False  # fired or cancelled
        self._control: _WorkerLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, control: _WorkerLoop) -> None:
        """On ``control``'s loop: wake up at the deadline."""
        if not self._over:
            self._control = control
            delay = max(0.0, self._when - time.monotonic())
            self._handle = control.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        if self._over:
            return
        self._over = True
        try:
            self._callback()
        finally:
            self._on_over(self)

    def cancel(self) -> None:
        if self._over:
            return
        self._over = True
        handle, control = self._handle, self._control
        if handle is not None and control is not None:
            control.post(handle.cancel)  # a retiring loop drops it anyway
        self._on_over(self)


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
        return self._workers._arm_timer(when, callback)


_POOLS: weakref.WeakSet[WorkerLoopPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_threads(forked=True)


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

    A helper thread, ``"{name}-control"``, runs while there is work: a
    dispatch in progress or a loop alive. Once every loop has been retired
    it ends too, and the next dispatch starts it again: an idle adapter
    holds no thread.

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
        where = "WorkerLoopPool()"
        self._drain_timeout = check_seconds(drain_timeout, "drain_timeout", where)
        self._join_timeout = check_seconds(join_timeout, "join_timeout", where)
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

    def _forget_threads(self, forked: bool = False) -> None:
        """Start with no thread: at construction, and in a forked child.

        In a child, the parent's loops run on threads the child does not
        have: each is disowned, so that nothing in the child posts to it,
        waits for it or blocks on a lock the fork caught held. (Nothing in
        the child waits for their dispatches either: their callers' threads
        stayed in the parent, and asyncio refuses to go on running a loop
        inherited from the parent.)
        """
        parents = [*self._controls, *self._live_workers] if forked else []
        self._lock = threading.Lock()
        #: The control loop that admits dispatches, or None.
        self._control: _WorkerLoop | None = None
        #: Every control loop whose thread has not ended (``_control`` and
        #: any still retiring), for ``stop`` to wait for.
        self._controls: set[_WorkerLoop] = set()
        #: Workers made by the factory whose teardown has not ended.
        self._live_workers: set[_WorkerLoop] = set()
        #: Pool timers armed on a control loop that have not fired.
        self._pending_timers: set[_ControlTimer] = set()
        self._closed = False
        self._stopping = False
        self._numbers = itertools.count(1)
        #: Every thread started, to name those alive if stop times out.
        self._threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        #: Control tasks serving a run_sync or lease request.
        self._serving: set[asyncio.Task[None]] = set()
        self._shutdown_task: asyncio.Task[None] | None = None
        for loop in parents:
            loop.disown_after_fork()

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
        waiter = _LoopWaiter(asyncio.get_running_loop())
        call = _Call(fn, args, kwargs, waiter.notify)
        control = self._begin_dispatch("run", key, call)
        try:
            async with self._pool.get(key) as worker:
                call.attach(worker, _released_by_caller)
                result: T = await self._outcome(call, waiter)
        finally:
            self._end_dispatch(control, call)
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
        self._begin_dispatch("run_sync", key, call, serve=True)
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
        self._begin_dispatch("lease", key, request, serve=True)
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
        bound = check_seconds(timeout, "timeout", "stop")
        with self._lock:
            self._closed = True
            if not self._stopping:
                self._stopping = True
                # Workers live only while a control loop does: with none,
                # there is nothing to close but control loops still retiring.
                if self._control is not None or self._live_workers:
                    self._admit_locked(None, self._shutdown_soon)
            controls = list(self._controls)
        grace = _EXIT_GRACE if bound is None else min(bound, _EXIT_GRACE)
        ended = await asyncio.gather(*(c.wait_ended(bound, grace) for c in controls))
        if all(ended):
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

    # -- the control loop's life -------------------------------------------------

    def _begin_dispatch(
        self,
        operation: str,
        key: Hashable,
        request: _Call | _LeaseRequest,
        serve: bool = False,
    ) -> _WorkerLoop:
        """Admit ``request`` to a control loop, starting one if needed.

        With ``serve``, a control task then leases ``key``'s worker for it.
        The request stays admitted until :meth:`_end_dispatch`, which keeps
        that control loop from retiring meanwhile. Raises once stopped.
        """
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"{operation}: key {key!r} is unhashable") from None
        start = functools.partial(self._serve_soon, key, request) if serve else None
        with self._lock:
            if self._closed:
                raise PoolClosedError(
                    f"{operation}: WorkerLoopPool {self._name!r} is stopped "
                    f"(key {key!r})"
                )
            return self._admit_locked(request, start)

    def _admit_locked(
        self,
        request: _Request | None,
        start: Callable[[_WorkerLoop], object] | None,
    ) -> _WorkerLoop:
        """Under ``_lock``: admit to the control loop, or to a new one if
        there is none or it no longer admits (retiring, or its thread died).
        ``start(control)`` then runs on that loop."""
        while True:
            control = self._control
            if control is None or control.retiring:
                control = self._control = self._start_control()
            posted = None if start is None else functools.partial(start, control)
            if control.admit(request, posted):
                return control

    def _start_control(self) -> _WorkerLoop:
        """Under ``_lock``: a new control loop on its thread."""
        control = _WorkerLoop(
            asyncio.new_event_loop(),
            f"{self._name}-control",
            self._drain_timeout,
            self._join_timeout,
        )
        control.start()
        self._threads.add(control.thread)
        self._controls.add(control)
        control.add_exit_callback(functools.partial(self._control_ended, control))
        return control

    def _control_ended(self, control: _WorkerLoop) -> None:
        """On the control thread, its loop closed."""
        with self._lock:
            self._controls.discard(control)
            if self._control is control:  # it died: the next dispatch starts one
                self._control = None

    def _end_dispatch(self, control: _WorkerLoop, request: _Request) -> None:
        """The dispatch is over, its lease released: let ``control`` go."""
        if control.forget(request) and not self._live_workers:
            self._check_idle_soon(control)

    def _check_idle_soon(self, control: _WorkerLoop) -> None:
        if not self._pending_timers:
            control.post(functools.partial(self._retire_control_if_idle, control))

    def _retire_control_if_idle(self, control: _WorkerLoop) -> None:
        """On ``control``: retire it if nothing needs it any more."""
        with self._lock:
            if (
                control is not self._control
                or self._stopping
                or self._live_workers
                or self._pending_timers
            ):
                return
            if control.retire_if_idle():  # no request admitted
                self._control = None

    def _arm_timer(self, when: float, callback: TimerCallback) -> _ControlTimer:
        """The pool's timer: on the control loop, which it keeps alive."""
        timer = _ControlTimer(when, callback, self._timer_over)
        with self._lock:
            if not self._stopping:
                self._pending_timers.add(timer)
                self._admit_locked(None, timer.arm)
            elif self._control is not None:  # stopping: the pool is closed
                self._control.post(functools.partial(timer.arm, self._control))
        return timer

    def _timer_over(self, timer: _ControlTimer) -> None:
        """A timer fired or was cancelled (any thread)."""
        with self._lock:
            self._pending_timers.discard(timer)
            control = self._control
            idle = control is not None and not self._live_workers
        if idle:
            assert control is not None
            self._check_idle_soon(control)

    # -- control loop --------------------------------------------------------------

    def _serve_soon(
        self, key: Hashable, request: _Call | _LeaseRequest, control: _WorkerLoop
    ) -> None:
        # Not an eager task: the step of a control task releasing a lease,
        # woken up before this request was posted, must run before this
        # task's acquire (a release then a dispatch, in that order).
        task = control.loop.create_task(self._serve(key, request, control))
        self._serving.add(task)

    async def _serve(
        self, key: Hashable, request: _Call | _LeaseRequest, control: _WorkerLoop
    ) -> None:
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
        finally:
            # Out of _serving before the request leaves the control loop,
            # which may then retire (see the module docstring).
            self._serving.discard(cast("asyncio.Task[None]", asyncio.current_task()))
            self._end_dispatch(control, request)

    def _create_worker(self, key: Hashable) -> _WorkerLoop:
        """The pool's factory: a new loop on a new daemon thread."""
        factory = self._loop_factory or asyncio.new_event_loop
        with self._lock:
            number = next(self._numbers)
        worker = _WorkerLoop(
            factory(),
            f"{self._name}-{number}",
            self._drain_timeout,
            self._join_timeout,
        )
        worker.start()
        with self._lock:
            self._threads.add(worker.thread)
            self._live_workers.add(worker)
        return worker

    def _retire_worker(self, worker: _WorkerLoop) -> Coroutine[Any, Any, None]:
        """The pool's finalizer: start ``worker``'s teardown now; the pool
        awaits the coroutine returned, which waits for its thread."""
        worker.retire()
        return self._wait_for_worker(worker)

    async def _wait_for_worker(self, worker: _WorkerLoop) -> None:
        try:
            drain, join = self._drain_timeout, self._join_timeout
            bound = None if drain is None or join is None else drain + join
            if await worker.wait_ended(bound, _EXIT_GRACE if join is None else join):
                return
            worker.fail_all_requests(f"worker loop {worker.thread.name} was abandoned")
            log.warning(
                "ttlpool: worker thread %s did not end within %s of its teardown "
                "(drain_timeout + join_timeout); it is left running as a daemon "
                "thread",
                worker.thread.name,
                "its bounds" if bound is None else f"{bound:g}s",
            )
        finally:
            self._worker_gone(worker)

    def _worker_gone(self, worker: _WorkerLoop) -> None:
        """A worker's teardown ended (any thread)."""
        with self._lock:
            self._live_workers.discard(worker)
            control = self._control
            idle = control is not None and not self._live_workers
        if idle:
            assert control is not None
            self._check_idle_soon(control)

    def _shutdown_soon(self, control: _WorkerLoop) -> None:
        self._shutdown_task = control.loop.create_task(self._shutdown(control))

    async def _shutdown(self, control: _WorkerLoop) -> None:
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
            control.retire()
