"""The ledger against a reference model, driven by a Hypothesis state machine.

The machine plays the asyncio driver's part with a manual clock and no event
loop: it looks keys up, runs "factories" (``created``/``failed``), releases
leases, fires the single timer when it is due (in slices of ``LIMIT``), and
"finalizes" whatever the ledger evicts, at once or later (finalizations in
flight), successfully or not. Next to it runs a reference model small
enough to trust by reading: key -> (resource, refs, idle-since, doomed), the
creations in flight, and the running totals. After every step the ledger
must agree with the model and keep its documented invariants.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ttlpool._core import ARM, EVICTED, FINALIZE, GRID, Creation, Entry, Ledger
from ttlpool._locked_ledger import LockedLedger

KEYS = st.integers(min_value=0, max_value=4)
PICK = st.integers(min_value=0, max_value=1_000)  # an index, taken modulo a length
STEPS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5])
LIMIT = 2  # timer_fired slice size: small, so slicing is exercised


class Res:
    """A created resource; numbered so that a failure report reads well."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Res({self.n})"


class LockReenteredError(RuntimeError):
    """The ledger took its lock while already holding it."""


class ProbeLock:
    """A one-thread stand-in for ``threading.Lock`` that fails instead of hanging.

    Taking it while held would block forever, so it raises
    :class:`LockReenteredError`; ``depth`` lets the machine check the lock
    is free between steps.
    """

    def __init__(self) -> None:
        self.depth = 0

    def __enter__(self) -> None:
        if self.depth:
            raise LockReenteredError("threading.Lock taken twice: this deadlocks")
        self.depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1


# -- the reference model --------------------------------------------------------


@dataclass
class ModelEntry:
    key: int
    resource: Res
    refs: int
    doomed: bool
    idle_since: float | None = None  # release time, while idle
    idle_order: int = 0  # release order, while idle


@dataclass
class ModelCreation:
    waiters: int = 1
    doomed: bool = False


@dataclass
class Waiter:
    """An acquirer waiting for a creation (and, once it ended, not yet woken)."""

    key: int
    creation: Creation[int, Res]
    ended: bool = False
    entry: Entry[int, Res] | None = None  # what the creation produced


@dataclass
class Totals:
    hits: int = 0
    misses: int = 0
    created_total: int = 0
    finalized_total: int = 0
    expired_total: int = 0
    evicted_total: int = 0
    factory_errors: int = 0
    finalizer_errors: int = 0


@dataclass
class Model:
    ttl: float
    max_idle: int | None
    entries: dict[int, ModelEntry] = field(default_factory=dict)
    creations: dict[int, ModelCreation] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)
    releases: int = 0

    def idle(self) -> list[ModelEntry]:
        """Idle entries, least recently released first."""
        idle = [e for e in self.entries.values() if e.refs == 0]
        return sorted(idle, key=lambda e: e.idle_order)

    def unreferenced(
        self, entry: ModelEntry, now: float, timer_armed: bool
    ) -> tuple[int, list[Res]]:
        """What the ledger must answer when ``entry`` loses its last reference."""
        if entry.doomed or self.ttl == 0:
            del self.entries[entry.key]
            return FINALIZE, []
        self.releases += 1
        entry.idle_since, entry.idle_order = now, self.releases
        action, victims = 0, []
        idle = self.idle()
        while self.max_idle is not None and len(idle) > self.max_idle:
            victim = idle.pop(0)
            del self.entries[victim.key]
            victims.append(victim.resource)
            self.totals.evicted_total += 1
            action = EVICTED
        if not timer_armed and self.ttl != math.inf and idle:
            action |= ARM
        return action, victims


def deadline(released: float, ttl: float) -> float:
    """An idle entry's deadline: ``ttl`` after its release, rounded up to the
    ledger's grid (infinite stays infinite)."""
    if ttl == math.inf:
        return math.inf
    return math.ceil((released + ttl) * GRID) / GRID


