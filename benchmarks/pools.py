"""Pool measurements 1-4, 6 and 7: ttlpool, wool and the floor side by side.

All of them run on one asyncio event loop in this process. Each variant
runs the same coroutine (the same bytecode) against its own pool, and the
variants take turns repetition by repetition (:func:`interleave`).
Measurement 5 (memory and ``stats``) runs in child processes: see
:mod:`benchmarks._memory`.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from benchmarks._impls import (
    PoolMaker,
    Thing,
    close_pool,
    discard,
    discard_async,
    pool_makers,
    resource,
    resource_async,
)
from benchmarks._measure import Results, Sample, interleave, now_ns, quiet_gc
from benchmarks._settings import Settings
from benchmarks.floor import FloorChurnPool, FloorPool

__all__ = ["measure_pools"]

Progress = Callable[[str], None]
Case = Callable[[], Awaitable[Sample]]

TASKS = 100
SLOW_KEYS = 5
HOT = "hot"


async def _leases(get: Callable[[Hashable], Any], key: Hashable, n: int) -> int:
    """``n`` sequential leases of ``key``: the loop every hot-path figure times."""
    start = now_ns()
    for _ in range(n):
        async with get(key):
            pass
    return now_ns() - start


async def _hold_briefly(get: Callable[[Hashable], Any], key: Hashable) -> None:
    async with get(key):
        await asyncio.sleep(0)


async def _lease_once(get: Callable[[Hashable], Any], key: Hashable) -> None:
    async with get(key):
        pass


# -- 1 and 2: warm hit and churn ----------------------------------------------


def _hit_case(group: str, pool: Any, key: Hashable, n: int) -> Case:
    async def case() -> Sample:
        with quiet_gc():
            elapsed = await _leases(pool.get, key, n)
        return {group: elapsed / n}

    return case


async def _hits_and_churn(
    results: Results, settings: Settings, makers: dict[str, PoolMaker], say: Progress
) -> list[Any]:
    results.group(
        "warm_hit",
        "1. Warm hit: async with pool.get(k), cached key, ttl=30",
        "ns",
        "ttlpool",
    )
    results.group(
        "churn_sync",
        "2a. Churn, ttl=0 (create + finalize each lease), sync factory/finalizer",
        "ns",
        "ttlpool",
    )
    results.group(
        "churn_async",
        "2b. Churn, ttl=0 (create + finalize each lease), async factory/finalizer",
        "ns",
        "ttlpool",
    )
    pools: list[Any] = []
    cases: dict[str, Case] = {}
    n = settings.batch
    for name, make in makers.items():
        warm = make(resource, finalizer=discard, ttl=30)
        await _lease_once(warm.get, HOT)
        sync_churn = make(resource, finalizer=discard, ttl=0)
        async_churn = make(resource_async, finalizer=discard_async, ttl=0)
        pools += [warm, sync_churn, async_churn]
        cases[name] = _in_turn(
            _hit_case("warm_hit", warm, HOT, n),
            _hit_case("churn_sync", sync_churn, HOT, n),
            _hit_case("churn_async", async_churn, HOT, n),
        )
    floor = FloorPool()
    floor.put(HOT, Thing())
    cases["floor"] = _in_turn(
        _hit_case("warm_hit", floor, HOT, n),
        _hit_case(
            "churn_sync", FloorChurnPool(resource, discard, is_async=False), HOT, n
        ),
        _hit_case(
            "churn_async",
            FloorChurnPool(resource_async, discard_async, is_async=True),
            HOT,
            n,
        ),
    )
    note = "floor: calls the factory on entry and the finalizer on exit, nothing else"
    results.groups["churn_sync"].note = note
    results.groups["churn_async"].note = note
    say("1-2 warm hit and churn")
    await interleave(results, settings.reps, cases)
    return pools


def _in_turn(*parts: Case) -> Case:
    """One case made of several, run one after the other."""

    async def case() -> Sample:
        sample: dict[str, float] = {}
        for part in parts:
            sample.update(await part())
        return sample

    return case


# -- 3: many tasks on one key -------------------------------------------------


def _tasks_case(get: Callable[[Hashable], Any], rounds: int) -> Case:
    async def case() -> Sample:
        with quiet_gc():
            start = now_ns()
            for _ in range(rounds):
                await asyncio.gather(*(_hold_briefly(get, HOT) for _ in range(TASKS)))
            elapsed = now_ns() - start
        return {"tasks": elapsed / (rounds * TASKS)}

    return case


async def _tasks(
    results: Results, settings: Settings, makers: dict[str, PoolMaker], say: Progress
) -> list[Any]:
    results.group(
        "tasks",
        f"3. {TASKS} tasks on one key, await asyncio.sleep(0) inside, ttl=30 "
        "(per task, gather included)",
        "ns",
        "ttlpool",
    )
    pools: list[Any] = []
    cases: dict[str, Case] = {}
    for name, make in makers.items():
        pool = make(resource, finalizer=discard, ttl=30)
        await _lease_once(pool.get, HOT)
        pools.append(pool)
        cases[name] = _tasks_case(pool.get, settings.task_rounds)
    floor = FloorPool()
    floor.put(HOT, Thing())
    cases["floor"] = _tasks_case(floor.get, settings.task_rounds)
    say("3 many tasks on one key")
    await interleave(results, settings.reps, cases)
    return pools


# -- 4: slow factories --------------------------------------------------------


class _SlowFactory:
    """Instant for the hot key, ``delay`` seconds for any other key.

    ``started[key]`` is set once the factory for ``key`` is sleeping, so a
    measurement can start timing exactly then.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started: dict[Hashable, asyncio.Event] = {}

    def event(self, key: Hashable) -> asyncio.Event:
        return self.started.setdefault(key, asyncio.Event())

    async def __call__(self, key: Hashable) -> object:
        if key != HOT:
            self.event(key).set()
            await asyncio.sleep(self.delay)
        return Thing()


