"""Threads hammering one pool: the machinery of the loop hammers.

Each hammer thread runs ``asyncio.run`` with a few tasks doing a bounded,
seeded, random mix of leases, nested leases, ``expire`` and ``clear`` on one
pool shared by every thread; then the loops end in one of three ways (see
:func:`run_hammer_threads`). Resources are :class:`Res` objects that
remember the loop and thread that made them; a :class:`Recorder` notes,
under a thread lock, every creation, hand-out and finalization, so a check
can say "finalized exactly once, to its end" and "created, handed out and
finalized on one loop".

Used by ``tests/test_loops.py`` (a few seeds per CI run) and by
``python -m tests.stress`` (many seeds). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import threading
import traceback
import warnings
from typing import Any

from ttlpool import PoolClosedError, RemovalCause, ResourcePool

#: Upper bound for any single wait in this module (generous: CI is slow).
TIMEOUT = 20.0

Loop = asyncio.AbstractEventLoop


class Res:
    """A pooled resource that knows where it was made."""

    __slots__ = ("key", "loop", "serial", "thread")

    def __init__(self, serial: int, key: object, loop: Loop) -> None:
        self.serial = serial
        self.key = key
        self.loop = loop
        self.thread = threading.get_ident()

    def __repr__(self) -> str:
        return f"<Res #{self.serial} {self.key!r}>"


class Recorder:
    """Factory and finalizer that record what they did, thread-safely.

    ``finalized[serial]`` lists ``(loop, owner_was_running)`` for every
    finalizer call: the loop it ran on, and whether the resource's own loop
    was running at that moment (when it was not, the spec allows the
    caller's loop to finalize it).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.serials = itertools.count(1)
        self.created: dict[int, Res] = {}
        self.finalized: dict[int, list[tuple[Loop, bool]]] = {}
        #: Serials whose :meth:`finalizer` began, and those it ran to its end.
        self.begun: set[int] = set()
        self.completed: set[int] = set()
        self.violations: list[str] = []
        #: With the lifecycle options: each ``on_remove`` call, by serial.
        self.lifecycle = False
        self.removed: dict[int, list[RemovalCause]] = {}
        self.rng = random.Random()

    def make(self, key: object) -> Res:
        loop = asyncio.get_running_loop()
        with self.lock:
            res = Res(next(self.serials), key, loop)
            self.created[res.serial] = res
        return res

    async def factory(self, key: object) -> Res:
        await asyncio.sleep(0)
        return self.make(key)

    def note_finalize(self, res: Res) -> None:
        loop = asyncio.get_running_loop()
        owner_running = res.loop.is_running() and not res.loop.is_closed()
        with self.lock:
            self.finalized.setdefault(res.serial, []).append((loop, owner_running))

    async def finalizer(self, res: Res) -> None:
        self.note_finalize(res)
        with self.lock:
            self.begun.add(res.serial)
        await asyncio.sleep(0)
        with self.lock:
            self.completed.add(res.serial)

    async def validate(self, res: Res) -> bool:
        """Suspends once; says no one time in five."""
        await asyncio.sleep(0)
        with self.lock:
            return self.rng.random() >= 0.2

    def note_removed(self, key: object, res: Res, cause: RemovalCause) -> None:
        with self.lock:
            self.removed.setdefault(res.serial, []).append(cause)
            if res.serial in self.finalized:
                self.violations.append(f"on_remove of {res!r} after its finalizer")

    def handed_out(self, res: Res, *, per_loop: bool) -> None:
        """Check a lease's resource: per loop, it must be this loop's."""
        if per_loop and res.loop is not asyncio.get_running_loop():
            with self.lock:
                self.violations.append(f"{res!r} handed out on a foreign loop")

    def loops_of(self, res: Res) -> list[Loop]:
        with self.lock:
            return [loop for loop, _ in self.finalized.get(res.serial, [])]

    def assert_each_finalized_once(self) -> None:
        with self.lock:
            unknown = set(self.finalized) - set(self.created)
            counts = {s: len(self.finalized.get(s, [])) for s in self.created}
            cut_off = self.begun - self.completed
        assert not unknown, f"finalized objects the factory never made: {unknown}"
        wrong = {s: n for s, n in counts.items() if n != 1}
        assert not wrong, f"serial -> finalizer calls (must be 1 each): {wrong}"
        assert not cut_off, f"finalizers that never reached their end: {cut_off}"
        if self.lifecycle:  # one cause per finalized resource, before it
            with self.lock:
                causes = {s: self.removed.get(s, []) for s in self.finalized}
                unfinalized = set(self.removed) - set(self.finalized)
                assert not self.violations, self.violations
            wrong = {s: c for s, c in causes.items() if len(c) != 1}
            assert not wrong, f"serial -> on_remove causes (must be 1 each): {wrong}"
            assert not unfinalized, f"removed but never finalized: {unfinalized}"

    def assert_same_loop(self, *, owner_may_be_gone: bool) -> None:
        """Per-loop mode: finalized on the resource's own loop.

        With ``owner_may_be_gone`` a resource may be finalized elsewhere,
        but only while its own loop was not running (closed or shutting
        down).
        """
        bad = []
        with self.lock:
            assert not self.violations, self.violations
            for serial, calls in self.finalized.items():
                res = self.created[serial]
                for loop, owner_running in calls:
                    if loop is res.loop:
                        continue
                    if not owner_may_be_gone or owner_running:
                        bad.append((res, owner_running))
        assert not bad, f"finalized on a foreign loop (owner running?): {bad}"


def assert_drained(pool: ResourcePool[Any, Any], rec: Recorder) -> None:
    """Nothing left anywhere, and the running totals are exact."""
    stats = pool.stats
    assert len(pool) == 0
    assert stats.total_entries == 0
    assert stats.referenced_entries == 0
    assert stats.idle_entries == 0
    assert stats.creating == 0
    assert stats.pending_cleanup == 0
    assert pool.pending_cleanup == {}
    assert stats.errors == 0, stats
    assert stats.created == len(rec.created), stats
    assert stats.finalized == stats.created, stats


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(TIMEOUT)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"deadlock: threads still running after {TIMEOUT}s: {stuck}"


# -- many threads hammering one pool ------------------------------------------

N_THREADS = 4
TASKS_PER_LOOP = 3
OPS_PER_TASK = 60
KEYS = ("a", "b", "c", "d", "e", 0, None)


async def hammer_task(
    pool: ResourcePool[Any, Res],
    rec: Recorder,
    rng: random.Random,
    *,
    per_loop: bool,
) -> None:
    """A bounded random mix of leases, expire and clear on this loop."""
    for step in range(OPS_PER_TASK):
        roll = rng.random()
        key = rng.choice(KEYS)
        try:
            await hammer_step(pool, rec, rng, roll, key, per_loop=per_loop)
        except PoolClosedError:
            raise
        except BaseException as exc:
            # A cancellation nobody asked for would otherwise reach gather()
            # without a traceback: say which operation it came out of.
            loop = id(asyncio.get_running_loop())
            raise AssertionError(
                f"step {step} (roll {roll:.2f}, key {key!r}) on loop {loop:#x} "
                f"raised {exc!r}"
            ) from exc


async def hammer_step(
    pool: ResourcePool[Any, Res],
    rec: Recorder,
    rng: random.Random,
    roll: float,
    key: object,
    *,
    per_loop: bool,
) -> None:
    if roll < 0.70:
        async with pool.get(key) as res:
            assert isinstance(res, Res) and res.key == key
            rec.handed_out(res, per_loop=per_loop)
            if rng.random() < 0.5:
                await asyncio.sleep(0)
            if rng.random() < 0.2:  # a nested lease of another key
                other = rng.choice(KEYS)
                async with pool.get(other) as inner:
                    rec.handed_out(inner, per_loop=per_loop)
                    await asyncio.sleep(0)
    elif roll < 0.85:
        await pool.expire(key)
    elif roll < 0.88:
        await pool.clear()
    elif roll < 0.94:
        await asyncio.sleep(rng.random() * 0.005)
    else:
        await asyncio.sleep(0)


async def hammer_loop(
    pool: ResourcePool[Any, Res],
    rec: Recorder,
    seed: int,
    *,
    per_loop: bool,
    tolerate_closed: bool,
) -> None:
    rng = random.Random(seed)
    tasks = [
        hammer_task(pool, rec, random.Random(rng.random()), per_loop=per_loop)
        for _ in range(TASKS_PER_LOOP)
    ]
    results = await asyncio.wait_for(
        asyncio.gather(*tasks, return_exceptions=True), TIMEOUT
    )
    for result in results:
        if isinstance(result, PoolClosedError) and tolerate_closed:
            continue
        if isinstance(result, BaseException):
            raise result


#: How the hammering threads end (see ``run_hammer_threads``).
TOGETHER, ACLOSE_WHILE_RUNNING, STAGGERED = "together", "aclose", "staggered"


def run_hammer_threads(
    pool: ResourcePool[Any, Res],
    rec: Recorder,
    seed: int,
    *,
    per_loop: bool,
    ending: str,
) -> None:
    """Hammer ``pool`` from ``N_THREADS`` threads, each in ``asyncio.run``.

    ``ending``: TOGETHER, every loop keeps running until all are done with
    their operations, then all close; ACLOSE_WHILE_RUNNING, the same, but
    loop 0 calls ``aclose`` first, maybe while others are still busy;
    STAGGERED, each loop closes as soon as its own operations are done,
    while the others go on hammering.
    """
    errors: list[str] = []
    errors_lock = threading.Lock()
    done_with_ops = threading.Barrier(N_THREADS, timeout=TIMEOUT)

    async def main(index: int) -> None:
        await hammer_loop(
            pool,
            rec,
            seed * 1000 + index,
            per_loop=per_loop,
            tolerate_closed=ending == ACLOSE_WHILE_RUNNING,
        )
        if ending == STAGGERED:
            return
        if index == 0 and ending == ACLOSE_WHILE_RUNNING:
            # aclose from this loop while every other loop still runs (some
            # may still be mid-operation and will meet PoolClosedError).
            await asyncio.wait_for(pool.aclose(), TIMEOUT)
        # Keep this loop running, not blocked (hand-overs from other loops
        # run here), until every thread got here.
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(None, done_with_ops.wait), TIMEOUT)

    def target(index: int) -> None:
        try:
            asyncio.run(main(index))
        except BaseException:
            with errors_lock:
                errors.append(traceback.format_exc())

    threads = [
        threading.Thread(
            target=target, args=(i,), name=f"loops-hammer-{i}", daemon=True
        )
        for i in range(N_THREADS)
    ]
    for thread in threads:
        thread.start()
    join_all(threads)
    assert not errors, "\n".join(errors)
    assert rec.created, "the hammer made nothing"


