"""WorkerLoopPool: warm event loops on daemon threads.

No assertion here is about speed, and no test sleeps in the hope that
another thread got somewhere: it waits for an event, or polls a condition
with a generous deadline that only bounds a hang and names what it waited
for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import random
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from tests.forked import report_from_child
from ttlpool.errors import PoolClosedError
from ttlpool.worker import WorkerLoopPool

HANG = 30.0  # bounds a hang; never a speed target
#: How long an idle adapter's threads may take to end (SPEC 8).
IDLE_THREADS_END = 5.0

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


async def _wait_until(
    predicate: Callable[[], bool], what: str = "condition", timeout: float = HANG
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not met within {timeout}s"
        await asyncio.sleep(0.005)


def _poll_until(
    predicate: Callable[[], bool], what: str = "condition", timeout: float = HANG
) -> None:
    """``_wait_until`` for a thread with no event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not met within {timeout}s"
        time.sleep(0.005)


def _alive(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"{prefix}-")]


def _no_thread_of(prefix: str) -> Callable[[], bool]:
    return lambda: _alive(prefix) == []


async def _where() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    return asyncio.get_running_loop(), threading.current_thread()


async def _current_thread() -> threading.Thread:
    return threading.current_thread()


async def _forever() -> None:
    await asyncio.Event().wait()


# -- reuse ---------------------------------------------------------------------


async def test_sequential_dispatches_run_on_the_same_loop_and_thread() -> None:
    async with WorkerLoopPool(name="ttlpool-t-seq") as loops:
        first = await loops.run(_where)
        second = await loops.run(_where)
    assert first[0] is second[0]
    assert first[1] is second[1]
    assert first[1].name == "ttlpool-t-seq-1"
    assert first[1].daemon
    assert first[0] is not asyncio.get_running_loop()


async def test_each_key_has_a_loop_of_its_own() -> None:
    async with WorkerLoopPool(name="ttlpool-t-keys") as loops:
        a = await loops.run(_current_thread, key="a")
        b = await loops.run(_current_thread, key="b")
        again = await loops.run(_current_thread, key="a")
    assert a is again
    assert a is not b
    assert sorted([a.name, b.name]) == ["ttlpool-t-keys-1", "ttlpool-t-keys-2"]


async def test_ttl_zero_gives_every_dispatch_a_fresh_loop() -> None:
    async with WorkerLoopPool(ttl=0, name="ttlpool-t-zero") as loops:
        first = await loops.run(_current_thread)
        second = await loops.run(_current_thread)
        assert first is not second
        await _wait_until(lambda: not first.is_alive())


def test_max_lifetime_recycles_a_busy_loop_and_retires_the_old_one() -> None:
    """A loop past ``max_lifetime`` is not handed out again, even though
    dispatches keep it warm (``ttl=None``: it never idles out): a later
    dispatch gets a fresh loop and the old one's thread ends."""
    loops = WorkerLoopPool(ttl=None, max_lifetime=0.05, name="ttlpool-t-life")
    try:
        first = loops.run_sync(_current_thread)
        assert first.name == "ttlpool-t-life-1"
        _poll_until(
            lambda: loops.run_sync(_current_thread) is not first,
            "a dispatch on a fresh loop",
        )
        _poll_until(lambda: not first.is_alive(), "the old loop's thread ended")
    finally:
        asyncio.run(loops.stop())
    _poll_until(_no_thread_of("ttlpool-t-life"), "no thread left")


async def test_loop_factory_makes_the_worker_loops() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    def factory() -> asyncio.AbstractEventLoop:
        made.append(asyncio.new_event_loop())
        return made[-1]

    async with WorkerLoopPool(loop_factory=factory, name="ttlpool-t-factory") as loops:
        loop, _ = await loops.run(_where)
    assert made == [loop]
    assert loop.is_closed()


# -- stop and the TTL reap -------------------------------------------------------