async def _warm_up(get: Callable[[Hashable], Any]) -> None:
    """Lease the cached key a few times, untimed, before a one-shot timing.

    After the loop slept (the previous variant waited for its slow
    factories), the first touch of the code and data of a lease can cost
    100x its warm cost on this machine, which would drown the figure.
    """
    for _ in range(3):
        await _lease_once(get, HOT)


def _slow_case(get: Callable[[Hashable], Any], factory: _SlowFactory) -> Case:
    serial = itertools.count()

    async def case() -> Sample:
        slow_key = ("slow", next(serial))
        started = factory.event(slow_key)
        await _warm_up(get)
        slow = asyncio.ensure_future(_lease_once(get, slow_key))
        await started.wait()
        with quiet_gc(collect=False):
            start = now_ns()
            async with get(HOT):
                latency = now_ns() - start
        await slow
        keys = [("five", next(serial), i) for i in range(SLOW_KEYS)]
        with quiet_gc():
            start = now_ns()
            await asyncio.gather(*(_lease_once(get, key) for key in keys))
            wall = now_ns() - start
        factory.started.clear()
        return {"behind_slow": latency, "five_slow": wall}

    return case


def _floor_slow_case(delay: float) -> Case:
    """The floor: the same sleeps with no pool in the way."""
    floor = FloorPool()
    floor.put(HOT, Thing())

    async def case() -> Sample:
        await _warm_up(floor.get)
        slow = asyncio.ensure_future(asyncio.sleep(delay))
        await asyncio.sleep(0)
        with quiet_gc(collect=False):
            start = now_ns()
            async with floor.get(HOT):
                latency = now_ns() - start
        await slow
        with quiet_gc():
            start = now_ns()
            await asyncio.gather(*(asyncio.sleep(delay) for _ in range(SLOW_KEYS)))
            wall = now_ns() - start
        return {"behind_slow": latency, "five_slow": wall}

    return case


