"""Both pools against one reference model: a pool-level state machine.

``tests/test_model.py`` and ``tests/test_model_policies.py`` drive the
ledger itself. This machine drives a whole pool through its public API
(SPEC 1-5, 10, 11), and is written once, against :class:`Adapter`: one
adapter drives a :class:`~ttlpool.SyncResourcePool` directly, the other a
:class:`~ttlpool.ResourcePool` by running each operation on an event loop
that the machine owns (``asyncio.Runner``, one ``run`` per step, closed at
the end). Both pools get sync factory and finalizer and a
:class:`~ttlpool.testing.ManualClock`: every operation has ended, with
its finalizers, when the step returns, so the model needs no "in flight".

Rules: take and hold a lease, leave a held lease, a lease taken and left
in one step, ``acquire``/``release`` by key, ``expire``, ``clear``, the
clock moving on (which reaps what is due), a factory that fails for the
keys a rule marks, a finalizer that raises while a rule says so, and
``close`` (after which every acquire raises ``PoolClosedError``; the
teardown closes the pool of a run that did not).

The reference model is small enough to trust by reading: which keys are
live, each one's resource, references (and how many were taken by key),
``expire`` mark and idle deadline (release time + ``ttl``, rounded up to
the ledger's grid); the key-based releases that ``clear`` made owed; what
was finalized, why, and the running totals. After every step the pool
must agree with it (``stats``, ``len``, ``in``, ``pending_cleanup``, the
finalized multiset, ``on_remove``'s causes, ``on_error``'s reports), and
every resource created is finalized at most once; after ``close``,
exactly once, and leaving the leases still held changes nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ttlpool import (
    PoolClosedError,
    PoolStats,
    RemovalCause,
    Removals,
    ResourcePool,
    SyncResourcePool,
)
from ttlpool._core import GRID
from ttlpool.testing import ManualClock

R = TypeVar("R")

N_KEYS = 4
KEYS = st.integers(min_value=0, max_value=N_KEYS - 1)
PICK = st.integers(min_value=0, max_value=1_000)  # an index, taken modulo a length
#: Clock steps: multiples of 1/4 (on the grid), some shorter than the ttl.
STEPS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0])
SMALL_TTL = 1.0
#: ``close`` becomes possible after this many steps (before, it would end
#: most runs' interesting part early).
CLOSE_AFTER = 25


class FactoryFailure(Exception):
    """What the factory raises for a key marked as failing."""


class FinalizerFailure(Exception):
    """What the finalizer raises while the machine says so."""


class Res:
    """A pooled resource: numbered in creation order, and told when its
    finalizer ran."""

    __slots__ = ("finalized", "key", "serial")

    def __init__(self, serial: int, key: int) -> None:
        self.serial = serial
        self.key = key
        self.finalized = False

    def __repr__(self) -> str:
        return f"Res(#{self.serial}, key={self.key})"


class UserCode:
    """The factory, finalizer and hooks both pools get: they record what
    they were asked to do, and fail when the machine says so."""

    def __init__(self) -> None:
        self.created: list[Res] = []
        self.finalized: Counter[int] = Counter()
        self.failing: set[int] = set()
        self.finalizer_raises = False
        self.removed: dict[int, list[RemovalCause]] = {}
        self.reported: list[tuple[type[BaseException], str, object]] = []
        self.violations: list[str] = []

    def factory(self, key: int) -> Res:
        if key in self.failing:
            self.failing.discard(key)  # once
            raise FactoryFailure(f"no resource for key {key!r}")
        res = Res(len(self.created) + 1, key)
        self.created.append(res)
        return res

    def finalizer(self, res: Res) -> None:
        self.finalized[res.serial] += 1
        res.finalized = True
        if self.finalizer_raises:
            raise FinalizerFailure(f"cannot finalize {res!r}")

    def on_remove(self, key: int, res: Res, cause: RemovalCause) -> None:
        if res.finalized:
            self.violations.append(f"on_remove({key}, {res!r}) after its finalizer")
        if key != res.key:
            self.violations.append(f"on_remove({key}, {res!r}): not its key")
        self.removed.setdefault(res.serial, []).append(cause)

    def on_error(self, exc: BaseException, operation: str, key: object) -> None:
        self.reported.append((type(exc), operation, key))


# -- the two drivers, behind one interface ----------------------------------------


class Pool(Protocol):
    """What the machine observes, the same on both pools."""

    @property
    def stats(self) -> PoolStats: ...

    @property
    def pending_cleanup(self) -> dict[Any, float | None]: ...

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...


class Adapter(Protocol):
    """One pool, operated one public call at a time; each call has ended
    (with what it started) when it returns."""

    @property
    def pool(self) -> Pool: ...

    def open(self, code: UserCode, clock: ManualClock, **options: Any) -> None: ...

    def enter(self, key: int) -> tuple[object, Res]:
        """``pool.get(key)`` entered: the lease and its resource."""
        ...

    def leave(self, lease: object) -> None: ...

    def acquire(self, key: int) -> Res: ...

    def release(self, key: int) -> None: ...

    def expire(self, key: int) -> None: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...

    def advance(self, seconds: float) -> None:
        """Move the clock on and run the pool's timers that are due."""
        ...

    def dispose(self) -> None:
        """Release what the adapter owns besides the pool (its loop)."""
        ...