# -- the machine ----------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Drives one ledger; subclasses choose which ledger (see ``machine_for``)."""

    probe: ProbeLock | None = None

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.reaped_until = -math.inf  # the timer has been fired up to here
        self.armed: float | None = None  # the deadline "our" timer is armed for
        self.leases: list[tuple[Entry[int, Res], Res]] = []
        self.waiters: list[Waiter] = []
        self.creations: dict[int, Creation[int, Res]] = {}  # factories running
        self.in_flight: list[Entry[int, Res]] = []  # finalizers running
        self.created_resources: list[Res] = []
        self.handed_to_finalizer: set[int] = set()
        self.finalize_calls: dict[int, int] = {}

    # -- set-up ---------------------------------------------------------------

    def make_ledger(self, ttl: float | None, max_idle: int | None) -> Ledger[int, Res]:
        return Ledger(ttl, max_idle)

    @initialize(
        ttl=st.sampled_from([0, 0.5, 5, None]),
        max_idle=st.sampled_from([None, 0, 1, 3]),
    )
    def setup(self, ttl: float | None, max_idle: int | None) -> None:
        self.ledger = self.make_ledger(ttl, max_idle)
        self.model = Model(math.inf if ttl is None else float(ttl), max_idle)

    # -- driver helpers -------------------------------------------------------

    def finalize(self, entries: list[Entry[int, Res]], data: Any, clear: bool) -> None:
        """Start finalizing what the ledger evicted: now (ok or not), or later."""
        for entry in entries:
            assert not entry.live, f"{entry} handed out for finalizing while live"
            assert entry.resource.n not in self.handed_to_finalizer, (
                f"{entry.resource} evicted twice"
            )
            assert entry.refs == -1, f"{entry} evicted, but not marked so"
            self.handed_to_finalizer.add(entry.resource.n)
            how = data.draw(st.sampled_from(["ok", "later", "fails"]), label="finalize")
            if how == "later":
                self.in_flight.append(entry)
            else:
                self.finish_finalizing(entry, ok=how == "ok")

    def finish_finalizing(self, entry: Entry[int, Res], ok: bool) -> None:
        self.ledger.finalized(entry, ok)
        n = entry.resource.n
        self.finalize_calls[n] = self.finalize_calls.get(n, 0) + 1
        self.model.totals.finalized_total += 1
        self.model.totals.finalizer_errors += not ok

    def carry_out(
        self,
        entry: Entry[int, Res],
        action: int,
        expected: tuple[int, list[Res]],
        data: Any,
    ) -> None:
        """Check the ledger's answer against the model's and act on it."""
        expected_action, expected_victims = expected
        assert action == expected_action, (
            f"{entry}: action {action}, model says {expected_action}"
        )
        if action & FINALIZE:
            self.finalize([entry], data, clear=False)
        victims = self.ledger.take_victims()
        assert [v.resource for v in victims] == expected_victims
        self.finalize(victims, data, clear=False)
        if action & ARM:
            self.armed = self.ledger.timer_deadline
            assert self.armed is not None

    def release_entry(self, entry: Entry[int, Res], resource: Res, data: Any) -> None:
        model_entry = self.model.entries.get(entry.key)
        if model_entry is None or model_entry.resource is not resource:
            # The entry was evicted (cleared) under the lease: a no-op.
            before = self.snapshot()
            assert self.ledger.release(entry, self.now) == 0
            assert self.snapshot() == before
            return
        action = self.ledger.release(entry, self.now)
        model_entry.refs -= 1
        expected: tuple[int, list[Res]] = (0, [])
        if model_entry.refs == 0:
            expected = self.model.unreferenced(
                model_entry, self.now, self.armed is not None
            )
        self.carry_out(entry, action, expected, data)

    def snapshot(self) -> tuple[object, ...]:
        ledger = self.ledger
        return (
            dict(ledger.entries),
            list(ledger.idle),
            ledger.referenced,
            set(ledger.finalizing),
            ledger.timer_deadline,
            {k: e.refs for k, e in ledger.entries.items()},
        )

    def fire_timer(self, data: Any) -> None:
        """Fire the timer while it is due, one slice of ``LIMIT`` at a time."""
        due = [
            e.resource
            for e in self.model.idle()
            if e.idle_since is not None
            and deadline(e.idle_since, self.model.ttl) <= self.now
        ]
        reaped: list[Entry[int, Res]] = []
        while self.armed is not None and self.armed <= self.now:
            expired, next_deadline = self.ledger.timer_fired(self.now, LIMIT)
            assert len(expired) <= LIMIT
            assert next_deadline == self.ledger.timer_deadline
            if next_deadline is not None and next_deadline <= self.now:
                assert len(expired) == LIMIT, "a slice stopped short of its limit"
            reaped += expired
            self.armed = next_deadline
        assert [e.resource for e in reaped] == due
        for entry in reaped:
            del self.model.entries[entry.key]
        self.model.totals.expired_total += len(reaped)
        self.reaped_until = self.now
        self.finalize(reaped, data, clear=False)

    # -- rules: leases and creations -----------------------------------------

    @rule(
        key=KEYS,
        factory=st.sampled_from(["returns", "waits", "at_once", "at_once_fails"]),
        hold=st.booleans(),
        data=st.data(),
    )
    def acquire(self, key: int, factory: str, hold: bool, data: Any) -> None:
        """Look ``key`` up. On a miss that starts a creation the factory may
        return at once (the common path), waking the caller with its lease;
        unless ``hold``, a caller with a lease uses it and releases it.
        ``at_once``: a driver that owns the ledger calls a sync factory on
        a miss with no creation in flight, before any creation exists."""
        if factory.startswith("at_once") and key not in self.model.creations:
            self.acquire_at_once(key, factory == "at_once", hold, data)
            return
        found, started = self.ledger.lookup(key)
        model_entry = self.model.entries.get(key)
        if model_entry is not None:
            assert isinstance(found, Entry), f"miss on cached key {key}"
            assert not started
            assert found.live and found.resource is model_entry.resource
            assert found.resource.n not in self.handed_to_finalizer
            model_entry.refs += 1
            model_entry.doomed = False
            model_entry.idle_since = None
            self.model.totals.hits += 1
            self.leases.append((found, found.resource))
            if not hold:
                self.release_entry(*self.leases.pop(), data)
            return
        assert isinstance(found, Creation), f"hit on uncached key {key}"
        self.model.totals.misses += 1
        model_creation = self.model.creations.get(key)
        if model_creation is None:
            assert started, "a miss on a key not being created must start it"
            self.model.creations[key] = ModelCreation()
            self.creations[key] = found
        else:
            assert not started, "a second creation started for one key"
            assert found is self.creations[key]
            model_creation.waiters += 1
            model_creation.doomed = False  # acquired again: the mark goes
        self.waiters.append(Waiter(key, found))
        if started and factory == "returns":
            self.complete(key, ok=True, data=data)
            if self.wake(self.waiters[-1]) and not hold:
                self.release_entry(*self.leases.pop(), data)

    def acquire_at_once(self, key: int, ok: bool, hold: bool, data: Any) -> None:
        found = self.ledger.hit(key)
        model_entry = self.model.entries.get(key)
        if model_entry is not None:
            assert found is not None and found.resource is model_entry.resource
            model_entry.refs += 1
            model_entry.doomed = False
            model_entry.idle_since = None
            self.model.totals.hits += 1
            self.leases.append((found, found.resource))
        else:
            assert found is None, f"hit on uncached key {key}"
            self.model.totals.misses += 1
            if not ok:
                self.ledger.failed_at_once()
                self.model.totals.factory_errors += 1
                return
            resource = Res(len(self.created_resources))
            self.created_resources.append(resource)
            entry = self.ledger.created_at_once(key, resource)
            assert entry.key == key and entry.live
            self.model.totals.created_total += 1
            self.model.entries[key] = ModelEntry(key, resource, 1, False)
            self.leases.append((entry, resource))
        if not hold:
            self.release_entry(*self.leases.pop(), data)

    @rule(keys=st.lists(KEYS, min_size=2, max_size=5, unique=True), data=st.data())
    def use_several(self, keys: list[int], data: Any) -> None:
        """Acquire and release several keys at one instant: a burst of idle
        entries with equal deadlines, for ``max_idle`` and timer slices."""
        for key in keys:
            self.acquire(key, factory="returns", hold=False, data=data)

    @precondition(lambda self: self.creations)
    @rule(pick=PICK, ok=st.booleans(), data=st.data())
    def factory_returns(self, pick: int, ok: bool, data: Any) -> None:
        keys = sorted(self.creations)
        self.complete(keys[pick % len(keys)], ok, data)

    def complete(self, key: int, ok: bool, data: Any) -> None:
        creation = self.creations.pop(key)
        model_creation = self.model.creations.pop(key)
        waiters = [w for w in self.waiters if w.creation is creation]
        for waiter in waiters:
            waiter.ended = True
        if not ok:
            self.ledger.failed(creation, ValueError(f"factory of {key} failed"))
            self.model.totals.factory_errors += 1
            return
        resource = Res(len(self.created_resources))
        self.created_resources.append(resource)
        entry, action = self.ledger.created(creation, resource, self.now)
        assert entry.resource is resource and entry.key == key
        for waiter in waiters:
            waiter.entry = entry
        self.model.totals.created_total += 1
        model_entry = ModelEntry(
            key, resource, model_creation.waiters, model_creation.doomed
        )
        self.model.entries[key] = model_entry
        expected: tuple[int, list[Res]] = (0, [])
        if model_entry.refs == 0:
            expected = self.model.unreferenced(
                model_entry, self.now, self.armed is not None
            )
        self.carry_out(entry, action, expected, data)

    @precondition(lambda self: any(w.ended for w in self.waiters))
    @rule(pick=PICK)
    def waiter_wakes(self, pick: int) -> None:
        woken = [w for w in self.waiters if w.ended]
        self.wake(woken[pick % len(woken)])

    def wake(self, waiter: Waiter) -> bool:
        """The waiter resumes; true when it got a lease (the last one)."""
        self.waiters.remove(waiter)
        entry = waiter.entry
        if entry is None:
            return False  # the factory failed: this waiter gets the error
        if not entry.live:
            # A clear() evicted the entry before this waiter woke; its
            # reference went with the entry (a driver must not hand it out).
            return False
        self.leases.append((entry, entry.resource))
        return True

    @precondition(lambda self: self.waiters)
    @rule(pick=PICK, data=st.data())
    def waiter_withdraws(self, pick: int, data: Any) -> None:
        waiter = self.waiters.pop(pick % len(self.waiters))
        counted = self.ledger.withdraw(waiter.creation)
        if not waiter.ended:
            assert counted is None
            self.model.creations[waiter.key].waiters -= 1
            return
        assert counted is waiter.entry
        if counted is not None:
            self.release_entry(counted, counted.resource, data)

    @precondition(lambda self: self.leases)
    @rule(pick=PICK, data=st.data())
    def release(self, pick: int, data: Any) -> None:
        entry, resource = self.leases.pop(pick % len(self.leases))
        self.release_entry(entry, resource, data)

    @precondition(lambda self: any(e.refs == 0 for e in self.model.entries.values()))
    @rule(pick=PICK)
    def release_unheld(self, pick: int) -> None:
        idle = self.model.idle()
        key = idle[pick % len(idle)].key
        before = self.snapshot()
        with pytest.raises(ValueError, match=f"key {key!r}"):
            self.ledger.release(self.ledger.entries[key], self.now)
        assert self.snapshot() == before

    # -- rules: retirement ----------------------------------------------------

    @rule(key=KEYS, data=st.data())
    def expire(self, key: int, data: Any) -> None:
        retired = self.ledger.expire(key)
        if key in self.model.creations:
            self.model.creations[key].doomed = True
        model_entry = self.model.entries.get(key)
        if model_entry is None or model_entry.refs > 0:
            assert retired is None, f"expire({key}) retired a referenced entry"
            if model_entry is not None:
                model_entry.doomed = True
            return
        assert retired is not None, f"expire({key}) left an idle entry"
        assert retired.resource is model_entry.resource
        del self.model.entries[key]
        self.finalize([retired], data, clear=False)

    @rule(wait=st.booleans(), data=st.data())
    def clear(self, wait: bool, data: Any) -> None:
        """``evict_all``; with ``wait``, also finish every finalizer, after
        which each resource made so far has been finalized exactly once."""
        evicted = self.ledger.evict_all()
        expected = {id(e.resource) for e in self.model.entries.values()}
        assert {id(e.resource) for e in evicted} == expected
        assert len(evicted) == len(expected)
        self.model.entries.clear()
        self.armed = None  # the driver cancels its timer
        self.finalize(evicted, data, clear=True)
        if not wait:
            return
        while self.in_flight:
            self.finish_finalizing(self.in_flight.pop(), ok=True)
        assert not self.ledger.entries and not self.ledger.finalizing
        for resource in self.created_resources:
            assert self.finalize_calls.get(resource.n) == 1, resource

    @precondition(lambda self: self.in_flight)
    @rule(pick=PICK, ok=st.booleans())
    def finish_a_finalization(self, pick: int, ok: bool) -> None:
        entry = self.in_flight.pop(pick % len(self.in_flight))
        self.finish_finalizing(entry, ok)

    # -- rules: time ----------------------------------------------------------

    @rule(step=STEPS, fire=st.booleans(), data=st.data())
    def advance(self, step: float, fire: bool, data: Any) -> None:
        self.now += step
        if fire:
            self.fire_timer(data)

    @precondition(lambda self: self.armed is not None)
    @rule(data=st.data())
    def timer_fires(self, data: Any) -> None:
        self.fire_timer(data)

    # -- invariants -----------------------------------------------------------

    @invariant()
    def agrees_with_model(self) -> None:
        ledger, model = self.ledger, self.model
        assert set(ledger.entries) == set(model.entries)
        for key, entry in ledger.entries.items():
            expected = model.entries[key]
            assert entry.key == key and entry.live
            assert entry.resource is expected.resource
            assert entry.refs == expected.refs >= 0, entry
            assert (entry in ledger.doomed) == expected.doomed, entry
        referenced = sum(1 for e in ledger.entries.values() if e.refs > 0)
        assert ledger.referenced == referenced >= 0
        assert referenced == sum(1 for e in model.entries.values() if e.refs > 0)
        assert set(ledger.creating) == set(model.creations) == set(self.creations)
        for key, creation in ledger.creating.items():
            assert creation is self.creations[key] and not creation.done
            assert creation.waiters == model.creations[key].waiters >= 0
            assert creation.doomed == model.creations[key].doomed
        assert not set(ledger.entries) & set(ledger.creating)
        assert self.totals() == model.totals

    def totals(self) -> Totals:
        ledger = self.ledger
        return Totals(
            ledger.hits,
            ledger.misses,
            ledger.created_total,
            ledger.finalized_total,
            ledger.expired_total,
            ledger.evicted_total,
            ledger.factory_errors,
            ledger.finalizer_errors,
        )

    @invariant()
    def idle_is_the_unreferenced_in_release_order(self) -> None:
        ledger, model = self.ledger, self.model
        idle = model.idle()
        assert list(ledger.idle) == [e.key for e in idle]
        deadlines = []
        for key, entry in ledger.idle.items():
            assert ledger.entries[key] is entry and entry.refs == 0
            since = model.entries[key].idle_since
            assert since is not None and entry.deadline == deadline(since, model.ttl)
            deadlines.append(entry.deadline)
        assert deadlines == sorted(deadlines)
        if model.ttl == 0:
            assert not ledger.idle
        if model.max_idle is not None:
            assert len(ledger.idle) <= model.max_idle

    @invariant()
    def timer_covers_the_next_deadline(self) -> None:
        ledger = self.ledger
        assert ledger.timer_deadline == self.armed
        finite = [e.deadline for e in ledger.idle.values() if e.deadline != math.inf]
        if finite:
            assert self.armed is not None, "idle entries with a deadline, no timer"
            assert self.armed <= min(finite), "the timer would fire too late"
        # Once the timer has been fired up to some time, nothing idle is due then.
        assert all(deadline > self.reaped_until for deadline in finite)

    @invariant()
    def the_lease_shortcut_holds_only_where_a_release_would_do_nothing_more(
        self,
    ) -> None:
        """``reuse_before`` (the lease's inlined release): while it admits a
        release of the entry last in the queue, that release needs no
        finalizer, no eviction, no timer, and ``last_deadline`` is late
        enough for it."""
        ledger = self.ledger
        if ledger.queue and ledger.reuse_before > -math.inf:
            assert ledger.reusable and ledger.max_idle is None
            assert not ledger.doomed and not ledger.ttl_is_zero
            # A timer is armed, unless nothing ever expires (an infinite ttl).
            assert ledger.timer_deadline is not None or ledger.ttl == math.inf
            assert ledger.reuse_before + ledger.ttl <= ledger.last_deadline

    @invariant()
    def every_resource_is_live_finalizing_or_finalized_once(self) -> None:
        ledger = self.ledger
        assert ledger.finalizing.keys() == set(self.in_flight)
        assert len(ledger.finalizing) == len(self.in_flight)
        live = {id(e.resource) for e in ledger.entries.values()}
        in_flight = {id(e.resource) for e in self.in_flight}
        for resource in self.created_resources:
            calls = self.finalize_calls.get(resource.n, 0)
            assert calls <= 1, f"{resource} finalized {calls} times"
            where = (id(resource) in live, id(resource) in in_flight, calls == 1)
            assert sum(where) == 1, f"{resource}: (live, finalizing, finalized)={where}"
            assert (resource.n in self.handed_to_finalizer) == (not where[0])

    @invariant()
    def gauges_match_a_recount(self) -> None:
        ledger, model = self.ledger, self.model
        finite_ttl = model.ttl != math.inf
        waiting = len(model.idle()) if finite_ttl else 0
        assert ledger.pending_cleanup_count() == waiting + len(self.in_flight)
        pending: dict[int, float | None] = {e.key: None for e in self.in_flight}
        if finite_ttl:
            for entry in model.idle():
                assert entry.idle_since is not None
                pending[entry.key] = deadline(entry.idle_since, model.ttl)
        assert ledger.pending_cleanup() == pending
        assert len(ledger.creating) == len(model.creations)

    @invariant()
    def lock_is_free_between_steps(self) -> None:
        if self.probe is not None:
            assert self.probe.depth == 0


