"""The adapter's control loop: started on demand, retired once idle.

What lives here: :class:`ControlLoop`, the life of a ``WorkerLoopPool``'s
*control loop*. Each run of it is a ``_WorkerLoop`` on the thread
``"{name}-control"`` (passed around as ``control``); ``ControlLoop``
starts one when a dispatch or a timer needs it, admits dispatches to it,
counts what keeps it alive, retires it once idle, closes it on stop, and
starts afresh in a forked child. It is also the pool's
:class:`~ttlpool.clock.Clock`: every pool timer (a :class:`ControlTimer`)
is armed on the control loop, whichever loop asked. And it keeps the books
of the adapter's threads (their numbers, every one started), which a
forked child must start afresh too.

What it must not know: the pool, keys, and how a request is served or a
worker made (it imports neither :mod:`ttlpool.pool` nor
:mod:`ttlpool.worker`: the adapter hands it callables, ``serve`` for a
request and ``close`` for the pool, and reports each worker added and
gone); how a loop runs its thread (:mod:`ttlpool._worker_loop`).

Theory of operation
-------------------

*What it hosts.* What must not depend on a caller's loop: the pool's idle
timers, whichever loop released the worker (so an idle worker is reaped
after the loop that used it has closed, and its teardown is never cut off
by that loop's shutdown), the tasks serving ``lease`` callers and the
``run_sync`` callers who missed (they may have no loop), and what follows
a lease given back on another thread (:meth:`ControlLoop.give_back`), when
more than the common case follows.

*Admission.* A dispatch admits its request (:meth:`ControlLoop.begin_dispatch`)
to the current control loop, or to a new one if there is none or it no
longer admits (retiring, or its thread died), and keeps it there until
:meth:`ControlLoop.end_dispatch`, once its lease is released.

*Retirement.* The control loop retires itself once no request is admitted,
no worker is alive (added and not gone: in the pool, being made, or being
torn down) and no pool timer is pending. Whatever ends the last of these
posts a check to the control loop, which, under ``_lock``, retires it and
sets ``_current`` to ``None`` in one step. A dispatch admits its request
under the same lock: it comes first and the check keeps the loop, or it
finds no control loop (or one that admits nothing) and starts a new one.
It never gets a dead one.

*Stop* admits nothing more, runs ``close`` on the control loop (every
worker retires, in-flight work is cancelled), lets the serving tasks end,
retires the control loop, and waits for every control thread, including
one still retiring by itself.

State that two threads reach
----------------------------

``ControlLoop``
    ``_current``, ``_controls``, ``_live_workers``, ``_pending_timers``,
    ``_closed``, ``_threads``, ``_numbers``: any thread, under ``_lock``.
    (The end of a dispatch reads ``_live_workers`` and ``_pending_timers``
    without it, as hints: the retirement check reads them again under it;
    ``give_back`` reads ``_current`` without it: a control loop that no
    longer admits refuses the follow-up, which then goes the locked way.)
    ``_lock`` comes before any ``_WorkerLoop._lock`` and guards bookkeeping
    only: never held across an ``await`` or while user code runs.
    ``_serving``, ``_shutdown_task``: control-loop threads only. A serving
    task leaves ``_serving`` before its request leaves the control loop, so
    a retiring control loop's thread is done with it before the next
    control loop can start. (A forked child resets all of these while it
    has one thread.)
``ControlTimer``
    ``_over``, ``_handle``, ``_control``: the control loop's thread (arming,
    firing) and the thread that cancels. Each checks ``_over`` first: a
    timer cancelled before it fires never runs its callback.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import cast

from ttlpool._worker_loop import _Request, _WorkerLoop
from ttlpool.clock import TimerCallback

__all__ = ["EXIT_GRACE", "ControlLoop", "ControlTimer"]

#: How long a thread that signalled its exit may take to end, at most.
EXIT_GRACE = 5.0


class ControlTimer:
    """A pool timer, armed on the control loop whichever loop asked for it."""

    __slots__ = ("_callback", "_control", "_handle", "_on_over", "_over", "_when")

    def __init__(
        self,
        when: float,
        callback: TimerCallback,
        on_over: Callable[[ControlTimer], object],
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


class ControlLoop:
    """The control loop of one adapter, through its runs; the pool's clock.

    Its thread is ``"{name}-control"``, its worker threads ``"{name}-{n}"``.
    Construction starts no thread: the first dispatch or timer does.
    """

    #: The :class:`~ttlpool.clock.Clock` protocol's time source.
    now = staticmethod(time.monotonic)

    def __init__(
        self, name: str, drain_timeout: float | None, join_timeout: float | None
    ) -> None:
        self._name = name
        self._drain_timeout = drain_timeout
        self._join_timeout = join_timeout
        self._start_afresh()
        _CONTROL_LOOPS.add(self)

    def _start_afresh(self) -> None:
        """No thread, nothing admitted: at construction and after a fork."""
        self._lock = threading.Lock()
        #: The control loop that admits dispatches, or None.
        self._current: _WorkerLoop | None = None
        #: Every control loop whose thread has not ended (``_current`` and
        #: any still retiring), for ``stop`` to wait for.
        self._controls: set[_WorkerLoop] = set()
        #: Workers added and not gone: each keeps the control loop alive.
        self._live_workers: set[_WorkerLoop] = set()
        #: Pool timers armed on a control loop that have not fired.
        self._pending_timers: set[ControlTimer] = set()
        self._closed = False
        self._numbers = itertools.count(1)
        #: Every thread started, to name those alive if stop times out.
        self._threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        #: Control tasks serving a request (``run_sync``, ``lease``).
        self._serving: set[asyncio.Task[None]] = set()
        self._shutdown_task: asyncio.Task[None] | None = None

    def after_fork_in_child(self) -> None:
        """In a forked child: start afresh, with no thread.

        The parent's loops run on threads the child does not have: each is
        disowned, so that nothing in the child posts to it, waits for it or
        blocks on a lock the fork caught held. (Nothing in the child waits
        for their dispatches either: their callers' threads stayed in the
        parent, and asyncio refuses to go on running a loop inherited from
        the parent.)
        """
        parents = [*self._controls, *self._live_workers]
        self._start_afresh()
        for loop in parents:
            loop.disown_after_fork()

    @property
    def closed(self) -> bool:
        """:meth:`stop` was called: nothing more is admitted."""
        return self._closed

    # -- dispatches ----------------------------------------------------------------

    def begin_dispatch(
        self, request: _Request, serve: Callable[[], Awaitable[None]] | None = None
    ) -> _WorkerLoop | None:
        """Admit ``request`` to a control loop, starting one if needed.

        The request keeps that control loop from retiring until the dispatch
        ends: with ``serve``, when the task that awaits ``serve()`` on the
        control loop ends; without, at :meth:`end_dispatch`. Returns the
        control loop it was admitted to, or ``None`` once stopped.
        """
        start = (
            None
            if serve is None
            else functools.partial(self._serve_soon, request, serve)
        )
        with self._lock:
            if self._closed:
                return None
            return self._admit_locked(request, start)

    def end_dispatch(self, control: _WorkerLoop, request: _Request) -> None:
        """The dispatch is over, its lease released: let ``control`` go."""
        if control.forget(request) and not self._live_workers:
            self._check_idle_soon(control)

    def _serve_soon(
        self,
        request: _Request,
        serve: Callable[[], Awaitable[None]],
        control: _WorkerLoop,
    ) -> None:
        # Not an eager task: the step of a control task releasing a lease,
        # woken up before this request was posted, must run before this
        # task's acquire (a release then a dispatch, in that order).
        task = control.loop.create_task(self._serve(request, serve, control))
        self._serving.add(task)

    async def _serve(
        self,
        request: _Request,
        serve: Callable[[], Awaitable[None]],
        control: _WorkerLoop,
    ) -> None:
        try:
            await serve()
        finally:
            # Out of _serving before the request leaves the control loop,
            # which may then retire (see the module docstring).
            self._serving.discard(cast("asyncio.Task[None]", asyncio.current_task()))
            self.end_dispatch(control, request)

    # -- leases given back on other threads --------------------------------------------

    def give_back(self, release: Callable[[], Callable[[], object] | None]) -> None:
        """A pool lease goes back from any thread: ``release()`` gives it
        back and returns what must follow on the control loop (arming the
        pool's timer, finalizing), or ``None`` in the common case (no hop).

        ``release`` runs under the control loop's admission lock, so that
        its follow-up is posted before ``stop`` can retire that loop, and
        runs. (A held lease keeps its worker alive, which keeps the control
        loop from retiring by itself; once ``stop`` has retired it, the
        pool is closed and every entry evicted, so a release gives back
        nothing.) A follow-up the control loop refuses (its thread died)
        goes to a new one, as a timer would.
        """
        control = self._current  # a hint (see the module docstring)
        if control is not None and control.decide_and_post(release):
            return
        follow_up = release()
        if follow_up is None:
            return
        with self._lock:
            if not self._closed:
                self._admit_locked(None, lambda _control: follow_up())
            elif self._current is not None:
                self._current.post(follow_up)

    # -- workers ---------------------------------------------------------------------

    def next_worker_name(self) -> str:
        """``"{name}-{n}"``, for the next worker's thread."""
        with self._lock:
            return f"{self._name}-{next(self._numbers)}"

    def add_worker(self, worker: _WorkerLoop) -> None:
        """``worker``'s thread started: it keeps the control loop alive
        until :meth:`worker_gone`."""
        with self._lock:
            self._threads.add(worker.thread)
            self._live_workers.add(worker)

    def worker_gone(self, worker: _WorkerLoop) -> None:
        """``worker``'s teardown ended (any thread)."""
        with self._lock:
            self._live_workers.discard(worker)
            control = self._current
            idle = control is not None and not self._live_workers
        if idle:
            assert control is not None
            self._check_idle_soon(control)

    # -- the pool's clock ------------------------------------------------------------

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: TimerCallback
    ) -> ControlTimer:
        """The :class:`~ttlpool.clock.Clock` protocol's timer, on the control
        loop whichever ``loop`` asked; it keeps the control loop alive until
        it fires or is cancelled."""
        timer = ControlTimer(when, callback, self._timer_over)
        with self._lock:
            if not self._closed:
                self._pending_timers.add(timer)
                self._admit_locked(None, timer.arm)
            elif self._current is not None:  # stopping: the pool is closed
                self._current.post(functools.partial(timer.arm, self._current))
        return timer

    def _timer_over(self, timer: ControlTimer) -> None:
        """A timer fired or was cancelled (any thread)."""
        with self._lock:
            self._pending_timers.discard(timer)
            control = self._current
            idle = control is not None and not self._live_workers
        if idle:
            assert control is not None
            self._check_idle_soon(control)

    # -- stop ------------------------------------------------------------------------

    async def stop(
        self, close: Callable[[], Awaitable[None]], timeout: float | None
    ) -> bool:
        """Admit nothing more, run ``close()`` on the control loop, retire it.

        ``close`` runs once, at the first call, if a control loop or a
        worker is alive. Waits without blocking the running loop for every
        control thread to end, for at most ``timeout`` seconds (``None``: no
        bound); returns whether they all did.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                # Workers live only while a control loop does: with none,
                # there is nothing to close but control loops still retiring.
                if self._current is not None or self._live_workers:
                    shutdown = functools.partial(self._shutdown_soon, close)
                    self._admit_locked(None, shutdown)
            controls = list(self._controls)
        grace = EXIT_GRACE if timeout is None else min(timeout, EXIT_GRACE)
        ended = await asyncio.gather(*(c.wait_ended(timeout, grace) for c in controls))
        return all(ended)

    def alive_thread_names(self) -> list[str]:
        """The names of the adapter's threads still running, sorted."""
        with self._lock:
            threads = list(self._threads)
        return sorted(t.name for t in threads if t.is_alive())

    def _shutdown_soon(
        self, close: Callable[[], Awaitable[None]], control: _WorkerLoop
    ) -> None:
        self._shutdown_task = control.loop.create_task(self._shutdown(close, control))

    async def _shutdown(
        self, close: Callable[[], Awaitable[None]], control: _WorkerLoop
    ) -> None:
        """Run ``close``, let the serving tasks end, then retire ``control``."""
        try:
            await close()
        finally:
            if self._serving:
                # Every worker is gone, so every request has ended or is
                # ending; the control loop's drain cancels any straggler.
                await asyncio.wait(set(self._serving), timeout=self._join_timeout)
            control.retire()

    # -- the control loop's life -------------------------------------------------------

    def _admit_locked(
        self,
        request: _Request | None,
        start: Callable[[_WorkerLoop], object] | None,
    ) -> _WorkerLoop:
        """Under ``_lock``: admit to the control loop, or to a new one if
        there is none or it no longer admits (retiring, or its thread died).
        ``start(control)`` then runs on that loop."""
        while True:
            control = self._current
            if control is None or control.retiring:
                control = self._current = self._start_control()
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
            if self._current is control:  # it died: the next dispatch starts one
                self._current = None

    def _check_idle_soon(self, control: _WorkerLoop) -> None:
        if not self._pending_timers:
            control.post(functools.partial(self._retire_control_if_idle, control))

    def _retire_control_if_idle(self, control: _WorkerLoop) -> None:
        """On ``control``: retire it if nothing needs it any more."""
        with self._lock:
            if (
                control is not self._current
                or self._closed
                or self._live_workers
                or self._pending_timers
            ):
                return
            if control.retire_if_idle():  # no request admitted
                self._current = None


_CONTROL_LOOPS: weakref.WeakSet[ControlLoop] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for control_loop in list(_CONTROL_LOOPS):
        control_loop.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