async def test_stop_leaves_no_thread_no_warning_and_no_pending_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loops = WorkerLoopPool(name="ttlpool-t-stop")
    with caplog.at_level(logging.DEBUG):
        loop, thread = await loops.run(_where)
        assert sorted(_alive("ttlpool-t-stop")) == [
            thread.name,
            "ttlpool-t-stop-control",
        ]
        await asyncio.wait_for(loops.stop(), HANG)
        assert _alive("ttlpool-t-stop") == []
        assert loop.is_closed()
        gc.collect()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any("destroyed" in r.getMessage() for r in caplog.records)


async def test_an_idle_loop_is_reaped_after_its_ttl_without_stop() -> None:
    async with WorkerLoopPool(ttl=0.05, name="ttlpool-t-ttl") as loops:
        loop, thread = await loops.run(_where)
        await _wait_until(lambda: not thread.is_alive(), "the worker thread ends")
        assert loop.is_closed()
        assert loops.stats.expired == 1
        await _wait_until(lambda: loops.stats.finalized == 1, "finalized == 1")
        # Nothing left to serve: the control thread ends too.
        await _wait_until(
            _no_thread_of("ttlpool-t-ttl"), "no thread of the pool", IDLE_THREADS_END
        )


def _threads_of(name: str) -> tuple[threading.Thread, threading.Thread]:
    """The worker thread running this, and the pool's control thread."""
    control = [t for t in threading.enumerate() if t.name == f"{name}-control"]
    assert len(control) == 1, control
    return threading.current_thread(), control[0]


async def _threads_here(name: str) -> tuple[threading.Thread, threading.Thread]:
    return _threads_of(name)


async def test_an_idle_adapter_holds_no_thread_and_starts_again_on_demand() -> None:
    name = "ttlpool-t-idle"
    loops = WorkerLoopPool(ttl=0, name=name)
    try:
        worker, control = await loops.run(_threads_here, name)
        # ttl=0: the worker was retired in the release; the control thread
        # has nothing left to serve and ends by itself.
        await _wait_until(
            _no_thread_of(name), "no thread of the pool", IDLE_THREADS_END
        )
        assert loops.stats.finalized == 1
        again, new_control = await loops.run(_threads_here, name)
        assert again is not worker and again.name == f"{name}-2"
        assert new_control is not control
    finally:
        await asyncio.wait_for(loops.stop(), HANG)
    assert _alive(name) == []
    assert loops.stats.created == loops.stats.finalized == 2


def test_an_idle_adapter_used_by_run_sync_holds_no_thread() -> None:
    name = "ttlpool-t-idlesync"
    loops = WorkerLoopPool(ttl=0, name=name)
    seen: list[tuple[threading.Thread, threading.Thread]] = []
    errors: list[BaseException] = []

    def client() -> None:  # a plain thread: no event loop
        try:
            seen.append(loops.run_sync(_threads_here, name))
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        for _ in range(2):
            thread = threading.Thread(target=client)
            thread.start()
            thread.join(HANG)
            assert not thread.is_alive() and not errors, errors
            _poll_until(_no_thread_of(name), "no thread of the pool", IDLE_THREADS_END)
        (first, first_control), (second, second_control) = seen
        assert first is not second and second.name == f"{name}-2"
        assert first_control is not second_control
    finally:
        asyncio.run(asyncio.wait_for(loops.stop(), HANG))
    assert _alive(name) == []
    assert loops.stats.created == loops.stats.finalized == 2


