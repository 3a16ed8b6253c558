"""Acceptance tests for the "exactly once, always returns" issue.

Each test turns one reported fault into a black-box check through the public
API (SPEC sections 2, 3, 5, 6, 7 and 9):

1. exactly-once finalization under loops and threads racing
   (``WorkerLoopPool(ttl=0)`` driven from tasks and plain threads at once);
2. calls that never returned: ``clear``/``aclose`` from inside a finalizer
   or a factory, a factory acquiring its own key (a cycle), ``expire`` and
   ``aclose`` while another thread's loop is stopped but not closed;
3. finalizations lost, cut off or run twice: a ``KeyboardInterrupt`` from
   ``on_error``, ``asyncio.run`` twice, cancelled callers, ``aclose`` racing
   a release, a forked child unwinding an inherited lease;
4. observation and drop-in: reading the pool from another thread, stats of
   idle worker loops, ``bool(pool)``, wool's error phrases, the worker pool's
   helper thread, ``pending_cleanup`` of a loop that closed.

Nothing here sleeps and hopes: waits use events, a ``ManualClock``, or a
bounded poll of a condition that fails with a message. Every wait is bounded
(``BOUND``), and a scenario whose call might never return runs in a daemon
thread of its own, joined with a timeout, so that a regression fails the
test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from ttlpool import PoolClosedError, ResourcePool, WorkerLoopPool
from ttlpool.testing import ManualClock

R = TypeVar("R")

#: Upper bound, in seconds, for any call that must return.
BOUND = 5.0
#: Upper bound for a whole scenario run in a thread of its own.
THREAD_BOUND = 4 * BOUND


class Res:
    """A pooled resource: its key, and a serial number unique in the test."""

    __slots__ = ("key", "serial")

    def __init__(self, key: Any, serial: int) -> None:
        self.key = key
        self.serial = serial

    def __repr__(self) -> str:
        return f"<Res #{self.serial} {self.key!r}>"


class Recorder:
    """A factory and finalizers that record, thread-safely, what they did.

    ``finalized`` lists the serial of every finalizer call that reached its
    last line; ``started`` every call that began.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.serials = itertools.count(1)
        self.created: dict[int, Res] = {}
        self.started: list[int] = []
        self.finalized: list[int] = []

    def factory(self, key: object) -> Res:
        with self.lock:
            res = Res(key, next(self.serials))
            self.created[res.serial] = res
        return res

    def finalizer(self, res: Res) -> None:
        with self.lock:
            self.started.append(res.serial)
            self.finalized.append(res.serial)

    async def afinalizer(self, res: Res) -> None:
        with self.lock:
            self.started.append(res.serial)
        await asyncio.sleep(0)
        with self.lock:
            self.finalized.append(res.serial)

    def assert_each_finalized_once(self) -> None:
        with self.lock:
            counts = {s: self.finalized.count(s) for s in self.created}
            unknown = set(self.finalized) - set(self.created)
        assert not unknown, f"finalized objects the factory never made: {unknown}"
        wrong = {s: n for s, n in counts.items() if n != 1}
        assert not wrong, f"serial -> completed finalizer calls (must be 1): {wrong}"


