"""One pool, many event loops, threads and processes (SPEC section 6).

Every test here is bounded: threads are joined with a timeout and asserted
dead, cross-loop calls go through ``asyncio.wait_for``. Threads are daemons
so that a deadlock fails the test instead of hanging the interpreter, and
every thread a test starts is joined before it returns (the autouse
fixtures of ``conftest.py`` check that).

Resources are :class:`Res` objects that remember the loop and thread that
made them; a :class:`Recorder` notes, under a thread lock, every creation,
hand-out and finalization, so a test can check "finalized exactly once" and
"created, handed out and finalized on one loop".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import os
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests import hammer
from tests.forked import report_from_child
from tests.hammer import (
    LONG_TTL,
    SMALL_TTL,
    TIMEOUT,
    Loop,
    Recorder,
    Res,
    assert_drained,
    new_pool,
)
from ttlpool import ResourcePool


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait, polling, for ``predicate``; fail after ``TIMEOUT``."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.002)

    try:
        await asyncio.wait_for(poll(), TIMEOUT)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}")


class LoopThread:
    """An event loop run by ``asyncio.run`` on its own thread until ``stop``.

    ``await lt.run(fn, *args)`` runs ``fn(*args)`` (a coroutine function) on
    that loop from another loop. The coroutine is created on the target
    loop, so nothing is ever left un-awaited.
    """

    _names = itertools.count(1)

    def __init__(self, name: str = "loops-test") -> None:
        self.loop: Loop | None = None
        self.error: BaseException | None = None
        #: ``asyncio.run``'s main coroutine returned: the loop shuts down.
        self.served = False
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self.thread = threading.Thread(
            target=self._main, name=f"{name}-{next(self._names)}", daemon=True
        )
        self.thread.start()
        assert self._ready.wait(TIMEOUT), "loop thread did not start"

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = self.loop.create_future()
        self._ready.set()
        try:
            await self._stop
        finally:
            self.served = True  # asyncio.run now shuts the loop down

    def submit(
        self, fn: Callable[..., Awaitable[Any]], *args: Any
    ) -> concurrent.futures.Future[Any]:
        assert self.loop is not None

        async def call() -> Any:
            return await fn(*args)

        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            if future.set_running_or_notify_cancel():
                task = asyncio.ensure_future(call())
                task.add_done_callback(lambda t: _copy(t, future))

        self.loop.call_soon_threadsafe(start)
        return future

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await asyncio.wait_for(
            asyncio.wrap_future(self.submit(fn, *args)), TIMEOUT
        )

    def stop(self) -> None:
        """Let ``asyncio.run`` return (closing the loop) and join the thread."""
        if self.thread.is_alive() and self.loop is not None:
            stop = self._stop
            assert stop is not None

            def finish() -> None:
                if not stop.done():
                    stop.set_result(None)

            self.loop.call_soon_threadsafe(finish)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop"
        assert self.loop is not None and self.loop.is_closed()
        if self.error is not None:
            raise self.error


def _copy(task: asyncio.Future[Any], future: concurrent.futures.Future[Any]) -> None:
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        future.set_result(task.result())


@pytest.fixture
def loop_threads() -> Iterator[Callable[[], LoopThread]]:
    """Start loop threads on demand; every one is stopped and joined after."""
    started: list[LoopThread] = []

    def start() -> LoopThread:
        lt = LoopThread()
        started.append(lt)
        return lt

    yield start
    errors = []
    for lt in started:
        try:
            lt.stop()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


# -- many threads hammering one pool (more seeds: python -m tests.stress) ------


def _hammer_params(*ttls: float) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        ("seed", "per_loop", "ttl"),
        [
            pytest.param(seed, per_loop, ttl, id=f"{seed}-{mode}-ttl{ttl}")
            for seed in (1, 2)
            for per_loop, mode in ((True, "per_loop"), (False, "shared"))
            for ttl in ttls
        ],
    )


@_hammer_params(0, SMALL_TTL, LONG_TTL)
def test_threads_hammer_then_a_fresh_loop_finalizes_what_closed_loops_left(
    seed: int, per_loop: bool, ttl: float
) -> None:
    """Threads hammer one pool, then their loops close; a loop that never
    used the pool clears, then closes it: every object finalized exactly
    once, counts exact, per loop each on its own loop while that ran."""
    assert_no_problems(hammer.run_scenario(hammer.TOGETHER, seed, per_loop, ttl))


@_hammer_params(0, SMALL_TTL, LONG_TTL)
def test_threads_hammer_while_one_loop_acloses_finalizes_each_once_on_its_loop(
    seed: int, per_loop: bool, ttl: float
) -> None:
    """One loop calls ``aclose`` while the others still run: every loop's
    entries are finalized exactly once, per loop on their own loop."""
    scenario = hammer.ACLOSE_WHILE_RUNNING
    assert_no_problems(hammer.run_scenario(scenario, seed, per_loop, ttl))


@_hammer_params(0, SMALL_TTL, LONG_TTL)
def test_threads_leaving_while_others_hammer_then_aclose_finalizes_each_once(
    seed: int, per_loop: bool, ttl: float
) -> None:
    """Each loop closes as soon as its own work is done while the others
    go on (their next operations sweep what it left); then
    ``asyncio.run(pool.aclose())`` finalizes the rest, each exactly once."""
    assert_no_problems(hammer.run_scenario(hammer.STAGGERED, seed, per_loop, ttl))


@pytest.mark.parametrize("scenario", hammer.SCENARIOS)
@_hammer_params(SMALL_TTL)
def test_threads_hammer_a_pool_with_every_lifecycle_option(
    scenario: str, seed: int, per_loop: bool, ttl: float
) -> None:
    """The hammers again, with a ``validate`` that says no one time in
    five, lifetimes that pass while the loops work and ``on_remove``: every
    object is finalized once, after one ``on_remove`` call with one cause."""
    assert_no_problems(hammer.run_scenario(scenario, seed, per_loop, ttl, True))


def assert_no_problems(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


# -- asyncio.run() twice with one module-level pool ---------------------------


@pytest.mark.parametrize("second_run_starts_with", ["get", "aclose"])
def test_asyncio_run_twice_finalizes_the_first_runs_idle_entries(
    second_run_starts_with: str,
) -> None:
    """The first run's idle entry is finalized on the second run's loop by
    its first operation, or by its ``aclose``; the second run works; stats
    never count the dead loop's timer as pending cleanup."""
    rec = Recorder()
    pool = new_pool(rec, ttl=30)  # like a module-level pool

    async def lease(key: str) -> Res:
        async with pool.get(key) as res:
            rec.handed_out(res, per_loop=True)
            return res

    first = asyncio.run(lease("k"))
    assert first.loop.is_closed()
    assert rec.loops_of(first) == []
    stats = pool.stats
    assert (stats.total_entries, stats.idle_entries) == (1, 1)
    # Its timer died with its loop, but it still waits to be finalized.
    assert stats.pending_cleanup == 1
    assert list(pool.pending_cleanup) == ["k"]

    async def second_run() -> None:
        here = asyncio.get_running_loop()
        if second_run_starts_with == "get":
            second = await lease("k")
            assert second is not first
            assert second.loop is here
            await _until(lambda: bool(rec.loops_of(first)), "first run's finalizer")
            assert rec.loops_of(first) == [here]
            assert pool.stats.created == 2
            assert pool.stats.finalized == 1
            assert pool.stats.total_entries == 1  # only this run's entry
            assert pool.stats.pending_cleanup == 1
        await asyncio.wait_for(pool.aclose(), TIMEOUT)
        assert rec.loops_of(first) == [here]

    asyncio.run(second_run())
    rec.assert_each_finalized_once()
    rec.assert_same_loop(owner_may_be_gone=True)
    assert_drained(pool, rec)


