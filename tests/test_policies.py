"""Lifecycle policies: validate, max_lifetime, on_remove (SPEC §10).

The leak reports of ``leak_timeout`` are in ``tests/test_leaks.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from ttlpool import RemovalCause, ResourcePool
from ttlpool.clock import TimerCallback
from ttlpool.testing import ManualClock

#: Entries per event loop (the default), or one ledger every loop shares.
PER_LOOP = pytest.mark.parametrize(
    "per_loop", [True, False], ids=["per_loop", "shared"]
)

#: How long a test waits for a helper thread before calling it stuck.
TIMEOUT = 10.0

Res = list[object]


class Recorder:
    """A factory, a finalizer and an ``on_remove`` that record what they did,
    in one ``log`` too, in the order they were called."""

    def __init__(self) -> None:
        self.created: list[Res] = []
        self.finalized: list[Res] = []
        self.removed: list[tuple[object, Res, RemovalCause]] = []
        self.log: list[tuple[str, Res]] = []

    def factory(self, key: object) -> Res:
        resource: Res = [key, len(self.created)]
        self.created.append(resource)
        return resource

    def finalizer(self, resource: Res) -> None:
        self.log.append(("finalize", resource))
        self.finalized.append(resource)

    def afinalizer(self, resource: Res) -> Coroutine[Any, Any, None]:
        """An async finalizer: the call is logged when it is made (not when
        its coroutine first runs), its end in ``finalized``."""
        self.log.append(("finalize", resource))

        async def finish() -> None:
            await asyncio.sleep(0)
            self.finalized.append(resource)

        return finish()

    def on_remove(self, key: object, resource: Res, cause: RemovalCause) -> None:
        self.log.append(("remove", resource))
        self.removed.append((key, resource, cause))

    def removals_of(self, resource: Res) -> list[RemovalCause]:
        """The causes ``on_remove`` was called with for this very object."""
        return [cause for _, r, cause in self.removed if r is resource]


class Validator:
    """A ``validate`` that records each resource it is asked about and
    answers ``verdict`` (raises it, if it is an exception); the async one
    first waits for ``gate``, when there is one."""

    def __init__(
        self, verdict: object = True, gate: asyncio.Event | None = None
    ) -> None:
        self.verdict = verdict
        self.gate = gate
        self.calls: list[Res] = []

    def sync(self, resource: Res) -> bool:
        self.calls.append(resource)
        if isinstance(self.verdict, BaseException):
            raise self.verdict
        return bool(self.verdict)

    async def asynchronous(self, resource: Res) -> bool:
        self.calls.append(resource)
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.verdict, BaseException):
            raise self.verdict
        return bool(self.verdict)

    def of_kind(self, kind: str) -> Callable[[Res], bool | Awaitable[bool]]:
        return self.sync if kind == "sync" else self.asynchronous


class StillClock:
    """A clock whose timers never fire: time moves only with :meth:`jump`,
    so whatever the pool does at a deadline it must do without a timer."""

    class _Handle:
        def cancel(self) -> None:
            pass

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    def call_at(self, loop: Any, when: float, callback: TimerCallback) -> Any:
        return self._Handle()

    def jump(self, seconds: float) -> None:
        self.time += seconds


async def until(condition: Callable[[], object]) -> None:
    """Let the loop run until ``condition()`` holds (bounded)."""

    async def spin() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(spin(), timeout=TIMEOUT)


async def turns(n: int = 5) -> None:
    """Let the loop run ``n`` times round."""
    for _ in range(n):
        await asyncio.sleep(0)


async def advance_to(clock: ManualClock, when: float) -> None:
    """Move ``clock`` to exactly ``when`` (and run what is due)."""
    await clock.advance(when - clock.now())


def run_in_thread(scenario: Callable[[], Coroutine[Any, Any, object]]) -> object:
    """Run ``scenario()`` with ``asyncio.run`` on a daemon thread of its own
    (its loop is closed when this returns); fail, rather than hang, if it
    does not end within ``TIMEOUT``."""
    outcome: list[object] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            outcome.append(asyncio.run(scenario()))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=main, name="policies-helper", daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "the helper thread's scenario is stuck (deadlock?)"
    if failure:
        raise failure[0]
    return outcome[0]


def assert_each_removed_once(rec: Recorder, pool: ResourcePool[Any, Any]) -> None:
    """Every resource made was removed exactly once, finalized once, and
    the statistics say as much, cause by cause."""
    for resource in rec.created:
        assert len(rec.removals_of(resource)) == 1, (resource, rec.removed)
        assert sum(r is resource for r in rec.finalized) == 1, resource
    stats = pool.stats
    assert stats.finalized == len(rec.created) == stats.removed.total
    for cause in RemovalCause:
        expected = sum(c is cause for _, _, c in rec.removed)
        assert stats.removed[cause] == expected, cause


# -- construction ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (0.0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        ("5", TypeError),
        (True, TypeError),
        ([5], TypeError),
    ],
)
@pytest.mark.parametrize("name", ["max_lifetime", "leak_timeout"])
def test_bad_max_lifetime_or_leak_timeout_fails_at_construction_naming_it(
    name: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=name):
        ResourcePool(Recorder().factory, ttl=1, **{name: value})


@pytest.mark.parametrize("name", ["validate", "on_remove"])
@pytest.mark.parametrize("value", [1, "callable", True])
def test_a_non_callable_validate_or_on_remove_fails_at_construction_naming_it(
    name: str, value: object
) -> None:
    with pytest.raises(TypeError, match=name):
        ResourcePool(Recorder().factory, ttl=1, **{name: value})


# -- validate --------------------------------------------------------------------


async def test_validate_is_not_called_on_a_hit_of_an_entry_in_use() -> None:
    rec, check = Recorder(), Validator(True)
    pool = ResourcePool(
        rec.factory, finalizer=rec.finalizer, ttl=10, validate=check.sync
    )
    async with pool.get("k") as first:
        assert check.calls == []  # a miss calls the factory, not validate
        async with pool.get("k") as again:
            assert again is first
        assert await pool.acquire("k") is first
        await pool.release("k")
        assert check.calls == []  # hits of an entry in use: never asked
    async with pool.get("k") as reused:  # the idle entry, handed out again
        assert reused is first
    assert len(check.calls) == 1 and check.calls[0] is first
    assert rec.created == [first] and rec.finalized == []
    await pool.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_validate_is_called_each_time_an_idle_entry_is_reused(kind: str) -> None:
    rec, check = Recorder(), Validator(True)
    pool = ResourcePool(rec.factory, ttl=10, validate=check.of_kind(kind))
    async with pool.get("k") as first:
        pass
    for n in range(1, 4):
        assert await pool.acquire("k") is first
        await pool.release("k")
        assert len(check.calls) == n and all(c is first for c in check.calls)
    await pool.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_validate_true_hands_out_the_same_resource(kind: str) -> None:
    rec, check = Recorder(), Validator(True)
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=10,
        validate=check.of_kind(kind),
    )
    async with pool.get("k") as first:
        pass
    async with pool.get("k") as again:
        assert again is first
        assert pool.stats.referenced_entries == 1 and pool.stats.idle_entries == 0
    assert rec.created == [first] and rec.finalized == [] and rec.removed == []
    assert pool.stats.idle_entries == 1 and pool.stats.removed.total == 0
    await pool.aclose()


@PER_LOOP
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_validate_false_retires_the_entry_and_the_factory_makes_a_new_one(
    kind: str, per_loop: bool
) -> None:
    rec, check = Recorder(), Validator(False)
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=10,
        per_loop=per_loop,
        validate=check.of_kind(kind),
    )
    async with pool.get("k") as first:
        pass
    async with pool.get("k") as fresh:
        assert fresh is not first and rec.created == [first, fresh]
        assert rec.finalized == [first]
        assert rec.removed == [("k", first, RemovalCause.INVALID)]
    # The fresh resource was made for this acquirer: it was not validated.
    assert len(check.calls) == 1 and check.calls[0] is first
    assert pool.stats.removed.invalid == 1 and pool.stats.finalized == 1
    assert pool.stats.idle_entries == 1 and "k" in pool
    await pool.aclose()


@PER_LOOP
@pytest.mark.parametrize("verdict", [True, False])
async def test_one_validation_and_one_factory_call_serve_every_acquirer_that_joined(
    verdict: bool, per_loop: bool
) -> None:
    """Three acquirers of an idle entry share one (slow) validation; if it
    fails, they and a fourth that joins during the (slow) factory call share
    one new resource."""
    rec, validating, making = Recorder(), asyncio.Event(), asyncio.Event()
    check = Validator(verdict, gate=validating)
    factory_calls = 0

    async def factory(key: object) -> Res:
        nonlocal factory_calls
        factory_calls += 1
        if factory_calls > 1:
            await making.wait()
        return rec.factory(key)

    pool = ResourcePool(
        factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=10,
        per_loop=per_loop,
        validate=check.asynchronous,
    )
    async with pool.get("k") as first:
        pass
    acquirers = [asyncio.create_task(pool.acquire("k")) for _ in range(3)]
    await until(lambda: check.calls)
    await turns()
    assert len(check.calls) == 1 and factory_calls == 1
    assert not any(task.done() for task in acquirers)
    validating.set()
    if not verdict:
        await until(lambda: factory_calls == 2)
        acquirers.append(asyncio.create_task(pool.acquire("k")))
        await turns()
        assert not any(task.done() for task in acquirers)
        making.set()
    got = await asyncio.gather(*acquirers)
    assert all(resource is got[0] for resource in got)
    assert len(check.calls) == 1
    if verdict:
        assert got[0] is first and factory_calls == 1 and rec.removed == []
    else:
        assert got[0] is not first and factory_calls == 2
        assert rec.created == [first, got[0]] and rec.finalized == [first]
        assert rec.removed == [("k", first, RemovalCause.INVALID)]
    assert pool.stats.referenced_entries == 1 and pool.stats.total_entries == 1
    for _ in got:
        await pool.release("k")
    assert pool.stats.idle_entries == 1 and pool.stats.referenced_entries == 0
    await pool.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_exception_from_validate_is_reported_and_counts_as_invalid(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec, boom = Recorder(), LookupError("connection reset")
    check = Validator(boom)
    reported: list[tuple[BaseException, str, object]] = []
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        on_error=lambda exc, operation, key: reported.append((exc, operation, key)),
        ttl=10,
        validate=check.of_kind(kind),
    )
    async with pool.get("db") as first:
        pass
    with caplog.at_level(logging.ERROR, logger="ttlpool"):
        async with pool.get("db") as fresh:
            assert fresh is not first  # never the entry that failed validation
    assert reported == [(boom, "validate", "db")]
    logged = [r for r in caplog.records if r.name == "ttlpool"]
    assert logged and all(r.levelno == logging.ERROR for r in logged)
    assert any(
        "'db'" in r.getMessage() and r.exc_info and r.exc_info[1] is boom
        for r in logged
    )
    assert rec.finalized == [first]
    assert rec.removed == [("db", first, RemovalCause.INVALID)]
    assert pool.stats.errors == 1 and pool.stats.removed.invalid == 1
    await pool.aclose()


@PER_LOOP
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_validate_runs_with_no_lock_held(kind: str, per_loop: bool) -> None:
    """A validate that uses the pool itself (another key) works, on entries
    per loop and shared. Run on a thread of its own: a validate called with
    a pool lock held would deadlock, and the test fails instead of hanging."""

    async def scenario() -> list[object]:
        pool: ResourcePool[str, Res]
        rec, seen = Recorder(), []

        def sync_validate(resource: Res) -> bool:
            seen.append(("other" in pool, len(pool), pool.stats.total_entries))
            seen.append(dict(pool.pending_cleanup))
            return True

        async def async_validate(resource: Res) -> bool:
            sync_validate(resource)
            async with pool.get("other") as other:
                seen.append(other)
            await pool.expire("other")
            await pool.release("nobody")
            return True

        pool = ResourcePool(
            rec.factory,
            ttl=10,
            per_loop=per_loop,
            clock=ManualClock(),
            validate=sync_validate if kind == "sync" else async_validate,
        )
        async with pool.get("k") as first:
            pass
        async with pool.get("k") as again:
            assert again is first
        await pool.aclose()
        return seen

    seen = run_in_thread(scenario)
    assert isinstance(seen, list) and len(seen) == (3 if kind == "async" else 2)
    if kind == "async":
        assert seen[2] == ["other", 1]  # the factory made it: no lock in the way


@PER_LOOP
@pytest.mark.parametrize("verdict", [True, False])
@pytest.mark.parametrize("cancelled", ["first", "all"])
async def test_cancelling_the_acquirer_that_runs_the_validation_leaks_nothing(
    verdict: bool, cancelled: str, per_loop: bool
) -> None:
    """The first acquirer starts the validation; it is cancelled while it
    runs. The validation goes on: the other acquirers get its outcome (the
    entry, or a new one); with nobody left, that entry is idle in the pool."""
    rec, gate = Recorder(), asyncio.Event()
    check = Validator(verdict, gate=gate)
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=10,
        per_loop=per_loop,
        clock=ManualClock(),
        validate=check.asynchronous,
    )
    async with pool.get("k") as first:
        pass
    validating = asyncio.create_task(pool.acquire("k"))
    await until(lambda: check.calls)
    others = [asyncio.create_task(pool.acquire("k")) for _ in range(2)]
    await turns()
    for task in [validating, *others] if cancelled == "all" else [validating]:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await validating
    gate.set()
    if cancelled == "first":
        got = await asyncio.gather(*others)
        assert got[0] is got[1]
        assert pool.stats.referenced_entries == 1
        for _ in got:
            await pool.release("k")
    else:
        outcomes = await asyncio.gather(*others, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        await until(lambda: pool.stats.creating == 0)
    stats = pool.stats
    assert stats.referenced_entries == 0 and stats.creating == 0
    assert stats.total_entries == 1 and stats.idle_entries == 1
    assert len(check.calls) == 1
    check.verdict = True
    async with pool.get("k") as now:  # the entry that stayed: the outcome's
        pass
    if verdict:
        assert now is first and rec.finalized == [] and rec.removed == []
        assert len(rec.created) == 1
    else:
        assert now is not first and rec.created == [first, now]
        assert rec.finalized == [first]
        assert rec.removed == [("k", first, RemovalCause.INVALID)]
        if cancelled == "first":
            assert got[0] is now
    await pool.aclose()
    assert_each_removed_once(rec, pool)


@pytest.mark.parametrize("verdict", [True, False])
@pytest.mark.parametrize("operation", ["expire", "clear", "aclose"])
async def test_expire_or_clear_during_a_validation_retires_its_outcome_once(
    operation: str, verdict: bool
) -> None:
    """``expire`` marks the validation's outcome (finalized at its last
    release, EXPIRED); ``clear``/``aclose`` waits for the validation and
    finalizes its outcome (CLEARED). The entry that failed validation goes
    INVALID either way; nothing is removed twice."""
    rec, gate = Recorder(), asyncio.Event()
    check = Validator(verdict, gate=gate)
    pool = new_pool(rec, ManualClock(), ttl=10, validate=check.asynchronous)
    async with pool.get("k") as first:
        pass
    acquirer = asyncio.create_task(pool.acquire("k"))
    await until(lambda: check.calls)
    if operation == "expire":
        await pool.expire("k")
        gate.set()
        got = await acquirer
        assert rec.removals_of(got) == []  # held: marked, not removed
        await pool.release("k")
        cause = RemovalCause.EXPIRED
    else:
        clearing = asyncio.create_task(getattr(pool, operation)())
        await turns()
        assert not clearing.done()  # it waits for the validation in flight
        gate.set()
        got = await acquirer
        await clearing
        await pool.release("k")  # cleared while held: a no-op
        cause = RemovalCause.CLEARED
    assert (got is first) is verdict
    assert rec.removals_of(got) == [cause] and got in rec.finalized
    if not verdict:
        assert rec.removals_of(first) == [RemovalCause.INVALID]
    assert len(pool) == 0 and pool.stats.referenced_entries == 0
    await pool.aclose()
    assert_each_removed_once(rec, pool)


# -- max_lifetime ------------------------------------------------------------------

#: The max_lifetime of the tests below: every entry retires in (0.9 L, L].
L = 100.0


@PER_LOOP
@pytest.mark.parametrize("clock_kind", ["manual", "still"])
async def test_an_entry_past_its_lifetime_is_not_handed_out_but_its_holder_keeps_it(
    clock_kind: str, per_loop: bool
) -> None:
    """A new acquirer gets a fresh resource; the holder's is finalized at
    its last release (cause LIFETIME), not before: whether the idle timer
    ran at the lifetime (ManualClock) or no timer ever fires (StillClock)."""
    rec = Recorder()
    clock: Any = ManualClock() if clock_kind == "manual" else StillClock()

    async def move(seconds: float) -> None:
        if isinstance(clock, ManualClock):
            await clock.advance(seconds)
        else:
            clock.jump(seconds)

    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=1000,
        max_lifetime=L,
        per_loop=per_loop,
        clock=clock,
    )
    async with pool.get("k") as old:
        await move(L)
        async with pool.get("k") as fresh:
            assert fresh is not old and rec.created == [old, fresh]
        assert await pool.acquire("k") is fresh  # a hit of the new entry
        await pool.release("k")
        await move(L / 2)  # the holder holds on: still not finalized
        assert rec.finalized == [] and rec.removed == []
    assert rec.finalized == [old]
    assert rec.removed == [("k", old, RemovalCause.LIFETIME)]
    assert pool.stats.removed.lifetime == 1 and pool.stats.finalized == 1
    assert pool.stats.referenced_entries == 0 and pool.stats.idle_entries == 1
    await pool.aclose()
    assert_each_removed_once(rec, pool)


async def test_key_based_holders_past_the_lifetime_release_both_entries() -> None:
    rec, clock = Recorder(), ManualClock()
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=1000,
        max_lifetime=L,
        clock=clock,
    )
    old = await pool.acquire("k")
    await clock.advance(L)
    fresh = await pool.acquire("k")
    assert fresh is not old and rec.finalized == []
    await pool.release("k")
    await pool.release("k")
    assert rec.finalized == [old]
    assert rec.removed == [("k", old, RemovalCause.LIFETIME)]
    stats = pool.stats
    assert stats.referenced_entries == 0 and stats.idle_entries == 1
    with pytest.raises(ValueError, match="'k'"):
        await pool.release("k")
    await pool.aclose()
    assert_each_removed_once(rec, pool)


@PER_LOOP
@pytest.mark.parametrize("ttl", [None, 1000])
async def test_an_idle_entry_is_finalized_on_time_by_the_timer_at_its_lifetime(
    ttl: float | None, per_loop: bool
) -> None:
    rec, clock = Recorder(), ManualClock()
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=ttl,
        max_lifetime=L,
        per_loop=per_loop,
        clock=clock,
    )
    resource = await lease_once(pool)
    retire_at = pool.pending_cleanup["k"]
    assert retire_at is not None and 0.9 * L < retire_at <= L
    await advance_to(clock, retire_at - 0.001)
    assert rec.finalized == [] and "k" in pool
    await advance_to(clock, retire_at)  # nobody acquires: the timer does it
    assert rec.finalized == [resource]
    assert rec.removed == [("k", resource, RemovalCause.LIFETIME)]
    assert len(pool) == 0 and pool.pending_cleanup == {}
    assert pool.stats.removed.lifetime == 1 and clock.pending_timers == 0
    await pool.aclose()


async def test_an_idle_entry_past_its_lifetime_is_finalized_at_once_by_an_acquire() -> (
    None
):
    """No timer fires (StillClock): the acquire that finds the idle entry
    past its lifetime retires it then and there and gets a fresh one."""
    rec, clock = Recorder(), StillClock()
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=None,
        max_lifetime=L,
        clock=clock,
    )
    async with pool.get("k") as old:
        pass
    clock.jump(L)
    async with pool.get("k") as fresh:
        assert fresh is not old
        assert rec.finalized == [old]
        assert rec.removed == [("k", old, RemovalCause.LIFETIME)]
    await pool.aclose()
    assert_each_removed_once(rec, pool)


def test_the_lifetime_timer_of_shared_entries_runs_without_deadlock() -> None:
    """Shared entries (one ledger every loop shares, which locks): the timer
    retires an idle entry and starts retiring a held one at their lifetimes.
    On a thread of its own: a timer that took the ledger's lock twice would
    deadlock, and the test fails instead of hanging."""

    async def scenario() -> tuple[Recorder, Res, Res, int]:
        rec, clock = Recorder(), ManualClock()
        pool = new_pool(rec, clock, ttl=1000, max_lifetime=L, per_loop=False)
        async with pool.get("idle") as idle:
            pass
        async with pool.get("held") as held:
            await clock.advance(L)
            assert rec.removals_of(held) == []
        finalized = pool.stats.finalized
        await pool.aclose()
        return rec, idle, held, finalized

    outcome = run_in_thread(scenario)
    assert isinstance(outcome, tuple)
    rec, idle, held, finalized = outcome
    assert rec.removals_of(idle) == rec.removals_of(held) == [RemovalCause.LIFETIME]
    assert finalized == 2


async def test_lifetimes_are_drawn_from_the_last_tenth_so_entries_do_not_retire_together() -> (  # noqa: E501
    None
):
    rec, clock = Recorder(), ManualClock()
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=None,
        max_lifetime=L,
        clock=clock,
    )
    keys = range(50)
    for key in keys:  # all made at the same instant
        async with pool.get(key):
            pass
    assert clock.pending_timers <= 1
    deadlines = pool.pending_cleanup
    assert set(deadlines) == set(keys)
    assert all(d is not None and 0.9 * L < d <= L for d in deadlines.values())
    assert len(set(deadlines.values())) > 1
    await advance_to(clock, 0.9 * L - 0.01)
    assert rec.finalized == []
    # Then step by step to L: each entry goes at its own time, not all at one.
    steps_that_retired = 0
    for step in range(1, 11):
        before = len(rec.finalized)
        await advance_to(clock, 0.9 * L + step * L / 100)
        assert clock.pending_timers <= 1
        due = {k for k, d in deadlines.items() if d is not None and d <= clock.now()}
        assert {r[0] for r in rec.finalized} == due
        steps_that_retired += len(rec.finalized) > before
    assert len(rec.finalized) == 50 and len(pool) == 0
    assert steps_that_retired > 1
    assert all(cause is RemovalCause.LIFETIME for _, _, cause in rec.removed)
    assert pool.stats.removed.lifetime == 50
    await pool.aclose()


@PER_LOOP
async def test_a_pool_with_lifetimes_arms_one_timer_per_loop(per_loop: bool) -> None:
    rec, clock = Recorder(), ManualClock()
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=30,
        max_lifetime=20,
        per_loop=per_loop,
        clock=clock,
    )
    held = []
    for key in range(100):
        lease = pool.get(key)
        await lease.__aenter__()
        if key % 3:
            await lease.__aexit__(None, None, None)
        else:
            held.append(lease)
        await clock.advance(0.25)
        assert clock.pending_timers <= 1
    for lease in held:
        await lease.__aexit__(None, None, None)
        assert clock.pending_timers <= 1
    for _ in range(100):
        if not len(pool):
            break
        await clock.advance(1)
        assert clock.pending_timers <= 1
    assert clock.pending_timers == 0
    assert pool.stats.removed.lifetime == 100 == pool.stats.finalized
    await pool.aclose()
    assert_each_removed_once(rec, pool)


@PER_LOOP
async def test_an_entry_whose_lifetime_passes_during_its_validation_is_not_handed_out(
    per_loop: bool,
) -> None:
    rec, gate, clock = Recorder(), asyncio.Event(), ManualClock()
    check = Validator(True, gate=gate)
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        ttl=1000,
        max_lifetime=L,
        per_loop=per_loop,
        clock=clock,
        validate=check.asynchronous,
    )
    async with pool.get("k") as old:
        pass
    acquirer = asyncio.create_task(pool.acquire("k"))
    await until(lambda: check.calls)
    await clock.advance(L)  # validate still runs: its lifetime passes
    gate.set()
    fresh = await acquirer
    assert fresh is not old and rec.created == [old, fresh]
    assert rec.finalized == [old]
    assert rec.removed == [("k", old, RemovalCause.LIFETIME)]
    await pool.release("k")
    await pool.aclose()
    assert_each_removed_once(rec, pool)


# -- on_remove --------------------------------------------------------------------


def new_pool(rec: Recorder, clock: Any, **options: Any) -> ResourcePool[Any, Res]:
    """A pool of ``rec``'s factory, finalizer and ``on_remove``."""
    return ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=rec.on_remove,
        clock=clock,
        **options,
    )