class SyncAdapter:
    """Drives a ``SyncResourcePool`` in the test's thread."""

    pool: SyncResourcePool[int, Res]

    def open(self, code: UserCode, clock: ManualClock, **options: Any) -> None:
        self.clock = clock
        self.pool = SyncResourcePool(
            code.factory, finalizer=code.finalizer, clock=clock, **options
        )

    def enter(self, key: int) -> tuple[object, Res]:
        lease = self.pool.get(key)
        return lease, lease.__enter__()

    def leave(self, lease: Any) -> None:
        lease.__exit__(None, None, None)

    def acquire(self, key: int) -> Res:
        return self.pool.acquire(key)

    def release(self, key: int) -> None:
        self.pool.release(key)

    def expire(self, key: int) -> None:
        self.pool.expire(key)

    def clear(self) -> None:
        self.pool.clear()

    def close(self) -> None:
        self.pool.close()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)  # the sync pool's reaps run here

    def dispose(self) -> None:
        pass


async def _wait(awaitable: Awaitable[R]) -> R:
    return await awaitable


class AsyncAdapter:
    """Drives a ``ResourcePool`` on an event loop of its own, one
    ``run_until_complete`` per operation (the loop is never the thread's
    current one: pytest-asyncio's stays untouched)."""

    pool: ResourcePool[int, Res]

    def open(self, code: UserCode, clock: ManualClock, **options: Any) -> None:
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.pool = ResourcePool(
            code.factory, finalizer=code.finalizer, clock=clock, **options
        )

    def run(self, awaitable: Awaitable[R]) -> R:
        return self.loop.run_until_complete(_wait(awaitable))

    def enter(self, key: int) -> tuple[object, Res]:
        lease = self.pool.get(key)
        return lease, self.run(lease.__aenter__())

    def leave(self, lease: Any) -> None:
        self.run(lease.__aexit__(None, None, None))

    def acquire(self, key: int) -> Res:
        return self.run(self.pool.acquire(key))

    def release(self, key: int) -> None:
        self.run(self.pool.release(key))

    def expire(self, key: int) -> None:
        self.run(self.pool.expire(key))

    def clear(self) -> None:
        self.run(self.pool.clear())

    def close(self) -> None:
        self.run(self.pool.aclose())

    def advance(self, seconds: float) -> None:
        self.run(self.clock.advance(seconds))  # reaps on this loop

    def dispose(self) -> None:
        """Shut the loop down as ``asyncio.run`` does (the pool's shutdown
        hook runs here), then close it."""
        loop = self.loop
        try:
            pending = asyncio.all_tasks(loop)
            assert not pending, f"tasks left on the pool's loop: {pending}"
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


# -- the reference model ------------------------------------------------------------


@dataclass
class ModelEntry:
    serial: int
    refs: int = 1
    keyed: int = 0  # references taken by ``acquire``
    doomed: bool = False  # marked by ``expire``
    deadline: float | None = None  # while idle
    released: int = 0  # release order, while idle


