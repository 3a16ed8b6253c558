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
5. Every evicted entry is in ``finalizing``, with the one
   :class:`~ttlpool.stats.RemovalCause` it left for, until the driver
   reports, once, that its finalizer ended (:meth:`Ledger.finalized`,
   which counts that cause) or was cut off with its event loop
   (:meth:`Ledger.abandoned`).
6. ``timer_deadline`` is the deadline the driver has a timer armed for, or
   ``None`` when none is armed. At most one timer per ledger.
7. With ``max_lifetime``, an entry is never handed out at or after its
   ``retire_at``. One past it while held leaves ``entries`` for
   ``retiring`` (a new acquirer gets a new entry) and is evicted at its
   last release. An idle entry being validated is in neither ``entries``
   nor the idle order: its key's creation holds it (``stale``), with one
   reference, until the validation's outcome.

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
  finalized now (``ttl == 0``, marked by ``expire``, or past its lifetime)
  or joins the idle order (:mod:`ttlpool._idle`) with its deadline;
  ``max_idle`` evicts from the front. The answer is a small bit set
  (``FINALIZE``, ``ARM``, ``EVICTED``).
- Policies (``validate``, ``max_lifetime``) make the ledger *guarded*:
  ``hit`` hands out only what needs no question (an entry in use, within
  its lifetime, given ``now``) and ``lookup`` answers the rest. Reusing an
  idle entry under ``validate`` is a creation like any other (one at a
  time per key, acquirers join it) whose driver first asks ``validate``:
  ``revalidated`` hands the entry out again, ``invalidated`` evicts it and
  the driver calls the factory for the same creation. Lifetimes are kept
  by :mod:`ttlpool._lifetime`; the one timer wakes for them too.
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
from typing import Final, TypeVar

from ttlpool._entries import ARM, EVICTED, FINALIZE, Creation, Entries
from ttlpool._idle import GRID, Entry
from ttlpool.stats import RemovalCause