@pytest.mark.parametrize("seed", range(6))
async def test_dispatches_racing_the_control_loops_retirement_all_succeed(
    seed: int,
) -> None:
    """With ttl=0 every dispatch ends in a retirement check of the control
    loop. In rounds, tasks (``run``, ``lease``) and plain threads
    (``run_sync``) dispatch together; the next round starts the moment one ends, so its
    dispatches arrive while the control loop checks whether it is idle,
    retires, or is being replaced by a new one."""
    rng = random.Random(seed)
    name = f"ttlpool-t-hammer{seed}"
    loops = WorkerLoopPool(ttl=0, name=name)
    expected: list[int] = []
    results: list[int] = []
    errors: list[BaseException] = []

    async def echo(value: int, pauses: int) -> int:
        for _ in range(pauses):
            await asyncio.sleep(0)
        return value

    def steps() -> list[tuple[int, Any, int, int]]:
        # (value, key, pauses on the worker, pauses before dispatching)
        made = [
            (rng.randrange(10**9), rng.choice(["a", "b", None]), rng.randrange(3),
             rng.randrange(5))
            for _ in range(rng.randrange(1, 3))
        ]  # fmt: skip
        expected.extend(value for value, *_ in made)
        return made

    async def from_a_task(plan: list[tuple[int, Any, int, int]]) -> None:
        for value, key, pauses, before in plan:
            for _ in range(before):
                await asyncio.sleep(0)
            if value % 3:
                results.append(await loops.run(echo, value, pauses, key=key))
                continue
            async with loops.lease(key) as loop:  # the raw loop, a third way
                running = asyncio.run_coroutine_threadsafe(echo(value, pauses), loop)
                results.append(await asyncio.wrap_future(running))

    def from_a_thread(plan: list[tuple[int, Any, int, int]]) -> None:
        try:
            for value, key, pauses, before in plan:
                for _ in range(before):
                    time.sleep(0)  # a yield to the other threads
                results.append(loops.run_sync(echo, value, pauses, key=key))
        except BaseException as exc:  # reported below
            errors.append(exc)

    async def round_() -> None:
        threads = [
            threading.Thread(target=from_a_thread, args=(steps(),))
            for _ in range(rng.randrange(3))
        ]
        for thread in threads:
            thread.start()
        await asyncio.gather(
            *(from_a_task(steps()) for _ in range(rng.randrange(1, 4)))
        )
        deadline = time.monotonic() + HANG
        while any(thread.is_alive() for thread in threads):  # no pause: race
            assert time.monotonic() < deadline, "the client threads did not end"
            await asyncio.sleep(0)

    try:
        for _ in range(15):
            await asyncio.wait_for(round_(), HANG)
    finally:
        await asyncio.wait_for(loops.stop(), HANG)
    assert not errors, errors
    assert sorted(results) == sorted(expected)
    stats = loops.stats
    assert stats.created == stats.finalized
    assert stats.total_entries == stats.referenced_entries == stats.creating == 0
    assert _alive(name) == []


async def _echo(value: int) -> int:
    return value


@pytest.mark.parametrize("seed", range(3))
async def test_stop_racing_the_control_loops_own_retirement_leaves_no_thread(
    seed: int,
) -> None:
    """``stop`` lands before the control loop's retirement check, while the
    loop retires by itself, or after it ended, depending on the pause."""
    rng = random.Random(seed)
    for n in range(30):
        name = f"ttlpool-t-stoprace{seed}-{n}"
        loops = WorkerLoopPool(ttl=0, name=name)
        assert await loops.run(_echo, n) == n
        for _ in range(rng.randrange(40)):
            await asyncio.sleep(0)
        await asyncio.wait_for(loops.stop(), HANG)
        assert _alive(name) == []
        assert loops.stats.created == loops.stats.finalized == 1


async def test_a_dispatch_during_a_slow_reap_gets_a_fresh_loop_at_once() -> None:
    gate = threading.Event()  # holds the old loop's teardown until set
    reaping = threading.Event()
    keep: list[object] = []

    async def leave_a_slow_teardown_behind() -> threading.Thread:
        loop = asyncio.get_running_loop()
        # The loop's teardown shuts its default executor down, which waits
        # for this job: the old thread cannot end before the gate opens.
        keep.append(loop.run_in_executor(None, gate.wait, HANG))

        async def sentinel() -> None:
            try:
                await _forever()
            finally:
                reaping.set()  # the drain reached this loop: the reap is on

        keep.append(loop.create_task(sentinel()))
        return threading.current_thread()

    async with WorkerLoopPool(ttl=0.05, name="ttlpool-t-slow") as loops:
        try:
            old = await loops.run(leave_a_slow_teardown_behind)
            await _wait_until(reaping.is_set)
            new = await asyncio.wait_for(loops.run(_current_thread), HANG)
            assert new is not old
            assert old.is_alive()  # still in its teardown: nobody waited for it
        finally:
            gate.set()
        await _wait_until(lambda: not old.is_alive())
    keep.clear()