@dataclass
class Lease:
    handle: object
    key: int
    res: Res


#: The running totals of PoolStats the model keeps (errors: reported ones).
TOTALS = (
    "hits",
    "misses",
    "created",
    "finalized",
    "expired",
    "evicted",
    "factory_errors",
    "finalizer_errors",
    "errors",
)


def idle_deadline(released: float, ttl: float) -> float:
    """Release time + ttl, rounded up to the ledger's grid (exact for the
    steps here, which are on it)."""
    if ttl == math.inf:
        return math.inf
    return math.ceil((released + ttl) * GRID) / GRID


class DriverMachine(RuleBasedStateMachine):
    """A pool, driven through its public API, against the model above."""

    adapter_type: type[Adapter]

    def __init__(self) -> None:
        super().__init__()
        self.adapter: Adapter = self.adapter_type()
        self.code = UserCode()
        self.clock = ManualClock()
        self.opened = False
        self.closed = False
        self.steps = 0
        # The model.
        self.live: dict[int, ModelEntry] = {}
        self.owed: Counter[int] = Counter()
        self.leases: list[Lease] = []
        self.totals: Counter[str] = Counter()
        self.removed: Counter[RemovalCause] = Counter()
        self.finalized: Counter[int] = Counter()
        self.causes: dict[int, list[RemovalCause]] = {}
        self.releases = 0

    @initialize(
        ttl=st.sampled_from([0, SMALL_TTL, SMALL_TTL, None]),
        max_idle=st.sampled_from([None, None, 0, 1, 2]),
        hooks=st.booleans(),
    )
    def open(self, ttl: float | None, max_idle: int | None, hooks: bool) -> None:
        self.ttl = math.inf if ttl is None else float(ttl)
        self.max_idle = max_idle
        self.hooks = hooks
        options: dict[str, Any] = {"ttl": ttl, "max_idle": max_idle}
        if hooks:
            options.update(on_remove=self.code.on_remove, on_error=self.code.on_error)
        self.adapter.open(self.code, self.clock, **options)
        self.opened = True

    # -- the model's transitions ----------------------------------------------------

    def expect_acquire(self, key: int, keyed: bool) -> int | type[Exception]:
        """What an acquire of ``key`` must do: the serial of the resource it
        returns, or the exception it raises."""
        if self.closed:
            return PoolClosedError
        entry = self.live.get(key)
        if entry is not None:
            self.totals["hits"] += 1
            entry.refs += 1
            entry.deadline = None
            entry.doomed = False
        else:
            self.totals["misses"] += 1
            if key in self.code.failing:  # (the factory forgets it)
                self.totals["factory_errors"] += 1
                return FactoryFailure
            self.totals["created"] += 1
            entry = self.live[key] = ModelEntry(self.totals["created"])
        entry.keyed += keyed
        return entry.serial

    def release_entry(self, key: int) -> None:
        """One reference of ``key``'s live entry fewer, at the clock's time."""
        entry = self.live[key]
        assert entry.refs > 0
        entry.refs -= 1
        if entry.refs:
            return
        if entry.doomed:
            self.retire(key, RemovalCause.EXPIRED)
        elif self.ttl == 0:
            self.retire(key, RemovalCause.RELEASED)
        else:
            self.releases += 1
            entry.released = self.releases
            entry.deadline = idle_deadline(self.clock.now(), self.ttl)
            if self.max_idle is not None:
                idle = self.idle()
                while len(idle) > self.max_idle:
                    self.totals["evicted"] += 1
                    self.retire(idle.pop(0)[0], RemovalCause.EVICTED)

    def idle(self) -> list[tuple[int, ModelEntry]]:
        """The idle entries, released longest ago first."""
        idle = [(k, e) for k, e in self.live.items() if e.refs == 0]
        return sorted(idle, key=lambda item: item[1].released)

    def retire(self, key: int, cause: RemovalCause) -> None:
        """``key``'s live entry leaves the pool and is finalized now."""
        entry = self.live.pop(key)
        self.finalized[entry.serial] += 1
        self.causes.setdefault(entry.serial, []).append(cause)
        self.removed[cause] += 1
        self.totals["finalized"] += 1
        if self.code.finalizer_raises:
            self.totals["finalizer_errors"] += 1
            self.totals["errors"] += 1

    def clear_model(self) -> None:
        for key in list(self.live):
            self.owed[key] += self.live[key].keyed
            self.retire(key, RemovalCause.CLEARED)

    def lease_is_live(self, lease: Lease) -> bool:
        entry = self.live.get(lease.key)
        return entry is not None and entry.serial == lease.res.serial

    # -- rules: acquire -------------------------------------------------------------

    def check_acquired(self, expected: int | type[Exception], got: object) -> Res:
        assert isinstance(expected, int), f"expected {expected.__name__}, got {got!r}"
        assert isinstance(got, Res), got
        assert got.serial == expected, f"got {got!r}, expected #{expected}"
        assert not got.finalized, f"handed out {got!r} after its finalizer"
        return got

    def check_raised(self, expected: int | type[Exception], exc: Exception) -> None:
        assert expected is type(exc), f"expected #{expected}, got {exc!r}"

    @rule(key=KEYS)
    def take_lease(self, key: int) -> None:
        expected = self.expect_acquire(key, keyed=False)
        try:
            lease, got = self.adapter.enter(key)
        except (PoolClosedError, FactoryFailure) as exc:
            self.check_raised(expected, exc)
            return
        self.leases.append(Lease(lease, key, self.check_acquired(expected, got)))

    @precondition(lambda self: self.leases)
    @rule(pick=PICK)
    def leave_lease(self, pick: int) -> None:
        lease = self.leases.pop(pick % len(self.leases))
        if self.lease_is_live(lease):
            self.release_entry(lease.key)
        # else: cleared while held; leaving it is a no-op
        self.adapter.leave(lease.handle)

    @rule(key=KEYS)
    def use_once(self, key: int) -> None:
        """``with pool.get(key): ...`` in one step: the warm path."""
        expected = self.expect_acquire(key, keyed=False)
        try:
            lease, got = self.adapter.enter(key)
        except (PoolClosedError, FactoryFailure) as exc:
            self.check_raised(expected, exc)
            return
        self.check_acquired(expected, got)
        self.release_entry(key)
        self.adapter.leave(lease)

    @rule(key=KEYS)
    def acquire(self, key: int) -> None:
        expected = self.expect_acquire(key, keyed=True)
        try:
            got = self.adapter.acquire(key)
        except (PoolClosedError, FactoryFailure) as exc:
            self.check_raised(expected, exc)
            return
        self.check_acquired(expected, got)

    def releasable(self) -> list[int]:
        """Keys a key-based release is defined for here: one owed after a
        clear, no entry (a no-op), an idle entry (``ValueError``), or an
        entry with a reference taken by key (not one a lease holds)."""
        return [
            key
            for key in range(N_KEYS)
            if self.owed[key]
            or key not in self.live
            or self.live[key].refs == 0
            or self.live[key].keyed
        ]

    @precondition(lambda self: self.releasable())
    @rule(pick=PICK)
    def release(self, pick: int) -> None:
        keys = self.releasable()
        # Mostly a key that holds a reference taken by key (or owes one).
        held = [
            k for k in keys if self.owed[k] or (k in self.live and self.live[k].keyed)
        ]
        if held and pick % 4:
            keys = held
        key = keys[pick % len(keys)]
        entry = self.live.get(key)
        if self.owed[key]:
            self.owed[key] -= 1  # its entry was cleared: a no-op
        elif entry is not None and entry.refs == 0:
            try:
                self.adapter.release(key)
            except ValueError as exc:
                assert f"Reference count for key {key!r} is already 0" in str(exc)
                return
            raise AssertionError(f"release({key}) of an idle entry did not raise")
        elif entry is not None:
            entry.keyed -= 1
            self.release_entry(key)
        self.adapter.release(key)

    # -- rules: retire --------------------------------------------------------------

    @rule(key=KEYS)
    def expire(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            if entry.refs:
                entry.doomed = True
            else:
                self.retire(key, RemovalCause.EXPIRED)
        self.adapter.expire(key)

    @rule()
    def clear(self) -> None:
        self.clear_model()
        self.adapter.clear()

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        now = self.clock.now() + step
        for key, entry in self.idle():  # in release order: deadlines too
            assert entry.deadline is not None
            if entry.deadline <= now:
                self.totals["expired"] += 1
                self.retire(key, RemovalCause.IDLE)
        self.adapter.advance(step)
        assert self.clock.now() == now

    @precondition(lambda self: not self.closed and self.steps >= CLOSE_AFTER)
    @rule()
    def close(self) -> None:
        self.closed = True
        self.clear_model()
        self.adapter.close()

    @precondition(lambda self: self.closed)
    @rule()
    def close_again(self) -> None:
        self.adapter.close()  # idempotent: nothing changes

    # -- rules: user code that fails ------------------------------------------------

    @rule(key=st.one_of(st.none(), KEYS))
    def user_code_fails(self, key: int | None) -> None:
        """The next factory call for ``key`` raises; or (``None``) the
        finalizer starts or stops raising."""
        if key is None:
            self.code.finalizer_raises = not self.code.finalizer_raises
        else:
            self.code.failing.add(key)

    # -- checks ---------------------------------------------------------------------

    @invariant()
    def agrees_with_model(self) -> None:
        self.steps += 1
        if not self.opened:
            return
        self.check_pool()

    def check_pool(self) -> None:
        pool, code = self.adapter.pool, self.code
        stats = pool.stats
        idle = self.idle()
        finite = self.ttl != math.inf
        gauges = {
            "total_entries": len(self.live),
            "referenced_entries": len(self.live) - len(idle),
            "idle_entries": len(idle),
            "pending_cleanup": len(idle) if finite else 0,
            "creating": 0,
            "abandoned": 0,
        }
        expected = gauges | {name: self.totals[name] for name in TOTALS}
        actual = {name: getattr(stats, name) for name in expected}
        assert actual == expected, f"stats {actual} != model {expected}"
        removed = Removals(*(self.removed[cause] for cause in RemovalCause))
        assert stats.removed == removed, f"{stats.removed} != model {removed}"
        assert len(pool) == len(self.live)
        for key in range(N_KEYS):
            assert (key in pool) == (key in self.live), key
        deadlines = {k: e.deadline for k, e in idle} if finite else {}
        assert pool.pending_cleanup == deadlines
        # Finalized at most once each, and exactly what the model says.
        assert +code.finalized == +self.finalized, (code.finalized, self.finalized)
        assert all(n == 1 for n in code.finalized.values()), code.finalized
        assert len(code.created) == self.totals["created"]
        assert [res.serial for res in code.created] == list(
            range(1, len(code.created) + 1)
        )
        assert self.clock.pending_timers <= 1, "more than one timer for one pool"
        if self.hooks:
            assert not code.violations, code.violations
            assert code.removed == self.causes
            assert len(code.reported) == self.totals["errors"], code.reported
            for exc_type, operation, where in code.reported:
                assert (exc_type, operation) == (FinalizerFailure, "finalize")
                assert where in range(N_KEYS)

    def teardown(self) -> None:
        if not self.opened:
            return
        try:
            if not self.closed:
                self.closed = True
                self.clear_model()
                self.adapter.close()
            # Leases still held belong to cleared entries: leaving is a no-op.
            for lease in self.leases:
                self.adapter.leave(lease.handle)
            self.check_pool()
        finally:
            self.adapter.dispose()
        # Nothing more is finalized as the loop closes: exactly once each.
        self.check_pool()
        code = self.code
        assert code.finalized == Counter(res.serial for res in code.created)
        assert all(res.finalized for res in code.created)
        assert self.adapter.pool.stats.finalized == len(code.created)


class SyncPoolMachine(DriverMachine):
    adapter_type = SyncAdapter


class AsyncPoolMachine(DriverMachine):
    adapter_type = AsyncAdapter


SETTINGS = settings(
    max_examples=120,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestSyncPoolAgreesWithModel = SyncPoolMachine.TestCase
TestSyncPoolAgreesWithModel.settings = SETTINGS
TestAsyncPoolAgreesWithModel = AsyncPoolMachine.TestCase
TestAsyncPoolAgreesWithModel.settings = SETTINGS