async def _slow_factories(
    results: Results, settings: Settings, makers: dict[str, PoolMaker], say: Progress
) -> list[Any]:
    delay = settings.slow_delay
    ms = f"{delay * 1000:g} ms"
    results.group(
        "behind_slow",
        f"4a. Cached key's acquire latency while another key's factory sleeps {ms}",
        "ns",
        "ttlpool",
    ).note = (
        "one acquire, timed: µs-level figures are noisy, the point is µs "
        "against the factory's sleep; floor: a bare lease while a task sleeps"
    )
    results.group(
        "five_slow",
        f"4b. {SLOW_KEYS} distinct keys whose factories sleep {ms}, concurrently "
        "(wall time)",
        "ns",
        "ttlpool",
    ).note = f"floor: {SLOW_KEYS} concurrent sleeps, no pool"
    pools: list[Any] = []
    cases: dict[str, Case] = {}
    for name, make in makers.items():
        factory = _SlowFactory(delay)
        pool = make(factory, ttl=30)
        await _lease_once(pool.get, HOT)
        pools.append(pool)
        cases[name] = _slow_case(pool.get, factory)
    cases["floor"] = _floor_slow_case(delay)
    say("4 slow factories")
    await interleave(results, settings.slow_reps, cases, warmup=0)
    return pools


# -- 6: reaping ---------------------------------------------------------------


