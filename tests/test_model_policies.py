"""A guarded ledger (``validate``, ``max_lifetime``) against a reference model.

The sibling of ``tests/test_model.py`` for the lifecycle policies (SPEC
section 10): a Hypothesis state machine plays the driver with a manual
clock and no event loop, and each rule is one of the events that race in a
pool: an acquire (by lease or by key, through ``hit`` or ``lookup``), the
outcome of a validation (valid, invalid, raised), the outcome of a factory,
a waiter that gives up, a release, ``expire``, the clock moving on and the
one timer firing, ``evict_all`` (a clear, or a loop's close), ``max_idle``
evicting at a release, the loop that runs creations closing
(``fail_creations``), a ledger retiring into an heir (``retire_into``) and
finalizations ending (ok, failing, cut off).

The reference model follows every resource from its creation to its
finalization: live (``entries``), retiring (held past its lifetime), being
validated (a creation's ``stale``), finalizing (with the one cause it left
for), finalized or abandoned. After every step the ledger must agree with
it. At the end of each run the pool closes as ``aclose`` does (a clear
while creations and validations are still in flight, then they end, every
reference is given back, and a last clear), and every resource made must
have been finalized (or abandoned) exactly once, under one cause.
"""

from __future__ import annotations

import enum
import math
import sys
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

from tests.test_model import (
    LIMIT,
    PICK,
    STEPS,
    ProbeLock,
    Res,
    Totals,
    Waiter,
    deadline,
)
from ttlpool._core import ARM, EVICTED, FINALIZE, Creation, Entry, Ledger
from ttlpool._lifetime import SPREAD, LifetimeEntry
from ttlpool._locked_ledger import LockedLedger
from ttlpool.stats import RemovalCause

#: Few keys: acquirers meet on one key (joins, validations, a retiring entry
#: and its key's new one).
KEYS = st.integers(min_value=0, max_value=2)
#: The small ``ttl`` and ``max_lifetime`` drawn (the clock moves by ``STEPS``).
TTL = 1.5
LIFETIME = 2.0
#: (validates, max_lifetime): guarded always; both policies, which meet
#: (an entry outlives its lifetime while validated), twice as often.
POLICIES = [(True, None), (True, LIFETIME), (True, LIFETIME), (False, LIFETIME)]
#: What the ledger's ``jitter`` returns, in turn: 0 makes ``retire_at`` fall
#: on the clock's quarter steps exactly (``now == retire_at`` happens).
JITTERS = (0.0, 0.5, 0.0, 0.9, 0.25)


class Where(enum.Enum):
    """Where a resource is, for the model: exactly one place at a time."""

    LIVE = "live"  # in ``entries``
    RETIRING = "retiring"  # held past its lifetime, out of ``entries``
    STALE = "validating"  # a creation's ``stale``
    FINALIZING = "finalizing"  # evicted, its finalizer running
    FINALIZED = "finalized"  # ``finalized()`` counted it
    ABANDONED = "abandoned"  # ``abandoned()``: cut off, not counted


class Loop:
    """Who runs a creation (``Creation.owner``): ``fail_creations`` fails
    the creations of one loop."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Loop({self.name})"


LOOPS = (Loop("a"), Loop("b"))


class Jitter:
    """A deterministic ``jitter`` for the ledger, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        value = JITTERS[self.calls % len(JITTERS)]
        self.calls += 1
        return value


def retire_at(entry: Entry[int, Res]) -> float:
    return cast(LifetimeEntry[int, Res], entry).retire_at


# -- the reference model --------------------------------------------------------


@dataclass(eq=False)
class Record:
    """One resource, from its creation to its finalization."""

    key: int
    resource: Res
    entry: Entry[int, Res]  # the ledger's object, for identity checks
    refs: int
    retire_at: float  # inf without max_lifetime
    where: Where = Where.LIVE
    doomed: bool = False  # marked by expire
    keyed: int = 0  # references taken by key (``hold``)
    idle_since: float | None = None  # release time, while idle
    idle_order: int = 0  # release order, while idle
    cause: RemovalCause | None = None  # why it left, once evicted
    outcomes: list[tuple[Where, RemovalCause]] = field(default_factory=list)


@dataclass(eq=False)
class ModelCreation:
    creation: Creation[int, Res]
    owner: Loop
    waiters: int = 1
    doomed: bool = False
    stale: Record | None = None  # the idle entry it validates first


@dataclass(eq=False)
class PolicyWaiter(Waiter):
    """A waiter; ``by_key``: an ``acquire(key)``, its reference held by key.
    (Told apart by identity: two waiters of one creation look alike.)"""

    by_key: bool = False


