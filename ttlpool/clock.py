"""Where a pool reads the time and sets its one timer per event loop.

A pool never calls ``time`` or ``loop.call_later`` directly: it asks its
clock, so that a test can drive idle deadlines by hand
(:class:`ttlpool.testing.ManualClock`) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["Clock", "MonotonicClock", "TimerCallback", "TimerHandle"]

#: What a pool's timer runs. It may return tasks it started (finalizers);
#: a manual clock waits for them, the real clock ignores them.
TimerCallback = Callable[[], "Iterable[asyncio.Task[object]] | None"]


class TimerHandle(Protocol):
    """A timer that can be cancelled."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The time source and timer of a pool."""

    def now(self) -> float:
        """Seconds on a monotonic scale; deadlines are on this scale."""
        ...

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: TimerCallback
    ) -> TimerHandle:
        """Run ``callback`` on ``loop`` once ``now() >= when``.

        Called on ``loop``'s own thread.
        """
        ...


class MonotonicClock:
    """``time.monotonic`` (the clock of asyncio's default loop) and ``call_later``.

    Deadlines are converted to a delay, so the clock works with any event
    loop implementation, whatever that loop's own clock is.
    """

    __slots__ = ()

    now = staticmethod(time.monotonic)

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: TimerCallback
    ) -> TimerHandle:
        return loop.call_later(max(0.0, when - time.monotonic()), callback)
