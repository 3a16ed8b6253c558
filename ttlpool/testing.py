"""Helpers for testing code that uses a pool, without sleeping.

Build the pool with a :class:`ManualClock` and move time by hand::

    clock = ManualClock()
    pool = ResourcePool(connect, finalizer=close, ttl=30, clock=clock)
    async with pool.get("db"):
        ...
    await clock.advance(30)     # the idle entry is finalized here
    assert "db" not in pool

A :class:`~ttlpool.SyncResourcePool` needs no event loop, and no ``await``::

    pool = SyncResourcePool(connect, finalizer=close, ttl=30, clock=clock)
    with pool.get("db"):
        ...
    clock.advance(30)           # finalized here, in this thread

Who touches what: a clock's timers are armed from any thread (pools on
many loops, threads of a sync pool) under its lock, and run by whoever
advances it: a loop's on that loop, a sync pool's in the advancing thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Coroutine, Generator, Iterable
from typing import Any

from ttlpool.clock import TimerCallback

__all__ = ["ManualClock"]


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "loop", "when")

    def __init__(
        self,
        when: float,
        loop: asyncio.AbstractEventLoop | None,
        callback: TimerCallback,
    ) -> None:
        self.when = when
        self.loop = loop
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to; pass it as ``clock=`` to a pool.

    ``clock.advance(seconds)`` moves time forward and runs every timer of a
    :class:`~ttlpool.SyncResourcePool` now due, in the calling thread, before
    it returns. Awaited (``await clock.advance(seconds)``), it then runs, on
    the calling loop, every ``ResourcePool`` timer now due, including the
    slices a large reap yields between, and waits for the finalizers they
    started.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        #: Timers of event loops, and (``loop`` None) of threads.
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._thread_timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        """The current manual time in seconds."""
        return self._now

    def call_at(
        self,
        loop: asyncio.AbstractEventLoop | None,
        when: float,
        callback: TimerCallback,
    ) -> _ManualTimer:
        """Run ``callback`` once time reaches ``when``: on ``loop``, or, if
        it is ``None``, in the thread that advances the clock."""
        timer = _ManualTimer(when, loop, callback)
        with self._lock:
            timers = self._timers if loop is not None else self._thread_timers
            heapq.heappush(timers, (when, next(self._order), timer))
        return timer

    @property
    def pending_timers(self) -> int:
        """How many timers are armed and not cancelled."""
        with self._lock:
            timers = [*self._timers, *self._thread_timers]
        return sum(not timer.cancelled for _, _, timer in timers)

    def advance(self, seconds: float) -> _Advanced:
        """Move time ``seconds`` forward and run the thread timers now due;
        await the result to run the event loops' too."""
        if seconds < 0:
            raise ValueError(f"advance: cannot move time backwards ({seconds!r})")
        self._now += seconds
        self.run_due_here()
        return _Advanced(self)

    def run_due_here(self) -> None:
        """Run every thread timer due by now (a sync pool's), in this thread,
        until none is (one may arm another that is due already)."""
        while (timer := self._pop_due(self._thread_timers)) is not None:
            timer.callback()

    def _pop_due(
        self, timers: list[tuple[float, int, _ManualTimer]]
    ) -> _ManualTimer | None:
        with self._lock:
            while timers and timers[0][0] <= self._now:
                _, _, timer = heapq.heappop(timers)
                if not timer.cancelled:
                    return timer
        return None

    async def run_due(self) -> None:
        """Run every timer due by now, on the loop it was armed on (and a
        thread timer here)."""
        self.run_due_here()
        here = asyncio.get_running_loop()
        while (timer := self._pop_due(self._timers)) is not None:
            if timer.loop is not here:
                assert timer.loop is not None
                timer.loop.call_soon_threadsafe(timer.callback)
                continue
            started: Iterable[asyncio.Task[object]] | None = timer.callback()
            if started:
                await asyncio.wait(list(started))


class _Advanced(Coroutine[Any, Any, None]):
    """What :meth:`ManualClock.advance` returns: a coroutine that runs the
    event loops' timers that are due (the threads' ran already). Left
    unawaited, as a sync test leaves it, it never started: no warning."""

    __slots__ = ("_clock", "_run")

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self._run: Coroutine[Any, Any, None] | None = None

    def _started(self) -> Coroutine[Any, Any, None]:
        if self._run is None:
            self._run = self._clock.run_due()
        return self._run

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, *args: Any) -> Any:
        return self._started().throw(*args)

    def close(self) -> None:
        if self._run is not None:
            self._run.close()

    def __await__(self) -> Generator[Any, None, None]:
        return self._started().__await__()