async def test_stop_drains_three_generations_of_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ended: list[int] = []
    keep: list[asyncio.Task[None]] = []

    async def link(n: int) -> None:
        try:
            await _forever()
        finally:
            ended.append(n)
            if n < 3:
                keep.append(asyncio.create_task(link(n + 1)))
                await asyncio.sleep(0)  # the next link starts running

    async def leave_a_chain_behind() -> None:
        keep.append(asyncio.create_task(link(1)))
        await asyncio.sleep(0)

    loops = WorkerLoopPool(name="ttlpool-t-gens")
    await loops.run(leave_a_chain_behind)
    with caplog.at_level(logging.DEBUG):
        await asyncio.wait_for(loops.stop(), HANG)
        gc.collect()
    assert ended == [1, 2, 3]
    assert all(task.cancelled() for task in keep)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert _alive("ttlpool-t-gens") == []


async def test_a_task_ignoring_cancellation_is_given_up_on_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn_tasks: list[asyncio.Task[None]] = []

    async def stubborn() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await _forever()

    async def leave_a_stubborn_task_behind() -> None:
        task = asyncio.create_task(stubborn(), name="stubborn-sentry")
        stubborn_tasks.append(task)
        await asyncio.sleep(0)

    loops = WorkerLoopPool(drain_timeout=0.1, name="ttlpool-t-stubborn")
    await loops.run(leave_a_stubborn_task_behind)
    with caplog.at_level(logging.WARNING, logger="ttlpool"):
        await asyncio.wait_for(loops.stop(), HANG)
    assert _alive("ttlpool-t-stubborn") == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "ttlpool"
    assert "'stubborn-sentry'" in warnings[0].getMessage()
    assert not stubborn_tasks[0].done()
    # Left pending on a loop that is now closed: asyncio reports it when it
    # is collected. Collect it here, so that the report lands in this test.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        stubborn_tasks.clear()
        gc.collect()
    assert any("destroyed but it is pending" in r.getMessage() for r in caplog.records)


async def test_stop_cancels_work_in_flight() -> None:
    started = threading.Event()
    cancelled = threading.Event()

    async def sleeper() -> None:
        started.set()
        try:
            await _forever()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loops = WorkerLoopPool(name="ttlpool-t-inflight")
    caller = asyncio.create_task(loops.run(sleeper))
    await _wait_until(started.is_set)
    await asyncio.wait_for(loops.stop(), HANG)
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cancelled.is_set()


async def test_stop_times_out_naming_the_threads_and_can_be_awaited_again() -> None:
    gate = threading.Event()
    blocked = threading.Event()

    async def block_the_loop() -> str:
        blocked.set()
        gate.wait(HANG)  # synchronous: the loop cannot even start its drain
        return "unblocked"

    loops = WorkerLoopPool(name="ttlpool-t-timeout")
    caller = asyncio.create_task(loops.run(block_the_loop))
    await _wait_until(blocked.is_set)
    try:
        with pytest.raises(TimeoutError, match="ttlpool-t-timeout-1"):
            await loops.stop(timeout=0.05)
    finally:
        gate.set()
    await asyncio.wait_for(loops.stop(), HANG)
    assert _alive("ttlpool-t-timeout") == []
    assert await caller == "unblocked"  # it ended before the drain began