def new_pool(
    rec: Recorder, *, lifecycle: bool = False, **options: Any
) -> ResourcePool[Any, Res]:
    """A pool of ``rec``'s; ``lifecycle``: with a ``validate`` that says no
    now and then, lifetimes that pass while the loops work, and
    ``on_remove`` recorded."""
    if lifecycle:
        rec.lifecycle = True
        options.update(
            validate=rec.validate, max_lifetime=LIFETIME, on_remove=rec.note_removed
        )
    return ResourcePool(rec.factory, finalizer=rec.finalizer, **options)


#: Idle TTLs the hammers run with: finalized at the last release, an idle
#: deadline that passes while loops work and shut down, one that never does.
SMALL_TTL, LONG_TTL = 0.01, 30
#: ``max_lifetime`` with the lifecycle options: passes while the loops work.
LIFETIME = 0.001
TTLS = (0, SMALL_TTL, LONG_TTL)
SCENARIOS = (TOGETHER, ACLOSE_WHILE_RUNNING, STAGGERED)


def run_scenario(
    ending: str, seed: int, per_loop: bool, ttl: float, lifecycle: bool = False
) -> list[str]:
    """Run one hammer and its checks; return what went wrong, as text.

    Text, not exceptions, so that nothing of the run (pool, loops, tasks)
    outlives it. A coroutine that was never awaited (a finalizer lost with
    its loop) is a problem too: it shows as a warning when collected.
    """
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            _SCENARIO_CHECKS[ending](seed, per_loop, ttl, lifecycle)
        except Exception:
            problems.append(traceback.format_exc())
        gc.collect()
    problems += [str(w.message) for w in caught if "never awaited" in str(w.message)]
    return problems


