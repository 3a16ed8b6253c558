"""Example tests of the loop-free ledger, one behaviour each.

``tests/test_model.py`` drives the ledger through random interleavings;
these pin down single rules of SPEC sections 2-5 as the driver sees them.
"""

from __future__ import annotations

import math
import threading
from typing import cast

import pytest

from ttlpool._core import ARM, EVICTED, FINALIZE, Creation, Entry, Ledger
from ttlpool._locked_ledger import LockedLedger


def acquire(
    ledger: Ledger[str, object], key: str, now: float = 0.0
) -> Entry[str, object]:
    """Look ``key`` up; on a miss run the "factory" at once (the common path)."""
    found, started = ledger.lookup(key)
    if isinstance(found, Entry):
        return found
    assert started
    entry, action = ledger.created(found, object(), now)
    assert action == 0
    return entry


def begin(ledger: Ledger[str, object], key: str) -> Creation[str, object]:
    found, started = ledger.lookup(key)
    assert isinstance(found, Creation) and started
    return found


# -- leases -----------------------------------------------------------------------


def test_hit_returns_the_same_object_and_takes_it_out_of_idle() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    entry = acquire(ledger, "k")
    assert ledger.release(entry, now=0.0) == ARM
    assert ledger.timer_deadline == 5.0
    again, started = ledger.lookup("k")
    assert again is entry and not started
    assert entry.refs == 1 and "k" not in ledger.idle
    assert ledger.referenced == 1
    assert (ledger.hits, ledger.misses) == (1, 1)
    # A hit never touches the timer: the armed one fires early and re-arms.
    assert ledger.timer_deadline == 5.0


def test_release_on_count_zero_raises_value_error_naming_the_key() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    entry = acquire(ledger, "db-primary")
    ledger.release(entry, now=0.0)
    with pytest.raises(ValueError, match="'db-primary'"):
        ledger.release(entry, now=1.0)
    # Nothing changed: still idle, with its first deadline.
    assert entry.refs == 0 and entry.live
    assert ledger.idle == {"db-primary": entry} and entry.deadline == 5.0


def test_release_of_an_evicted_entry_is_a_noop() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    old = acquire(ledger, "k")
    assert ledger.evict_all() == [old]
    new = acquire(ledger, "k")
    assert ledger.release(old, now=1.0) == 0
    assert ledger.entries == {"k": new} and new.refs == 1
    assert ledger.referenced == 1 and not ledger.idle


def test_ttl_zero_finalizes_at_the_last_release() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=0, max_idle=None)
    entry = acquire(ledger, "k")
    acquire(ledger, "k")
    assert ledger.release(entry, now=0.0) == 0
    assert ledger.release(entry, now=0.0) == FINALIZE
    assert not entry.live and ledger.finalizing.keys() == {entry}
    assert not ledger.entries and not ledger.idle and ledger.timer_deadline is None


def test_max_idle_evicts_the_entry_released_longest_ago() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=None, max_idle=2)
    a, b, c = (acquire(ledger, key) for key in "abc")
    assert ledger.release(b, now=0.0) == 0
    assert ledger.release(a, now=1.0) == 0
    assert ledger.release(c, now=2.0) == EVICTED  # ttl None: no timer to arm
    assert ledger.take_victims() == [b] and ledger.take_victims() == []
    assert list(ledger.idle) == ["a", "c"]
    assert ledger.evicted_total == 1 and ledger.finalizing.keys() == {b}


# -- creation ---------------------------------------------------------------------


def test_concurrent_misses_join_one_creation() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    creation = begin(ledger, "k")
    joined, started = ledger.lookup("k")
    assert joined is creation and not started and creation.waiters == 2
    entry, action = ledger.created(creation, "conn", now=0.0)
    assert action == 0 and entry.refs == 2 and creation.entry is entry
    assert ledger.misses == 2 and ledger.created_total == 1