async def _bounded(awaitable: Awaitable[R], what: str, timeout: float = BOUND) -> R:
    """Await ``awaitable``; fail the test if it takes more than ``timeout``."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"{what}: did not return within {timeout}s", pytrace=False)


class _Abandoned(BaseException):
    """Raised into a scenario thread that overran its bound, to end it."""


def _interrupt(thread: threading.Thread) -> bool:
    """Raise :class:`_Abandoned` in ``thread`` (CPython); whether it ended.

    Only for a scenario that already failed: a call spinning the CPU, which
    ``asyncio.wait_for`` cannot interrupt, would otherwise slow every later
    test down.
    """
    if sys.implementation.name != "cpython" or thread.ident is None:
        return False
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned)
    )
    thread.join(BOUND)
    return not thread.is_alive()


def _in_thread(
    main: Callable[[], Coroutine[Any, Any, R]], what: str, timeout: float = THREAD_BOUND
) -> R:
    """``asyncio.run(main())`` in a daemon thread; fail if it is still running
    after ``timeout``: a call that spins the CPU cannot be interrupted by
    ``asyncio.wait_for``, but from there it cannot hang the suite."""
    results: list[R] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(asyncio.run(main()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"exactly-once {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        ended = _interrupt(thread)
        pytest.fail(
            f"{what}: still running after {timeout}s without yielding to its "
            "event loop (a call never returned, spinning); its thread "
            + ("was interrupted" if ended else "is left behind as a daemon"),
            pytrace=False,
        )
    if errors:
        raise errors[0]
    return results[0]


async def _work(value: R) -> R:
    await asyncio.sleep(0)
    return value


def _lease_once(pool: ResourcePool[Any, Res], key: object) -> Coroutine[Any, Any, Res]:
    async def lease() -> Res:
        async with pool.get(key) as res:
            return res

    return lease()


# -- 1. exactly once while loops and threads race ------------------------------


def _set_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Complete ``future`` from another thread, if anyone still waits for it."""

    def settle() -> None:
        if not future.done():
            future.set_result(None)

    with contextlib.suppress(RuntimeError):  # the test's loop closed: nobody waits
        loop.call_soon_threadsafe(settle)


@pytest.mark.parametrize(
    "closing_loops", [False, True], ids=["tasks+threads", "tasks+threads+closing"]
)
async def test_worker_loops_used_from_tasks_and_threads_are_each_finalized_once(
    closing_loops: bool,
) -> None:
    """``run()`` from several tasks and ``run_sync()`` from several plain
    threads at once (and, in the second variant, ``run()`` from threads
    that make a new event loop for every dispatch and close it right
    after), many dispatches over a few keys with ``ttl=0``, so every worker
    is retired after its dispatch: each dispatch returns its own value, and
    after ``stop()`` every worker made was finalized exactly once and
    nothing is left."""
    tasks, sync_threads, dispatches = 4, 4, 150
    keys = ("a", "b", "c")
    loops = WorkerLoopPool(ttl=0, name="exactly-once-hammer")
    loop = asyncio.get_running_loop()
    errors: list[str] = []

    def key_of(n: int, i: int) -> str:
        return keys[(n + i) % len(keys)]

    def check(got: object, expected: object, how: str) -> None:
        if got != expected:
            errors.append(f"{how} returned {got!r}, not {expected!r}")

    def from_thread(n: int, done: asyncio.Future[None]) -> None:
        try:
            for i in range(dispatches):
                if n % 2 or not closing_loops:
                    got = loops.run_sync(_work, (n, i), key=key_of(n, i))
                    check(got, (n, i), "run_sync")
                else:  # a loop per dispatch, closed as soon as it returns
                    run = loops.run(_work, (n, i), key=key_of(n, i))
                    check(asyncio.run(run), (n, i), "asyncio.run(run())")
        except BaseException:
            errors.append(traceback.format_exc())
        finally:
            _set_soon(loop, done)

    async def from_task(n: int) -> None:
        for i in range(dispatches):
            try:
                got = await loops.run(_work, (n, i), key=key_of(n, i))
            except Exception:
                errors.append(traceback.format_exc())
                return
            check(got, (n, i), "run")

    thread_count = 2 * sync_threads if closing_loops else sync_threads
    finished = [loop.create_future() for _ in range(thread_count)]
    threads = [
        threading.Thread(
            target=from_thread,
            args=(tasks + n, done),
            name=f"exactly-once-caller-{n}",
            daemon=True,
        )
        for n, done in enumerate(finished)
    ]
    try:
        for thread in threads:
            thread.start()
        await _bounded(
            asyncio.gather(*(from_task(n) for n in range(tasks)), *finished),
            "dispatches from tasks and threads",
            THREAD_BOUND,
        )
    finally:
        for thread in threads:
            thread.join(BOUND)
        await _bounded(loops.stop(), "WorkerLoopPool.stop()", THREAD_BOUND)
    assert not any(t.is_alive() for t in threads), "a caller thread never ended"
    assert not errors, "\n".join(errors[:5])
    stats = loops.stats
    assert stats.created > 0
    assert stats.finalized == stats.created, stats
    assert stats.total_entries == 0, stats
    assert stats.referenced_entries == stats.idle_entries == stats.creating == 0, stats
    assert stats.pending_cleanup == 0, stats


