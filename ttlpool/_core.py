"""The bookkeeping of one partition of a pool, with no event loop in it.

Two rules: every decision about counts, idle deadlines, eviction order and
state transitions is made here, and nothing here knows about event loops,
tasks or which thread it runs on (the time is an argument, ``now``).

Ownership. A :class:`Ledger` takes no lock: only its owner touches it, which
is the thread of the partition's event loop while that loop lives, and then
the one caller that adopted the partition after the loop closed (see
``ttlpool._handover``). Observers on other threads only read it, through
copies (:meth:`Ledger.pending_cleanup`) or plain integers and ``len``. A
``LockedLedger`` is shared by every loop's partition and holds its own lock
around every operation.

Invariants (checked after every step by ``tests/test_model.py``):

1. An entry is *live* while it is in ``entries``. Eviction takes it out of
   ``entries`` for good and sets ``refs = -1``: an evicted entry is never
   handed out again, and a later acquire of its key creates a new entry.
2. A live entry has ``refs >= 0``; it is *idle* when ``refs == 0``, and
   ``idle_count`` counts those, so the referenced entries are
   ``len(entries) - idle_count``.
3. The idle order (:mod:`ttlpool._idle`) holds every idle entry in release
   order; with one ``ttl`` per ledger, deadlines never decrease along it:
   its front is the next to expire and the one released longest ago.
4. A key is in at most one of ``entries`` and ``creating``: a miss on a key
   that is being created joins that creation instead of starting another.
5. Every evicted entry is in ``finalizing`` until the driver reports, once,
   that its finalizer ended (:meth:`Ledger.finalized`) or was cut off with
   its event loop (:meth:`Ledger.abandoned`).
6. ``timer_deadline`` is the deadline the driver has a timer armed for, or
   ``None`` when none is armed. At most one timer per ledger.

How it works. The driver asks questions and the ledger answers with
decisions; the driver carries them out (runs the factory or the finalizer,
arms the timer). Time is an argument (``now``), so a test can drive the
ledger through any interleaving with a manual clock.

- ``hit(key)``: the entry, with one more reference, or ``None`` for a miss.
  A hit touches neither the idle order nor the timer.
- ``lookup``/``listen``/``withdraw``/``created``/``failed``: the life of one
  creation, whose entry starts with one reference per waiter still waiting
  (``created_at_once``: a sync factory on a ledger one thread owns).
- ``release(entry, now)``: one reference fewer. At zero the entry is
  finalized now (``ttl == 0``, or marked by ``expire``) or joins the idle
  order (:mod:`ttlpool._idle`) with its deadline; ``max_idle`` evicts from
  the front. The answer is a small bit set (``FINALIZE``, ``ARM``,
  ``EVICTED``).
- ``timer_fired(now, limit)``: takes at most ``limit`` expired entries from
  the front (O(expired), plus stale occurrences, each skipped once) and
  says when to wake up next.
- ``expire``/``evict_all``: retire one key (draining leases first) or all.
- ``retire_into(heir)``: the ledger's loop closed; another partition's
  ledger takes over what is left to finalize.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, Final, Generic, TypeVar

from ttlpool._idle import GRID, Entry, IdleOrder

__all__ = ["ARM", "EVICTED", "FINALIZE", "GRID", "Creation", "Entry", "Ledger"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: ``release``/``created``: the entry itself was evicted; finalize it now.
FINALIZE: Final = 1
#: A timer must be armed for ``ledger.timer_deadline``.
ARM: Final = 2
#: ``max_idle`` evicted entries; take them with ``take_victims()``.
EVICTED: Final = 4

_INF: Final = math.inf


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


class Ledger(IdleOrder[K, T]):
    """Counts, idle deadlines and eviction order for one partition."""

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
        "hits",
        "keyed",
        "max_idle",
        "misses",
        "owed",
        "victims",
    )

    def __init__(self, ttl: float | None, max_idle: int | None) -> None:
        super().__init__(_INF if ttl is None else float(ttl))
        self.max_idle = max_idle
        self.reusable = max_idle is None
        self.entries: dict[K, Entry[K, T]] = {}
        self.creating: dict[K, Creation[K, T]] = {}
        self.finalizing: set[Entry[K, T]] = set()
        self.victims: list[Entry[K, T]] = []
        #: Referenced entries marked by ``expire``: finalized at the last
        #: release, unless acquired again first.
        self.doomed: set[Entry[K, T]] = set()
        #: How many references of an entry were taken by key (``acquire``),
        #: not by lease; and key-based releases still owed to entries that
        #: ``evict_all`` retired while held.
        self.keyed: dict[Entry[K, T], int] = {}
        self.owed: dict[K, int] = {}
        # Running totals.
        self.hits = 0
        self.misses = 0
        self.created_total = 0
        self.finalized_total = 0
        self.expired_total = 0
        self.evicted_total = 0
        self.factory_errors = 0
        self.finalizer_errors = 0
        self.abandoned_total = 0

    # -- leases --------------------------------------------------------------

    def hit(self, key: K) -> Entry[K, T] | None:
        """Add a reference to ``key``'s live entry; ``None`` on a miss."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if not entry.refs:
            self.idle_count -= 1
        entry.refs += 1
        if self.doomed:  # acquired again: the expire mark is cleared
            self.doomed.discard(entry)
        self.hits += 1
        return entry

    @property
    def referenced(self) -> int:
        """How many live entries hold at least one reference."""
        return len(self.entries) - self.idle_count

    def release(self, entry: Entry[K, T], now: float) -> int:
        """Drop one reference of a live entry; return what the driver must do.

        At zero the entry is finalized now (``ttl == 0``, or marked by
        ``expire``) or goes to the back of the queue. Releasing an evicted
        entry is a no-op (``clear`` already retired it); raises
        ``ValueError`` if a live entry holds no reference.
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
        if self.ttl_is_zero or (self.doomed and entry in self.doomed):
            self._evict(entry)
            return FINALIZE
        deadline = self.queue_idle(entry, now)
        if self.reusable and not self.doomed:  # a timer is armed, or is now
            self.reuse_before = deadline - self.ttl
        if self.max_idle is None and self.timer_deadline is not None:
            return 0
        action = 0
        if self.max_idle is not None and self.idle_count > self.max_idle:
            action = EVICTED
            while self.idle_count > self.max_idle:
                victim = self._pop_front()
                self._evict(victim)
                self.evicted_total += 1
                self.victims.append(victim)
        if self.timer_deadline is None and deadline != _INF:
            front = self._front()
            if front is not None:
                self.timer_deadline = front.deadline
                action |= ARM
        return action

    def hold(self, entry: Entry[K, T]) -> None:
        """Note that the latest reference of ``entry`` was taken by key."""
        self.keyed[entry] = self.keyed.get(entry, 0) + 1

    def release_key(self, key: K, now: float) -> tuple[Entry[K, T] | None, int]:
        """``release`` of ``key``'s live entry, if any, by key; a no-op when
        owed to an entry ``evict_all`` retired while held (never dropping a
        reference of the key's newer entry)."""
        owed = self.owed.get(key)
        if owed:
            if owed == 1:
                del self.owed[key]
            else:
                self.owed[key] = owed - 1
            return None, 0
        entry = self.entries.get(key)
        if entry is None:
            return None, 0
        keyed = self.keyed.get(entry)
        if keyed == 1:
            del self.keyed[entry]
        elif keyed:
            self.keyed[entry] = keyed - 1
        return entry, Ledger.release(self, entry, now)  # pyright: ignore[reportUnknownMemberType]

    def take_victims(self) -> list[Entry[K, T]]:
        """The entries ``max_idle`` evicted since the last call."""
        victims, self.victims = self.victims, []
        return victims

    # -- creation ------------------------------------------------------------

    def lookup(
        self, key: K, missed: bool = False
    ) -> tuple[Entry[K, T] | Creation[K, T], bool]:
        """Acquire ``key``: a hit, or the creation to wait for.

        The flag is true when this call started the creation, which makes
        the caller its first waiter and the one to call the factory.
        ``missed``: the caller's own ``hit(key)`` just missed, so this skips
        it (a locked ledger checks again: another thread may have made it).
        """
        if not missed:
            # Not the override: a LockedLedger holds its lock already.
            entry: Entry[K, T] | None = Ledger.hit(self, key)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
            if entry is not None:
                return entry, False
        self.misses += 1
        creation = self.creating.get(key)
        if creation is not None:
            creation.waiters += 1
            creation.doomed = False  # acquired again: like a hit, clears expire's mark
            return creation, False
        creation = self.creating[key] = Creation(key)
        return creation, True

    def listen(self, creation: Creation[K, T], listener: object) -> bool:
        """Register a waiter's wake-up; false if the creation already ended."""
        if creation.done:
            return False
        creation.listeners.append(listener)
        return True

    def withdraw(self, creation: Creation[K, T]) -> Entry[K, T] | None:
        """A waiter gives up. Before the creation ended it is not counted;
        after, the returned entry holds its reference, which it must release."""
        if creation.done:
            return creation.entry
        creation.waiters -= 1
        return None

    def created(
        self, creation: Creation[K, T], resource: T, now: float
    ) -> tuple[Entry[K, T], int]:
        """The factory returned: the entry starts with one reference per waiter."""
        del self.creating[creation.key]
        self.created_total += 1
        waiters = creation.waiters
        # An entry nobody waits for any more is released at once, like any
        # entry at its last release: idle under a ttl, finalized at ttl 0.
        entry = Entry(creation.key, resource, waiters or 1)
        if creation.doomed:
            self.doomed.add(entry)
            self.reuse_before = -_INF
        creation.entry = entry
        creation.done = True
        self.entries[creation.key] = entry
        if waiters:
            return entry, 0
        return entry, Ledger.release(self, entry, now)  # pyright: ignore[reportUnknownMemberType]

    def created_at_once(self, key: K, resource: T) -> Entry[K, T]:
        """A sync factory returned before any creation of ``key`` existed:
        the entry, with the caller's reference (see ``failed_at_once``)."""
        self.misses += 1
        self.created_total += 1
        entry = self.entries[key] = Entry(key, resource, 1)
        return entry

    def failed_at_once(self) -> None:
        self.misses += 1
        self.factory_errors += 1

    def failed(self, creation: Creation[K, T], error: BaseException) -> None:
        """The factory raised: every waiter gets ``error``, nothing is cached."""
        del self.creating[creation.key]
        creation.error = error
        creation.done = True
        self.factory_errors += 1

    # -- retirement ----------------------------------------------------------

    def _evict(self, entry: Entry[K, T]) -> None:
        """Take a live entry out for good (its queue occurrences go stale)."""
        del self.entries[entry.key]
        if entry.refs == 0:
            self.idle_count -= 1
        entry.refs = -1
        if self.doomed:
            self.doomed.discard(entry)
        if self.keyed:
            self.keyed.pop(entry, None)
        self.finalizing.add(entry)

    def finalized(self, entry: Entry[K, T], ok: bool) -> None:
        """The driver finished finalizing an evicted entry."""
        # Counted before it leaves ``finalizing``: a driver that retires an
        # idle ledger once nothing is finalizing then sees the final count.
        self.finalized_total += 1
        if not ok:
            self.finalizer_errors += 1
        self.finalizing.discard(entry)

    def abandoned(self, entry: Entry[K, T]) -> None:
        """A finalization was cut off (its event loop closed while it ran):
        it is over, and it is not counted as finalized."""
        self.abandoned_total += 1
        self.finalizing.discard(entry)

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
        self._evict(entry)
        return entry

    def evict_all(self) -> list[Entry[K, T]]:
        """Evict every live entry, referenced or not, and drop every deadline."""
        evicted = list(self.entries.values())
        keyed = self.keyed
        for entry in evicted:
            entry.refs = -1
            self.finalizing.add(entry)
            if keyed and entry in keyed:
                self.owed[entry.key] = self.owed.get(entry.key, 0) + keyed[entry]
        self.entries.clear()
        self.forget_order()
        self.doomed.clear()
        keyed.clear()
        self.timer_deadline = None
        return evicted

    def retire_into(self, heir: Ledger[K, T]) -> list[Entry[K, T]]:
        """This ledger's event loop closed: ``heir`` takes its work over.

        Every live entry is evicted and returned for the heir to finalize;
        every finalization in flight moves to the heir's ``finalizing``; the
        creations in flight are dropped (their waiters were on that loop).
        The running totals stay here for the driver to keep.
        """
        evicted = self.evict_all()
        heir.finalizing.update(self.finalizing)
        self.finalizing.clear()
        self.creating.clear()
        self.owed.clear()
        return evicted

    def fail_creations(
        self, owner: object, error: BaseException
    ) -> list[Creation[K, T]]:
        """Fail the creations ``owner`` runs (it can no longer finish them)."""
        doomed = [c for c in self.creating.values() if c.owner is owner]
        for creation in doomed:
            Ledger.failed(self, creation, error)  # pyright: ignore[reportUnknownMemberType]
        return doomed

    # -- time ----------------------------------------------------------------

    def timer_fired(
        self, now: float, limit: int
    ) -> tuple[list[Entry[K, T]], float | None]:
        """Evict at most ``limit`` entries whose deadline has passed.

        Returns them with the deadline the next timer must fire at (already
        past when more have expired: the driver yields to the loop and comes
        back), or ``None`` when no timer is needed; that deadline is recorded
        as armed.
        """
        expired: list[Entry[K, T]] = []
        front = self._front()
        while front is not None and front.deadline <= now and len(expired) < limit:
            self.queue.popleft()
            front.queued = 0
            self._evict(front)
            expired.append(front)
            front = self._front()
        self.expired_total += len(expired)
        self.timer_deadline = None
        if front is not None and front.deadline != _INF:
            self.timer_deadline = front.deadline
        return expired, self.timer_deadline

    # -- observation ---------------------------------------------------------

    def pending_cleanup_count(self) -> int:
        """Idle entries waiting for a finite deadline, plus finalizations in flight."""
        waiting = self.idle_count if self.ttl != _INF else 0
        return waiting + len(self.finalizing)

    def pending_cleanup(self) -> dict[K, float | None]:
        """Each key with pending cleanup: its deadline, or ``None`` while finalizing."""
        finalizing = self.finalizing.copy()  # one step, like the queue's copy
        pending: dict[K, float | None] = {e.key: None for e in finalizing}
        if self.ttl != _INF:
            pending.update((key, e.deadline) for key, e in self.idle.items())
        return pending