def test_all_waiters_withdrawn_created_entry_goes_idle_under_a_ttl() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    creation = begin(ledger, "k")
    ledger.lookup("k")
    assert ledger.withdraw(creation) is None
    assert ledger.withdraw(creation) is None
    entry, action = ledger.created(creation, "conn", now=1.0)
    assert action == ARM and ledger.timer_deadline == 6.0
    assert entry.live and entry.refs == 0 and entry.deadline == 6.0
    assert ledger.idle == {"k": entry} and ledger.referenced == 0


def test_all_waiters_withdrawn_created_entry_is_finalized_at_ttl_zero() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=0, max_idle=None)
    creation = begin(ledger, "k")
    assert ledger.withdraw(creation) is None
    entry, action = ledger.created(creation, "conn", now=1.0)
    assert action == FINALIZE
    assert not entry.live and ledger.finalizing.keys() == {entry} and not ledger.entries


def test_withdraw_after_the_creation_ended_hands_back_the_counted_reference() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    creation = begin(ledger, "k")
    entry, _ = ledger.created(creation, "conn", now=0.0)
    counted = ledger.withdraw(creation)
    assert counted is entry and entry.refs == 1
    assert ledger.release(counted, now=0.0) == ARM
    assert ledger.idle == {"k": entry}


def test_failed_creation_caches_nothing_and_the_next_miss_starts_again() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    creation = begin(ledger, "k")
    error = OSError("refused")
    ledger.failed(creation, error)
    assert creation.done and creation.error is error and creation.entry is None
    assert ledger.withdraw(creation) is None
    assert not ledger.entries and not ledger.creating and ledger.factory_errors == 1
    assert begin(ledger, "k") is not creation


# -- expire -----------------------------------------------------------------------


def test_expire_marks_a_referenced_entry_and_finalizes_it_at_the_last_release() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    entry = acquire(ledger, "k")
    acquire(ledger, "k")
    assert ledger.expire("k") is None  # never finalizes a referenced entry
    assert entry in ledger.doomed and entry.live
    assert ledger.release(entry, now=0.0) == 0
    assert ledger.release(entry, now=0.0) == FINALIZE  # ttl > 0, yet not idle
    assert not entry.live and not ledger.idle and ledger.finalizing.keys() == {entry}


def test_reacquire_clears_the_expire_mark() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    entry = acquire(ledger, "k")
    ledger.expire("k")
    assert acquire(ledger, "k") is entry and entry not in ledger.doomed
    ledger.release(entry, now=0.0)
    assert ledger.release(entry, now=0.0) == ARM  # idle again, not finalized
    assert ledger.idle == {"k": entry}


def test_expire_of_an_idle_entry_evicts_it_now() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    entry = acquire(ledger, "k")
    ledger.release(entry, now=0.0)
    assert ledger.expire("k") is entry
    assert not entry.live and not ledger.idle and ledger.finalizing.keys() == {entry}
    assert ledger.expired_total == 0  # counted as expired only by the ttl
    assert ledger.expire("k") is None
    assert ledger.expire("unknown") is None


def test_expire_of_a_creation_in_flight_dooms_the_created_entry() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    creation = begin(ledger, "k")
    assert ledger.expire("k") is None
    assert creation.doomed and "k" in ledger.creating
    entry, action = ledger.created(creation, "conn", now=0.0)
    assert action == 0 and entry in ledger.doomed and entry.refs == 1
    assert ledger.release(entry, now=1.0) == FINALIZE
    assert ledger.finalizing.keys() == {entry} and not ledger.idle


def test_joining_a_marked_creation_clears_the_mark_like_a_hit() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    creation = begin(ledger, "k")
    ledger.expire("k")
    joined, started = ledger.lookup("k")
    assert joined is creation and not started and not creation.doomed
    entry, _ = ledger.created(creation, "conn", now=0.0)
    assert entry not in ledger.doomed and entry.refs == 2


def test_a_key_release_owed_to_a_cleared_entry_never_touches_the_new_one() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    old = acquire(ledger, "k")
    ledger.hold(old)
    assert ledger.evict_all() == [old] and ledger.owed == {"k": 1}
    new = acquire(ledger, "k")
    ledger.hold(new)
    assert ledger.release_key("k", now=0.0) == (None, 0)  # the old holder's
    assert new.refs == 1 and ledger.owed == {}
    assert ledger.release_key("k", now=0.0) == (new, ARM)
    with pytest.raises(ValueError, match="'k'"):
        ledger.release_key("k", now=0.0)