@dataclass
class PolicyModel:
    ttl: float
    max_idle: int | None
    validates: bool
    max_lifetime: float | None
    entries: dict[int, Record] = field(default_factory=dict)
    retiring: list[Record] = field(default_factory=list)
    creations: dict[int, ModelCreation] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)  # by resource number
    owed: dict[int, int] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)
    abandoned_total: int = 0
    removed: list[int] = field(default_factory=lambda: [0] * len(RemovalCause))
    releases: int = 0
    jitters: int = 0

    def idle(self) -> list[Record]:
        """Idle entries, least recently released first."""
        idle = [r for r in self.entries.values() if r.refs == 0]
        return sorted(idle, key=lambda r: r.idle_order)

    def held_by_key(self) -> list[int]:
        """Keys with a reference taken by key that ``release_key`` may give back."""
        keys = {k for k, n in self.owed.items() if n}
        keys |= {r.key for r in (*self.entries.values(), *self.retiring) if r.keyed}
        return sorted(keys)

    def new_retire_at(self, now: float) -> float:
        if self.max_lifetime is None:
            return math.inf
        jitter = JITTERS[self.jitters % len(JITTERS)]
        self.jitters += 1
        return now + self.max_lifetime * (1 - SPREAD * jitter)

    def past_lifetime(self, record: Record, now: float) -> bool:
        return self.max_lifetime is not None and now >= record.retire_at

    def evict(self, record: Record, cause: RemovalCause) -> None:
        """Out for good, to finalize with ``cause``."""
        assert record.where in (Where.LIVE, Where.RETIRING, Where.STALE), record
        if self.entries.get(record.key) is record:
            del self.entries[record.key]
        if record.where is Where.RETIRING:
            self.retiring.remove(record)
        record.where, record.cause, record.refs = Where.FINALIZING, cause, -1
        record.doomed, record.keyed, record.idle_since = False, 0, None

    def retire(self, record: Record) -> bool:
        """A live entry past its lifetime: evicted if idle (true), else retiring."""
        if record.refs == 0:
            self.evict(record, RemovalCause.LIFETIME)
            return True
        del self.entries[record.key]
        record.where = Where.RETIRING
        self.retiring.append(record)
        return False

    def unreferenced(self, record: Record, now: float) -> tuple[int, list[Record]]:
        """What the ledger must do when ``record`` loses its last reference
        (the ``FINALIZE``/``EVICTED`` bits, and ``max_idle``'s victims)."""
        cause = None
        if record.doomed:
            cause = RemovalCause.EXPIRED
        elif self.past_lifetime(record, now):
            cause = RemovalCause.LIFETIME
        elif self.ttl == 0:
            cause = RemovalCause.RELEASED
        if cause is not None:
            self.evict(record, cause)
            return FINALIZE, []
        assert record.where is Where.LIVE, f"{record.entry} retiring, yet stays idle"
        self.releases += 1
        record.idle_since, record.idle_order = now, self.releases
        bits, victims = 0, []
        idle = self.idle()
        while self.max_idle is not None and len(idle) > self.max_idle:
            victim = idle.pop(0)
            self.evict(victim, RemovalCause.EVICTED)
            self.totals.evicted_total += 1
            victims.append(victim)
            bits = EVICTED
        return bits, victims


# -- the machine ----------------------------------------------------------------