# -- 2a. clear() and aclose() from inside a finalizer or a factory -------------

CALLS_BACK = ["clear", "aclose", "clear(timeout=0.5)"]


async def _call_back(pool: ResourcePool[Any, Any], call: str) -> str:
    """Make ``call`` on ``pool`` right in the calling task (a task of its own
    would hide the fault) and say how it ended. The caller bounds the wait."""
    try:
        if call == "clear":
            await pool.clear()
        elif call == "aclose":
            await pool.aclose()
        else:
            await pool.clear(timeout=0.5)
    except TimeoutError:  # clear's own timeout: allowed for clear(timeout=)
        return "raised TimeoutError"
    return "returned"


def _allowed(call: str) -> set[str]:
    if call == "clear(timeout=0.5)":
        return {"returned", "raised TimeoutError"}
    return {"returned"}


@pytest.mark.parametrize("call", CALLS_BACK)
def test_clear_or_aclose_called_from_a_finalizer_the_idle_timer_started_returns(
    call: str,
) -> None:
    """A finalizer started by the idle timer calls back into the pool: the
    call never waits for that finalization itself, so it returns."""

    async def main() -> None:
        rec = Recorder()
        clock = ManualClock()
        outcomes: list[str] = []

        async def finalizer(res: Res) -> None:
            outcomes.append(await _call_back(pool, call))
            rec.finalizer(res)

        pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=5, clock=clock)
        async with pool.get("k"):
            pass
        await _bounded(clock.advance(5), f"the idle reap whose finalizer calls {call}")
        assert outcomes, "the idle timer never started the finalizer"
        assert outcomes[0] in _allowed(call), (
            f"{call} called from a finalizer the idle timer started: {outcomes[0]}"
        )
        await _bounded(pool.aclose(), "aclose() afterwards")
        assert len(pool) == 0
        assert pool.stats.finalized == pool.stats.created == 1, pool.stats
        rec.assert_each_finalized_once()

    _in_thread(main, f"{call} from a timer-started finalizer")


@pytest.mark.parametrize("call", CALLS_BACK)
def test_clear_or_aclose_called_from_an_async_factory_returns(call: str) -> None:
    """An async factory calls back into the pool: the call never waits for
    the creation it is part of, so it returns; the acquirer then gets the
    resource (or ``PoolClosedError`` after ``aclose``) and whatever was
    made is finalized exactly once."""

    async def main() -> None:
        rec = Recorder()
        outcomes: list[str] = []

        async def factory(key: str) -> Res:
            outcomes.append(await _call_back(pool, call))
            return rec.factory(key)

        pool = ResourcePool(factory, finalizer=rec.finalizer, ttl=5)

        async def lease() -> str:
            try:
                async with pool.get("k"):
                    return "resource"
            except PoolClosedError:
                return "PoolClosedError"

        got = await _bounded(lease(), f"the acquire whose factory calls {call}")
        assert outcomes, "the factory never ran"
        assert outcomes[0] in _allowed(call), (
            f"{call} called from an async factory: {outcomes[0]}"
        )
        allowed = {"resource", "PoolClosedError"} if call == "aclose" else {"resource"}
        assert got in allowed, got
        await _bounded(pool.aclose(), "aclose() afterwards")
        assert len(pool) == 0
        assert pool.stats.finalized == pool.stats.created, pool.stats
        rec.assert_each_finalized_once()

    _in_thread(main, f"{call} from an async factory")


# -- 2b. a factory acquiring its own key ---------------------------------------