class _SteppedTimer:
    __slots__ = ("callback", "cancelled", "handle", "loop", "when")

    def __init__(self, when: float, loop: Loop, callback: Callable[[], object]):
        self.when = when
        self.loop = loop
        self.callback = callback
        self.cancelled = False
        self.handle: asyncio.Handle | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()


class _SteppedClock:
    """Time moves only when a test says so (``advance``). A due timer runs
    on its own loop at that loop's next turn, as ``call_later`` would; a
    timer whose loop closed dies with it, as a real one does.

    (``ManualClock.advance`` cannot stand in: it raises on a timer armed
    on a loop that has closed since.)
    """

    def __init__(self) -> None:
        self.time = 0.0
        self._lock = threading.Lock()
        self._waiting: list[_SteppedTimer] = []

    def now(self) -> float:
        return self.time

    def call_at(
        self, loop: Loop, when: float, callback: Callable[[], object]
    ) -> _SteppedTimer:
        timer = _SteppedTimer(when, loop, callback)
        with self._lock:
            self._waiting.append(timer)
        self._start_due()
        return timer

    def advance(self, seconds: float) -> None:
        self.time += seconds
        self._start_due()

    def _start_due(self) -> None:
        with self._lock:
            due = [t for t in self._waiting if t.when <= self.time]
            self._waiting = [t for t in self._waiting if t.when > self.time]
        for timer in due:
            if not timer.cancelled and not timer.loop.is_closed():
                timer.handle = timer.loop.call_soon_threadsafe(timer.callback)