def test_expire_of_a_creation_nobody_waits_for_finalizes_it_when_created() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    creation = begin(ledger, "k")
    ledger.expire("k")
    ledger.withdraw(creation)
    entry, action = ledger.created(creation, "conn", now=0.0)
    assert action == FINALIZE and not entry.live and not ledger.idle


# -- time -------------------------------------------------------------------------


def test_timer_fired_respects_its_limit_and_reports_the_next_deadline() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=1, max_idle=None)
    entries = [acquire(ledger, key) for key in "abcde"]
    actions = [ledger.release(e, now=0.0) for e in entries[:4]]
    assert actions == [ARM, 0, 0, 0]  # one timer for the whole pool
    ledger.release(entries[4], now=0.5)
    assert ledger.timer_deadline == 1.0

    expired, next_deadline = ledger.timer_fired(now=2.0, limit=2)
    assert expired == entries[:2]
    assert next_deadline == 1.0 <= 2.0  # already due: yield, then come back
    expired, next_deadline = ledger.timer_fired(now=2.0, limit=2)
    assert expired == entries[2:4] and next_deadline == 1.5  # also due
    expired, next_deadline = ledger.timer_fired(now=2.0, limit=2)
    assert expired == [entries[4]] and next_deadline is None
    assert ledger.timer_deadline is None and ledger.expired_total == 5


def test_timer_fired_early_evicts_nothing_and_rearms_for_the_front() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=1, max_idle=None)
    a, b = acquire(ledger, "a"), acquire(ledger, "b")
    ledger.release(a, now=0.0)
    ledger.release(b, now=0.5)
    acquire(ledger, "a")  # a hit: the armed deadline (1.0) is now early
    assert ledger.timer_fired(now=1.0, limit=2) == ([], 1.5)
    assert ledger.timer_deadline == 1.5
    assert ledger.timer_fired(now=1.5, limit=2) == ([b], None)


def test_entries_that_never_idle_out_arm_no_timer() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=None, max_idle=None)
    entry = acquire(ledger, "k")
    assert ledger.release(entry, now=0.0) == 0
    assert entry.deadline == math.inf and ledger.timer_deadline is None
    assert ledger.timer_fired(now=1e12, limit=2) == ([], None)
    assert entry.live and ledger.pending_cleanup_count() == 0
    assert ledger.pending_cleanup() == {}


def test_timer_lost_rearms_for_now_only_when_a_deadline_waits() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=1, max_idle=None)
    assert ledger.timer_lost(now=3.0) is None
    ledger.release(acquire(ledger, "k"), now=3.0)
    assert ledger.timer_lost(now=3.5) == 3.5 == ledger.timer_deadline


# -- clear and observation ---------------------------------------------------------


def test_evict_all_retires_referenced_and_idle_entries_and_drops_the_timer() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    held, idle = acquire(ledger, "held"), acquire(ledger, "idle")
    ledger.release(idle, now=0.0)
    creation = begin(ledger, "new")
    assert set(ledger.evict_all()) == {held, idle}
    assert not held.live and not idle.live and held.refs == idle.refs == -1
    assert not ledger.entries and not ledger.idle and ledger.referenced == 0
    assert ledger.timer_deadline is None
    assert ledger.creating == {"new": creation}  # creations go on


def test_pending_cleanup_maps_deadlines_and_finalizers_in_flight() -> None:
    ledger: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    a, b = acquire(ledger, "a"), acquire(ledger, "b")
    ledger.release(a, now=1.0)
    ledger.release(b, now=2.0)
    assert ledger.expire("b") is b
    assert ledger.pending_cleanup() == {"a": 6.0, "b": None}
    assert ledger.pending_cleanup_count() == 2
    ledger.finalized(b, ok=False)
    assert ledger.pending_cleanup() == {"a": 6.0}
    assert (ledger.finalized_total, ledger.finalizer_errors) == (1, 1)