@pytest.mark.parametrize("path", ["directly", "through another key"])
async def test_a_factory_acquiring_its_own_key_raises_a_cycle_error(path: str) -> None:
    """``factory("a")`` acquires ``"a"`` (or ``"b"``, whose factory acquires
    ``"a"``): a ``RuntimeError`` naming the key and the cycle, never a wait
    forever; the pool still closes."""
    rec = Recorder()

    async def factory(key: str) -> Res:
        await asyncio.sleep(0)
        if key == "a":
            await pool.acquire("a" if path == "directly" else "b")
        elif key == "b":
            await pool.acquire("a")
        return rec.factory(key)

    pool = ResourcePool(factory, finalizer=rec.finalizer)
    try:
        await asyncio.wait_for(pool.acquire("a"), BOUND)
    except RuntimeError as exc:
        message = str(exc)
    except asyncio.TimeoutError:
        pytest.fail(
            f"acquire('a') with a factory acquiring 'a' {path}: waited forever "
            f"(gave up after {BOUND}s) instead of raising RuntimeError",
            pytrace=False,
        )
    else:
        pytest.fail("acquire('a') returned although its factory is a cycle")
    assert "cycle" in message, message
    assert "'a'" in message, message
    if path != "directly":
        assert "'b'" in message, f"the cycle goes through 'b': {message}"
    await _bounded(pool.aclose(), "aclose() after the cycle")
    assert pool.stats.finalized == pool.stats.created, pool.stats
    rec.assert_each_finalized_once()


# -- 2c. another thread's loop, stopped but not closed --------------------------


@pytest.mark.parametrize("then", ["runs again", "closes at once"])
def test_expire_and_aclose_return_while_another_threads_loop_is_stopped_but_open(
    then: str,
) -> None:
    """Thread T used the pool on its own loop, then stopped running it
    without closing it. ``expire`` and ``aclose`` from another thread return
    anyway. That loop keeps its entry until it runs again, and finalizes it
    then (or, if it closes without doing so, a later ``clear`` from a live
    loop does): exactly once in total, never on a foreign loop while T's
    loop may still run."""
    rec = Recorder()
    phase = ["setup"]
    finalized_in: list[tuple[str, str]] = []

    async def finalizer(res: Res) -> None:
        finalized_in.append((phase[0], threading.current_thread().name))
        rec.finalizer(res)

    pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=30)
    used, resume = threading.Event(), threading.Event()
    errors: list[str] = []

    def owner() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_lease_once(pool, "k"))
            used.set()
            if not resume.wait(THREAD_BOUND):
                errors.append("T was never resumed")
                return
            for _ in range(20 if then == "runs again" else 0):
                loop.run_until_complete(asyncio.sleep(0))  # a few turns,
                if finalized_in:  # until its entry is finalized
                    break
            if then == "runs again":  # shut down as asyncio.run does
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                if left:
                    gathered = asyncio.gather(*left, return_exceptions=True)
                    loop.run_until_complete(gathered)
                loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:
            errors.append(traceback.format_exc())
        finally:
            loop.close()

    thread = threading.Thread(target=owner, name="exactly-once-owner", daemon=True)
    thread.start()
    try:
        assert used.wait(BOUND), "T never used the pool"
        assert len(pool) == 1
        phase[0] = "expire"
        asyncio.run(_bounded(pool.expire("k"), "expire('k') from the main thread"))
        phase[0] = "aclose"
        asyncio.run(_bounded(pool.aclose(), "aclose() from the main thread"))
        assert pool.closed
    finally:
        phase[0] = f"T's loop {then}"
        resume.set()
        thread.join(THREAD_BOUND)
    assert not thread.is_alive(), "T never ended"
    assert not errors, "\n".join(errors)
    if not finalized_in:
        phase[0] = "a later clear"
        asyncio.run(_bounded(pool.clear(), "clear() after T's loop closed"))
    assert len(finalized_in) == 1, f"finalizer calls (phase, thread): {finalized_in}"
    allowed = {("a later clear", threading.current_thread().name)}
    if then == "runs again":
        allowed.add(("T's loop runs again", "exactly-once-owner"))
    assert finalized_in[0] in allowed, (
        f"finalized where T's loop could still run it: {finalized_in}"
    )
    rec.assert_each_finalized_once()
    stats = pool.stats
    assert stats.finalized == stats.created == 1, stats
    assert len(pool) == 0 and stats.pending_cleanup == 0, stats