def test_asyncio_run_twice_with_shared_entries_reuses_them_and_keeps_reaping() -> None:
    """Shared across loops, the first run's idle entry is handed out again
    in the second run, and its idle deadline still fires although the timer
    that was armed for it died with the first loop."""
    rec, clock = Recorder(), _SteppedClock()
    ttl = 30
    pool = new_pool(rec, ttl=ttl, per_loop=False, clock=clock)

    async def lease(key: str) -> Res:
        async with pool.get(key) as res:
            return res

    first = asyncio.run(lease("k"))
    assert first.loop.is_closed() and pool.stats.idle_entries == 1

    async def second_run() -> None:
        assert await lease("k") is first  # no time passed: still warm
        await lease("other")
        clock.advance(ttl)  # both idle deadlines pass
        await _until(lambda: len(pool) == 0, "the idle entries to expire")
        assert pool.stats.expired == 2
        await asyncio.wait_for(pool.aclose(), TIMEOUT)

    asyncio.run(second_run())
    rec.assert_each_finalized_once()
    assert pool.stats.expired == 2


def test_shared_stats_count_an_idle_entry_whose_timer_died_with_its_loop() -> None:
    """The loop that armed the timer closed: the idle entry still waits to be
    finalized and shows as pending; a live loop takes the timer over."""
    rec = Recorder()
    pool = new_pool(rec, ttl=30, per_loop=False)

    async def lease() -> None:
        async with pool.get("k"):
            pass

    asyncio.run(lease())  # "k" idles; its timer was armed on that loop
    assert pool.stats.idle_entries == 1
    assert pool.stats.pending_cleanup == 1
    assert list(pool.pending_cleanup) == ["k"]

    async def second_run() -> None:  # a live loop takes the timer over
        async with pool.get("j"):
            pass
        assert pool.stats.pending_cleanup == 2
        await asyncio.wait_for(pool.aclose(), TIMEOUT)

    asyncio.run(second_run())
    rec.assert_each_finalized_once()


# -- clear, aclose and expire reach every loop ---------------------------------


