"""The driver of a ``SyncResourcePool``: one ledger, plain threads, no loop.

The same :class:`~ttlpool._core.Ledger` decides everything, as it does for
every event loop's partition of a ``ResourcePool``, and the calls into user
code are :class:`~ttlpool._driver.Driver`'s. What this driver adds is what
a loop gave the other one:

- *waiting*: a thread that joins a creation blocks on its own
  ``threading.Event``, registered with the ledger (``listen``) and set when
  the creation ends; the factory runs in the thread that started the
  creation, with no lock held;
- *the timer*: one daemon reaper thread per pool, or a manual clock's
  timer (:mod:`ttlpool._reaper`, the base of this driver);
- *draining*: ``clear`` waits on ``cond`` until no creation and no
  finalization is in flight, but those the calling code runs inside of
  (:data:`~ttlpool._jobs.INSIDE`, set around each factory, ``validate``,
  ``on_remove`` and finalizer call).

Who touches what:

- ``ledger`` is a :class:`~ttlpool._locked_ledger.LockedLedger`: any thread
  calls its operations, each under ``lock``, the ledger's own lock; a lease
  (``ttlpool.sync``) takes ``lock`` itself and calls the unlocked ones.
- ``cond`` is a condition on that same lock. ``closed``, ``reaper``,
  ``timer``, ``later`` and ``draining`` change only under ``lock``;
  ``draining`` is also read without it, as a hint that is exact where it
  matters (see :meth:`ThreadDriver._notify`).
- After ``os.fork()`` the pool makes a new driver in the child: this one is
  ``forsaken`` (its resources are the parent's: it finalizes nothing and
  arms nothing), and its lock is replaced, since a thread of the parent may
  have held it at the fork.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ttlpool._core import Creation, Entry, Ledger
from ttlpool._driver import not_sync
from ttlpool._entries import Entries
from ttlpool._jobs import INSIDE, FinalizationTask, InsideOf, Settings
from ttlpool._locked_ledger import LockedLedger
from ttlpool._reaper import Reaper
from ttlpool.errors import PoolClosedError

__all__ = ["ThreadDriver"]

K = TypeVar("K")
T = TypeVar("T")

log = logging.getLogger("ttlpool")

_HINT = (
    "a SyncResourcePool calls it in the acquiring thread and never awaits "
    "(use ResourcePool for async code)"
)


#: The ledger's unlocked operations, for a caller that holds its lock.
_lookup: Callable[
    [Ledger[Any, Any], Any, bool, float],
    tuple[Entry[Any, Any] | Creation[Any, Any], bool],
]
_lookup = Ledger.lookup  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
_take_victims: Callable[[Entries[Any, Any]], list[Entry[Any, Any]]]
_take_victims = Entries.take_victims  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
_evict_all: Callable[[Entries[Any, Any]], list[Entry[Any, Any]]]
_evict_all = Entries.evict_all  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]


class ThreadDriver(Reaper[K, T]):
    """A ledger driven by plain threads (see the module doc)."""

    __slots__ = (
        "closed",
        "cond",
        "draining",
        "forsaken",
        "inline",
        "ledger",
        "lock",
        "name",
        "now",
        "settings",
    )

    awaits = False

    def __init__(
        self, settings: Settings, ledger: LockedLedger[K, T], name: str
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.lock = ledger.lock
        # Every release holds the lock, and the timer is never lost: the
        # release's shortcut holds (see IdleOrder.reuse_before).
        ledger.reusable = ledger.max_idle is None and ledger.lifetimes is None
        self.cond = threading.Condition(self.lock)
        self.now = settings.clock.now
        self.name = name
        self.start_reaping(settings.clock)
        #: A lease may hit and release with the ledger's unlocked operations
        #: under ``lock``: no lifetime to check, no leak to watch.
        self.inline = ledger.lifetimes is None and settings.leak_timeout is None
        self.closed = False
        self.forsaken = False
        #: How many ``clear`` calls wait on ``cond`` for work in flight.
        self.draining = 0

    def forsake(self) -> None:
        """In a child after ``os.fork()``: finalize nothing, arm nothing."""
        self.forsaken = True
        self.ledger.lock = self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.reaper = self.timer = None

    # -- the driver's hooks ----------------------------------------------------

    def _wake(self, creation: Creation[K, T]) -> None:
        for event in creation.listeners:
            event.set()
        self._notify()

    def _notify(self) -> None:
        """A creation or finalization ended: wake the ``clear`` calls that
        wait. (``draining`` is read without the lock: a clear raises it
        and then checks the ledger under the lock; the ledger step that
        ended the work took that lock, so either the clear saw the work
        ended or this sees ``draining`` raised.)"""
        if self.draining:
            with self.cond:
                self.cond.notify_all()

    def _start_creation(self, creation: Creation[K, T], awaitable: Any) -> None:
        key = creation.key
        if creation.stale is not None:  # validate returned it
            if not self.validated(
                creation, not_sync(awaitable, "validate", key, _HINT)
            ):
                self.create(creation)
            return
        self.creation_ended(creation, error=not_sync(awaitable, "factory", key, _HINT))

    def _forsaken(self) -> bool:
        return self.forsaken

    # -- acquire ---------------------------------------------------------------

    def acquire(self, key: K, operation: str) -> Entry[K, T]:
        """A hit, or the entry of the creation this joins or starts (whose
        factory then runs here); the factory's error is raised."""
        ledger = self.ledger
        with self.lock:
            if self.closed:
                raise PoolClosedError(f"{operation}({key!r}): the pool is closed")
            found, started = _lookup(ledger, key, False, self.now())
            victims = _take_victims(ledger) if ledger.victims else None
        if not victims:
            return self._entry_of(found, started)
        # Idle entries past their lifetime, seen by the lookup: finalized
        # once this acquire ended, however it ended.
        entry = None
        try:
            entry = self._entry_of(found, started)
            return entry
        finally:
            try:
                self.finalize(victims)
            except BaseException:
                if entry is not None:  # (the caller gets the exception)
                    self.release_soon(entry)
                raise

    def _entry_of(
        self, found: Entry[K, T] | Creation[K, T], started: bool
    ) -> Entry[K, T]:
        if isinstance(found, Entry):
            return found
        if started:
            found.owner = self
            self.create(found)
        return self.wait(found)

    def create(self, creation: Creation[K, T]) -> None:
        token = INSIDE.set((*INSIDE.get(), creation))
        try:
            super().create(creation)
        finally:
            INSIDE.reset(token)

    def wait(self, creation: Creation[K, T]) -> Entry[K, T]:
        """Block, as a counted waiter, until ``creation`` ends; its entry
        (with this waiter's reference) or its error. Interrupted (a
        ``KeyboardInterrupt``), it leaves no reference behind."""
        self.joining(creation)
        if not creation.done:
            event = threading.Event()
            if self.ledger.listen(creation, event):
                try:
                    event.wait()
                except BaseException:
                    self.gave_up(creation)
                    raise
        if creation.error is not None:
            raise creation.error
        assert creation.entry is not None
        return creation.entry

    def give_back(self, entry: Entry[K, T]) -> None:
        """Release a lease the garbage collector found entered. The collector
        may run in a thread that holds ``lock`` (while it allocates): then
        a short-lived thread releases it, so that nothing waits for itself."""
        if self.lock.acquire(blocking=False):
            self.lock.release()
            self.release_soon(entry)
            return
        thread = threading.Thread(
            target=self.release_soon,
            args=(entry,),
            name=f"ttlpool-give-back-{self.name}",
        )
        thread.daemon = True
        thread.start()

    # -- finalization ----------------------------------------------------------

    def finalize(self, entries: Iterable[Entry[K, T]]) -> list[FinalizationTask]:
        entries = list(entries)
        if not entries:
            return []
        token = INSIDE.set((*INSIDE.get(), *entries))
        try:
            return super().finalize(entries)
        finally:
            INSIDE.reset(token)
            self._notify()

    # -- clear -----------------------------------------------------------------

    def clear(self, timeout: float | None, operation: str) -> None:
        """Evict and finalize every entry, then wait for what is in flight,
        generation after generation, until one finds nothing. A
        ``BaseException`` from a finalizer is re-raised at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        skip = INSIDE.get()
        interrupt: BaseException | None = None
        while True:
            with self.lock:
                evicted = _evict_all(self.ledger)
                if operation == "close":
                    self.later.clear()
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                self.cond.notify_all()  # the reaper: nothing is idle now
            try:
                self.finalize(evicted)
            except BaseException as exc:
                interrupt = interrupt or exc
            waited = self._drain(skip, deadline, timeout, operation)
            if not evicted and not waited:
                break
        if interrupt is not None:
            raise interrupt

    def _drain(
        self,
        skip: tuple[InsideOf, ...],
        deadline: float | None,
        timeout: float | None,
        operation: str,
    ) -> bool:
        """Wait until no creation or finalization is in flight but those in
        ``skip``; whether there was any."""
        waited = False
        with self.cond:
            self.draining += 1
            try:
                while busy := self._busy(skip):
                    waited = True
                    if deadline is None:
                        self.cond.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"{operation}: timed out after {timeout}s with keys "
                            f"still being finalized or created: {busy}"
                        )
                    self.cond.wait(left)
            finally:
                self.draining -= 1
        return waited

    def _busy(self, skip: tuple[InsideOf, ...]) -> list[Any]:
        """Under ``lock``: the keys of the work in flight, but ``skip``'s."""
        ledger = self.ledger
        return [c.key for c in ledger.creating.values() if c not in skip] + [
            e.key for e in ledger.finalizing if e not in skip
        ]
