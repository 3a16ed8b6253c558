"""ResourcePool: construction, leases, creation, idle TTL and expire (SPEC §1-4)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import pytest

from ttlpool import ResourcePool
from ttlpool.clock import TimerCallback
from ttlpool.testing import ManualClock


class Recorder:
    """A factory and finalizer that record what they did."""

    def __init__(self) -> None:
        self.created: list[object] = []
        self.finalized: list[object] = []

    def factory(self, key: object) -> list[object]:
        resource = [key, len(self.created)]
        self.created.append(resource)
        return resource

    async def afactory(self, key: object) -> list[object]:
        await asyncio.sleep(0)
        return self.factory(key)

    def finalizer(self, resource: object) -> None:
        self.finalized.append(resource)

    async def afinalizer(self, resource: object) -> None:
        await asyncio.sleep(0)
        self.finalizer(resource)


class SpyClock(ManualClock):
    """A manual clock that counts reads and timers."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.armed: list[float] = []

    def now(self) -> float:
        self.reads += 1
        return super().now()

    def call_at(self, loop: Any, when: float, callback: TimerCallback) -> Any:
        self.armed.append(when)
        return super().call_at(loop, when, callback)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition()`` holds (bounded)."""

    async def spin() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(spin(), timeout=10)


# -- §1 construction ----------------------------------------------------------


#: How many loop turns a slow awaitable of the tests below takes to finish.
TURNS = 5


def _after_turns(turns: int, callback: Callable[[], object]) -> None:
    """Run ``callback`` on the running loop ``turns`` turns from now."""
    loop = asyncio.get_running_loop()

    def step(left: int) -> None:
        if left:
            loop.call_soon(step, left - 1)
        else:
            callback()

    loop.call_soon(step, turns - 1)


class SlowAwaitor:
    """An awaitable that is neither a coroutine nor a future: its value is
    ready only once it has been iterated to the end, ``TURNS`` turns long."""

    def __init__(self, value: object, ended: list[object]) -> None:
        self.value = value
        self.ended = ended

    def __await__(self) -> Generator[Any, None, object]:
        for _ in range(TURNS):
            yield from asyncio.sleep(0).__await__()
        self.ended.append(self.value)
        return self.value


def slow_awaitable(kind: str, value: object, ended: list[object]) -> Awaitable[object]:
    """An awaitable of ``kind`` that ends ``TURNS`` loop turns after it starts
    and only then appends ``value`` to ``ended``: a pool that does not await
    it to its end returns before ``ended`` holds ``value``."""

    async def coroutine() -> object:
        for _ in range(TURNS):
            await asyncio.sleep(0)
        ended.append(value)
        return value

    if kind == "coroutine":
        return coroutine()
    if kind == "task":
        return asyncio.ensure_future(coroutine())
    if kind == "future":
        # Completed by a callback of the test's, TURNS turns from now.
        future = asyncio.get_running_loop().create_future()

        def complete() -> None:
            ended.append(value)
            future.set_result(value)

        _after_turns(TURNS, complete)
        return future
    assert kind == "awaitor"
    return SlowAwaitor(value, ended)


AWAITABLE_KINDS = ["coroutine", "future", "task", "awaitor"]


@pytest.mark.parametrize("kind", AWAITABLE_KINDS)
async def test_any_awaitable_from_the_factory_is_awaited_and_its_value_cached(
    kind: str,
) -> None:
    made: list[object] = []
    pool: ResourcePool[str, object] = ResourcePool(
        lambda key: slow_awaitable(kind, f"made-{key}", made), ttl=10
    )
    async with pool.get("k") as resource:
        assert made == ["made-k"]  # awaited to its end before the lease began
        assert resource == "made-k"  # the awaited value, never the awaitable
    async with pool.get("k") as again:
        assert again == "made-k"  # a hit hands out the cached value
    assert made == ["made-k"] and pool.stats.created == 1
    await pool.aclose()


@pytest.mark.parametrize("retire", ["release", "expire", "clear", "reap"])
@pytest.mark.parametrize("kind", AWAITABLE_KINDS)
async def test_any_awaitable_from_the_finalizer_is_awaited_before_the_call_returns(
    kind: str, retire: str
) -> None:
    """Each way an entry is retired waits for the finalizer's awaitable to
    end: the last release (ttl 0), ``expire``, ``clear``, and the idle reap
    (``ManualClock.advance`` waits for the finalizations the timer started)."""
    ended: list[object] = []
    clock = ManualClock()
    pool: ResourcePool[str, str] = ResourcePool(
        lambda key: f"made-{key}",
        finalizer=lambda resource: slow_awaitable(kind, resource, ended),
        ttl=0 if retire == "release" else 30,
        clock=clock,
    )
    async with pool.get("k"):
        pass  # with ttl 0, the finalizer is awaited inside this release
    if retire == "expire":
        await pool.expire("k")
    elif retire == "clear":
        await pool.clear()
    elif retire == "reap":
        await clock.advance(30)
    assert ended == ["made-k"]
    assert pool.stats.finalized == 1 and len(pool) == 0
    await pool.aclose()


@pytest.mark.parametrize(
    ("ttl", "error"),
    [(-1, ValueError), (math.nan, ValueError), (True, TypeError), ("5", TypeError)],
)
def test_bad_ttl_fails_at_construction_naming_it(
    ttl: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="ttl"):
        ResourcePool(Recorder().factory, ttl=ttl)


@pytest.mark.parametrize(("max_idle", "error"), [(-1, ValueError), (1.5, TypeError)])
def test_bad_max_idle_fails_at_construction(
    max_idle: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="max_idle"):
        ResourcePool(Recorder().factory, ttl=1, max_idle=max_idle)


def test_construction_needs_no_running_loop() -> None:
    pool = ResourcePool(Recorder().factory, ttl=None)
    assert pool.ttl == math.inf and len(pool) == 0


@pytest.mark.parametrize("ttl", [None, math.inf])
async def test_infinite_ttl_never_idles_out(ttl: float | None) -> None:
    rec, clock = Recorder(), SpyClock()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=ttl, clock=clock)
    async with pool.get("k"):
        pass
    await clock.advance(1e9)
    assert rec.finalized == [] and "k" in pool
    assert clock.armed == [] and pool.pending_cleanup == {}
    await pool.expire("k")
    assert len(rec.finalized) == 1


# -- §2 leases ----------------------------------------------------------------


async def test_lease_is_single_use() -> None:
    pool = ResourcePool(Recorder().factory, ttl=1)
    lease = pool.get("k")
    with pytest.raises(RuntimeError, match="k"):
        await lease.__aexit__(None, None, None)
    async with lease:
        with pytest.raises(RuntimeError, match="once"):
            await lease.__aenter__()
    with pytest.raises(RuntimeError, match="once"):
        await lease.__aexit__(None, None, None)
    assert pool.stats.referenced_entries == 0
    await pool.aclose()


async def test_leaving_never_swallows_the_body_exception() -> None:
    pool = ResourcePool(Recorder().factory, ttl=1)
    with pytest.raises(ZeroDivisionError):
        async with pool.get("k"):
            1 / 0  # noqa: B018
    assert pool.stats.referenced_entries == 0
    await pool.aclose()


@pytest.mark.parametrize("falsy", [0, "", [], None])
async def test_falsy_resources_are_released(falsy: object) -> None:
    finalized: list[object] = []
    pool = ResourcePool(lambda key: falsy, finalizer=finalized.append, ttl=0)
    async with pool.get("k") as resource:
        assert resource == falsy
    assert finalized == [falsy] and len(pool) == 0


async def test_old_lease_never_touches_the_new_entry_of_its_key() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=10)
    old = pool.get("k")
    first = await old.__aenter__()
    await pool.clear()
    async with pool.get("k") as second:
        assert second is not first
        await old.__aexit__(None, None, None)
        assert pool.stats.referenced_entries == 1
    assert rec.finalized == [first]
    await pool.aclose()


async def test_key_based_acquire_and_release() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=10)
    await pool.release("nobody")  # no entry: no-op
    resource = await pool.acquire("k")
    assert await pool.acquire("k") is resource
    assert pool.stats.referenced_entries == 1
    await pool.release("k")
    await pool.release("k")
    assert pool.stats.idle_entries == 1
    with pytest.raises(ValueError, match="'k'"):
        await pool.release("k")
    await pool.aclose()


@pytest.mark.parametrize("operation", ["get", "acquire", "release", "expire"])
async def test_unhashable_key_raises_before_any_state_changes(operation: str) -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, ttl=10)
    async with pool.get("warm"):  # the loop has a partition: exercise the hit path
        before = pool.stats
        with pytest.raises(TypeError, match=operation):
            if operation == "get":
                async with pool.get(["x"]):  # type: ignore[arg-type]
                    pass
            else:
                await getattr(pool, operation)(["x"])
        assert pool.stats == before
    assert rec.created == [["warm", 0]]
    await pool.aclose()


async def test_a_hit_returns_the_same_object_and_touches_no_clock() -> None:
    rec, clock = Recorder(), SpyClock()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=30, clock=clock)
    async with pool.get("k") as first:
        pass
    assert pool.stats.idle_entries == 1 and clock.armed == [30.0]
    reads = clock.reads
    async with pool.get("k") as again:
        assert again is first
        assert clock.reads == reads and clock.armed == [30.0]
        assert pool.stats.idle_entries == 0 and pool.stats.referenced_entries == 1
    assert pool.stats.hits == 1 and rec.finalized == []
    await pool.aclose()


async def test_releases_share_one_timer() -> None:
    rec, clock = Recorder(), SpyClock()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=30, clock=clock)
    for key in range(100):
        async with pool.get(key):
            await clock.advance(0.01)
    # (Deadlines are rounded up to 1/1024 s: the first release's, 30.01.)
    assert clock.armed == [math.ceil(30.01 * 1024) / 1024]
    assert clock.pending_timers == 1
    await clock.advance(30)
    assert len(rec.finalized) == 100 and clock.pending_timers == 0


# -- §2 misses ----------------------------------------------------------------


async def test_concurrent_misses_of_one_key_call_the_factory_once() -> None:
    calls = 0
    gate = asyncio.Event()

    async def factory(key: str) -> object:
        nonlocal calls
        calls += 1
        await gate.wait()
        return object()

    pool = ResourcePool(factory, ttl=10)
    waiters = [asyncio.create_task(pool.acquire("k")) for _ in range(50)]
    await asyncio.sleep(0)
    assert pool.stats.creating == 1
    gate.set()
    resources = await asyncio.gather(*waiters)
    assert calls == 1 and len({id(r) for r in resources}) == 1
    assert pool.stats.referenced_entries == 1 and pool.stats.misses == 50
    for _ in resources:
        await pool.release("k")
    assert pool.stats.idle_entries == 1
    await pool.aclose()


async def test_a_slow_factory_never_delays_other_keys() -> None:
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}
    started: set[str] = set()

    async def factory(key: str) -> str:
        if key in gates:
            started.add(key)
            await gates[key].wait()
        return key

    pool = ResourcePool(factory, ttl=10)
    async with pool.get("cached"):
        pass
    slow = [asyncio.create_task(pool.acquire(key)) for key in gates]
    await until(lambda: len(started) == 2)
    # Both slow factories run at once, and a cached key and a fresh key are
    # served while they wait: no pool lock is held across a factory.
    assert started == {"a", "b"}
    async with pool.get("cached") as cached, pool.get("fresh") as fresh:
        assert (cached, fresh) == ("cached", "fresh")
    assert not any(task.done() for task in slow)
    for gate in gates.values():
        gate.set()
    assert await asyncio.gather(*slow) == ["a", "b"]
    await pool.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_failing_factory_reaches_every_waiter_and_caches_nothing(
    kind: str,
) -> None:
    calls = 0

    async def afactory(key: str) -> object:
        await asyncio.sleep(0)
        return factory(key)

    def factory(key: str) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise LookupError(f"no {key}")
        return object()

    pool = ResourcePool(factory if kind == "sync" else afactory, ttl=10)
    results = await asyncio.gather(
        *(pool.acquire("k") for _ in range(1 if kind == "sync" else 5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, LookupError) for r in results)
    assert len(pool) == 0 and pool.stats.factory_errors == 1
    assert await pool.acquire("k") is not None and calls == 2
    await pool.release("k")
    await pool.aclose()


class Creation:
    """A factory whose result the test hands over by hand."""

    def __init__(self) -> None:
        self.pending: dict[object, asyncio.Future[object]] = {}

    def factory(self, key: object) -> asyncio.Future[object]:
        fut = self.pending[key] = asyncio.get_running_loop().create_future()
        return fut


@pytest.mark.parametrize("cancelled", [{0}, {1}, {0, 2}])
async def test_cancelled_waiters_are_removed_and_the_creation_goes_on(
    cancelled: set[int],
) -> None:
    made = Creation()
    pool = ResourcePool(made.factory, ttl=10)
    waiters = [asyncio.create_task(pool.acquire("k")) for _ in range(3)]
    await asyncio.sleep(0)
    for i in cancelled:
        waiters[i].cancel()
    await asyncio.sleep(0)
    made.pending["k"].set_result("resource")
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    for i, outcome in enumerate(outcomes):
        if i in cancelled:
            assert isinstance(outcome, asyncio.CancelledError)
        else:
            assert outcome == "resource"
    assert pool.stats.referenced_entries == 1
    for _ in range(3 - len(cancelled)):
        await pool.release("k")
    assert pool.stats.idle_entries == 1 and pool.stats.referenced_entries == 0
    await pool.aclose()


@pytest.mark.parametrize("ttl", [0, 10])
async def test_when_every_waiter_is_cancelled_the_resource_still_enters_the_pool(
    ttl: float,
) -> None:
    made, finalized = Creation(), []
    pool = ResourcePool(made.factory, finalizer=finalized.append, ttl=ttl)
    waiters = [asyncio.create_task(pool.acquire("k")) for _ in range(2)]
    await asyncio.sleep(0)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert pool.stats.creating == 1
    made.pending["k"].set_result("resource")
    # Until the creation has settled: idle, or finalized with ttl 0.
    settled = "idle_entries" if ttl else "finalized"
    await until(lambda: getattr(pool.stats, settled) == 1)
    assert pool.stats.creating == 0 and pool.stats.referenced_entries == 0
    if ttl:
        assert pool.stats.idle_entries == 1 and finalized == []
    else:
        assert len(pool) == 0 and finalized == ["resource"]
    await pool.aclose()


async def test_a_waiter_cancelled_after_its_creation_finished_gives_back_its_ref() -> (
    None
):
    made = Creation()
    pool = ResourcePool(made.factory, ttl=10)
    waiters = [asyncio.create_task(pool.acquire("k")) for _ in range(2)]
    await asyncio.sleep(0)
    made.pending["k"].set_result("resource")
    # The creation finishes and wakes both waiters up (spinning right here,
    # not in a task of its own, so the test sees the very turn it happens)...
    for _ in range(1000):
        if pool.stats.creating == 0:
            break
        await asyncio.sleep(0)
    assert pool.stats.creating == 0 and not any(w.done() for w in waiters)
    waiters[0].cancel()  # ...and one is cancelled before it resumes
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(outcomes[0], asyncio.CancelledError) and outcomes[1] == "resource"
    assert pool.stats.referenced_entries == 1
    await pool.release("k")
    assert pool.stats.idle_entries == 1
    await pool.aclose()


async def test_factory_and_finalizer_may_call_back_into_the_pool() -> None:
    pool: ResourcePool[str, str]

    async def factory(key: str) -> str:
        if key == "outer":
            async with pool.get("inner") as inner:
                return f"outer({inner})"
        return key

    async def finalizer(resource: str) -> None:
        if resource.startswith("outer"):
            await pool.expire("inner")
            await pool.release("missing")

    pool = ResourcePool(factory, finalizer=finalizer, ttl=10)
    async with pool.get("outer") as outer:
        assert outer == "outer(inner)"
    await asyncio.wait_for(pool.expire("outer"), timeout=5)
    assert len(pool) == 0
    await pool.aclose()


# -- §3 idle time-to-live -----------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_ttl_zero_finalizes_within_the_release(kind: str) -> None:
    rec = Recorder()
    finalizer = rec.finalizer if kind == "sync" else rec.afinalizer
    pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=0)
    async with pool.get("k") as resource:
        pass
    assert rec.finalized == [resource] and len(pool) == 0


async def test_an_idle_entry_is_reused_before_its_deadline_and_reaped_after() -> None:
    rec, clock = Recorder(), ManualClock()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=30, clock=clock)
    async with pool.get("k") as first:
        pass
    assert pool.pending_cleanup == {"k": 30.0}
    # (Times on the 1/1024 s grid that deadlines are rounded up to.)
    await clock.advance(29.5)
    async with pool.get("k") as again:
        assert again is first
    assert pool.pending_cleanup == {"k": 59.5}
    await clock.advance(29.5)
    assert rec.finalized == []
    await clock.advance(0.5)
    assert rec.finalized == [first] and len(pool) == 0
    assert pool.stats.expired == 1 and pool.pending_cleanup == {}


async def test_the_pool_reaps_by_itself_on_the_real_clock() -> None:
    done = asyncio.Event()
    pool = ResourcePool(lambda key: key, finalizer=lambda r: done.set(), ttl=0.01)
    async with pool.get("k"):
        pass
    await asyncio.wait_for(done.wait(), timeout=10)
    assert len(pool) == 0 and pool.stats.expired == 1


async def test_expiry_is_atomic_and_a_new_acquire_never_waits_for_the_finalizer() -> (
    None
):
    rec, clock, gate = Recorder(), ManualClock(), asyncio.Event()

    async def finalizer(resource: object) -> None:
        await gate.wait()
        rec.finalizer(resource)

    pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=1, clock=clock)
    async with pool.get("k") as old:
        pass
    reap = asyncio.create_task(clock.advance(1))
    await asyncio.sleep(0)
    assert pool.pending_cleanup == {"k": None} and "k" not in pool
    async with pool.get("k") as new:
        assert new is not old
    gate.set()
    await reap
    assert rec.finalized == [old]
    await pool.aclose()


#: A batch of expiries far larger than one reap slice.
BATCH = 2000


def _finalizer_runs(log: list[tuple[object, ...]]) -> list[int]:
    """Lengths of the runs of consecutive finalizer calls in ``log``, which
    a ticker task broke wherever the loop ran something else."""
    runs = [0]
    for event in log:
        if event[0] == "fin":
            runs[-1] += 1
        elif runs[-1]:
            runs.append(0)
    return [run for run in runs if run]


async def _tick_until(done: asyncio.Event, log: list[tuple[object, ...]]) -> None:
    """Note each turn of the loop until ``done``."""
    while not done.is_set():
        log.append(("tick",))
        await asyncio.sleep(0)


def _assert_reaped_in_slices(
    pool: ResourcePool[Any, Any], log: list[tuple[object, ...]]
) -> None:
    runs = _finalizer_runs(log)
    assert sum(runs) == BATCH and pool.stats.expired == BATCH and len(pool) == 0
    # Other work ran between slices: no run is near the whole batch (any
    # slice up to a quarter of it passes).
    assert len(runs) >= 4 and max(runs) <= BATCH // 4, runs


async def test_reaping_yields_to_the_loop_between_slices() -> None:
    """The real clock, the whole batch due when the pool's timer first runs,
    and a sync finalizer: only the pool's own slicing lets the ticker run
    between finalizer calls."""
    ttl = 0.001
    log: list[tuple[object, ...]] = []
    done = asyncio.Event()
    finalized = 0

    def finalizer(key: object) -> None:
        nonlocal finalized
        log.append(("fin", key))
        finalized += 1
        if finalized == BATCH:
            done.set()

    pool = ResourcePool(lambda key: key, finalizer=finalizer, ttl=ttl)
    leases = [pool.get(key) for key in range(BATCH)]
    for lease in leases:
        await lease.__aenter__()
    for lease in leases:
        await lease.__aexit__(None, None, None)
    # Keep the loop from running until every idle deadline has passed (the
    # pool's clock is time.monotonic): the whole batch is due at once.
    all_due = time.monotonic() + ttl
    while time.monotonic() < all_due:
        pass
    assert pool.stats.idle_entries == BATCH, "reaped before the batch was due"
    ticker = asyncio.create_task(_tick_until(done, log))
    await asyncio.wait_for(done.wait(), timeout=10)
    await ticker
    _assert_reaped_in_slices(pool, log)


async def test_reaping_on_a_manual_clock_yields_to_the_loop_between_slices() -> None:
    """The same with ``ManualClock.advance`` and an async finalizer: the
    clock waits for each slice's finalizers, letting the loop run."""
    log: list[tuple[object, ...]] = []
    clock = ManualClock()

    async def finalizer(key: object) -> None:
        log.append(("fin", key))

    pool = ResourcePool(lambda key: key, finalizer=finalizer, ttl=1, clock=clock)
    for key in range(BATCH):
        async with pool.get(key):
            pass
    done = asyncio.Event()
    ticker = asyncio.create_task(_tick_until(done, log))
    await clock.advance(1)
    done.set()
    await ticker
    _assert_reaped_in_slices(pool, log)


