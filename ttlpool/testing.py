"""Helpers for testing code that uses a pool, without sleeping.

Build the pool with a :class:`ManualClock` and move time by hand::

    clock = ManualClock()
    pool = ResourcePool(connect, finalizer=close, ttl=30, clock=clock)
    async with pool.get("db"):
        ...
    await clock.advance(30)     # the idle entry is finalized here
    assert "db" not in pool
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Iterable

from ttlpool.clock import TimerCallback

__all__ = ["ManualClock"]


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "loop", "when")

    def __init__(
        self, when: float, loop: asyncio.AbstractEventLoop, callback: TimerCallback
    ) -> None:
        self.when = when
        self.loop = loop
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to; pass it as ``ResourcePool(clock=...)``.

    ``await clock.advance(seconds)`` moves time forward and runs, on the
    calling loop, every pool timer now due, including the slices a large
    reap yields between, and waits for the finalizers they started.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        """The current manual time in seconds."""
        return self._now

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: TimerCallback
    ) -> _ManualTimer:
        timer = _ManualTimer(when, loop, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    @property
    def pending_timers(self) -> int:
        """How many timers are armed and not cancelled."""
        return sum(not timer.cancelled for _, _, timer in self._timers)

    async def advance(self, seconds: float) -> None:
        """Move time ``seconds`` forward and run what became due."""
        if seconds < 0:
            raise ValueError(f"advance: cannot move time backwards ({seconds!r})")
        self._now += seconds
        await self.run_due()

    async def run_due(self) -> None:
        """Run every timer due by now, on the loop it was armed on."""
        here = asyncio.get_running_loop()
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            if timer.loop is not here:
                timer.loop.call_soon_threadsafe(timer.callback)
                continue
            started: Iterable[asyncio.Task[object]] | None = timer.callback()
            if started:
                await asyncio.wait(list(started))