@pytest.mark.parametrize("operation", ["clear", "aclose"])
async def test_clear_finalizes_each_loops_entries_on_that_loop_or_here_if_closed(
    operation: str, loop_threads: Callable[[], LoopThread]
) -> None:
    """``clear``/``aclose`` from this loop finalize a running loop's entries
    on that loop, and a closed loop's entries on this loop."""
    rec = Recorder()
    pool = new_pool(rec, ttl=30)
    here = asyncio.get_running_loop()
    running, closing = loop_threads(), loop_threads()

    async def lease(key: str) -> Res:
        async with pool.get(key) as res:
            return res

    b_idle = await running.run(lease, "x")
    b_held = await running.run(pool.acquire, "y")
    c_idle = await closing.run(lease, "x")
    a_idle = await lease("x")
    closing.stop()
    assert len(pool) == 4

    await asyncio.wait_for(getattr(pool, operation)(), TIMEOUT)

    assert rec.loops_of(b_idle) == [running.loop]
    assert rec.loops_of(b_held) == [running.loop]
    assert rec.loops_of(c_idle) == [here]
    assert rec.loops_of(a_idle) == [here]
    assert running.loop is not None and running.loop.is_running()
    # The holder keeps its object; its release is now a no-op.
    await running.run(pool.release, "y")
    assert rec.loops_of(b_held) == [running.loop]
    if operation == "clear":  # the pool still works on the running loop
        again = await running.run(lease, "y")
        assert again is not b_held and again.loop is running.loop
        await asyncio.wait_for(pool.aclose(), TIMEOUT)
        assert rec.loops_of(again) == [running.loop]
    rec.assert_each_finalized_once()
    rec.assert_same_loop(owner_may_be_gone=True)
    assert_drained(pool, rec)


async def test_clear_from_a_loop_that_never_used_the_pool_finalizes_dead_loops(
    loop_threads: Callable[[], LoopThread],
) -> None:
    """Two loops close with idle entries; ``clear`` from a loop that has no
    entries of its own finalizes both loops' entries there."""
    rec = Recorder()
    pool = new_pool(rec, ttl=30)
    here = asyncio.get_running_loop()
    threads = [loop_threads(), loop_threads()]
    left = [await lt.run(pool.acquire, "k") for lt in threads]
    for lt in threads:
        await lt.run(pool.release, "k")
    for lt in threads:
        lt.stop()
    assert len(pool) == 2

    await asyncio.wait_for(pool.clear(), TIMEOUT)
    assert [rec.loops_of(res) for res in left] == [[here], [here]]
    assert_drained(pool, rec)
    await pool.aclose()


@pytest.mark.parametrize("per_loop", [True, False], ids=["per_loop", "shared"])
async def test_expire_from_another_loop_retires_the_key_on_every_loop(
    per_loop: bool, loop_threads: Callable[[], LoopThread]
) -> None:
    """``expire(key)`` from this loop: another loop's idle entry of ``key``
    is finalized on that loop before ``expire`` returns; its referenced
    entry is finalized there at its last release, unless re-acquired."""
    rec = Recorder()
    pool = new_pool(rec, ttl=30, per_loop=per_loop)
    here = asyncio.get_running_loop()
    b = loop_threads()
    assert b.loop is not None

    async def lease(key: str) -> Res:
        async with pool.get(key) as res:
            return res

    b_idle = await b.run(lease, "idle")
    b_held = await b.run(pool.acquire, "held")
    b_twice = await b.run(pool.acquire, "twice")
    await b.run(pool.acquire, "twice")
    a_idle = await lease("idle")
    a_held = await lease("held")  # idle on this loop, held on b (per loop)
    if not per_loop:
        assert a_idle is b_idle and a_held is b_held

    await asyncio.wait_for(pool.expire("idle"), TIMEOUT)
    if per_loop:
        assert rec.loops_of(b_idle) == [b.loop]
        assert rec.loops_of(a_idle) == [here]
    else:  # one loop-agnostic entry: expire finalizes it on the caller's loop
        assert rec.loops_of(b_idle) == [here]
    assert "idle" not in pool

    await asyncio.wait_for(pool.expire("held"), TIMEOUT)
    assert rec.loops_of(b_held) == []  # drained first: still leased on b
    if per_loop:
        assert rec.loops_of(a_held) == [here]  # it was idle here
    assert "held" in pool
    await b.run(pool.release, "held")  # the last lease: finalized inside
    assert rec.loops_of(b_held) == [b.loop]
    assert "held" not in pool

    # Acquiring again before the last release clears the mark.
    await asyncio.wait_for(pool.expire("twice"), TIMEOUT)
    await b.run(pool.release, "twice")
    await b.run(pool.acquire, "twice")
    await b.run(pool.release, "twice")
    await b.run(pool.release, "twice")
    assert rec.loops_of(b_twice) == []
    assert "twice" in pool
    assert pool.stats.idle_entries == 1

    await asyncio.wait_for(pool.aclose(), TIMEOUT)
    if per_loop:  # shared, whichever loop's clear gets there first does it
        assert rec.loops_of(b_twice) == [b.loop]
    rec.assert_each_finalized_once()
    if per_loop:
        rec.assert_same_loop(owner_may_be_gone=False)
    assert_drained(pool, rec)