async def test_max_idle_evicts_the_least_recently_released_first() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=None, max_idle=2)
    leases = [pool.get(key) for key in "abc"]
    resources = [await lease.__aenter__() for lease in leases]
    for lease in (leases[1], leases[0], leases[2]):
        await lease.__aexit__(None, None, None)
    assert rec.finalized == [resources[1]]
    assert set(pool.pending_cleanup) == set() and pool.stats.idle_entries == 2
    assert pool.stats.evicted == 1
    await pool.aclose()


# -- §4 expire ----------------------------------------------------------------


async def test_expire_of_an_unknown_key_is_a_no_op() -> None:
    pool = ResourcePool(Recorder().factory, ttl=1)
    await pool.expire("nobody")
    assert pool.stats.finalized == 0


async def test_expire_finalizes_an_idle_entry_before_returning() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.afinalizer, ttl=30)
    async with pool.get("k") as resource:
        pass
    await pool.expire("k")
    assert rec.finalized == [resource] and len(pool) == 0


async def test_expire_drains_leases_first_and_a_reacquire_clears_the_mark() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=30)
    first, second = pool.get("k"), pool.get("k")
    resource = await first.__aenter__()
    await second.__aenter__()
    await pool.expire("k")
    await first.__aexit__(None, None, None)
    assert rec.finalized == []  # still referenced: never finalized under a lease
    await second.__aexit__(None, None, None)
    assert rec.finalized == [resource]  # inside the last release

    async with pool.get("k") as again:
        await pool.expire("k")
        async with pool.get("k"):  # re-acquired: the mark is gone
            pass
    assert rec.finalized == [resource] and pool.stats.idle_entries == 1
    assert again is not resource
    await pool.aclose()