class LockedLedgerMachine(LedgerMachine):
    """The same machine driving a ``LockedLedger`` under a probe lock."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = ProbeLock()

    def make_ledger(self, ttl: float | None, max_idle: int | None) -> Ledger[int, Res]:
        assert self.probe is not None
        return LockedLedger(ttl, max_idle, cast(threading.Lock, self.probe))


#: Each machine runs at least this many steps per test run. Hypothesis
#: draws each run's length up to ``stateful_step_count`` (about 95 steps a
#: run on average at 150): 600 runs make about 60,000 steps.
MIN_STEPS = 50_000

SETTINGS = settings(
    max_examples=600,
    stateful_step_count=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize(
    "machine",
    [LedgerMachine, LockedLedgerMachine],
    ids=["Ledger", "LockedLedger"],
)
def test_ledger_agrees_with_model(machine: type[LedgerMachine]) -> None:
    counts = {"machines": 0, "checks": 0}

    class Counted(machine):
        def __init__(self) -> None:
            super().__init__()
            counts["machines"] += 1

        @invariant()
        def count_the_step(self) -> None:
            # Invariants are checked once after set-up, then after each step.
            counts["checks"] += 1

    run_state_machine_as_test(Counted, settings=SETTINGS)
    steps = counts["checks"] - counts["machines"]
    assert steps >= MIN_STEPS, f"only {steps} steps in {counts['machines']} runs"
