"""The timer of a ``SyncResourcePool``: its reaper thread, or a manual clock.

A loop's partition has a timer on its loop; a thread driver has this. One
daemon thread per pool, ``ttlpool-reaper-<name>``, started (under the
driver's lock) when the ledger first has a deadline or a lease is watched,
sleeps on the driver's condition until the next thing is due, reaps a slice
with no lock held, and ends once nothing is due. With a
:class:`~ttlpool.testing.ManualClock` there is no thread: the clock's timer
runs the same slice in the thread that advances the clock.

Who touches what: ``reaper``, ``timer`` and ``later`` change only under the
driver's ``lock`` (see :mod:`ttlpool._threads`); the reaper thread reads
the ledger only under it, and finalizes what it took after letting go.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ttlpool._core import Entry
from ttlpool._driver import Driver
from ttlpool._entries import Entries
from ttlpool._locked_ledger import LockedLedger
from ttlpool._partition import REAP_SLICE
from ttlpool.clock import TimerCallback, TimerHandle
from ttlpool.testing import ManualClock

__all__ = ["Reaper"]

K = TypeVar("K")
T = TypeVar("T")

log = logging.getLogger("ttlpool")

_timer_fired: Callable[
    [Entries[Any, Any], float, int], tuple[list[Entry[Any, Any]], float | None]
]
_timer_fired = Entries.timer_fired  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]


class _Later:
    """A timer of the reaper thread (a lease's leak watch)."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: TimerCallback) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reaper(Driver[K, T]):
    """A thread driver's timer (see the module doc); the base of
    :class:`~ttlpool._threads.ThreadDriver`, which sets every slot."""

    __slots__ = ("later", "manual", "order", "reaper", "timer")

    ledger: LockedLedger[K, T]  # pyright: ignore[reportIncompatibleVariableOverride]
    lock: threading.Lock
    cond: threading.Condition
    name: str
    forsaken: bool

    def start_reaping(self, clock: object) -> None:
        """Set the reaper's slots (nothing runs yet)."""
        #: The clock, if it runs the reaps itself (a ManualClock, in the
        #: thread that advances it): then there is no reaper thread.
        self.manual = clock if isinstance(clock, ManualClock) else None
        self.reaper: threading.Thread | None = None
        self.timer: TimerHandle | None = None
        #: The reaper thread's other timers: (when, order, timer), a heap.
        self.later: list[tuple[float, int, _Later]] = []
        self.order = itertools.count()

    def arm(self) -> None:
        """The ledger has a deadline: make sure something wakes for it."""
        if self.forsaken:
            return
        with self.lock:
            deadline = self.ledger.timer_deadline
            if deadline is None:
                return
            if self.manual:
                if self.timer is not None:
                    self.timer.cancel()
                self.timer = self.manual.call_at(None, deadline, self._reap_by_clock)
                return
            self._wake_reaper()

    def call_at(self, when: float, callback: TimerCallback) -> TimerHandle:
        """Run ``callback`` in the reaper thread once ``now() >= when`` (or,
        with a manual clock, when the clock reaches it)."""
        if self.manual:
            return self.manual.call_at(None, when, callback)
        timer = _Later(callback)
        with self.lock:
            heapq.heappush(self.later, (when, next(self.order), timer))
            self._wake_reaper()
        return timer

    def _wake_reaper(self) -> None:
        """Under ``lock``: wake the reaper for a new deadline, or start one.
        (Started under the lock, so that ``join_reaper`` never finds a
        thread not started yet; the new thread waits for the lock.)"""
        if self.reaper is not None:
            self.cond.notify_all()
            return
        reaper = threading.Thread(
            target=self._reap_forever, name=f"ttlpool-reaper-{self.name}", daemon=True
        )
        try:
            reaper.start()
        except RuntimeError:  # at interpreter shutdown: nothing is reaped now
            log.debug("ttlpool: no reaper thread for %r at shutdown", self.name)
            return
        self.reaper = reaper

    def poke(self) -> None:
        """Something left the idle order: a reaper sleeping for it checks
        whether anything is still due (else it ends now)."""
        if self.reaper is not None:
            with self.cond:
                self.cond.notify_all()

    def _next_due(self) -> float | None:
        """Under ``lock``: when the reaper must wake next (``None``: never)."""
        later = self.later
        while later and later[0][2].cancelled:
            heapq.heappop(later)
        ledger = self.ledger
        due = ledger.timer_deadline
        if due is not None and ledger.next_wake() is None:
            # Nothing idle is left to expire (a hit or an expire took it):
            # no timer is needed, as if it had fired.
            ledger.timer_deadline = due = None
        if later and (due is None or later[0][0] < due):
            due = later[0][0]
        return due

    def _reap_forever(self) -> None:
        """The reaper thread: until nothing is due, sleep until the next
        deadline, then reap with no lock held."""
        cond = self.cond
        while True:
            with cond:
                while True:
                    due = self._next_due()
                    if due is None or self.forsaken:
                        if self.reaper is threading.current_thread():
                            self.reaper = None
                        return
                    now = self.now()
                    if now >= due:
                        break
                    cond.wait(due - now)
                expired = self._take_expired(now)
                calls: list[_Later] = []
                while self.later and self.later[0][0] <= now:
                    calls.append(heapq.heappop(self.later)[2])
            for timer in calls:
                if not timer.cancelled:
                    self._run(timer.callback)
            self._run(self.finalize, expired)

    def _reap_by_clock(self) -> None:
        """A manual clock's timer: one slice of the reap, then re-arm."""
        with self.lock:
            self.timer = None
            expired = self._take_expired(self.now())
        try:
            self.finalize(expired)
        finally:
            self.arm()

    def _take_expired(self, now: float) -> list[Entry[K, T]]:
        """Under ``lock``: a slice of the entries due by ``now``."""
        deadline = self.ledger.timer_deadline
        if deadline is None or now < deadline:
            return []
        return _timer_fired(self.ledger, now, REAP_SLICE)[0]

    @staticmethod
    def _run(call: Callable[..., object], *args: Any) -> None:
        """Run reaper work; what escapes was logged where it was caught
        (a finalizer's error is reported) and must not end the reaper."""
        try:
            call(*args)
        except BaseException:
            log.debug("ttlpool: reaper work raised", exc_info=True)

    def join_reaper(self) -> None:
        """Wait for the reaper thread to end (after ``close``: it does)."""
        with self.lock:
            reaper = self.reaper
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join()