def _then_a_fresh_loop_clears(
    seed: int, per_loop: bool, ttl: float, lifecycle: bool
) -> None:
    """Every loop runs until all are done, then all close; a loop that never
    used the pool clears it, then closes it."""
    rec = Recorder()
    pool = new_pool(rec, ttl=ttl, per_loop=per_loop, lifecycle=lifecycle)
    run_hammer_threads(pool, rec, seed, per_loop=per_loop, ending=TOGETHER)
    stats = pool.stats
    assert stats.created == len(rec.created), stats
    assert stats.referenced_entries == stats.creating == 0, stats
    # What the closed loops left idle is waiting to be finalized, and shows.
    # (A key idle on several loops is one key of pending_cleanup.)
    assert stats.pending_cleanup == stats.idle_entries, stats
    pending = pool.pending_cleanup
    assert bool(pending) == bool(stats.idle_entries), pending
    assert all(isinstance(deadline, float) for deadline in pending.values())

    asyncio.run(asyncio.wait_for(pool.clear(), TIMEOUT))
    rec.assert_each_finalized_once()
    assert_drained(pool, rec)
    asyncio.run(asyncio.wait_for(pool.aclose(), TIMEOUT))
    rec.assert_each_finalized_once()
    assert_drained(pool, rec)
    if per_loop:
        rec.assert_same_loop(owner_may_be_gone=True)