# -- 3a. a BaseException from the on_error hook ----------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_keyboard_interrupt_from_on_error_during_clear_still_finalizes_every_entry(
    kind: str,
) -> None:
    """Every finalizer raises ``ValueError`` and the ``on_error`` hook raises
    ``KeyboardInterrupt``: ``clear`` still runs every finalizer once, counts
    them all, leaves nothing pending, then re-raises ``KeyboardInterrupt``."""
    keys = ["a", "b", "c", "d"]
    calls: list[Any] = []
    reports: list[tuple[str, Any]] = []

    def on_error(exc: BaseException, operation: str, key: object) -> None:
        reports.append((type(exc).__name__, key))
        raise KeyboardInterrupt

    def finalizer(res: Res) -> None:
        calls.append(res.key)
        raise ValueError(f"finalizer of {res.key!r} failed")

    async def afinalizer(res: Res) -> None:
        await asyncio.sleep(0)
        finalizer(res)

    rec = Recorder()
    pool = ResourcePool(
        rec.factory,
        finalizer=finalizer if kind == "sync" else afinalizer,
        ttl=30,
        on_error=on_error,
    )

    async def main() -> None:
        for key in keys:
            await _lease_once(pool, key)
        await _bounded(pool.clear(), "clear()")

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert sorted(calls) == keys, f"finalizer calls: {calls}"
    stats = pool.stats
    assert stats.finalized == stats.created == len(keys), stats
    assert pool.pending_cleanup == {}
    assert stats.pending_cleanup == 0, stats
    assert len(pool) == 0 and stats.total_entries == 0, stats
    # Never silent (SPEC 7): each failure counted and handed to the hook.
    assert stats.finalizer_errors == len(keys), stats
    assert sorted(key for _, key in reports) == keys, f"on_error calls: {reports}"
    asyncio.run(_bounded(pool.aclose(), "aclose() afterwards"))


# -- 3b. asyncio.run() twice -----------------------------------------------------


def test_first_runs_idle_entry_is_finalized_to_completion_by_the_second_run() -> None:
    """``asyncio.run(use("a")); asyncio.run(use("b"))`` with one pool: the
    first run's entry is finalized by the second run, to its last line (the
    second run's shutdown does not cut it off), and ``finalized`` counts only
    finalizers that ended."""
    started: list[Any] = []
    completed: list[Any] = []

    async def finalizer(res: Res) -> None:
        started.append(res.key)
        for _ in range(3):
            await asyncio.sleep(0)
        completed.append(res.key)

    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=30)
    asyncio.run(_lease_once(pool, "a"))
    asyncio.run(_lease_once(pool, "b"))
    assert "a" in completed, (
        f"the first run's entry was not finalized to completion by the second "
        f"run (finalizers started: {started}, completed: {completed})"
    )
    assert pool.stats.finalized == len(completed), (pool.stats, completed)

    asyncio.run(_bounded(pool.aclose(), "aclose()"))
    assert sorted(completed) == ["a", "b"], (started, completed)
    assert sorted(started) == ["a", "b"], started
    stats = pool.stats
    assert stats.finalized == stats.created == 2, stats
    assert len(pool) == 0 and stats.pending_cleanup == 0, stats


# -- 3c. cancelled callers and aclose never cut a finalizer off ------------------