async def test_a_thread_stuck_past_its_bounds_is_abandoned_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    blocked = threading.Event()

    async def block_the_loop() -> None:
        blocked.set()
        gate.wait(HANG)

    loops = WorkerLoopPool(
        drain_timeout=0.05, join_timeout=0.05, name="ttlpool-t-stuck"
    )
    caller = asyncio.create_task(loops.run(block_the_loop))
    await _wait_until(blocked.is_set)
    try:
        with caplog.at_level(logging.WARNING, logger="ttlpool"):
            await asyncio.wait_for(loops.stop(), HANG)
        with pytest.raises(RuntimeError, match="abandoned"):
            await caller
        assert _alive("ttlpool-t-stuck") == ["ttlpool-t-stuck-1"]
        messages = [r.getMessage() for r in caplog.records]
        assert any("ttlpool-t-stuck-1" in m and "did not end" in m for m in messages)
    finally:
        gate.set()
    await _wait_until(lambda: _alive("ttlpool-t-stuck") == [])


async def test_stop_is_idempotent_and_closes_for_good() -> None:
    loops = WorkerLoopPool(name="ttlpool-t-closed")
    await loops.run(_where)
    await loops.stop()
    await loops.stop()
    assert loops.closed
    with pytest.raises(PoolClosedError, match="run"):
        await loops.run(_where)
    with pytest.raises(PoolClosedError, match="lease"):
        async with loops.lease():
            pass


async def test_stop_before_any_dispatch_starts_no_thread() -> None:
    loops = WorkerLoopPool(name="ttlpool-t-unused")
    await loops.stop()
    assert _alive("ttlpool-t-unused") == []
    with pytest.raises(PoolClosedError):
        await loops.run(_where)


async def test_a_stray_loop_stop_does_not_end_a_pooled_loop() -> None:
    async def stop_my_loop() -> threading.Thread:
        asyncio.get_running_loop().stop()
        return threading.current_thread()

    async with WorkerLoopPool(name="ttlpool-t-stray") as loops:
        first = await loops.run(stop_my_loop)
        assert await loops.run(_current_thread) is first


# -- what crosses the threads ---------------------------------------------------


async def test_cancelling_the_caller_cancels_the_worker_task() -> None:
    started = threading.Event()
    seen: list[str] = []

    async def sleeper() -> None:
        started.set()
        try:
            await _forever()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("unwound")

    async with WorkerLoopPool(name="ttlpool-t-cancel") as loops:
        caller = asyncio.create_task(loops.run(sleeper))
        await _wait_until(started.is_set)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        # run() waited for the worker task to unwind before it raised.
        assert seen == ["cancelled", "unwound"]
        assert await loops.run(_current_thread)  # the loop is still warm


async def test_a_second_cancellation_stops_waiting_for_the_unwind() -> None:
    started = threading.Event()
    unwinding = threading.Event()
    # Set on the worker loop (call_soon_threadsafe) to let the unwind end.
    release: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def slow_to_unwind() -> None:
        gate = asyncio.Event()
        release.append((asyncio.get_running_loop(), gate))
        started.set()
        try:
            await _forever()
        finally:
            unwinding.set()
            await gate.wait()

    async with WorkerLoopPool(name="ttlpool-t-cancel2") as loops:
        caller = asyncio.create_task(loops.run(slow_to_unwind))
        await _wait_until(started.is_set, "the call started")
        caller.cancel()
        await _wait_until(unwinding.is_set, "the worker task is unwinding")
        # The caller passed the cancellation on in the step that took it, so
        # it has decided by now; the worker task cannot end before the gate
        # opens, and run() waits for it.
        assert not caller.done()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        worker_loop, gate = release[0]
        worker_loop.call_soon_threadsafe(gate.set)


async def test_an_exception_comes_back_with_the_worker_frames() -> None:
    def deep_in_the_worker() -> None:
        raise LookupError("from the worker")

    async def fails() -> None:
        await asyncio.sleep(0)
        deep_in_the_worker()

    async with WorkerLoopPool(name="ttlpool-t-raise") as loops:
        with pytest.raises(LookupError, match="from the worker") as info:
            await loops.run(fails)
        names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert "fails" in names
        assert "deep_in_the_worker" in names
        assert await loops.run(_current_thread)  # the loop survived