class PolicyMachine(RuleBasedStateMachine):
    """Drives one guarded ledger; a subclass drives a ``LockedLedger``."""

    probe: ProbeLock | None = None
    #: A shared ledger never retires into another (its partitions share it).
    shared = False

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.armed: float | None = None  # the deadline our timer is armed for
        self.reaped_until = -math.inf  # the timer fired (idle entries) up to here
        self.swept_until = -math.inf  # the timer retired lifetimes up to here
        self.jitter = Jitter()
        self.leases: list[Entry[int, Res]] = []  # references taken by lease
        self.waiters: list[PolicyWaiter] = []
        self.in_flight: list[Entry[int, Res]] = []  # finalizers running
        self.handed: set[int] = set()  # resources handed to a finalizer
        self.ledgers: list[Ledger[int, Res]] = []  # retired ones first
        self.torn_down = False

    # -- set-up ---------------------------------------------------------------

    def make_ledger(self) -> Ledger[int, Res]:
        model = self.model
        return Ledger(
            None if model.ttl == math.inf else model.ttl,
            model.max_idle,
            validates=model.validates,
            max_lifetime=model.max_lifetime,
            jitter=self.jitter,
        )

    @initialize(
        ttl=st.sampled_from([0, TTL, None]),
        max_idle=st.sampled_from([None, 0, 1, 3]),
        policies=st.sampled_from(POLICIES),
    )
    def setup(
        self,
        ttl: float | None,
        max_idle: int | None,
        policies: tuple[bool, float | None],
    ) -> None:
        validates, max_lifetime = policies
        ttl_ = math.inf if ttl is None else float(ttl)
        self.model = PolicyModel(ttl_, max_idle, validates, max_lifetime)
        self.ledger = self.make_ledger()
        assert self.ledger.guarded
        self.ledgers.append(self.ledger)

    # -- driver helpers -------------------------------------------------------

    def record(self, entry: Entry[int, Res]) -> Record:
        return self.model.records[entry.resource.n]

    def finalize(self, entries: list[Entry[int, Res]], data: Any) -> None:
        """Start finalizing what the ledger evicted, with the cause the model
        expects: now (ok or not), or later. ``data`` ``None``: now, ok."""
        for entry in entries:
            record = self.record(entry)
            assert entry.refs == -1 and not entry.live, f"{entry} evicted, not marked"
            assert entry.resource.n not in self.handed, f"{entry} evicted twice"
            assert record.where is Where.FINALIZING, (
                f"{entry} evicted, but the model has it {record.where.value}"
            )
            cause = self.ledger.finalizing.get(entry)
            assert cause is record.cause, (
                f"{entry} evicted for {cause!r}, the model says {record.cause!r}"
            )
            self.handed.add(entry.resource.n)
            how = "ok"
            if data is not None:
                how = data.draw(st.sampled_from(["ok", "later", "fails"]), label="fin")
            if how == "later":
                self.in_flight.append(entry)
            else:
                self.finish_finalizing(entry, how)

    def finish_finalizing(self, entry: Entry[int, Res], how: str) -> None:
        record, model = self.record(entry), self.model
        cause = self.ledger.finalizing[entry]
        if how == "abandoned":
            self.ledger.abandoned(entry)
            record.where = Where.ABANDONED
            model.abandoned_total += 1
        else:
            self.ledger.finalized(entry, how == "ok")
            record.where = Where.FINALIZED
            assert record.cause is not None
            model.removed[record.cause] += 1
            model.totals.finalized_total += 1
            model.totals.finalizer_errors += how != "ok"
        record.outcomes.append((record.where, cause))

    def carry_out(
        self,
        entry: Entry[int, Res],
        action: int,
        expected: tuple[int, list[Record]],
        data: Any,
    ) -> None:
        """Check a release's (or a settled creation's) answer and act on it."""
        bits, victims = expected
        assert action & (FINALIZE | EVICTED) == bits, (
            f"{entry}: action {action}, the model says {bits} (| ARM)"
        )
        armed = self.ledger.timer_deadline
        if action & ARM:
            assert armed is not None
            assert self.armed is None or armed < self.armed, "ARM, for no earlier time"
            self.armed = armed
        else:
            assert armed == self.armed, "the armed deadline moved without ARM"
        if action & FINALIZE:
            self.finalize([entry], data)
        taken = self.ledger.take_victims()
        assert taken == [v.entry for v in victims], (taken, victims)
        self.finalize(taken, data)

    def release_entry(self, entry: Entry[int, Res], data: Any) -> None:
        """A lease gives its reference back (by entry)."""
        record = self.record(entry)
        action = self.ledger.release(entry, self.now)
        if record.where not in (Where.LIVE, Where.RETIRING):
            assert record.where is not Where.STALE, f"a lease on {entry} validated"
            assert action == 0, f"{entry} evicted, yet its release did something"
            return
        record.refs -= 1
        expected: tuple[int, list[Record]] = (0, [])
        if record.refs == 0:
            expected = self.model.unreferenced(record, self.now)
        self.carry_out(entry, action, expected, data)

    def release_key(self, key: int, data: Any) -> None:
        """``release(key)``: the key's live entry if it holds a reference by
        key, else a retiring one that does; a no-op while owed."""
        model = self.model
        entry, action = self.ledger.release_key(key, self.now)
        owed = model.owed.get(key, 0)
        if owed:
            model.owed[key] = owed - 1
            if owed == 1:
                del model.owed[key]
            assert entry is None and action == 0, f"owed release of {key}: {entry}"
            return
        live = model.entries.get(key)
        if live is not None and live.keyed:
            candidates = [live]
        else:
            candidates = [r for r in model.retiring if r.key == key and r.keyed]
        assert entry is not None and entry in [r.entry for r in candidates], (
            f"release_key({key}) released {entry}, not one of {candidates}"
        )
        record = self.record(entry)
        record.keyed -= 1
        record.refs -= 1
        expected: tuple[int, list[Record]] = (0, [])
        if record.refs == 0:
            expected = self.model.unreferenced(record, self.now)
        self.carry_out(entry, action, expected, data)

    def handed_out(
        self, record: Record, by_key: bool, hold: bool, data: Any, via: str
    ) -> None:
        """A hit: one more reference; used and given back unless ``hold``."""
        entry = record.entry
        assert entry.resource.n not in self.handed, f"{via} handed out evicted {entry}"
        if self.model.max_lifetime is not None:
            assert self.now < retire_at(entry), (
                f"{via} at {self.now} handed out {entry}, retiring at "
                f"{retire_at(entry)}"
            )
        record.refs += 1
        record.doomed = False
        record.idle_since = None
        self.model.totals.hits += 1
        self.take_reference(record, by_key, hold, data)

    def take_reference(
        self, record: Record, by_key: bool, hold: bool, data: Any
    ) -> None:
        if by_key:
            self.ledger.hold(record.entry)
            record.keyed += 1
        else:
            self.leases.append(record.entry)
        if hold:
            return
        if by_key:
            self.release_key(record.key, data)
        else:
            self.release_entry(self.leases.pop(), data)

    # -- rules: acquires --------------------------------------------------------

    @rule(
        key=KEYS,
        via=st.sampled_from(["lookup", "hit", "hit_without_now"]),
        by_key=st.booleans(),
        hold=st.booleans(),
        settle=st.sampled_from(["later", "now"]),
        data=st.data(),
    )
    def acquire(
        self, key: int, via: str, by_key: bool, hold: bool, settle: str, data: Any
    ) -> None:
        """Acquire ``key`` at ``now``: the lease's ``hit`` first (with the
        time, or without it as an own ledger's lease does), then ``lookup``.
        A creation this started may settle at once (``settle``)."""
        model, ledger, now = self.model, self.ledger, self.now
        lifetimes = model.max_lifetime is not None
        if via != "lookup":
            at = now if via == "hit" else None
            found_hit = ledger.hit(key, at)
            record = model.entries.get(key)
            expected = (
                record is not None
                and not (model.validates and record.refs == 0)
                and not (lifetimes and (at is None or at >= record.retire_at))
            )
            if expected:
                assert record is not None and found_hit is record.entry, found_hit
                self.handed_out(record, by_key, hold, data, via)
                return
            assert found_hit is None, f"hit({key}, {at}) handed out {found_hit}"
        found, started = ledger.lookup(key, via != "lookup", now)
        victims = ledger.take_victims()
        record = model.entries.get(key)
        expected_victims: list[Record] = []
        if record is not None and model.past_lifetime(record, now):
            if model.retire(record):
                expected_victims.append(record)
            record = None
        assert victims == [r.entry for r in expected_victims], victims
        self.finalize(victims, data)
        if record is not None and (record.refs or not model.validates):
            assert isinstance(found, Entry), f"lookup({key}) missed {record.entry}"
            assert found is record.entry and not started
            self.handed_out(record, by_key, hold, data, "lookup")
            return
        assert isinstance(found, Creation), f"lookup({key}) handed out {found}"
        creating = model.creations.get(key)
        if record is not None:  # idle, under validate: validated first
            # (A hit or a miss once validate has answered.)
            assert started and found.stale is record.entry, found.stale
            del model.entries[key]
            record.where, record.refs, record.idle_since = Where.STALE, 1, None
            creating = model.creations[key] = ModelCreation(found, LOOPS[0])
            creating.stale = record
        elif creating is not None:
            model.totals.misses += 1
            assert not started, f"a second creation of {key} started"
            assert found is creating.creation
            creating.waiters += 1
            creating.doomed = False  # acquired again: the mark goes
        else:
            model.totals.misses += 1
            assert started and found.stale is None
            creating = model.creations[key] = ModelCreation(found, LOOPS[0])
        if started:
            creating.owner = data.draw(st.sampled_from(LOOPS), label="owner")
            found.owner = creating.owner
        waiter = PolicyWaiter(key, found, by_key=by_key)
        self.waiters.append(waiter)
        if not (started and settle == "now"):
            return
        if creating.stale is not None:
            outcome = data.draw(st.sampled_from(["valid", "invalid"]), label="valid")
            self.validate(key, outcome, data)
        if key in model.creations:
            self.complete(key, ok=True, data=data)
        if waiter.ended:
            self.wake(waiter, hold, data)

    @rule(keys=st.lists(KEYS, min_size=2, max_size=3, unique=True), data=st.data())
    def use_several(self, keys: list[int], data: Any) -> None:
        """Acquire and release several keys at one instant (``max_idle``,
        equal deadlines, timer slices)."""
        for key in keys:
            self.acquire(key, "lookup", False, False, "now", data)

    @rule(
        key=KEYS,
        count=st.integers(min_value=2, max_value=4),
        by_key=st.booleans(),
        data=st.data(),
    )
    def crowd(self, key: int, count: int, by_key: bool, data: Any) -> None:
        """Several acquirers of one key at one instant, who keep what they
        get: they join one creation or validation, or share one entry."""
        for _ in range(count):
            self.acquire(key, "lookup", by_key, True, "later", data)

    # -- rules: validations and factories -------------------------------------

    @precondition(lambda self: any(c.stale for c in self.model.creations.values()))
    @rule(
        pick=PICK,
        outcome=st.sampled_from(["valid", "invalid", "raised"]),
        late=st.booleans(),
        data=st.data(),
    )
    def validation_ends(self, pick: int, outcome: str, late: bool, data: Any) -> None:
        """``validate`` answers; ``late``: only once the clock reached the
        entry's ``retire_at`` (it outlived its lifetime while validated)."""
        creations = self.model.creations
        keys = sorted(k for k, c in creations.items() if c.stale)
        key = keys[pick % len(keys)]
        stale = creations[key].stale
        assert stale is not None
        if late and stale.retire_at != math.inf:
            self.now = max(self.now, stale.retire_at)
        self.validate(key, outcome, data)

    def validate(self, key: int, outcome: str, data: Any) -> None:
        """The driver's part once ``validate`` answered (``raised`` is a
        no, reported): ``revalidated``, or ``invalidated`` and the factory
        goes on."""
        model = self.model
        creating = model.creations[key]
        stale, creation = creating.stale, creating.creation
        assert stale is not None
        cause = RemovalCause.INVALID
        if outcome == "valid":
            settled = self.ledger.revalidated(creation, self.now)
            if not model.past_lifetime(stale, self.now):
                assert settled is not None, f"{stale.entry} valid, not handed out"
                entry, action = settled
                assert entry is stale.entry
                model.totals.hits += 1  # (its starter's)
                del model.creations[key]
                stale.where, stale.refs = Where.LIVE, creating.waiters
                stale.doomed = creating.doomed
                model.entries[key] = stale
                self.creation_ended(creation, entry)
                expected: tuple[int, list[Record]] = (0, [])
                if stale.refs == 0:
                    expected = model.unreferenced(stale, self.now)
                self.carry_out(entry, action, expected, data)
                return
            assert settled is None, f"{stale.entry} handed out past its lifetime"
            cause = RemovalCause.LIFETIME
        evicted = self.ledger.invalidated(creation, cause)
        assert evicted is stale.entry and creation.stale is None
        creating.stale = None
        model.totals.misses += 1  # (its starter's)
        model.evict(stale, cause)
        self.finalize([evicted], data)

    @precondition(
        lambda self: any(c.stale is None for c in self.model.creations.values())
    )
    @rule(pick=PICK, ok=st.booleans(), data=st.data())
    def factory_returns(self, pick: int, ok: bool, data: Any) -> None:
        keys = sorted(k for k, c in self.model.creations.items() if c.stale is None)
        self.complete(keys[pick % len(keys)], ok, data)

    def complete(self, key: int, ok: bool, data: Any) -> None:
        model = self.model
        creating = model.creations.pop(key)
        creation = creating.creation
        assert creating.stale is None and creation.stale is None
        if not ok:
            self.ledger.failed(creation, ValueError(f"factory of {key} failed"))
            model.totals.factory_errors += 1
            self.creation_ended(creation, None)
            return
        resource = Res(len(model.records))
        entry, action = self.ledger.created(creation, resource, self.now)
        assert entry.resource is resource and entry.key == key
        record = Record(
            key,
            resource,
            entry,
            creating.waiters,
            model.new_retire_at(self.now),
            doomed=creating.doomed,
        )
        if model.max_lifetime is not None:
            assert retire_at(entry) == record.retire_at, retire_at(entry)
        model.records.append(record)
        model.entries[key] = record
        model.totals.created_total += 1
        self.creation_ended(creation, entry)
        expected: tuple[int, list[Record]] = (0, [])
        if record.refs == 0:
            expected = model.unreferenced(record, self.now)
        self.carry_out(entry, action, expected, data)

    def creation_ended(
        self, creation: Creation[int, Res], entry: Entry[int, Res] | None
    ) -> None:
        assert creation.done and creation.entry is entry
        for waiter in self.waiters:
            if waiter.creation is creation:
                waiter.ended, waiter.entry = True, entry

    @precondition(lambda self: any(w.ended for w in self.waiters))
    @rule(pick=PICK, hold=st.booleans(), data=st.data())
    def waiter_wakes(self, pick: int, hold: bool, data: Any) -> None:
        woken = [w for w in self.waiters if w.ended]
        self.wake(woken[pick % len(woken)], hold, data)

    def wake(self, waiter: PolicyWaiter, hold: bool, data: Any) -> None:
        """The waiter resumes with the entry its reference was counted on
        (unless the factory failed, or a clear evicted the entry meanwhile)."""
        self.waiters = [w for w in self.waiters if w is not waiter]
        entry = waiter.entry
        if entry is None or not entry.live:
            return
        record = self.record(entry)
        assert record.where in (Where.LIVE, Where.RETIRING), record
        self.take_reference(record, waiter.by_key, hold, data)

    @precondition(lambda self: self.waiters)
    @rule(pick=PICK, data=st.data())
    def waiter_withdraws(self, pick: int, data: Any) -> None:
        """A waiting acquirer is cancelled: not counted if the creation is
        still on; else its counted reference is given back (by entry)."""
        waiter = self.waiters.pop(pick % len(self.waiters))
        counted = self.ledger.withdraw(waiter.creation)
        if not waiter.ended:
            assert counted is None
            self.model.creations[waiter.key].waiters -= 1
            return
        assert counted is waiter.entry
        if counted is not None:
            self.release_entry(counted, data)

    @precondition(lambda self: self.model.creations)
    @rule(loop=st.sampled_from(LOOPS), data=st.data())
    def loop_closes(self, loop: Loop, data: Any) -> None:
        """The loop running some creations closed (``fail_creations``):
        they fail, and an entry one was validating is orphaned."""
        model = self.model
        failed = self.ledger.fail_creations(loop, RuntimeError("loop closed"))
        mine = [c for c in model.creations.values() if c.owner is loop]
        assert [id(c) for c in failed] == [id(c.creation) for c in mine]
        orphans: list[Record] = []
        for creating in mine:
            del model.creations[creating.creation.key]
            model.totals.factory_errors += 1
            if creating.stale is not None:
                model.totals.misses += 1  # (its starter's)
                model.evict(creating.stale, RemovalCause.ORPHANED)
                orphans.append(creating.stale)
            self.creation_ended(creating.creation, None)
        victims = self.ledger.take_victims()
        assert victims == [r.entry for r in orphans], victims
        self.finalize(victims, data)

    # -- rules: releases and retirement ---------------------------------------

    @precondition(lambda self: self.leases)
    @rule(pick=PICK, data=st.data())
    def release(self, pick: int, data: Any) -> None:
        self.release_entry(self.leases.pop(pick % len(self.leases)), data)

    @precondition(lambda self: self.model.held_by_key())
    @rule(pick=PICK, data=st.data())
    def release_by_key(self, pick: int, data: Any) -> None:
        keys = self.model.held_by_key()
        self.release_key(keys[pick % len(keys)], data)

    @rule(key=KEYS, data=st.data())
    def expire(self, key: int, data: Any) -> None:
        model = self.model
        retired = self.ledger.expire(key)
        if key in model.creations:
            model.creations[key].doomed = True
        record = model.entries.get(key)
        if record is None or record.refs > 0:
            assert retired is None, f"expire({key}) retired {retired}"
            if record is not None:
                record.doomed = True
            return
        assert retired is record.entry, f"expire({key}) left {record.entry}"
        model.evict(record, RemovalCause.EXPIRED)
        self.finalize([retired], data)

    @rule(
        cause=st.sampled_from([RemovalCause.CLEARED, RemovalCause.ORPHANED]),
        wait=st.booleans(),
        data=st.data(),
    )
    def clear(self, cause: RemovalCause, wait: bool, data: Any) -> None:
        """``evict_all``: every live and retiring entry; one being validated
        stays its creation's. With ``wait``, every finalizer ends too."""
        model = self.model
        evicted = self.ledger.evict_all(cause)
        expected = [*model.entries.values(), *model.retiring]
        assert sorted(id(e) for e in evicted) == sorted(id(r.entry) for r in expected)
        for record in expected:
            if record.keyed:
                model.owed[record.key] = model.owed.get(record.key, 0) + record.keyed
            model.evict(record, cause)
        self.armed = None  # the driver cancels its timer
        self.finalize(evicted, data)
        if not wait:
            return
        while self.in_flight:
            self.finish_finalizing(self.in_flight.pop(), "ok")
        for record in model.records:
            assert record.where in (Where.FINALIZED, Where.ABANDONED, Where.STALE)

    @precondition(lambda self: not self.shared)
    @rule(data=st.data())
    def retire_into_heir(self, data: Any) -> None:
        """The ledger's loop closed: a fresh heir finalizes what it held
        (``ORPHANED``) and takes its finalizations in flight over. The
        waiters and leases were on that loop: they are gone."""
        model = self.model
        heir = self.make_ledger()
        evicted = self.ledger.retire_into(heir)
        stale = [c.stale for c in model.creations.values() if c.stale is not None]
        expected = [*model.entries.values(), *model.retiring, *stale]
        assert sorted(id(e) for e in evicted) == sorted(id(r.entry) for r in expected)
        model.totals.misses += len(stale)  # (their starters')
        for record in expected:
            model.evict(record, RemovalCause.ORPHANED)
        model.owed.clear()
        model.creations.clear()
        self.waiters.clear()
        self.leases.clear()
        assert not self.ledger.finalizing and not self.ledger.creating
        self.ledger = heir
        self.ledgers.append(heir)
        self.armed = None
        self.finalize(evicted, data)

    @precondition(lambda self: self.in_flight)
    @rule(pick=PICK, how=st.sampled_from(["ok", "fails", "abandoned"]))
    def finalization_ends(self, pick: int, how: str) -> None:
        self.finish_finalizing(self.in_flight.pop(pick % len(self.in_flight)), how)

    # -- rules: time ----------------------------------------------------------

    @rule(step=STEPS, fire=st.booleans(), data=st.data())
    def advance(self, step: float, fire: bool, data: Any) -> None:
        self.now += step
        if fire:
            self.fire_timer(data)

    @precondition(lambda self: self.upcoming())
    @rule(pick=PICK, fire=st.booleans(), data=st.data())
    def advance_to_a_deadline(self, pick: int, fire: bool, data: Any) -> None:
        """Move the clock exactly to an upcoming idle deadline or
        ``retire_at`` (the boundaries: at ``now == retire_at`` nothing is
        handed out any more)."""
        upcoming = self.upcoming()
        self.now = upcoming[pick % len(upcoming)]
        if fire:
            self.fire_timer(data)

    def upcoming(self) -> list[float]:
        model, times = self.model, set()
        for record in (*model.entries.values(), *model.retiring):
            times.add(record.retire_at)
            if record.idle_since is not None:
                times.add(deadline(record.idle_since, model.ttl))
        for creating in model.creations.values():
            if creating.stale is not None:
                times.add(creating.stale.retire_at)
        return sorted(t for t in times if self.now < t < math.inf)

    @precondition(lambda self: self.armed is not None)
    @rule(data=st.data())
    def timer_fires(self, data: Any) -> None:
        self.fire_timer(data)

    def fire_timer(self, data: Any) -> None:
        """Fire the timer while it is due, a slice of ``LIMIT`` at a time.
        Idle entries past their lifetime leave for ``LIFETIME``, past their
        deadline for ``IDLE`` (either, past both: the slices decide); held
        ones past their lifetime start retiring."""
        model, now = self.model, self.now
        due: dict[int, set[RemovalCause]] = {}
        to_retire: list[Record] = []
        for record in model.entries.values():
            if record.refs:
                if model.past_lifetime(record, now):
                    to_retire.append(record)
                continue
            causes = set()
            if model.past_lifetime(record, now):
                causes.add(RemovalCause.LIFETIME)
            assert record.idle_since is not None
            if deadline(record.idle_since, model.ttl) <= now:
                causes.add(RemovalCause.IDLE)
            if causes:
                due[record.resource.n] = causes
        reaped: list[Entry[int, Res]] = []
        slices = 0
        while self.armed is not None and self.armed <= now:
            expired, next_deadline = self.ledger.timer_fired(now, LIMIT)
            assert len(expired) <= LIMIT
            assert next_deadline == self.ledger.timer_deadline
            reaped += expired
            self.armed = next_deadline
            slices += 1
            assert slices < 1000, "the timer never stops firing"
        assert sorted(e.resource.n for e in reaped) == sorted(due), (
            f"the timer at {now} reaped {reaped}; due: {due}"
        )
        for entry in reaped:
            record = self.record(entry)
            cause = self.ledger.finalizing.get(entry)
            assert cause is not None and cause in due[entry.resource.n], (
                f"{entry} reaped for {cause!r}"
            )
            model.evict(record, cause)
            model.totals.expired_total += cause is RemovalCause.IDLE
        self.reaped_until = now
        if slices:
            self.swept_until = now
            for record in to_retire:
                model.retire(record)
        self.finalize(reaped, data)

    # -- invariants -----------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        """Every check below, after each step (one invariant: a failing
        run's steps then read without a line per check)."""
        self.agrees_with_model()
        self.every_resource_is_in_exactly_one_place()
        self.removals_add_up()
        self.one_flight_per_key()
        self.idle_is_the_unreferenced_in_release_order()
        self.one_timer_covers_what_is_idle()
        self.gauges_match_a_recount()
        if self.probe is not None:
            assert self.probe.depth == 0, "the lock is held between steps"

    def agrees_with_model(self) -> None:
        ledger, model = self.ledger, self.model
        assert ledger.entries.keys() == model.entries.keys(), (
            f"entries {ledger.entries}, the model's {model.entries}"
        )
        for key, record in model.entries.items():
            entry = ledger.entries[key]
            assert entry is record.entry and entry.key == key
            assert entry.refs == record.refs >= 0, (entry, record.refs)
        assert ledger.retiring == {r.entry for r in model.retiring}, (
            f"retiring {ledger.retiring}, the model's {model.retiring}"
        )
        for record in model.retiring:
            assert record.entry.refs == record.refs > 0, (record.entry, record.refs)
        if model.max_lifetime is not None:
            for record in (*model.entries.values(), *model.retiring):
                assert retire_at(record.entry) == record.retire_at
        doomed = {r.entry for r in (*model.entries.values(), *model.retiring)}
        assert ledger.doomed == {e for e in doomed if self.record(e).doomed}
        assert ledger.creating.keys() == model.creations.keys()
        for key, creating in model.creations.items():
            creation = ledger.creating[key]
            assert creation is creating.creation and not creation.done
            assert creation.waiters == creating.waiters >= 0
            assert creation.doomed == creating.doomed
            stale = creating.stale
            assert creation.stale is (None if stale is None else stale.entry)
            assert stale is None or stale.entry.refs == 1
        keyed = {r.entry: r.keyed for r in (*model.entries.values(), *model.retiring)}
        assert ledger.keyed == {e: n for e, n in keyed.items() if n}, (
            f"keyed {ledger.keyed}, the model's {keyed}"
        )
        assert ledger.owed == model.owed, (ledger.owed, model.owed)
        assert not ledger.victims, "victims left for nobody to take"
        assert self.totals() == model.totals, (self.totals(), model.totals)
        assert sum(led.abandoned_total for led in self.ledgers) == model.abandoned_total
        assert self.jitter.calls == model.jitters

    def totals(self) -> Totals:
        totals = Totals()
        for ledger in self.ledgers:
            totals.hits += ledger.hits
            totals.misses += ledger.misses
            totals.created_total += ledger.created_total
            totals.finalized_total += ledger.finalized_total
            totals.expired_total += ledger.expired_total
            totals.evicted_total += ledger.evicted_total
            totals.factory_errors += ledger.factory_errors
            totals.finalizer_errors += ledger.finalizer_errors
        return totals

    def every_resource_is_in_exactly_one_place(self) -> None:
        """Live, retiring, validated, finalizing (one cause), finalized or
        abandoned: never two of them, never finalized twice."""
        ledger = self.ledger
        places: dict[int, list[tuple[Where, RemovalCause | None]]] = {}

        def seen(entry: Entry[int, Res], where: Where, cause: Any = None) -> None:
            places.setdefault(entry.resource.n, []).append((where, cause))

        for entry in ledger.entries.values():
            seen(entry, Where.LIVE)
        for entry in ledger.retiring:
            seen(entry, Where.RETIRING)
        for creation in ledger.creating.values():
            if creation.stale is not None:
                seen(creation.stale, Where.STALE)
        for entry, cause in ledger.finalizing.items():
            seen(entry, Where.FINALIZING, cause)
        assert ledger.finalizing.keys() == set(self.in_flight)
        assert len(ledger.finalizing) == len(self.in_flight)
        for record in self.model.records:
            for where, cause in record.outcomes:
                seen(record.entry, where, cause)
            assert len(record.outcomes) <= 1, f"{record.entry}: {record.outcomes}"
            found = places.get(record.resource.n, [])
            assert len(found) == 1, f"{record.entry} is in {found}"
            place, place_cause = found[0]
            assert place is record.where, f"{record.entry}: {place}, not {record}"
            if place not in (Where.LIVE, Where.RETIRING, Where.STALE):
                assert place_cause is record.cause, (
                    f"{record.entry}: {place_cause!r}, {record}"
                )
        assert len(places) == len(self.model.records)

    def removals_add_up(self) -> None:
        """Each finalized entry is counted under one cause: the causes add up
        to ``finalized_total``, and each is the one the model expects."""
        removed = [0] * len(RemovalCause)
        for ledger in self.ledgers:
            assert sum(ledger.removed) == ledger.finalized_total, (
                f"removed {ledger.removed}, finalized {ledger.finalized_total}"
            )
            removed = [a + b for a, b in zip(removed, ledger.removed, strict=True)]
        assert removed == self.model.removed, (
            f"removed {removed}, the model's {self.model.removed}"
        )

    def one_flight_per_key(self) -> None:
        ledger = self.ledger
        assert not ledger.entries.keys() & ledger.creating.keys()
        stale = [c.stale.key for c in ledger.creating.values() if c.stale is not None]
        assert not set(stale) & ledger.entries.keys()

    def idle_is_the_unreferenced_in_release_order(self) -> None:
        ledger, model = self.ledger, self.model
        idle = model.idle()
        assert list(ledger.idle.values()) == [r.entry for r in idle], (
            f"idle order {list(ledger.idle.values())}, the model's {idle}"
        )
        assert ledger.idle_count == len(idle), (ledger.idle_count, idle)
        assert ledger.referenced == len(model.entries) - len(idle)
        for record in idle:
            assert record.idle_since is not None
            assert record.entry.deadline == deadline(record.idle_since, model.ttl)
        if model.max_idle is not None:
            assert len(idle) <= model.max_idle

    def one_timer_covers_what_is_idle(self) -> None:
        """Whatever is idle with a finite deadline or a lifetime has the
        timer armed no later than the earliest of them."""
        ledger, model = self.ledger, self.model
        assert ledger.timer_deadline == self.armed
        wakes: list[float] = []
        for record in model.idle():
            assert record.idle_since is not None
            wakes.append(deadline(record.idle_since, model.ttl))
            wakes.append(record.retire_at)
            assert min(wakes[-2:]) > self.reaped_until, (
                f"{record.entry} idle, though the timer fired at {self.reaped_until}"
            )
        finite = [w for w in wakes if w != math.inf]
        if finite:
            assert self.armed is not None, f"no timer; due at {min(finite)}"
            assert self.armed <= min(finite), f"timer at {self.armed}: too late"
        for record in model.entries.values():
            assert record.retire_at > self.swept_until, (
                f"{record.entry} live past its lifetime, though the timer fired at "
                f"{self.swept_until}"
            )

    def gauges_match_a_recount(self) -> None:
        ledger, model = self.ledger, self.model
        waiting = model.ttl != math.inf or model.max_lifetime is not None
        idle = model.idle() if waiting else []
        leaving = [r for r in model.records if r.where is Where.FINALIZING]
        assert ledger.pending_cleanup_count() == (
            len(idle) + len(model.retiring) + len(leaving)
        ), (ledger.pending_cleanup_count(), idle, model.retiring, leaving)
        pending: dict[int, float | None] = {
            r.key: None for r in (*leaving, *model.retiring)
        }
        for record in idle:
            assert record.idle_since is not None
            due = deadline(record.idle_since, model.ttl)
            pending[record.key] = min(due, record.retire_at)
        assert ledger.pending_cleanup() == pending, (ledger.pending_cleanup(), pending)

    # -- the end of a run -------------------------------------------------------

    def teardown(self) -> None:
        """The pool closes, as ``aclose`` does: a clear while creations and
        validations are still in flight, then they end (validations say
        yes), the waiters wake, every reference is given back, and a last
        clear with every finalizer ended. Then each resource made was
        finalized (or abandoned) exactly once. Skipped when a step failed:
        that failure is the one to report."""
        if sys.exc_info()[0] is not None or not hasattr(self, "ledger"):
            return
        model = self.model
        self.clear(RemovalCause.CLEARED, wait=False, data=None)
        self.consistent()
        while model.creations:
            key, creating = next(iter(model.creations.items()))
            if creating.stale is not None:
                self.validate(key, "valid", None)
            else:
                self.complete(key, ok=True, data=None)
            self.consistent()
        while self.waiters:
            self.wake(self.waiters[0], hold=True, data=None)
        while self.leases:
            self.release_entry(self.leases.pop(), None)
            self.consistent()
        while keys := model.held_by_key():
            self.release_key(keys[0], None)
            self.consistent()
        self.clear(RemovalCause.CLEARED, wait=True, data=None)
        self.consistent()
        for record in model.records:
            assert len(record.outcomes) == 1, f"{record.entry}: {record.outcomes}"
            assert record.where in (Where.FINALIZED, Where.ABANDONED), record
        finalized = sum(r.where is Where.FINALIZED for r in model.records)
        assert self.totals().finalized_total == finalized
        self.torn_down = True