Scenario = Callable[
    [Recorder, ManualClock], Awaitable[tuple[ResourcePool[Any, Res], Res]]
]


async def lease_once(pool: ResourcePool[Any, Res], key: object = "k") -> Res:
    """Enter and leave one lease of ``key``; its resource."""
    async with pool.get(key) as resource:
        return resource


async def _released(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=0)
    resource = await lease_once(pool)
    return pool, resource


async def _idle(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=10)
    resource = await lease_once(pool)
    await clock.advance(10)
    return pool, resource


async def _evicted(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=10, max_idle=1)
    resource = await lease_once(pool)
    async with pool.get("other"):
        pass
    return pool, resource


async def _expired(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=10)
    resource = await lease_once(pool)
    await pool.expire("k")
    return pool, resource


async def _expired_held(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=10)
    async with pool.get("k") as resource:
        await pool.expire("k")
        assert rec.removed == []
    return pool, resource


async def _lifetime(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=1000, max_lifetime=5)
    resource = await lease_once(pool)
    await clock.advance(5)
    return pool, resource


async def _invalid(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=10, validate=lambda resource: False)
    resource = await lease_once(pool)
    async with pool.get("k"):
        pass
    return pool, resource


async def _cleared(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=10)
    async with pool.get("k") as resource:
        await pool.clear()
    return pool, resource