async def test_the_callers_context_is_visible_inside_and_changes_stay_there() -> None:
    async def read_and_change() -> str:
        seen = request_id.get()
        request_id.set("changed by the worker")
        return seen

    token = request_id.set("r-42")
    try:
        async with WorkerLoopPool(name="ttlpool-t-ctx") as loops:
            assert await loops.run(read_and_change) == "r-42"
            assert request_id.get() == "r-42"
    finally:
        request_id.reset(token)


async def test_arguments_and_keyword_arguments_are_passed() -> None:
    async def combine(a: int, b: int, *, scale: int) -> int:
        return (a + b) * scale

    async with WorkerLoopPool(name="ttlpool-t-args") as loops:
        assert await loops.run(combine, 1, 2, scale=10) == 30
        assert await loops.run(combine, 1, 2, scale=10, key="other") == 30


async def test_a_function_that_returns_no_awaitable_is_a_type_error() -> None:
    def not_async() -> int:
        return 1

    async with WorkerLoopPool(name="ttlpool-t-notasync") as loops:
        with pytest.raises(TypeError, match="not an awaitable"):
            await loops.run(not_async)  # type: ignore[arg-type]


async def test_an_unhashable_key_is_a_type_error() -> None:
    loops = WorkerLoopPool(name="ttlpool-t-unhashable")
    with pytest.raises(TypeError, match="unhashable"):
        await loops.run(_where, key=["not", "hashable"])  # type: ignore[arg-type]
    await loops.stop()


async def test_lease_gives_the_raw_loop_and_keeps_it_warm() -> None:
    async with WorkerLoopPool(name="ttlpool-t-lease") as loops:
        async with loops.lease() as loop:
            assert loop is not asyncio.get_running_loop()
            running = asyncio.run_coroutine_threadsafe(_where(), loop)
            leased_loop, thread = await asyncio.wrap_future(running)
            assert leased_loop is loop
        assert await loops.run(_current_thread) is thread


@pytest.mark.parametrize("ttl", [0, 30])
async def test_a_lease_request_cancelled_while_its_loop_is_made_leaks_no_lease(
    ttl: float,
) -> None:
    making = threading.Event()  # the factory runs: the request is being served
    cancelled = threading.Event()  # the factory waits for the cancellation

    def slow_loop_factory() -> asyncio.AbstractEventLoop:
        making.set()
        assert cancelled.wait(HANG), "the test did not cancel"
        return asyncio.new_event_loop()

    name = f"ttlpool-t-leasecancel{ttl}"
    loops = WorkerLoopPool(ttl=ttl, loop_factory=slow_loop_factory, name=name)
    try:

        async def take() -> None:
            async with loops.lease():
                await _forever()

        holder = asyncio.create_task(take())
        await _wait_until(making.is_set, "the worker's creation started")
        assert loops.stats.creating == 1
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        cancelled.set()
        # The creation goes on without its requester: the new loop enters
        # the pool unreferenced, idle under the TTL, retired at once with 0.
        settled = (
            (lambda: loops.stats.finalized == 1)
            if ttl == 0
            else (lambda: loops.stats.idle_entries == 1)
        )
        await _wait_until(
            lambda: loops.stats.created == 1 and settled(), "the new loop settled"
        )
        assert loops.stats.referenced_entries == 0
        assert loops.stats.creating == 0
    finally:
        cancelled.set()
        await asyncio.wait_for(loops.stop(), HANG)
    assert loops.stats.finalized == loops.stats.created == 1
    assert _alive(name) == []


# -- os.fork() ------------------------------------------------------------------


async def _in_forked_child(loops: WorkerLoopPool, name: str) -> dict[str, Any]:
    report: dict[str, Any] = {"threads": _alive(name)}
    report["new"] = (await asyncio.wait_for(loops.run(_current_thread), HANG)).name
    await asyncio.wait_for(loops.stop(), HANG)
    report["after_stop"] = _alive(name)
    report["created"] = loops.stats.created
    return report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns about fork() while other threads run: this test forks