def _while_one_loop_acloses(
    seed: int, per_loop: bool, ttl: float, lifecycle: bool
) -> None:
    """Loop 0 calls ``aclose`` while the others still run."""
    rec = Recorder()
    pool = new_pool(rec, ttl=ttl, per_loop=per_loop, lifecycle=lifecycle)
    run_hammer_threads(pool, rec, seed, per_loop=per_loop, ending=ACLOSE_WHILE_RUNNING)
    assert pool.closed
    rec.assert_each_finalized_once()
    assert_drained(pool, rec)
    if per_loop:
        rec.assert_same_loop(owner_may_be_gone=False)


def _leaving_while_others_hammer(
    seed: int, per_loop: bool, ttl: float, lifecycle: bool
) -> None:
    """Each loop closes once its own work is done, while the others go on
    (their operations adopt what it left); then ``aclose`` from a new loop."""
    rec = Recorder()
    pool = new_pool(rec, ttl=ttl, per_loop=per_loop, lifecycle=lifecycle)
    run_hammer_threads(pool, rec, seed, per_loop=per_loop, ending=STAGGERED)
    stats = pool.stats
    assert stats.created == len(rec.created), stats
    in_flight = stats.pending_cleanup - stats.idle_entries
    assert stats.finalized + stats.total_entries + in_flight == stats.created, stats

    asyncio.run(asyncio.wait_for(pool.aclose(), TIMEOUT))
    rec.assert_each_finalized_once()
    assert_drained(pool, rec)
    if per_loop:
        rec.assert_same_loop(owner_may_be_gone=True)


_SCENARIO_CHECKS = {
    TOGETHER: _then_a_fresh_loop_clears,
    ACLOSE_WHILE_RUNNING: _while_one_loop_acloses,
    STAGGERED: _leaving_while_others_hammer,
}