class _HeldFinalizer:
    """An async finalizer that waits at a gate: ``started`` when it begins,
    ``ended`` lists what reached its last line."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.ended: list[Res] = []

    async def __call__(self, res: Res) -> None:
        self.started.set()
        await self.gate.wait()
        self.ended.append(res)


@pytest.mark.parametrize("caller", ["release", "lease exit", "expire"])
async def test_cancelling_a_caller_waiting_for_a_finalizer_lets_it_finish_first(
    caller: str,
) -> None:
    """Cancel a ``release()``, a lease's exit (``ttl=0``) or an ``expire()``
    while the finalizer it started runs: the finalizer reaches its end, and
    the caller raises ``CancelledError`` only after that; it counts once."""
    rec = Recorder()
    held = _HeldFinalizer()
    pool = ResourcePool(
        rec.factory, finalizer=held, ttl=30 if caller == "expire" else 0
    )
    coro: Coroutine[Any, Any, Any]
    if caller == "release":
        await pool.acquire("k")
        coro = pool.release("k")
    elif caller == "expire":
        await _lease_once(pool, "k")  # now idle: expire finalizes it at once
        coro = pool.expire("k")
    else:

        async def lease_exit() -> None:
            async with pool.get("k"):
                pass

        coro = lease_exit()
    task = asyncio.ensure_future(coro)
    finalizer_done_when_caller_ended: list[bool] = []
    task.add_done_callback(
        lambda _: finalizer_done_when_caller_ended.append(bool(held.ended))
    )
    try:
        await _bounded(held.started.wait(), "the finalizer to start")
        task.cancel()
        for _ in range(5):  # let the cancellation reach the caller
            await asyncio.sleep(0)
        ended_early = task.done()
    finally:
        held.gate.set()
        await asyncio.wait({task}, timeout=BOUND)
    assert task.done(), f"{caller} never ended after its finalizer did"
    assert held.ended == [rec.created[1]], (
        f"cancelling {caller} cut its finalizer off (ended: {held.ended})"
    )
    assert not ended_early, f"{caller} ended while its finalizer was still running"
    assert task.cancelled(), f"{caller} must end with CancelledError: {task!r}"
    assert finalizer_done_when_caller_ended == [True]
    assert pool.stats.finalized == pool.stats.created == 1, pool.stats
    await _bounded(pool.aclose(), "aclose()")
    assert pool.stats.finalized == 1, pool.stats


async def test_aclose_does_not_return_while_a_releases_finalizer_is_running() -> None:
    """A release (``ttl=0``) is finalizing when ``aclose`` is called:
    ``aclose`` returns only after that finalizer has ended."""
    rec = Recorder()
    held = _HeldFinalizer()
    pool = ResourcePool(rec.factory, finalizer=held, ttl=0)
    await pool.acquire("k")
    release = asyncio.ensure_future(pool.release("k"))
    aclose: asyncio.Future[None] | None = None
    try:
        await _bounded(held.started.wait(), "the finalizer to start")
        aclose = asyncio.ensure_future(pool.aclose())
        for _ in range(10):  # plenty of loop turns for aclose to finish
            await asyncio.sleep(0)
        closed_early = aclose.done()
    finally:
        held.gate.set()
        await _bounded(
            asyncio.gather(release, *([aclose] if aclose else [])),
            "release() and aclose() once the finalizer may end",
        )
    assert not closed_early, "aclose() returned while a finalizer was still running"
    assert len(held.ended) == 1
    assert pool.stats.finalized == pool.stats.created == 1, pool.stats


# -- 3d. a forked child unwinding a lease it inherited ----------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns about fork() while other threads are alive (a test
# elsewhere may leave an idle daemon thread). The child runs no pytest code:
# it unwinds the lease and leaves with os._exit before its loop runs again.
@pytest.mark.filterwarnings(
    "ignore:This process .*is multi-threaded:DeprecationWarning"
)
async def test_a_forked_child_unwinding_an_inherited_lease_never_finalizes_it() -> None:
    """``os.fork()`` inside ``async with pool.get("k")`` (``ttl=0``): the
    child leaves the block as usual, and must not run the finalizer on the
    parent's resource; the parent's exit finalizes it, once."""
    finalized_in: list[int] = []
    child_codes = {
        1: "the child ran the finalizer on the parent's resource",
        2: "leaving the inherited lease raised in the child",
    }

    def finalizer(res: Res) -> None:
        finalized_in.append(os.getpid())

    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=0)
    parent = os.getpid()
    pid = -1
    try:
        async with pool.get("k"):
            pid = os.fork()
    except BaseException:
        if pid == 0:
            os._exit(2)
        raise
    if pid == 0:  # the child: report through the exit code, run nothing else
        os._exit(1 if finalized_in else 0)

    deadline = time.monotonic() + BOUND
    while True:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not exit within {BOUND}s")
        await asyncio.sleep(0.005)  # bounded poll of the child's exit
    code = os.waitstatus_to_exitcode(status)
    assert code == 0, child_codes.get(code, f"the child exited with {code}")
    assert finalized_in == [parent]
    assert pool.stats.finalized == pool.stats.created == 1, pool.stats
    await _bounded(pool.aclose(), "aclose()")


# -- 4a. observing from another thread ---------------------------------------------


def test_observing_the_pool_from_another_thread_while_a_loop_churns_never_raises() -> (
    None
):
    """One thread's loop churns many keys with ``ttl > 0`` (misses, hits of
    idle entries, reaps by a manual clock); the main thread reads
    ``pending_cleanup``, ``stats``, ``len`` and ``in`` in a tight loop,
    bounded by iterations: no read ever raises."""
    reads, rounds_max, keys = 3000, 100_000, 300
    rec = Recorder()
    clock = ManualClock()
    pool = ResourcePool(rec.factory, finalizer=rec.afinalizer, ttl=5, clock=clock)
    churning, stop = threading.Event(), threading.Event()
    errors: list[str] = []

    async def churn() -> None:
        rng = random.Random(1)
        for _ in range(rounds_max):
            for key in rng.sample(range(keys), keys // 3):
                async with pool.get(key):
                    pass
            await clock.advance(1)
            churning.set()
            if stop.is_set():
                break
        await pool.aclose()

    def churner() -> None:
        try:
            asyncio.run(churn())
        except BaseException:
            errors.append(traceback.format_exc())
        finally:
            churning.set()

    thread = threading.Thread(target=churner, name="exactly-once-churn", daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings
    failure: str | None = None
    try:
        thread.start()
        assert churning.wait(BOUND), "the churning loop never started"
        for i in range(reads):
            try:
                pending = pool.pending_cleanup
                stats = pool.stats
                len(pool)
                _ = 7 in pool
            except Exception:
                failure = f"read #{i} raised:\n{traceback.format_exc()}"
                break
            assert all(v is None or isinstance(v, float) for v in pending.values())
            assert stats.total_entries >= 0
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join(THREAD_BOUND)
    assert not thread.is_alive(), "the churning thread never ended"
    assert failure is None, failure
    assert not errors, "\n".join(errors)
    rec.assert_each_finalized_once()


# -- 4b, 4e. WorkerLoopPool: stats of an idle loop, no helper thread when idle --


async def test_an_idle_worker_loop_counts_as_idle_and_pending_cleanup() -> None:
    """After one ``run()`` with ``ttl=30`` the warm loop is idle, waiting for
    its deadline: one idle entry, one pending cleanup."""
    loops = WorkerLoopPool(ttl=30, name="exactly-once-idle")
    try:
        assert await loops.run(_work, 42) == 42
        stats = loops.stats
        assert stats.idle_entries == 1, stats
        assert stats.pending_cleanup == 1, stats
    finally:
        await _bounded(loops.stop(), "WorkerLoopPool.stop()")


@pytest.mark.parametrize("via", ["asyncio.run(run())", "run_sync()"])
def test_an_idle_worker_loop_counts_as_pending_cleanup_whoever_dispatched(
    via: str,
) -> None:
    """The idle timer of a worker loop lives on the adapter's own loop: it
    is pending cleanup even when the loop that dispatched has closed."""
    loops = WorkerLoopPool(ttl=30, name="exactly-once-idle")
    try:
        if via == "run_sync()":
            assert loops.run_sync(_work, 42) == 42
        else:
            assert asyncio.run(loops.run(_work, 42)) == 42
        # run_sync's lease is given back on the adapter's own loop, which may
        # not have done it yet when the caller hears the outcome.
        deadline = time.monotonic() + BOUND
        while loops.stats.idle_entries != 1 and time.monotonic() < deadline:
            time.sleep(0.001)  # bounded poll of another thread's progress
        stats = loops.stats
        assert stats.idle_entries == 1, stats
        assert stats.pending_cleanup == 1, stats
    finally:
        asyncio.run(_bounded(loops.stop(), "WorkerLoopPool.stop()"))


async def test_worker_pool_holds_no_thread_once_every_loop_is_retired() -> None:
    """With ``ttl=0`` each worker loop is retired after its dispatch; once
    it is, no thread of the adapter (worker or ``-control``) stays alive."""
    name = "exactly-once-no-helper"
    loops = WorkerLoopPool(ttl=0, name=name)
    try:
        assert await loops.run(_work, 1) == 1
        deadline = time.monotonic() + BOUND
        while alive := [
            t.name for t in threading.enumerate() if t.name.startswith(name)
        ]:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"threads of an idle WorkerLoopPool still alive {BOUND}s after "
                    f"its only loop was retired: {alive}",
                    pytrace=False,
                )
            await asyncio.sleep(0.005)  # bounded poll of the thread list
    finally:
        await _bounded(loops.stop(), "WorkerLoopPool.stop()")


# -- 4c. bool(pool) -----------------------------------------------------------------


def test_a_pool_is_true_even_when_empty_and_after_aclose() -> None:
    pool: ResourcePool[str, Res] = ResourcePool(Recorder().factory)
    assert len(pool) == 0
    assert bool(pool) is True
    asyncio.run(_bounded(pool.aclose(), "aclose()"))
    assert bool(pool) is True


# -- 4d. error messages: wool's phrases, the key and the operation ---------------


async def test_releasing_a_key_whose_count_is_zero_keeps_wools_message() -> None:
    pool = ResourcePool(Recorder().factory, ttl=30)
    await _lease_once(pool, "k")  # "k" is idle: its count is 0
    with pytest.raises(ValueError) as info:
        await pool.release("k")
    message = str(info.value)
    assert "Reference count for key 'k' is already 0" in message, message
    assert "release" in message, f"the operation is not named: {message}"
    await pool.aclose()


async def test_lease_misuse_keeps_wools_messages_and_names_the_key() -> None:
    pool = ResourcePool(Recorder().factory, ttl=30)

    twice = pool.get("k")
    async with twice:
        with pytest.raises(RuntimeError) as entered_twice:
            await twice.__aenter__()
    with pytest.raises(RuntimeError) as left_twice:
        await twice.__aexit__(None, None, None)
    with pytest.raises(RuntimeError) as never_entered:
        await pool.get("k").__aexit__(None, None, None)

    for info, phrase in [
        (entered_twice, "Cannot re-acquire a resource that has already been acquired"),
        (never_entered, "Cannot release a resource that was not acquired"),
        (left_twice, "Cannot release a resource that has already been released"),
    ]:
        message = str(info.value)
        assert phrase in message, message
        assert "'k'" in message, f"the key is not named: {message}"
    stats = pool.stats
    assert (stats.total_entries, stats.idle_entries) == (1, 1), stats
    await pool.aclose()


def test_an_unhashable_key_in_a_membership_test_raises_naming_it() -> None:
    pool: ResourcePool[Any, Res] = ResourcePool(Recorder().factory)
    with pytest.raises(TypeError) as info:
        _ = [] in pool
    message = str(info.value)
    assert "[]" in message and "unhashable" in message, message
    assert "contains" in message, f"the operation is not named: {message}"


@pytest.mark.parametrize("operation", ["get", "acquire", "release", "expire"])
async def test_an_unhashable_key_raises_naming_the_key_and_operation(
    operation: str,
) -> None:
    pool: ResourcePool[Any, Res] = ResourcePool(Recorder().factory)
    before = pool.stats
    with pytest.raises(TypeError) as info:
        if operation == "get":
            pool.get([])  # checked where it enters, not later when entered
        else:
            await getattr(pool, operation)([])
    message = str(info.value)
    assert "[]" in message and "unhashable" in message, message
    assert operation in message, f"the operation is not named: {message}"
    assert pool.stats == before and len(pool) == 0
    await pool.aclose()


# -- 4f. pending_cleanup of a loop that closed ----------------------------------------


def test_pending_cleanup_includes_the_idle_entries_of_a_loop_that_closed() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=30)
    asyncio.run(_lease_once(pool, "k"))
    pending = pool.pending_cleanup
    assert "k" in pending, f"the closed loop's idle entry is not pending: {pending}"
    assert isinstance(pending["k"], float), pending
    stats = pool.stats
    assert len(pool) == 1 and stats.idle_entries == 1, stats
    assert stats.pending_cleanup == 1, stats
    asyncio.run(_bounded(pool.aclose(), "aclose()"))
    rec.assert_each_finalized_once()
    assert pool.pending_cleanup == {} and pool.stats.pending_cleanup == 0