class LockedPolicyMachine(PolicyMachine):
    """The same machine driving a ``LockedLedger`` under a probe lock (which
    raises where a ``threading.Lock`` taken twice would deadlock)."""

    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.probe = ProbeLock()

    def make_ledger(self) -> Ledger[int, Res]:
        assert self.probe is not None
        model = self.model
        return LockedLedger(
            None if model.ttl == math.inf else model.ttl,
            model.max_idle,
            cast(threading.Lock, self.probe),
            validates=model.validates,
            max_lifetime=model.max_lifetime,
            jitter=self.jitter,
        )


#: Each machine runs at least this many steps per test run: Hypothesis draws
#: each run's length up to ``stateful_step_count`` (about 65 steps a run on
#: average at 100): 200 runs make some 13,000 steps, about 15 s a machine.
MIN_STEPS = 10_000
MAX_EXAMPLES = 200

SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize(
    "machine",
    [PolicyMachine, LockedPolicyMachine],
    ids=["Ledger", "LockedLedger"],
)
def test_guarded_ledger_agrees_with_model(machine: type[PolicyMachine]) -> None:
    counts = {"machines": 0, "checks": 0, "torn_down": 0}

    class Counted(machine):  # type: ignore[valid-type, misc]
        def __init__(self) -> None:
            super().__init__()
            counts["machines"] += 1

        @invariant()
        def count_the_step(self) -> None:
            counts["checks"] += 1

        def teardown(self) -> None:
            super().teardown()
            counts["torn_down"] += self.torn_down

    run_state_machine_as_test(Counted, settings=SETTINGS)
    steps = counts["checks"] - counts["machines"]
    assert steps >= MIN_STEPS, f"only {steps} steps in {counts['machines']} runs"
    # Each run that passed ended with the teardown's checks (a run Hypothesis
    # gives up on, and which does not count, skips them).
    assert counts["torn_down"] >= 0.9 * MAX_EXAMPLES, counts