__all__ = ["ARM", "EVICTED", "FINALIZE", "GRID", "Creation", "Entry", "Ledger"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

_INF: Final = math.inf


class Ledger(Entries[K, T]):
    """Counts, idle deadlines, eviction order and creations for one partition."""

    # -- leases --------------------------------------------------------------------

    def hit(self, key: K, now: float | None = None) -> Entry[K, T] | None:
        """Add a reference to ``key``'s live entry; ``None`` on a miss, and,
        when guarded, for an entry only :meth:`lookup` may hand out (an idle
        one under ``validate``; any, under ``max_lifetime``, without ``now``
        or once ``now`` reached its ``retire_at``)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if self.guarded and (
            (self.validates and not entry.refs)
            or (self.lifetimes is not None and (now is None or now >= entry.retire_at))  # type: ignore[attr-defined]
        ):
            return None
        if not entry.refs:
            self.idle_count -= 1
        entry.refs += 1
        if self.doomed:  # acquired again: the expire mark is cleared
            self.doomed.discard(entry)
        self.hits += 1
        return entry

    # -- creation ------------------------------------------------------------------

    def lookup(
        self, key: K, missed: bool = False, now: float = -_INF
    ) -> tuple[Entry[K, T] | Creation[K, T], bool]:
        """Acquire ``key`` at ``now``: a hit, or the creation to wait for.

        The flag is true when this call started the creation, which makes
        the caller its first waiter and the one to call the factory (or,
        when ``creation.stale`` is set, to validate that idle entry first).
        ``missed``: the caller's own ``hit(key)`` just missed, so this skips
        it (a locked ledger checks again: another thread may have made it).
        """
        if self.guarded:
            found = self._reuse(key, now)
            if found is not None:
                return found, isinstance(found, Creation)
        elif not missed:
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

    def _reuse(self, key: K, now: float) -> Entry[K, T] | Creation[K, T] | None:
        """A guarded ledger's answer for ``key``'s live entry: a hit, the
        creation that validates it first, or ``None`` (no entry, or one
        past its lifetime: retired now, idle or not)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if self.lifetimes is not None and now >= entry.retire_at:  # type: ignore[attr-defined]
            self._retire(entry)
            return None
        if entry.refs or not self.validates:
            return Ledger.hit(self, key, now)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        del self.entries[key]  # validated before anybody gets it
        self.idle_count -= 1
        entry.refs = 1
        creation = self.creating[key] = Creation(key)
        creation.stale = entry
        return creation

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
        self.created_total += 1
        entry: Entry[K, T]
        if self.lifetimes is not None:
            entry = self.lifetimes.new_entry(
                creation.key, resource, 1, now, len(self.entries)
            )
        else:
            entry = Entry(creation.key, resource, 1)
        return entry, self._settle(creation, entry, now)

    def revalidated(
        self, creation: Creation[K, T], now: float
    ) -> tuple[Entry[K, T], int] | None:
        """``validate`` passed for ``creation.stale``: it is handed out again
        as if just created. ``None`` if it passed its lifetime meanwhile:
        the driver then retires it (:meth:`invalidated`) and makes a new one."""
        entry = creation.stale
        assert entry is not None
        if self.lifetimes is not None and now >= entry.retire_at:  # type: ignore[attr-defined]
            return None
        creation.stale = None
        self.hits += 1  # (its starter's: those who joined counted a miss)
        return entry, self._settle(creation, entry, now)

    def invalidated(self, creation: Creation[K, T], cause: RemovalCause) -> Entry[K, T]:
        """``creation.stale`` failed its validation (or outlived its
        lifetime meanwhile): evicted, for the driver to finalize; the
        creation goes on, with the factory."""
        entry = creation.stale
        assert entry is not None
        creation.stale = None
        self.misses += 1
        self._evict(entry, cause, listed=False)
        return entry

    def _settle(self, creation: Creation[K, T], entry: Entry[K, T], now: float) -> int:
        """The creation ended with ``entry`` (holding one reference): one
        reference per waiter still waiting; nobody's means a release now."""
        del self.creating[creation.key]
        if creation.doomed:
            self.doomed.add(entry)
            self.reuse_before = -_INF
        creation.entry = entry
        creation.done = True
        self.entries[creation.key] = entry
        if creation.waiters:
            entry.refs = creation.waiters
            return 0
        # An entry nobody waits for any more is released at once, like any
        # entry at its last release: idle under a ttl, finalized at ttl 0.
        return Ledger.release(self, entry, now)  # pyright: ignore[reportUnknownMemberType]

    def created_at_once(self, key: K, resource: T) -> Entry[K, T]:
        """A sync factory returned before any creation of ``key`` existed
        (on an unguarded ledger): the entry, with the caller's reference
        (see ``failed_at_once``)."""
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

    # -- retirement ----------------------------------------------------------------

    def retire_into(self, heir: Ledger[K, T]) -> list[Entry[K, T]]:
        """This ledger's event loop closed: ``heir`` takes its work over.

        Every live entry, and each entry a creation in flight was
        validating, is evicted (``ORPHANED``) and returned for the heir to
        finalize; every finalization in flight moves to the heir's
        ``finalizing``; the creations in flight are dropped (their waiters
        were on that loop). The running totals stay here for the driver.
        """
        # (Never a LockedLedger's: a shared ledger outlives every loop.)
        evicted = self.evict_all(RemovalCause.ORPHANED)
        for creation in self.creating.values():
            if creation.stale is not None:
                evicted.append(self.invalidated(creation, RemovalCause.ORPHANED))
        heir.finalizing.update(self.finalizing)
        self.finalizing.clear()
        self.creating.clear()
        self.owed.clear()
        return evicted

    def fail_creations(
        self, owner: object, error: BaseException
    ) -> list[Creation[K, T]]:
        """Fail the creations ``owner`` runs (it can no longer finish them);
        an entry one was validating is evicted into ``victims``."""
        doomed = [c for c in self.creating.values() if c.owner is owner]
        for creation in doomed:
            if creation.stale is not None:
                stale = Ledger.invalidated(self, creation, RemovalCause.ORPHANED)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
                self.victims.append(stale)  # pyright: ignore[reportUnknownArgumentType]
            Ledger.failed(self, creation, error)  # pyright: ignore[reportUnknownMemberType]
        return doomed