def test_retire_into_moves_every_finalization_to_the_heir() -> None:
    """A closed loop's ledger: every entry is evicted, what it was finalizing
    goes to the heir too, its creations are dropped, its totals stay."""
    dead: Ledger[str, object] = Ledger(ttl=5, max_idle=None)
    held, idle = acquire(dead, "held"), acquire(dead, "idle")
    dead.release(idle, now=0.0)
    doomed = acquire(dead, "doomed")
    assert dead.release(doomed, now=0.0) == 0  # idle; then expired by hand
    assert dead.expire("doomed") is doomed  # finalizing when the loop closed
    begin(dead, "creating")
    heir: Ledger[str, object] = Ledger(ttl=5, max_idle=None)

    evicted = dead.retire_into(heir)

    assert set(evicted) == {held, idle} and not any(e.live for e in evicted)
    assert not dead.entries and not dead.creating and not dead.finalizing
    assert dead.pending_cleanup_count() == 0 and dead.pending_cleanup() == {}
    assert heir.finalizing.keys() == {held, idle, doomed}
    assert heir.pending_cleanup() == {"held": None, "idle": None, "doomed": None}
    heir.finalized(held, ok=True)
    heir.finalized(idle, ok=False)
    heir.abandoned(doomed)  # cut off with its loop: over, not finalized
    assert not heir.finalizing and heir.pending_cleanup_count() == 0
    assert (heir.finalized_total, heir.finalizer_errors) == (2, 1)
    assert heir.abandoned_total == 1
    assert (dead.created_total, dead.finalized_total) == (3, 0)


# -- LockedLedger -----------------------------------------------------------------


class LockReenteredError(RuntimeError):
    pass


class OneThreadLock:
    """Behaves like ``threading.Lock`` for one thread, but raises where that
    would block forever (taking it while held)."""

    def __init__(self) -> None:
        self.held = False

    def __enter__(self) -> None:
        if self.held:
            raise LockReenteredError("threading.Lock taken twice: this deadlocks")
        self.held = True

    def __exit__(self, *exc_info: object) -> None:
        self.held = False


def locked_ledger(ttl: float | None) -> tuple[LockedLedger[str, object], OneThreadLock]:
    lock = OneThreadLock()
    return LockedLedger(ttl, None, cast(threading.Lock, lock)), lock


def test_locked_ledger_releases_its_lock_after_each_operation() -> None:
    ledger, lock = locked_ledger(ttl=5)
    entry = acquire(ledger, "k")
    assert not lock.held
    assert acquire(ledger, "k") is entry and not lock.held
    assert ledger.release(entry, now=0.0) == 0 and not lock.held
    assert ledger.release(entry, now=0.0) == ARM and not lock.held
    assert ledger.timer_fired(now=5.0, limit=2) == ([entry], None)
    assert not lock.held
    ledger.finalized(entry, ok=True)
    assert not lock.held and ledger.finalized_total == 1


# These three re-entered the lock once (lookup -> hit, created -> release,
# fail_creations -> failed), which deadlocks the threading.Lock the pool gives.


def test_locked_ledger_lookup_does_not_reenter_its_lock() -> None:
    ledger, lock = locked_ledger(ttl=5)
    creation, started = ledger.lookup("k")
    assert started and not lock.held
    ledger.created(cast(Creation[str, object], creation), "conn", now=0.0)
    found, started = ledger.lookup("k")  # a hit, this time
    assert isinstance(found, Entry) and not started and not lock.held


def test_locked_ledger_created_with_no_waiter_left_does_not_reenter_its_lock() -> None:
    ledger, lock = locked_ledger(ttl=5)
    creation = begin(ledger, "k")
    ledger.withdraw(creation)
    entry, action = ledger.created(creation, "conn", now=0.0)
    assert action == ARM and entry.refs == 0 and not lock.held


def test_locked_ledger_fail_creations_does_not_reenter_its_lock() -> None:
    ledger, lock = locked_ledger(ttl=5)
    creation = begin(ledger, "k")
    creation.owner = owner = object()
    assert ledger.fail_creations(owner, OSError("loop closed")) == [creation]
    assert not ledger.creating and creation.done and not lock.held