def test_an_entry_validated_across_a_clear_rejoins_the_idle_order() -> None:
    """The shortest run of the machine above that ``evict_all`` breaks: an
    idle entry is being validated (its creation holds it) while the ledger
    is cleared; validated, then released, it must be idle like any other:
    in the idle order, with its deadline, the timer armed for it."""
    ledger: Ledger[int, str] = Ledger(1.5, None, validates=True)
    creation, _ = ledger.lookup(0, now=0.0)
    assert isinstance(creation, Creation)
    entry, _ = ledger.created(creation, "r0", 0.0)
    ledger.release(entry, 0.0)  # idle, in the idle order
    creation, started = ledger.lookup(0, now=1.0)
    assert isinstance(creation, Creation) and started and creation.stale is entry
    assert ledger.evict_all() == []  # clear(): nothing live; r0 is validated
    settled = ledger.revalidated(creation, 1.0)
    assert settled == (entry, 0)
    action = ledger.release(entry, 2.0)  # idle again, deadline 3.5
    assert ledger.idle == {0: entry}, "the validated entry left the idle order"
    assert action & ARM and ledger.timer_deadline == entry.deadline == 3.5
    assert ledger.timer_fired(3.5, LIMIT) == ([entry], None)
    assert ledger.finalizing == {entry: RemovalCause.IDLE}