# -- factories and finalizers that call back across loops ----------------------


@pytest.mark.parametrize("ttl", [0, 30])
@pytest.mark.parametrize("per_loop", [True, False], ids=["per_loop", "shared"])
async def test_factory_and_finalizer_call_back_into_the_pool_on_another_loop(
    per_loop: bool, ttl: float, loop_threads: Callable[[], LoopThread]
) -> None:
    """A factory on this loop acquires a key on loop B (whose factory in
    turn leases a key back on this loop); the finalizer releases it on B,
    expires a key from B and leases another key here. Neither leases, nor
    the release, nor a ``clear`` deadlock, and each object is finalized
    exactly once."""
    rec = Recorder()
    here = asyncio.get_running_loop()
    b = loop_threads()
    assert b.loop is not None
    b_loop = b.loop

    async def lease(key: str) -> Res:
        async with pool.get(key) as res:
            return res

    async def factory(key: str) -> Res:
        if key == "outer":  # runs here; reaches into b
            await b.run(pool.acquire, "inner")
        elif key == "inner":  # runs on b; reaches back into this loop
            back = asyncio.run_coroutine_threadsafe(lease("leaf"), here)
            await asyncio.wait_for(asyncio.wrap_future(back), TIMEOUT)
        return await rec.factory(key)

    async def finalizer(res: Res) -> None:
        rec.note_finalize(res)
        if res.key == "outer":
            await b.run(pool.release, "inner")
            await b.run(pool.expire, "leaf")
            await lease("side")

    pool: ResourcePool[str, Res] = ResourcePool(
        factory, finalizer=finalizer, ttl=ttl, per_loop=per_loop
    )

    async with pool.get("outer") as outer:
        assert outer.loop is here
        (inner,) = [r for r in rec.created.values() if r.key == "inner"]
        (leaf,) = [r for r in rec.created.values() if r.key == "leaf"]
        assert inner.loop is b_loop and leaf.loop is here
    if ttl == 0:
        assert rec.loops_of(outer) == [here]
        assert rec.loops_of(inner) == [b_loop]  # its last release ran on b
        assert rec.loops_of(leaf) == [here]

    # Again, now with the finalizer running inside clear (every generation).
    async with pool.get("outer") as second:
        await asyncio.wait_for(pool.clear(), TIMEOUT)
        assert rec.loops_of(second) == [here]
    await asyncio.wait_for(pool.clear(), TIMEOUT)  # what finalizers left
    await asyncio.wait_for(pool.aclose(), TIMEOUT)
    rec.assert_each_finalized_once()
    if per_loop:
        rec.assert_same_loop(owner_may_be_gone=False)
    assert_drained(pool, rec)


# -- os.fork() ------------------------------------------------------------------


