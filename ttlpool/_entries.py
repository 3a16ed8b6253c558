"""A ledger's entries: their counts, why and when they leave, and the timer.

:class:`Entries` is the base of :class:`~ttlpool._core.Ledger`: it holds
the whole state (with :class:`Creation`, the record of one factory call in
flight) and the operations on entries; the ledger adds the acquire and the
life of a creation (single flight, validation). The invariants, and who
may touch a ledger, are written at the top of :mod:`ttlpool._core`. Here:
a lease's count going down (``release``), the idle order it joins
(:mod:`ttlpool._idle`), the lifetimes (:mod:`ttlpool._lifetime`), the
evictions with their :class:`~ttlpool.stats.RemovalCause`, and the one
timer's deadline. No event loop: the time is an argument, ``now``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable
from typing import Any, Final, Generic, TypeVar

from ttlpool._idle import Entry, IdleOrder
from ttlpool._lifetime import Lifetimes
from ttlpool.stats import RemovalCause

__all__ = ["ARM", "EVICTED", "FINALIZE", "Creation", "Entries"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: ``release``/``created``: the entry itself was evicted; finalize it now.
FINALIZE: Final = 1
#: A timer must be armed for ``ledger.timer_deadline``.
ARM: Final = 2
#: ``max_idle`` evicted entries; take them with ``take_victims()``.
EVICTED: Final = 4

_INF: Final = math.inf
# The causes the ledger decides, as plain names (an enum's class attribute
# costs more than a global on a churn's path).
RELEASED, IDLE, EVICTED_ = (
    RemovalCause.RELEASED,
    RemovalCause.IDLE,
    RemovalCause.EVICTED,
)
EXPIRED, LIFETIME = RemovalCause.EXPIRED, RemovalCause.LIFETIME


class Creation(Generic[K, T]):
    """A factory call in flight for one key, and who is waiting for it.

    ``listeners`` and ``owner`` are the driver's (how to wake a waiter up,
    who runs the factory); the ledger counts ``waiters`` and records the
    outcome (``entry``, or the ``error`` the factory raised).
    """

    __slots__ = (
        "done",
        "doomed",
        "entry",
        "error",
        "key",
        "listeners",
        "owner",
        "stale",
        "waiters",
    )

    def __init__(self, key: K) -> None:
        self.key = key
        self.waiters = 1
        self.doomed = False
        self.done = False
        self.entry: Entry[K, T] | None = None
        self.error: BaseException | None = None
        self.listeners: list[Any] = []
        self.owner: object = None
        #: The idle entry this creation validates first (``validate``).
        self.stale: Entry[K, T] | None = None


class Entries(IdleOrder[K, T]):
    """The entries of one ledger (see the module doc)."""

    __slots__ = (
        "abandoned_total",
        "created_total",
        "creating",
        "doomed",
        "entries",
        "evicted_total",
        "expired_total",
        "factory_errors",
        "finalized_total",
        "finalizer_errors",
        "finalizing",
        "guarded",
        "hits",
        "keyed",
        "lifetimes",
        "max_idle",
        "misses",
        "owed",
        "removed",
        "retiring",
        "validates",
        "victims",
    )

    def __init__(
        self,
        ttl: float | None,
        max_idle: int | None,
        *,
        validates: bool = False,
        max_lifetime: float | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(_INF if ttl is None else float(ttl))
        self.max_idle = max_idle
        self.reusable = max_idle is None and max_lifetime is None
        #: Whether an idle entry is validated before it is handed out again.
        self.validates = validates
        self.lifetimes: Lifetimes[K, T] | None = (
            None if max_lifetime is None else Lifetimes(max_lifetime, jitter)
        )
        #: ``hit`` alone cannot decide every acquire (see the module doc).
        self.guarded = validates or max_lifetime is not None
        self.entries: dict[K, Entry[K, T]] = {}
        self.creating: dict[K, Creation[K, T]] = {}
        self.finalizing: dict[Entry[K, T], RemovalCause] = {}
        self.victims: list[Entry[K, T]] = []
        #: Referenced entries marked by ``expire``: finalized at the last
        #: release, unless acquired again first.
        self.doomed: set[Entry[K, T]] = set()
        #: Held entries past their lifetime, out of ``entries``.
        self.retiring: set[Entry[K, T]] = set()
        #: How many references of an entry were taken by key (``acquire``),
        #: not by lease; and key-based releases still owed to entries that
        #: ``evict_all`` retired while held.
        self.keyed: dict[Entry[K, T], int] = {}
        self.owed: dict[K, int] = {}
        # Running totals.
        self.hits: int = 0
        self.misses = 0
        self.created_total = 0
        self.finalized_total = 0
        self.expired_total = 0
        self.evicted_total = 0
        self.factory_errors = 0
        self.finalizer_errors = 0
        self.abandoned_total = 0
        #: Finalized entries by RemovalCause.
        self.removed = [0] * len(RemovalCause)

    # -- leases --------------------------------------------------------------------

    @property
    def referenced(self) -> int:
        """How many live entries hold at least one reference."""
        return len(self.entries) - self.idle_count

    def release(self, entry: Entry[K, T], now: float) -> int:
        """Drop one reference of a live entry; return what the driver must do.

        At zero the entry is finalized now (``ttl == 0``, marked by
        ``expire``, past its lifetime) or goes to the back of the queue.
        Releasing an evicted entry is a no-op (``clear`` already retired
        it); raises ``ValueError`` if a live entry holds no reference.
        """
        refs = entry.refs - 1
        if refs:
            if refs > 0:
                entry.refs = refs
                return 0
            if refs == -1:
                raise ValueError(
                    f"Reference count for key {entry.key!r} is already 0: "
                    f"release({entry.key!r}) found no lease to give back"
                )
            return 0  # evicted (refs was -1)
        entry.refs = 0
        self.idle_count += 1
        if now <= self.reuse_before and self.queue and self.queue[-1] is entry:
            entry.deadline = self.last_deadline  # (see IdleOrder.reuse_before)
            return 0
        if self.doomed or self.lifetimes is not None:
            cause = self._leaving(entry, now)
            if cause is not None:
                self._evict(entry, cause)
                return FINALIZE
        elif self.ttl_is_zero:  # (the common case of _leaving, inlined)
            self._evict(entry, RELEASED)
            return FINALIZE
        deadline = self.queue_idle(entry, now)
        if self.reusable and not self.doomed:  # a timer is armed, or is now
            # (With no ttl no timer is needed, and every deadline is inf.)
            self.reuse_before = deadline - self.ttl if deadline != _INF else _INF
        if (
            self.max_idle is None
            and (self.timer_deadline is not None or self.ttl == _INF)
            and self.lifetimes is None
        ):
            return 0  # no timer to arm, nobody to evict
        action = 0
        if self.max_idle is not None and self.idle_count > self.max_idle:
            action = EVICTED
            while self.idle_count > self.max_idle:
                victim = self._pop_front()
                self._evict(victim, RemovalCause.EVICTED)
                self.evicted_total += 1
                self.victims.append(victim)
        wake = self.next_wake()
        if wake is not None and (
            self.timer_deadline is None or wake < self.timer_deadline
        ):
            self.timer_deadline = wake
            action |= ARM
        return action

    def _leaving(self, entry: Entry[K, T], now: float) -> RemovalCause | None:
        """Why an entry released for the last time at ``now`` leaves now
        (``None``: it stays, idle)."""
        if entry in self.doomed:
            return EXPIRED
        if self.lifetimes is not None and now >= entry.retire_at:  # type: ignore[attr-defined]
            return LIFETIME
        if self.ttl_is_zero:
            return RELEASED
        return None

    def hold(self, entry: Entry[K, T]) -> None:
        """Note that the latest reference of ``entry`` was taken by key. If
        ``evict_all`` retired it since (another thread cleared between the
        acquire and this note), its key's release is owed instead, as if
        the note had come first."""
        if entry.refs < 0:
            self.owed[entry.key] = self.owed.get(entry.key, 0) + 1
            return
        self.keyed[entry] = self.keyed.get(entry, 0) + 1

    def release_key(self, key: K, now: float) -> tuple[Entry[K, T] | None, int]:
        """``release`` of ``key``'s live entry, if any, by key; a no-op when
        owed to an entry ``evict_all`` retired while held (never dropping a
        reference of the key's newer entry). When the live entry holds no
        reference taken by key, a retiring one of the key that does is
        released instead."""
        owed = self.owed.get(key)
        if owed:
            if owed == 1:
                del self.owed[key]
            else:
                self.owed[key] = owed - 1
            return None, 0
        entry = self.entries.get(key)
        if self.retiring and (entry is None or entry not in self.keyed):
            keyed = (e for e in self.retiring if e.key == key and e in self.keyed)
            entry = next(keyed, entry)
        if entry is None:
            return None, 0
        keyed_refs = self.keyed.get(entry)
        if keyed_refs == 1:
            del self.keyed[entry]
        elif keyed_refs:
            self.keyed[entry] = keyed_refs - 1
        return entry, Entries.release(self, entry, now)  # pyright: ignore[reportUnknownMemberType]

    def take_victims(self) -> list[Entry[K, T]]:
        """The entries evicted for the driver to finalize since the last
        call (by ``max_idle``, by a lifetime seen at ``lookup``)."""
        victims, self.victims = self.victims, []
        return victims

    # -- retirement ----------------------------------------------------------------

    def _retire(self, entry: Entry[K, T]) -> None:
        """A live entry is past its lifetime: evicted now if idle (for the
        driver to take from ``victims``), or retiring until its last release."""
        if entry.refs:
            del self.entries[entry.key]
            self.retiring.add(entry)
            self.reuse_before = -_INF
        else:
            self._evict(entry, RemovalCause.LIFETIME)
            self.victims.append(entry)

    def _evict(
        self, entry: Entry[K, T], cause: RemovalCause, listed: bool = True
    ) -> None:
        """Take an entry out for good (its queue occurrences go stale): one
        of ``entries``, one ``retiring``, or (``listed=False``) the one a
        creation validated."""
        if self.retiring and entry in self.retiring:
            self.retiring.discard(entry)
        elif listed:
            del self.entries[entry.key]
        if entry.refs == 0:
            self.idle_count -= 1
        entry.refs = -1
        if self.doomed:
            self.doomed.discard(entry)
        if self.keyed:
            self.keyed.pop(entry, None)
        self.finalizing[entry] = cause

    def finalized(self, entry: Entry[K, T], ok: bool) -> None:
        """The driver finished finalizing an evicted entry."""
        # Counted before it leaves ``finalizing``: a driver that retires an
        # idle ledger once nothing is finalizing then sees the final count.
        cause: RemovalCause | None = None
        try:  # (not a method call: this is a churn's path)
            cause = self.finalizing[entry]
            self.removed[cause] += 1
        except KeyError:
            pass
        self.finalized_total += 1
        if not ok:
            self.finalizer_errors += 1
        if cause is not None:
            del self.finalizing[entry]

    def abandoned(self, entry: Entry[K, T]) -> None:
        """A finalization was cut off (its event loop closed while it ran):
        it is over, and it is not counted as finalized."""
        self.abandoned_total += 1
        self.finalizing.pop(entry, None)

    def expire(self, key: K) -> Entry[K, T] | None:
        """Retire ``key``: an idle entry is evicted and returned for finalizing;
        a referenced entry, or one being created, is marked instead."""
        creation = self.creating.get(key)
        if creation is not None:
            creation.doomed = True
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.refs > 0:
            self.doomed.add(entry)
            self.reuse_before = -_INF
            return None
        self._evict(entry, RemovalCause.EXPIRED)
        return entry

    def evict_all(
        self, cause: RemovalCause = RemovalCause.CLEARED
    ) -> list[Entry[K, T]]:
        """Evict every entry, referenced, retiring or idle, and drop every
        deadline. (An entry being validated is its creation's: it comes
        back, or is evicted, when that creation ends.)"""
        evicted = [*self.entries.values(), *self.retiring]
        keyed = self.keyed
        for entry in evicted:
            entry.refs = -1
            self.finalizing[entry] = cause
            if keyed and entry in keyed:
                self.owed[entry.key] = self.owed.get(entry.key, 0) + keyed[entry]
        self.entries.clear()
        self.retiring.clear()
        self.forget_order()
        self.doomed.clear()
        keyed.clear()
        self.timer_deadline = None
        return evicted

    # -- time ----------------------------------------------------------------------

    def next_wake(self) -> float | None:
        """When the timer must wake next: the idle front's deadline, or an
        earlier retirement (``None``: no timer needed)."""
        wake = super().next_wake()
        if self.lifetimes is not None:
            due = self.lifetimes.next_due()
            if wake is None or due < wake:
                return None if due == _INF else due
        return wake

    def timer_fired(
        self, now: float, limit: int
    ) -> tuple[list[Entry[K, T]], float | None]:
        """Evict at most ``limit`` entries whose deadline or lifetime has
        passed (idle entries past their lifetime, then expired ones; held
        entries past their lifetime start retiring).

        Returns them with the deadline the next timer must fire at (already
        past when more are due: the driver yields to the loop and comes
        back), or ``None`` when no timer is needed; that deadline is recorded
        as armed.
        """
        expired: list[Entry[K, T]] = []
        if self.lifetimes is not None:
            for entry in self.lifetimes.due(now, limit):
                if self.entries.get(entry.key) is entry:  # (else it left already)
                    self._retire(entry)
            # (Not the override: a LockedLedger holds its lock already.)
            expired += Entries.take_victims(self)  # pyright: ignore[reportUnknownMemberType]
        front = self._front()
        while front is not None and front.deadline <= now and len(expired) < limit:
            self.queue.popleft()
            front.queued = 0
            self._evict(front, RemovalCause.IDLE)
            self.expired_total += 1
            expired.append(front)
            front = self._front()
        self.timer_deadline = self.next_wake()
        return expired, self.timer_deadline

    # -- observation ---------------------------------------------------------------

    def pending_cleanup_count(self) -> int:
        """Idle entries waiting for a deadline, retiring entries, and
        finalizations in flight."""
        waiting = self.idle_count
        if self.ttl == _INF and self.lifetimes is None:
            waiting = 0
        return waiting + len(self.retiring) + len(self.finalizing)

    def pending_cleanup(self) -> dict[K, float | None]:
        """Each key with pending cleanup: its idle deadline, or ``None`` while
        finalizing or retiring."""
        # Copies, one step each, like the queue's.
        finalizing = [*self.finalizing.copy(), *self.retiring.copy()]
        pending: dict[K, float | None] = {e.key: None for e in finalizing}
        if self.ttl != _INF or self.lifetimes is not None:
            for key, entry in self.idle.items():
                retire_at: float = getattr(entry, "retire_at", _INF)
                pending[key] = min(entry.deadline, retire_at)
        return pending
