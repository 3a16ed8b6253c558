"""``WorkerLoopPool``, the public adapter: warm event loops pooled by key.

What lives here: :class:`WorkerLoopPool`, how each dispatch (``run``,
``run_sync``, ``lease``) gets its worker, and the pool's factory and
finalizer, which start and retire worker loops. What it must not know:
how a loop runs its thread (:mod:`ttlpool._worker_loop`) or a call its
task (:mod:`ttlpool._requests`); when the control loop starts, what keeps
it alive and how it retires (:mod:`ttlpool._control`: this module admits
requests to it and reports the workers it makes and retires; none of
these modules imports this one); and the pool's insides: it uses a
:class:`~ttlpool._shared_pool.SharedPool` (a ``ResourcePool`` whose leases
threads take and give back) through its methods, with the
:class:`~ttlpool._control.ControlLoop` as its :class:`~ttlpool.clock.Clock`.

Theory of operation
-------------------

*Entries.* Each entry of the ``ResourcePool`` is a ``_WorkerLoop`` (a loop
and its daemon thread ``"{name}-{n}"``); the pool's factory starts one, its
finalizer retires one. Workers are loop-agnostic, so the pool shares its
entries across loops (``per_loop=False``).

*A call* (``run``, ``run_sync``) takes a hit's lease on the caller's
thread, with no event loop (the entries live in one ledger that locks
itself); the worker runs it, and its thread gives the lease back when the
call ends, before it wakes the caller up. So a warm ``run_sync`` crosses
two threads, caller to worker and back. The control loop hears of a call
only on the rare paths: a release that must arm the idle timer or retire
the worker (``ttl=0``) posts that to it
(:meth:`~ttlpool._control.ControlLoop.give_back`); a miss is admitted to
it (starting one if there is none) until its lease is taken, on the
caller's loop for ``run``, by a control task for ``run_sync``. ``lease``
is served by a control task holding the lease while the caller holds the
loop. The idle timer lives on the control loop, so reaping never depends
on a caller's loop staying alive.

*Cancellation.* Cancelling a ``run`` cancels the task on the worker and
waits for it to unwind, as ``asyncio.TaskGroup`` does; a second
cancellation stops the wait. A call still unfinished when its worker goes
(its task ignored the cancellation) fails with ``RuntimeError`` instead of
hanging its caller.

*Teardown of one worker* (the finalizer, on the control loop: when the
TTL reaps it, or after its last release with ``ttl=0``): it admits no new
call and drains; its thread closes its loop and signals the finalizer,
which waits for that without blocking. The pool takes an entry out before
finalizing it, so a dispatch during a teardown gets a fresh worker at once.

*Stop* closes the pool on the control loop (every worker retires,
in-flight work is cancelled); then the control loop retires and its
threads are waited for (:meth:`~ttlpool._control.ControlLoop.stop`).

State that two threads reach
----------------------------

``WorkerLoopPool`` has none of its own: its attributes are set at
construction and only read after. What changes lives in the
``ControlLoop`` (under its lock), in the pool (an entry's count under the
shared ledger's lock, from any thread; the rest on the control loop) and
in the requests (:mod:`ttlpool._requests`). A call's lease (an entry
holding one reference) is taken by the caller's thread, or a control task
on a miss, and given back once, by whichever thread ends the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Hashable
from types import TracebackType
from typing import Any, TypeVar, cast

from ttlpool._aio import resolve_threadsafe
from ttlpool._checks import check_seconds
from ttlpool._control import EXIT_GRACE, ControlLoop
from ttlpool._core import Entry
from ttlpool._requests import _Call, _LeaseRequest, _LoopWaiter
from ttlpool._shared_pool import SharedPool
from ttlpool._worker_loop import _WorkerLoop
from ttlpool.errors import PoolClosedError
from ttlpool.stats import PoolStats

__all__ = ["DEFAULT_KEY", "WorkerLoopPool"]

T = TypeVar("T")

log = logging.getLogger("ttlpool")

#: The key of ``run``, ``run_sync`` and ``lease`` when none is given.
DEFAULT_KEY = "worker"

#: A worker loop's lease: its pool entry, holding one reference.
_Lease = Entry[Hashable, _WorkerLoop]


class WorkerLoopPool:
    """Warm event loops on daemon threads, reused across dispatches.

    Each key (``"worker"`` unless given) has one event loop running on a
    daemon thread named ``"{name}-{n}"``, created at its first dispatch and
    kept warm while dispatches keep coming. A loop idle for ``ttl`` seconds
    is retired by itself (``None``: never; ``0``: after every dispatch); a
    dispatch that arrives meanwhile gets a fresh loop at once and never
    waits for the old one's teardown. ``max_lifetime`` recycles a loop that
    long after it started, once its dispatches in progress ended.

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
        max_lifetime: float | None = None,
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
        self._control_loop = ControlLoop(name, self._drain_timeout, self._join_timeout)
        # Calls lease from the caller's thread (a miss: its loop, or the
        # control loop) and give back from the worker's, so the workers are
        # shared across loops; the idle timer lives on the control loop, so
        # reaping never depends on a caller's loop staying alive.
        self._pool: SharedPool[Hashable, _WorkerLoop] = SharedPool(
            self._create_worker,
            finalizer=self._retire_worker,
            ttl=ttl,
            clock=self._control_loop,
            max_lifetime=max_lifetime,
        )

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
        return self._control_loop.closed

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
        self._check_open("run", key)
        waiter = _LoopWaiter(asyncio.get_running_loop())
        call = _Call(fn, args, kwargs, waiter.notify)
        lease = self._pool.lease_from_any_thread(key)  # a hit, on this thread
        if lease is None:  # a miss: the worker is made on this loop
            control = self._begin_dispatch("run", key, call)
            try:
                lease = await self._pool.lease_here(key, "run")
            finally:
                self._control_loop.end_dispatch(control, call)
        self._start(call, lease)
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
        to the worker loop (on a miss, by the control loop, which makes the
        worker) and the caller waits on a plain lock that the worker thread
        releases with the outcome, once it has given the worker back. A
        ``KeyboardInterrupt`` during the wait cancels the worker task and
        propagates at once. Called from a thread whose event loop is
        running, it raises ``RuntimeError`` (it would block that loop): use
        ``await run()``.
        """
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(
                "run_sync: an event loop is running in this thread and would be "
                "blocked; use `await WorkerLoopPool.run(...)` instead"
            )
        self._check_open("run_sync", key)
        finished = threading.Lock()
        finished.acquire()
        call = _Call(fn, args, kwargs, finished.release)
        lease = self._pool.lease_from_any_thread(key)  # a hit, on this thread
        if lease is None:  # a miss: a control task makes the worker
            serve = functools.partial(self._lease_and_start, key, call)
            self._begin_dispatch("run_sync", key, call, serve)
        else:
            self._start(call, lease)
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
        self._check_open("lease", key)
        waiter = _LoopWaiter(asyncio.get_running_loop())
        request = _LeaseRequest(waiter.notify)
        serve = functools.partial(self._serve_lease, key, request)
        self._begin_dispatch("lease", key, request, serve)
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
        if await self._control_loop.stop(self._close_pool, bound):
            return
        alive = self._control_loop.alive_thread_names()
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
        state = "stopped" if self.closed else "running"
        stats = self._pool.stats
        return (
            f"<WorkerLoopPool {self._name!r} {state} loops={stats.total_entries} "
            f"busy={stats.referenced_entries} ttl={self._pool.ttl}>"
        )

    # -- dispatches ------------------------------------------------------------

    def _check_open(self, operation: str, key: Hashable) -> None:
        """Raise for an unhashable ``key``, or once stopped."""
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"{operation}: key {key!r} is unhashable") from None
        if self._control_loop.closed:
            raise self._closed_error(operation, key)

    def _closed_error(self, operation: str, key: Hashable) -> PoolClosedError:
        return PoolClosedError(
            f"{operation}: WorkerLoopPool {self._name!r} is stopped (key {key!r})"
        )

    def _begin_dispatch(
        self,
        operation: str,
        key: Hashable,
        request: _Call | _LeaseRequest,
        serve: Callable[[], Awaitable[None]] | None = None,
    ) -> _WorkerLoop:
        """Admit ``request`` to a control loop (see
        ``ControlLoop.begin_dispatch``), starting one if needed; raise once
        stopped."""
        control = self._control_loop.begin_dispatch(request, serve)
        if control is None:
            raise self._closed_error(operation, key)
        return control

    def _start(self, call: _Call, lease: _Lease) -> None:
        """Run ``call`` on the leased worker. When it ends, the thread that
        ends it gives the lease back, and what must follow (rarely) goes to
        the control loop."""
        release = functools.partial(self._pool.release_from_any_thread, lease)
        call.attach(
            lease.resource, functools.partial(self._control_loop.give_back, release)
        )

    async def _lease_and_start(self, key: Hashable, call: _Call) -> None:
        """On the control loop: lease ``key``'s worker for a ``run_sync`` that
        missed (it is made here), and start ``call`` on it."""
        try:
            lease = await self._pool.lease_here(key, "run_sync")
        except BaseException as exc:
            call.fail(exc)
            if not isinstance(exc, Exception):  # the control loop's drain, say
                raise
            return
        self._start(call, lease)

    async def _serve_lease(self, key: Hashable, request: _LeaseRequest) -> None:
        """On the control loop: hold a lease of ``key``'s worker for as long
        as the caller of ``lease`` holds its loop."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        try:
            async with self._pool.get(key) as worker:
                request.attach(
                    worker, functools.partial(resolve_threadsafe, finished, None)
                )
                await finished
        except Exception as exc:
            if not request.fail(exc):  # the request was over: a release failed
                log.error("ttlpool: releasing worker %r failed", key, exc_info=exc)
        except BaseException as exc:
            request.fail(exc)
            raise

    async def _close_pool(self) -> None:
        """On the control loop, at ``stop``: every worker retires."""
        try:
            await self._pool.aclose()
        except Exception:
            log.exception("ttlpool: closing the pool of %r failed", self._name)

    # -- the pool's factory and finalizer ---------------------------------------

    def _create_worker(self, key: Hashable) -> _WorkerLoop:
        """The pool's factory: a new loop on a new daemon thread."""
        factory = self._loop_factory or asyncio.new_event_loop
        name = self._control_loop.next_worker_name()
        worker = _WorkerLoop(factory(), name, self._drain_timeout, self._join_timeout)
        worker.start()
        self._control_loop.add_worker(worker)
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
            if await worker.wait_ended(bound, EXIT_GRACE if join is None else join):
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
            self._control_loop.worker_gone(worker)
