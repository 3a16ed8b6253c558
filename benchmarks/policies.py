"""Measurement 8: the warm hit with each lifecycle option set (ttlpool only).

``ResourcePool``'s lifecycle options (``validate``, ``max_lifetime``,
``on_remove``, ``leak_timeout``) are all off by default, and off they must
cost nothing. Each variant here is a pool with one option set, leased with
the very loop of the warm-hit figure (1), ``ttl=30``, the variants taking
turns repetition by repetition (:func:`~benchmarks._measure.interleave`);
the reference is the pool with every option at its default.

``validate`` is measured twice on one pool: leases one after the other
reuse the idle entry, so each is validated first ("idle reuse"); with an
outer lease holding the key through the timed loop, each lease is a hit on
an entry in use, which is never validated ("entry in use"). Which of the
two each pattern is, is checked (untimed, with a counting ``validate`` on a
pool of its own) and written in the group's note.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import ttlpool
from benchmarks._impls import Thing, close_pool, discard, resource
from benchmarks._measure import Results, Sample, interleave, quiet_gc
from benchmarks._settings import Settings
from benchmarks.floor import FloorPool
from benchmarks.pools import HOT, Case, _hit_case, _lease_once, _leases

__all__ = ["GROUP", "VARIANTS", "measure_policies"]

Progress = Callable[[str], None]

GROUP = "policy_hit"
DEFAULTS = "defaults"
IDLE_REUSE = "validate, idle reuse"
IN_USE = "validate, entry in use"
#: The figures of the group, in the table's order.
VARIANTS = (
    DEFAULTS,
    IDLE_REUSE,
    IN_USE,
    "max_lifetime",
    "leak_timeout",
    "on_remove",
    "floor",
)
TTL = 30


def _valid(thing: object) -> bool:
    """``validate``: every resource is fine (a sync answer)."""
    return True


def _removed(key: object, thing: object, cause: object) -> None:
    """``on_remove``: a no-op."""


def _in_use_case(pool: Any, n: int) -> Case:
    """``n`` leases of the hot key while an outer lease holds it."""

    async def case() -> Sample:
        async with pool.get(HOT):
            with quiet_gc():
                elapsed = await _leases(pool.get, HOT, n)
        return {GROUP: elapsed / n}

    return case


def _after_a_turn(case: Case) -> Case:
    """``case`` after one turn of the event loop (untimed), for every variant.

    No sample yields to the loop, and ``leak_timeout`` arms a timer per
    lease and cancels it at the exit: without a turn the loop would never
    drop the cancelled timers, and each sample would push onto the heap of
    every sample before it, which no loop that runs anything else has.
    """

    async def turned() -> Sample:
        await asyncio.sleep(0)
        return await case()

    return turned


async def _validations(n: int) -> tuple[int, int]:
    """How many times ``validate`` runs in ``n`` leases of each pattern."""
    calls = [0]

    def counting(thing: object) -> bool:
        calls[0] += 1
        return True

    pool = ttlpool.ResourcePool(resource, finalizer=discard, ttl=TTL, validate=counting)
    try:
        await _lease_once(pool.get, HOT)
        calls[0] = 0
        await _leases(pool.get, HOT, n)
        idle = calls[0]
        async with pool.get(HOT):
            calls[0] = 0
            await _leases(pool.get, HOT, n)
            in_use = calls[0]
    finally:
        await close_pool(pool)
    return idle, in_use


def _pools() -> dict[str, Any]:
    """A pool per option (``validate``'s two variants share one)."""

    def make(**option: Any) -> Any:
        return ttlpool.ResourcePool(resource, finalizer=discard, ttl=TTL, **option)

    return {
        DEFAULTS: make(),
        IDLE_REUSE: make(validate=_valid),
        "max_lifetime": make(max_lifetime=3600),
        "leak_timeout": make(leak_timeout=60),
        "on_remove": make(on_remove=_removed),
    }


async def measure_policies(results: Results, settings: Settings, say: Progress) -> None:
    """Measurement 8 into ``results``, on the running loop."""
    group = results.group(
        GROUP,
        f"8. Warm hit with lifecycle options (ttlpool only), ttl={TTL}",
        "ns",
        DEFAULTS,
    )
    n = settings.batch
    idle, in_use = await _validations(n)
    checked = (
        f"validate ran {idle:,} times in {n:,} idle reuses and {in_use:,} times "
        f"in {n:,} hits on an entry in use"
    )
    if (idle, in_use) != (n, 0):
        checked += f" (expected {n:,} and 0: the labels are wrong)"
        say(f"8 WARNING: {checked}")
    group.note = (
        "each row sets one option: validate=a sync function returning True, "
        "max_lifetime=3600, leak_timeout=60, on_remove=a no-op; "
        f"floor: as in 1; checked untimed: {checked}"
    )
    pools = _pools()
    cases: dict[str, Case] = {}
    try:
        for pool in pools.values():
            await _lease_once(pool.get, HOT)
        for name, pool in pools.items():
            cases[name] = _hit_case(GROUP, pool, HOT, n)
        cases[IN_USE] = _in_use_case(pools[IDLE_REUSE], n)
        floor = FloorPool()
        floor.put(HOT, Thing())
        cases["floor"] = _hit_case(GROUP, floor, HOT, n)
        say("8 warm hit with lifecycle options")
        turned = {name: _after_a_turn(case) for name, case in cases.items()}
        await interleave(results, settings.reps, turned)
    finally:
        for pool in pools.values():
            await close_pool(pool)
    group.order(VARIANTS)