class _Ticker:
    """A ``call_soon`` chain: the longest gap between two ticks is the
    longest time the event loop ran something else without coming back.

    Gaps are taken on the wall clock (what a user of the loop sees) and on
    this thread's CPU clock (the work the loop itself did, without the time
    the OS gave to other processes on a busy machine).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.longest = 0
        self.longest_cpu = 0
        self.previous = 0
        self.previous_cpu = 0
        self.running = False

    def start(self) -> None:
        self.running = True
        self.previous = now_ns()
        self.previous_cpu = time.thread_time_ns()
        self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        now, cpu = now_ns(), time.thread_time_ns()
        self.longest = max(self.longest, now - self.previous)
        self.longest_cpu = max(self.longest_cpu, cpu - self.previous_cpu)
        self.previous, self.previous_cpu = now, cpu
        if self.running:
            self.loop.call_soon(self._tick)

    def stop(self) -> dict[str, float]:
        self.running = False
        return {"reap_stall": self.longest, "reap_stall_cpu": self.longest_cpu}


class _Finalized:
    """A sync finalizer that notes when the ``n``-th call happened."""

    def __init__(self, n: int, done: asyncio.Future[None]) -> None:
        self.n = n
        self.count = 0
        self.last = 0
        self.done = done

    def __call__(self, thing: object) -> None:
        self.count += 1
        if self.count == self.n:
            self.last = now_ns()
            if not self.done.done():
                self.done.set_result(None)


def _reap_case(make: PoolMaker, n: int, ttl: float) -> Case:
    async def case() -> Sample:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        finalized = _Finalized(n, done)
        pool = make(resource, finalizer=finalized, ttl=ttl)
        ticker = _Ticker(loop)
        with quiet_gc():
            for key in range(n):
                await pool.acquire(key)
            for key in range(n):
                await pool.release(key)
            released = now_ns()
            ticker.start()
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout=ttl + 10.0)
            except asyncio.TimeoutError:
                finalized.last = now_ns()
            stalls = ticker.stop()
        await close_pool(pool)
        return {"reap_due": finalized.last - (released + ttl * 1e9), **stalls}

    return case


def _floor_reap_case(ttl: float) -> Case:
    """The floor: one ``call_later(ttl)`` and nothing to finalize."""

    async def case() -> Sample:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        fired = [0]

        def fire() -> None:
            fired[0] = now_ns()
            done.set_result(None)

        ticker = _Ticker(loop)
        with quiet_gc():
            armed = now_ns()
            loop.call_later(ttl, fire)
            ticker.start()
            await done
            stalls = ticker.stop()
        return {"reap_due": fired[0] - (armed + ttl * 1e9), **stalls}

    return case


async def _reaping(
    results: Results, settings: Settings, makers: dict[str, PoolMaker], say: Progress
) -> None:
    n, ttl = settings.reap_entries, settings.reap_ttl
    what = f"reaping {n:,} idle entries, ttl={ttl:g}"
    results.group(
        "reap_due",
        f"6a. {what.capitalize()}: last finalizer, time past its due time",
        "ns",
        "ttlpool",
    ).note = "floor: how late one call_later(ttl) fires on this loop"
    results.group(
        "reap_stall",
        f"6b. {what.capitalize()}: longest event-loop stall meanwhile",
        "ns",
        "ttlpool",
    ).note = "floor: the longest stall of the same loop with nothing to reap"
    results.group(
        "reap_stall_cpu",
        f"6c. {what.capitalize()}: longest stall in CPU time of the loop's thread",
        "ns",
        "ttlpool",
    ).note = "6b without the time the OS ran other processes (a busy machine)"
    cases: dict[str, Case] = {
        name: _reap_case(make, n, ttl) for name, make in makers.items()
    }
    cases["floor"] = _floor_reap_case(ttl)
    say(f"6 {what}")
    await interleave(results, settings.reap_reps, cases, warmup=0)


# -- 7: flat at scale ---------------------------------------------------------


def _scale_case(small: Any, big: Any, n: int) -> Case:
    turn = itertools.count()

    async def case() -> Sample:
        order = [("scale_1", small), ("scale_n", big)]
        if next(turn) % 2:
            order.reverse()
        sample: dict[str, float] = {}
        for group, pool in order:
            with quiet_gc():
                sample[group] = await _leases(pool.get, 0, n) / n
        return sample

    return case


async def _at_scale(
    results: Results, settings: Settings, makers: dict[str, PoolMaker], say: Progress
) -> None:
    keys = settings.scale_keys
    results.group(
        "scale_1",
        "7a. Warm hit with 1 key cached, ttl=3600",
        "ns",
        "ttlpool",
    )
    results.group(
        "scale_n",
        f"7b. Warm hit with {keys:,} keys cached, ttl=3600",
        "ns",
        "ttlpool",
    )
    pools: list[Any] = []
    cases: dict[str, Case] = {}
    for name, make in makers.items():
        say(f"7 filling {name} with {keys:,} keys")
        small = make(resource, ttl=3600)
        await _lease_once(small.get, 0)
        big = make(resource, ttl=3600)
        get = big.get
        with quiet_gc():
            for key in range(keys):
                async with get(key):
                    pass
        pools += [small, big]
        cases[name] = _scale_case(small, big, settings.batch)
    small_floor, big_floor = FloorPool(), FloorPool()
    small_floor.put(0, Thing())
    for key in range(keys):
        big_floor.put(key, Thing())
    cases["floor"] = _scale_case(small_floor, big_floor, settings.batch)
    # Millions of long-lived objects: keep the collector from walking them.
    gc.collect()
    gc.freeze()
    try:
        say("7 warm hit at 1 key against many")
        await interleave(results, settings.reps, cases)
    finally:
        gc.unfreeze()
        for pool in pools:
            await close_pool(pool)
        del pools, cases, big_floor
        gc.collect()


# -- all of them --------------------------------------------------------------


async def measure_pools(
    results: Results,
    settings: Settings,
    say: Progress,
    *,
    sections: set[str],
) -> None:
    """Measurements 1-4, 6 and 7 into ``results``, on the running loop."""
    makers, skipped = pool_makers()
    steps: list[tuple[str, Callable[..., Awaitable[Any]]]] = [
        ("hits", _hits_and_churn),
        ("tasks", _tasks),
        ("slow", _slow_factories),
        ("reap", _reaping),
        ("scale", _at_scale),
    ]
    for section, step in steps:
        if section not in sections:
            continue
        before = set(results.groups)
        kept = await step(results, settings, makers, say)
        for pool in kept or ():
            await close_pool(pool)
        for key in set(results.groups) - before:
            for name, why in skipped.items():
                results.groups[key].skip(name, why)
            results.groups[key].order(["ttlpool", "wool", "floor"])