async def test_expire_marks_an_entry_being_created() -> None:
    made, finalized = Creation(), []
    pool = ResourcePool(made.factory, finalizer=finalized.append, ttl=30)
    waiter = asyncio.create_task(pool.acquire("k"))
    await asyncio.sleep(0)
    await pool.expire("k")
    made.pending["k"].set_result("resource")
    assert await waiter == "resource"
    assert finalized == []
    await pool.release("k")
    assert finalized == ["resource"] and len(pool) == 0


async def test_a_waiter_is_a_holder_once_its_creation_finished() -> None:
    made, finalized = Creation(), []
    pool = ResourcePool(made.factory, finalizer=finalized.append, ttl=10)
    waiter = asyncio.create_task(pool.acquire("k"))
    await asyncio.sleep(0)
    made.pending["k"].set_result("first")
    # The creation finishes and wakes the waiter up, and clear (scheduled
    # right behind the creation) evicts the new entry before it resumes:
    # like every holder of a cleared entry, the waiter keeps its object.
    clearing = asyncio.create_task(pool.clear())
    assert await waiter == "first"
    await clearing
    assert finalized == ["first"] and len(pool) == 0
    await pool.release("k")  # owed to the cleared entry: a no-op
    second = asyncio.create_task(pool.acquire("k"))  # a new creation
    await until(lambda: pool.stats.creating == 1)
    made.pending["k"].set_result("second")
    assert await second == "second"
    await pool.release("k")
    await pool.aclose()