async def _closed(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    pool = new_pool(rec, clock, ttl=10)
    resource = await lease_once(pool)
    await pool.aclose()
    return pool, resource


async def _orphaned(rec: Recorder, clock: ManualClock) -> tuple[Any, Res]:
    """An entry of an event loop that closed (``asyncio.run`` on a helper
    thread), swept by a miss on this loop."""
    pool = new_pool(rec, clock, ttl=None)

    async def lease() -> Res:
        async with pool.get("k") as resource:
            return resource

    resource = run_in_thread(lease)
    assert isinstance(resource, list)
    assert rec.removed == [] and "k" in pool
    async with pool.get("here"):
        pass
    return pool, resource


CAUSES: dict[str, tuple[Scenario, RemovalCause]] = {
    "released": (_released, RemovalCause.RELEASED),
    "idle": (_idle, RemovalCause.IDLE),
    "evicted": (_evicted, RemovalCause.EVICTED),
    "expired": (_expired, RemovalCause.EXPIRED),
    "expired-held": (_expired_held, RemovalCause.EXPIRED),
    "lifetime": (_lifetime, RemovalCause.LIFETIME),
    "invalid": (_invalid, RemovalCause.INVALID),
    "cleared": (_cleared, RemovalCause.CLEARED),
    "closed": (_closed, RemovalCause.CLEARED),
    "orphaned": (_orphaned, RemovalCause.ORPHANED),
}


@pytest.mark.parametrize("how", list(CAUSES))
async def test_on_remove_is_called_once_per_entry_with_its_cause_and_stats_count_it(
    how: str,
) -> None:
    scenario, cause = CAUSES[how]
    rec = Recorder()
    pool, resource = await scenario(rec, ManualClock())
    assert rec.removed == [("k", resource, cause)]
    assert rec.finalized == [resource]
    stats = pool.stats
    assert stats.removed[cause] == 1 == getattr(stats.removed, cause.name.lower())
    assert stats.removed.total == 1 == stats.finalized
    await pool.aclose()  # whatever is left goes now, CLEARED
    assert_each_removed_once(rec, pool)


@pytest.mark.parametrize("how", ["released", "idle", "evicted", "invalid", "cleared"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_remove_is_called_before_the_finalizer(kind: str, how: str) -> None:
    rec, clock = Recorder(), ManualClock()
    finalizer = rec.finalizer if kind == "sync" else rec.afinalizer
    pool = ResourcePool(
        rec.factory,
        finalizer=finalizer,
        on_remove=rec.on_remove,
        ttl=0 if how == "released" else 10,
        max_idle=1 if how == "evicted" else None,
        validate=(lambda resource: False) if how == "invalid" else None,
        clock=clock,
    )
    async with pool.get("k") as resource:
        if how == "cleared":
            await pool.clear()
    if how == "idle":
        await clock.advance(10)
    elif how == "evicted":
        async with pool.get("other"):
            pass
    elif how == "invalid":
        async with pool.get("k"):
            pass
    await until(lambda: rec.finalized)
    assert rec.log == [("remove", resource), ("finalize", resource)]
    await pool.aclose()
    assert_each_removed_once(rec, pool)


@pytest.mark.parametrize("how", ["released", "idle", "cleared"])
async def test_an_exception_from_on_remove_is_reported_and_the_finalizer_still_runs(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec, clock, boom = Recorder(), ManualClock(), KeyError("on_remove broke")
    reported: list[tuple[BaseException, str, object]] = []
    calls: list[tuple[object, Res, RemovalCause]] = []

    def on_remove(key: object, resource: Res, cause: RemovalCause) -> None:
        calls.append((key, resource, cause))
        raise boom

    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=on_remove,
        on_error=lambda exc, operation, key: reported.append((exc, operation, key)),
        ttl=0 if how == "released" else 10,
        clock=clock,
    )
    with caplog.at_level(logging.ERROR, logger="ttlpool"):
        async with pool.get("k") as resource:
            pass
        if how == "idle":
            await clock.advance(10)
        elif how == "cleared":
            await pool.clear()
    assert len(calls) == 1 and calls[0][1] is resource
    assert reported == [(boom, "on_remove", "k")]
    assert any(
        r.name == "ttlpool"
        and r.levelno == logging.ERROR
        and "'k'" in r.getMessage()
        and r.exc_info
        and r.exc_info[1] is boom
        for r in caplog.records
    )
    assert rec.finalized == [resource]
    stats = pool.stats
    assert stats.finalized == 1 == stats.removed.total and stats.errors == 1
    assert len(pool) == 0
    await pool.aclose()


async def test_stats_count_removals_per_cause_without_on_remove() -> None:
    """Every cause, in one pool with no on_remove: the counts add up to
    ``finalized``."""
    rec, clock = Recorder(), ManualClock()
    verdicts = {"invalid": False}
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        ttl=10,
        max_idle=2,
        max_lifetime=L,
        clock=clock,
        validate=lambda resource: verdicts.get(resource[0], True),
    )

    async def lease(key: str) -> None:
        async with pool.get(key):
            pass

    await lease("idle")
    await clock.advance(10)  # idle: IDLE
    await lease("invalid")
    await lease("invalid")  # INVALID (and a new one, idle)
    await lease("expired")
    await pool.expire("expired")  # EXPIRED
    await lease("a")  # idle: the new "invalid", "a"
    await lease("b")  # max_idle 2: the new "invalid" goes, EVICTED
    async with pool.get("aging"):
        await clock.advance(10)  # "a" and "b" go IDLE
        await clock.advance(L)  # "aging", held, goes at its release: LIFETIME
    await lease("cleared")
    await pool.clear()  # CLEARED
    removed = pool.stats.removed
    assert (removed.idle, removed.invalid, removed.expired) == (3, 1, 1)
    assert (removed.evicted, removed.lifetime, removed.cleared) == (1, 1, 1)
    assert removed.released == removed.orphaned == 0
    assert removed.total == pool.stats.finalized == len(rec.finalized) == 8
    await pool.aclose()


async def test_an_on_remove_that_returns_an_awaitable_is_reported_as_a_type_error() -> (
    None
):
    """on_remove must be sync: a coroutine it returns is closed (never
    awaited, no warning) and reported as a TypeError naming the key; the
    finalizer still runs."""
    rec = Recorder()
    reported: list[tuple[BaseException, str, object]] = []

    async def on_remove(key: object, resource: Res, cause: RemovalCause) -> None:
        raise AssertionError("never runs")

    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        on_remove=on_remove,
        on_error=lambda exc, operation, key: reported.append((exc, operation, key)),
    )
    resource = await lease_once(pool)
    [(error, operation, key)] = reported
    assert isinstance(error, TypeError) and "'k'" in str(error)
    assert (operation, key) == ("on_remove", "k")
    assert rec.finalized == [resource]
    await pool.aclose()