async def _in_forked_child(pool: ResourcePool[str, Res], rec: Recorder) -> dict:
    """What the child sees and does; returned to the parent through a pipe."""
    seen = {
        "len": len(pool),
        "total_entries": pool.stats.total_entries,
        "contains": ["held" in pool, "idle" in pool],
        "pending_cleanup": pool.stats.pending_cleanup,
    }
    parents = sorted(rec.created)
    await pool.release("held")  # the parent's lease: nothing to release here
    async with pool.get("idle") as fresh:
        seen["fresh_is_new"] = fresh.serial not in parents
        seen["len_while_held"] = len(pool)
    await asyncio.wait_for(pool.aclose(), TIMEOUT)
    seen["finalized"] = sorted(rec.finalized)
    seen["fresh"] = fresh.serial
    return seen


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns about fork() when other threads are alive. This test
# starts none, and every test of this module joins its threads, but a test
# elsewhere in the suite may leave an idle daemon thread (an executor's);
# the child runs only this test's code and leaves with os._exit.
@pytest.mark.filterwarnings(
    "ignore:This process .*is multi-threaded:DeprecationWarning"
)
def test_forked_child_starts_with_an_empty_pool_and_never_finalizes_parents() -> None:
    rec = Recorder()
    pool = new_pool(rec, ttl=30)
    loop = asyncio.new_event_loop()
    try:

        async def setup() -> tuple[Res, Res]:
            held = await pool.acquire("held")
            async with pool.get("idle") as idle:
                pass
            return held, idle

        held, idle = loop.run_until_complete(setup())
        assert len(pool) == 2
        seen = report_from_child(lambda: _in_forked_child(pool, rec), timeout=TIMEOUT)
        assert seen["len"] == 0
        assert seen["total_entries"] == 0
        assert seen["pending_cleanup"] == 0
        assert seen["contains"] == [False, False]
        assert seen["fresh_is_new"] and seen["len_while_held"] == 1
        # The child finalized only what it made, none of the parent's.
        assert seen["finalized"] == [seen["fresh"]]

        # The parent's pool is untouched by the child.
        assert len(pool) == 2 and rec.loops_of(held) == rec.loops_of(idle) == []
        loop.run_until_complete(pool.release("held"))
        loop.run_until_complete(pool.aclose())
        assert rec.loops_of(held) == rec.loops_of(idle) == [loop]
        rec.assert_each_finalized_once()
    finally:
        loop.close()


# -- regressions: bugs this module found, each kept as a test ---------------------


def test_shared_mode_first_miss_does_not_deadlock() -> None:
    """Regression: LockedLedger.lookup took the pool's non-reentrant lock
    and called hit(), which took it again."""
    rec = Recorder()
    pool = new_pool(rec, per_loop=False)
    result: list[Res] = []
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(pool.acquire("k"))), daemon=True
    )
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "deadlock"
    assert len(result) == 1 and "k" in pool
    asyncio.run(asyncio.wait_for(pool.aclose(), TIMEOUT))
    rec.assert_each_finalized_once()


async def test_stats_totals_survive_aclose(
    loop_threads: Callable[[], LoopThread],
) -> None:
    """Regression: aclose dropped the running totals of every partition it
    cleared (found by this module and by test_pool_clear)."""
    rec = Recorder()
    pool = new_pool(rec, ttl=30)
    b = loop_threads()

    async def lease(key: str) -> Res:
        async with pool.get(key) as res:
            return res

    await lease("k")
    await lease("k")
    await b.run(lease, "k")
    before = pool.stats
    assert (before.created, before.hits, before.misses) == (2, 1, 2)
    await asyncio.wait_for(pool.aclose(), TIMEOUT)
    after = pool.stats
    assert (after.created, after.finalized) == (2, 2), after
    assert (after.hits, after.misses) == (1, 2), after


async def test_a_finalizer_running_as_its_loop_shuts_down_ends_and_clear_returns(
    loop_threads: Callable[[], LoopThread],
) -> None:
    """``clear`` from this loop starts B's finalizers on B; B's
    ``asyncio.run`` then returns and cancels its tasks. The finalizer runs
    on to its end regardless (B's shutdown waits for it), is counted once,
    and ``clear`` returns instead of raising ``CancelledError``."""
    rec = Recorder()
    gate = threading.Event()
    completed: list[str] = []

    async def finalizer(res: Res) -> None:
        rec.note_finalize(res)
        if res.key == "slow":
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, TIMEOUT)
        completed.append(res.key)

    pool: ResourcePool[str, Res] = ResourcePool(
        rec.factory, finalizer=finalizer, ttl=30
    )
    b = loop_threads()
    for key in ("slow", "other"):
        await b.run(pool.acquire, key)
    clearing = asyncio.ensure_future(pool.clear())
    await _until(lambda: bool(rec.finalized), "the slow finalizer to start on B")
    stopping = asyncio.ensure_future(asyncio.to_thread(b.stop))
    await _until(lambda: b.served, "B's asyncio.run to begin its shutdown")
    gate.set()  # only now may the slow finalizer end
    try:
        await asyncio.wait_for(asyncio.shield(clearing), TIMEOUT)
        await asyncio.wait_for(stopping, TIMEOUT)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        assert current is not None and not current.cancelling()
        pytest.fail("clear() raised CancelledError, but nobody cancelled it")
    finally:
        gate.set()
        for task in (clearing, stopping):
            if not task.done():  # pragma: no cover - only after a timeout
                task.cancel()
                await asyncio.wait({task})
    assert sorted(completed) == ["other", "slow"]
    rec.assert_each_finalized_once()
    assert pool.stats.finalized == 2
    assert len(pool) == 0 and pool.stats.creating == 0
    await asyncio.wait_for(pool.aclose(), TIMEOUT)