# on purpose while the pool's threads run, and the child leaves with _exit.
@pytest.mark.filterwarnings(
    "ignore:This process .*is multi-threaded:DeprecationWarning"
)
def test_a_forked_child_starts_with_no_thread_and_leaves_the_parents_alone() -> None:
    name = "ttlpool-t-fork"
    started = threading.Event()
    gates: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    outcome: list[object] = []

    async def wait_for_the_gate() -> str:
        gate = asyncio.Event()
        gates.append((asyncio.get_running_loop(), gate))
        started.set()
        await gate.wait()
        return "done in the parent"

    def client() -> None:
        try:
            outcome.append(loops.run_sync(wait_for_the_gate))
        except BaseException as exc:  # reported below
            outcome.append(exc)

    loops = WorkerLoopPool(name=name)
    caller = threading.Thread(target=client)
    caller.start()
    try:
        assert started.wait(HANG), "the call did not start"
        seen = report_from_child(lambda: _in_forked_child(loops, name), timeout=HANG)
        assert seen["threads"] == []  # threads do not survive a fork
        assert seen["new"] == f"{name}-1"  # the child numbers its own threads
        assert seen["after_stop"] == []
        assert seen["created"] == 1
        # The parent's call, worker and control loop went on untouched.
        assert sorted(_alive(name)) == [f"{name}-1", f"{name}-control"]
        worker_loop, gate = gates[0]
        worker_loop.call_soon_threadsafe(gate.set)
        caller.join(HANG)
        assert outcome == ["done in the parent"]
    finally:
        if gates:
            worker_loop, gate = gates[0]
            worker_loop.call_soon_threadsafe(gate.set)
        caller.join(HANG)
        asyncio.run(asyncio.wait_for(loops.stop(), HANG))
    assert _alive(name) == []
    assert loops.stats.created == loops.stats.finalized == 1


# -- run_sync, from threads with no event loop --------------------------------


def test_run_sync_from_plain_threads() -> None:
    async def double(n: int) -> tuple[int, str, str]:
        await asyncio.sleep(0)
        return 2 * n, threading.current_thread().name, request_id.get("unset")

    def fails() -> Any:
        async def inner() -> None:
            raise KeyError("sync caller")

        return inner()

    loops = WorkerLoopPool(name="ttlpool-t-sync")
    results: list[tuple[int, str, str]] = []

    def client(n: int) -> None:
        request_id.set(f"client-{n}")
        results.append(loops.run_sync(double, n))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(HANG)
    assert sorted(results) == [
        (2 * n, "ttlpool-t-sync-1", f"client-{n}") for n in range(4)
    ]
    # This thread runs no event loop either.
    assert loops.run_sync(double, 5, key="main")[0] == 10
    with pytest.raises(KeyError, match="sync caller"):
        loops.run_sync(fails)
    asyncio.run(loops.stop())
    assert _alive("ttlpool-t-sync") == []


async def test_run_sync_refuses_a_thread_whose_loop_is_running() -> None:
    loops = WorkerLoopPool(name="ttlpool-t-syncrefuse")
    with pytest.raises(RuntimeError, match="await"):
        loops.run_sync(_where)
    await loops.stop()


# -- construction ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"ttl": -1}, ValueError, "ttl"),
        ({"drain_timeout": -1}, ValueError, "drain_timeout"),
        ({"join_timeout": float("nan")}, ValueError, "join_timeout"),
        ({"join_timeout": "5"}, TypeError, "join_timeout"),
        ({"loop_factory": 3}, TypeError, "loop_factory"),
        ({"name": 3}, TypeError, "name"),
    ],
)
def test_bad_arguments_are_refused_naming_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        WorkerLoopPool(**kwargs)


def test_construction_needs_no_event_loop_and_starts_no_thread() -> None:
    loops = WorkerLoopPool(name="ttlpool-t-lazy")
    assert _alive("ttlpool-t-lazy") == []
    assert "ttlpool-t-lazy" in repr(loops)
    assert loops.ttl == 30.0
    asyncio.run(loops.stop())