async def test_finalizing_a_closed_loops_entries_is_counted_though_swept(
    loop_threads: Callable[[], LoopThread],
) -> None:
    """``clear`` here finalizes closed loop B's entry; meanwhile a miss on
    loop C sweeps B's partition. The finalization is still counted, and it
    shows as pending cleanup while it runs."""
    rec = Recorder()
    gate = asyncio.Event()

    async def finalizer(res: Res) -> None:
        rec.note_finalize(res)
        if res.key == "k":
            await gate.wait()

    pool: ResourcePool[str, Res] = ResourcePool(
        rec.factory, finalizer=finalizer, ttl=30
    )
    b, c = loop_threads(), loop_threads()
    await b.run(pool.acquire, "k")
    await b.run(pool.release, "k")
    b.stop()
    clearing = asyncio.ensure_future(pool.clear())
    try:
        await _until(lambda: bool(rec.finalized), "B's entry to be finalized here")
        await c.run(pool.acquire, "j")  # a miss on C: it sweeps B's partition
        while_running = (pool.stats.pending_cleanup, dict(pool.pending_cleanup))
    finally:
        gate.set()
        await asyncio.wait_for(clearing, TIMEOUT)
    await c.run(pool.release, "j")
    await asyncio.wait_for(pool.clear(), TIMEOUT)
    rec.assert_each_finalized_once()
    assert_drained(pool, rec)
    assert while_running == (1, {"k": None})
    await pool.aclose()


class _JumpClock:
    """Timers run ``delay`` loop iterations after they are armed, and the
    time moves only when a test says so: a test can make an idle deadline
    pass exactly while ``asyncio.run`` shuts its loop down."""

    def __init__(self, delay: int) -> None:
        self.time = 0.0
        self.delay = delay

    def now(self) -> float:
        return self.time

    def call_at(
        self, loop: Loop, when: float, callback: Callable[[], object]
    ) -> asyncio.Handle:
        def later(countdown: int) -> None:
            if countdown:
                loop.call_soon(later, countdown - 1)
            else:
                callback()

        return loop.call_soon(later, self.delay - 1)


@pytest.mark.parametrize("per_loop", [True, False], ids=["per_loop", "shared"])
def test_idle_deadline_passing_as_asyncio_run_ends_settles_the_finalizer(
    per_loop: bool,
) -> None:
    """The timer starts the finalizer as ``asyncio.run`` shuts the loop down.

    From 3.12 the finalizer's task starts eagerly and runs it. Before, the
    task is cancelled before its first step: the finalizer's coroutine is
    closed (never "never awaited") and the entry handed back to the pool,
    whose next clear (here, aclose from a new loop) finalizes it.
    """
    rec, clock = Recorder(), _JumpClock(delay=1)
    pool: ResourcePool[str, Res] = ResourcePool(
        rec.factory, finalizer=rec.finalizer, ttl=1, clock=clock, per_loop=per_loop
    )

    async def last_lease() -> Res:
        async with pool.get("k") as res:
            pass
        clock.time += 10  # the deadline passes: the timer fires as run() ends
        return res

    res = asyncio.run(last_lease())
    asyncio.run(asyncio.wait_for(pool.aclose(), TIMEOUT))
    gc.collect()
    stats = pool.stats
    assert stats.pending_cleanup == 0
    assert stats.finalized == stats.created == 1
    assert len(rec.loops_of(res)) == 1, "the finalizer ran, exactly once"
    assert stats.finalizer_errors == 0


def test_a_finalizer_cut_off_by_a_loop_closed_without_shutdown_is_abandoned() -> None:
    """A loop closed without ``asyncio.run``'s shutdown (no
    ``shutdown_asyncgens()``) while a finalizer its idle timer started is
    suspended there: the finalizer is cut off. ``aclose`` from another loop
    does not wait for it, counts it as abandoned (not finalized, never run
    again) and leaves nothing pending."""
    rec, clock = Recorder(), _JumpClock(delay=1)

    async def slow_finalizer(res: Res) -> None:
        rec.note_finalize(res)
        await asyncio.get_running_loop().create_future()  # never ends by itself

    pool: ResourcePool[str, Res] = ResourcePool(
        rec.factory, finalizer=slow_finalizer, ttl=1, clock=clock, per_loop=False
    )

    async def last_lease() -> None:
        async with pool.get("k"):
            pass
        clock.time += 10  # the deadline passes: the timer starts the finalizer
        while not rec.finalized:
            await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(last_lease(), TIMEOUT))
    finally:
        loop.close()  # with the finalizer suspended: it never runs again
    try:
        asyncio.run(asyncio.wait_for(pool.aclose(), TIMEOUT))
    except asyncio.TimeoutError:
        pytest.fail("aclose waited for a task of a closed loop")
    stats = pool.stats
    assert len(rec.finalized) == 1
    assert (stats.created, stats.finalized, stats.abandoned) == (1, 0, 1), stats
    assert stats.pending_cleanup == stats.total_entries == 0, stats
    assert pool.pending_cleanup == {}


class _SignallingLoop(asyncio.SelectorEventLoop):
    """Sets ``handed_over`` whenever another thread schedules a callback."""

    def __init__(self) -> None:
        super().__init__()
        self.handed_over = threading.Event()

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.Handle:
        handle = super().call_soon_threadsafe(callback, *args, **kwargs)
        self.handed_over.set()
        return handle


def test_clear_handed_to_a_loop_that_stops_before_running_it_still_finalizes() -> None:
    rec = Recorder()
    pool = new_pool(rec, ttl=30)
    loop_b = _SignallingLoop()
    proceed = threading.Event()
    errors: list[BaseException] = []

    def run_b() -> None:
        try:
            loop_b.call_soon(proceed.wait, TIMEOUT)  # B runs, but is busy
            loop_b.run_forever()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            loop_b.close()  # stopped for good, its last callbacks never run

    async def lease() -> Res:
        async with pool.get("k") as res:
            return res

    res = loop_b.run_until_complete(lease())  # B's idle entry
    loop_b.handed_over.clear()
    thread = threading.Thread(target=run_b, name="loops-test-b", daemon=True)
    thread.start()

    async def clear_from_a() -> None:
        clearing = asyncio.ensure_future(pool.clear())
        await _until(loop_b.handed_over.is_set, "clear to hand over to B")
        loop_b.call_soon_threadsafe(loop_b.stop)  # B stops after the hand-over
        proceed.set()
        await asyncio.wait_for(clearing, TIMEOUT)

    with warnings.catch_warnings():
        # With the bug, the finalizer coroutine created on B is never
        # awaited: let its warning out here, not in some later test.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            asyncio.run(clear_from_a())
        finally:
            proceed.set()
            thread.join(TIMEOUT)
        calls, stats = rec.loops_of(res), pool.stats
        pool = None  # type: ignore[assignment]
        gc.collect()
    assert not thread.is_alive() and not errors
    assert len(calls) == 1, "the finalizer ran never, or twice"
    # B may carry the clear out before it stops, then closes without
    # asyncio.run's shutdown: a finalizer that started there and had not
    # ended is cut off and reported as abandoned (never run again); one that
    # ended there, or never started (then it runs here), is finalized.
    assert stats.finalized + stats.abandoned == stats.created == 1, stats
    assert stats.pending_cleanup == 0, stats
