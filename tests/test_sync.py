"""SyncResourcePool: the contract of ResourcePool for plain threads (SPEC §11).

Grouped by the SPEC line each test holds the pool to: §1 construction, §2
leases and single flight across threads, §3 idle TTL and the reaper thread,
§4 expire, §5 clear and close, §7 errors and observation, §10 the lifecycle
policies in their sync form, and §11's own lines (awaitables refused, no
lock held while user code runs, a ManualClock drives it, fork safety).

No test sleeps and hopes: threads are ordered with events, gates and
barriers (user code blocks on a ``Gate`` until the test opens it); where
the pool offers no event (how many threads joined a creation) the test
polls its stats until they say so (``until``). Every wait that could
hang is bounded by ``TIMEOUT``: a deadlock fails its test, never the
suite. Each pool is closed by the test or the ``new_pool`` fixture.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import Any, Generic, Literal, TypeVar

import attrs
import pytest

from tests.forked import report_from_child
from ttlpool import (
    PoolClosedError,
    PoolStats,
    RemovalCause,
    SyncResource,
    SyncResourcePool,
)
from ttlpool.clock import TimerCallback
from ttlpool.testing import ManualClock

#: How long a test waits for another thread before calling it stuck.
TIMEOUT = 10.0
#: The prefix of every pool's reaper thread.
REAPER = "ttlpool-reaper-"

R = TypeVar("R")
Res = list[Any]
Pool = SyncResourcePool[Any, Res]
PoolMaker = Callable[..., Pool]


class Interrupt(BaseException):
    """A BaseException of the test's own (a KeyboardInterrupt stand-in)."""


class Recorder:
    """A factory, finalizer and ``on_remove`` that record what they did (in
    ``log`` too, in call order) and in which thread the finalizer ran."""

    def __init__(self) -> None:
        self.created: list[Res] = []
        self.finalized: list[Res] = []
        self.removed: list[tuple[object, Res, RemovalCause]] = []
        self.log: list[tuple[str, Res]] = []
        self.threads: list[str] = []
        self.cond = threading.Condition()

    def factory(self, key: object) -> Res:
        with self.cond:
            resource: Res = [key, len(self.created)]
            self.created.append(resource)
        return resource

    def finalizer(self, resource: Res) -> None:
        with self.cond:
            self.log.append(("finalize", resource))
            self.finalized.append(resource)
            self.threads.append(threading.current_thread().name)
            self.cond.notify_all()

    def on_remove(self, key: object, resource: Res, cause: RemovalCause) -> None:
        with self.cond:
            self.log.append(("remove", resource))
            self.removed.append((key, resource, cause))

    def wait_finalized(self, count: int) -> None:
        """Block until ``count`` resources were finalized (bounded)."""
        with self.cond:
            done = self.cond.wait_for(lambda: len(self.finalized) >= count, TIMEOUT)
        assert done, f"only {self.finalized} finalized, {count} expected"

    def finalized_once(self, resource: Res) -> bool:
        return sum(r is resource for r in self.finalized) == 1


class Reports(list[tuple[BaseException, str, object]]):
    """An ``on_error`` hook that keeps what it is told."""

    def __call__(self, exc: BaseException, operation: str, key: object) -> None:
        self.append((exc, operation, key))


class Gate:
    """Blocks user code (``block()``) until the test opens it; ``entered``
    says the code got there."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def block(self) -> None:
        self.entered.set()
        assert self.opened.wait(TIMEOUT), "the test never opened the gate"

    def wait_entered(self) -> None:
        assert self.entered.wait(TIMEOUT), "user code never reached the gate"

    def open(self) -> None:
        self.opened.set()


class Worker(Generic[R]):
    """``fn()`` on a daemon thread of its own, its outcome kept."""

    def __init__(self, fn: Callable[[], R]) -> None:
        self.value: list[R] = []
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], R]) -> None:
        try:
            self.value.append(fn())
        except BaseException as exc:
            self.error.append(exc)

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "a worker thread is stuck (deadlock?)"

    def result(self) -> R:
        self.join()
        if self.error:
            raise self.error[0]
        return self.value[0]

    def exception(self) -> BaseException:
        self.join()
        assert self.error, f"expected an exception, got {self.value}"
        return self.error[0]


def in_thread(fn: Callable[[], R]) -> Worker[R]:
    return Worker(fn)


def until(condition: Callable[[], object], what: str = "condition") -> None:
    """Poll ``condition`` until it holds (bounded by ``TIMEOUT``): for state
    the pool offers no event for, such as how many threads joined a
    creation. Never a fixed sleep standing in for the wait itself."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0005)


def blocked_in_wait(ident: int) -> bool:
    """Whether thread ``ident`` is blocked in a ``wait`` (of an event or a
    condition)."""
    frame = sys._current_frames().get(ident)  # pyright: ignore[reportPrivateUsage]
    return frame is not None and frame.f_code.co_name == "wait"


def reapers(name: str | None = None) -> list[threading.Thread]:
    """The live reaper threads (of the pool called ``name``)."""
    prefix = REAPER if name is None else REAPER + name
    return [
        t
        for t in threading.enumerate()
        if t.is_alive()
        and (t.name == prefix or (name is None and t.name.startswith(prefix)))
    ]


def join_reapers(name: str) -> None:
    """Wait for the reaper threads of pool ``name`` to end (bounded)."""
    for thread in reapers(name):
        thread.join(TIMEOUT)
    assert reapers(name) == [], f"the reaper of {name!r} never ended"


def observe(pool: Pool) -> None:
    """Every observation of the pool (each takes its lock)."""
    _ = (pool.stats, pool.pending_cleanup, len(pool), "probe" in pool, repr(pool))


def lock_free(pool: Pool) -> bool:
    """Whether another thread can observe ``pool`` now: false if the calling
    code holds the pool's lock (that thread would block on it)."""
    probe = in_thread(lambda: observe(pool))
    probe.thread.join(TIMEOUT)
    return not probe.thread.is_alive()


def lease_once(pool: Pool, key: object = "k") -> Res:
    """Enter and leave one lease of ``key``; its resource."""
    with pool.get(key) as resource:
        return resource


class Validator:
    """A ``validate`` that records what it is asked about and answers
    ``verdict`` (raises it, if it is an exception)."""

    def __init__(self, verdict: object = True, gate: Gate | None = None) -> None:
        self.verdict = verdict
        self.gate = gate
        self.calls: list[Res] = []

    def __call__(self, resource: Res) -> bool:
        self.calls.append(resource)
        if self.gate is not None:
            self.gate.block()
        if isinstance(self.verdict, BaseException):
            raise self.verdict
        return bool(self.verdict)


class StillClock(ManualClock):
    """A manual clock whose timers never fire: whatever the pool does at a
    deadline it must then do without a timer."""

    class _Handle:
        def cancel(self) -> None:
            pass

    def call_at(self, loop: Any, when: float, callback: TimerCallback) -> Any:
        return self._Handle()


class SpyClock(ManualClock):
    """A manual clock that counts the timers armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_at(self, loop: Any, when: float, callback: TimerCallback) -> Any:
        self.armed += 1
        return super().call_at(loop, when, callback)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def new_pool(rec: Recorder) -> Iterator[PoolMaker]:
    """``new_pool(**options)``: a pool of ``rec``'s factory and finalizer
    (unless ``options`` say otherwise), closed after the test."""
    made: list[Pool] = []

    def new(**options: Any) -> Pool:
        options.setdefault("factory", rec.factory)
        options.setdefault("finalizer", rec.finalizer)
        pool: Pool = SyncResourcePool(**options)
        made.append(pool)
        return pool

    yield new
    for pool in made:
        pool.close()


# -- §1 construction ------------------------------------------------------------


#: Bad values of each option, and the error each one raises.
BAD_OPTIONS: dict[str, list[tuple[object, type[Exception]]]] = {
    "ttl": [
        (-1, ValueError),
        (math.nan, ValueError),
        (True, TypeError),
        ("5", TypeError),
    ],
    "max_idle": [(-1, ValueError), (1.5, TypeError), (True, TypeError)],
    "max_lifetime": [(0, ValueError), (-1, ValueError), ("5", TypeError)],
    "leak_timeout": [(0, ValueError), (math.nan, ValueError), (True, TypeError)],
    "factory": [(None, TypeError), ("f", TypeError)],
    "finalizer": [(1, TypeError)],
    "on_error": [("hook", TypeError)],
    "validate": [(True, TypeError)],
    "on_remove": [(1, TypeError)],
    "name": [(5, TypeError)],
}


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_a_bad_option_fails_at_construction_naming_it(name: str) -> None:
    for value, error in BAD_OPTIONS[name]:
        options: dict[str, Any] = {"factory": Recorder().factory, name: value}
        with pytest.raises(error, match=name):
            SyncResourcePool(**options)


async def _coroutine_function(*args: object) -> None:
    return None


def test_a_coroutine_function_is_refused_at_construction_naming_it() -> None:
    for name in ["factory", "finalizer", "validate", "on_remove", "on_error"]:
        options: dict[str, Any] = {"factory": Recorder().factory}
        options[name] = _coroutine_function
        with pytest.raises(TypeError, match=f"{name} .*coroutine function"):
            SyncResourcePool(**options)


class Awaitor:
    """An awaitable that is no coroutine."""

    def __await__(self) -> Generator[None, None, None]:
        yield


@pytest.mark.parametrize("kind", ["coroutine", "awaitor"])
@pytest.mark.parametrize("name", ["factory", "finalizer", "validate", "on_remove"])
def test_user_code_that_returns_an_awaitable_is_a_type_error_naming_it(
    name: str, kind: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    """A sync pool never awaits: the awaitable is a ``TypeError`` naming the
    parameter and the key (a coroutine is closed, so it never warns, and
    ``-W error`` would say so); the pool goes on as if that call failed."""
    returned: list[object] = []
    reported = Reports()

    def awaitable(*args: object) -> Any:
        result = _coroutine_function() if kind == "coroutine" else Awaitor()
        returned.append(result)
        return result

    options: dict[str, Any] = {
        "ttl": 10,
        "clock": ManualClock(),
        "on_remove": rec.on_remove,
        "on_error": reported,
        name: awaitable,
    }
    pool = new_pool(**options)
    if name == "factory":
        with pytest.raises(TypeError, match="factory") as info:
            pool.acquire("k")
        assert "'k'" in str(info.value)
        assert "k" not in pool and pool.stats.factory_errors == 1
        assert reported == []  # the acquirer got it
    else:
        first = lease_once(pool)
        second = lease_once(pool)  # validate runs here
        pool.expire("k")  # on_remove and the finalizer run here
        [(error, operation, key)] = reported
        assert isinstance(error, TypeError) and name in str(error)
        assert (operation, key) == (name if name != "finalizer" else "finalize", "k")
        assert "'k'" in str(error)
        if name == "validate":  # a failed validation: INVALID, a new resource
            assert second is not first and rec.removed[0][2] is RemovalCause.INVALID
        else:
            assert second is first
        assert len(pool) == 0
        if name == "finalizer":
            assert pool.stats.finalizer_errors == 1
        else:
            assert rec.finalized[-1] is second
    assert returned
    for result in returned:
        if inspect.iscoroutine(result):
            assert inspect.getcoroutinestate(result) == inspect.CORO_CLOSED


def test_the_factory_result_is_cached_and_a_hit_returns_the_same_object(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=10, clock=ManualClock())
    with pool.get("k") as first, pool.get("k") as second:
        assert second is first and rec.created == [first]
        assert pool.acquire("k") is first
        pool.release("k")
    stats = pool.stats
    assert (stats.hits, stats.misses, stats.created) == (2, 1, 1)


@pytest.mark.parametrize("how", ["lease", "key"])
def test_ttl_zero_finalizes_within_the_release(
    how: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=0, on_remove=rec.on_remove)
    if how == "lease":
        with pool.get("k") as resource:
            assert rec.finalized == []
    else:
        resource = pool.acquire("k")
        pool.release("k")
    assert rec.finalized == [resource] and len(pool) == 0
    assert rec.removed == [("k", resource, RemovalCause.RELEASED)]
    assert rec.threads == [threading.current_thread().name]


@pytest.mark.parametrize("ttl", [None, math.inf])
def test_an_infinite_ttl_never_idles_out(
    ttl: float | None, rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=ttl, clock=clock)
    assert pool.ttl == math.inf
    resource = lease_once(pool)
    clock.advance(1e9)
    assert "k" in pool and rec.finalized == []
    assert pool.pending_cleanup == {} and clock.pending_timers == 0
    assert lease_once(pool) is resource
    pool.expire("k")  # only expire, max_idle, clear or close retire it
    assert rec.finalized == [resource]


def test_max_idle_finalizes_the_entry_released_longest_ago_first(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=None, max_idle=2, on_remove=rec.on_remove)
    a, b = lease_once(pool, "a"), lease_once(pool, "b")
    c = lease_once(pool, "c")  # three idle: "a", released longest ago, goes
    assert rec.finalized == [a] and "a" not in pool
    assert lease_once(pool, "b") is b  # "b" is now released after "c"
    lease_once(pool, "d")
    assert rec.finalized == [a, c]
    assert [cause for _, _, cause in rec.removed] == [RemovalCause.EVICTED] * 2
    stats = pool.stats
    assert (stats.evicted, stats.removed.evicted, stats.idle_entries) == (2, 2, 2)


# -- §2 leases, acquire and release ---------------------------------------------


def test_a_lease_is_single_use(rec: Recorder, new_pool: PoolMaker) -> None:
    pool = new_pool(ttl=10, clock=ManualClock())
    lease = pool.get("k")
    assert isinstance(lease, SyncResource)
    with pytest.raises(RuntimeError, match="Cannot release a resource that was not"):
        lease.__exit__(None, None, None)
    with lease, pytest.raises(RuntimeError, match=r"Cannot re-acquire .*'k'"):
        lease.__enter__()
    with pytest.raises(RuntimeError, match="has already been released"):
        lease.__exit__(None, None, None)
    stats = pool.stats
    assert (stats.created, stats.referenced_entries, stats.idle_entries) == (1, 0, 1)


def test_leaving_never_swallows_the_body_exception(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=0)
    with pytest.raises(ValueError, match="body"), pool.get("k"):
        raise ValueError("body")
    assert len(rec.finalized) == 1 and len(pool) == 0  # released all the same


def test_a_falsy_resource_is_released(new_pool: PoolMaker) -> None:
    finalized: list[object] = []
    falsies: list[object] = [0, "", [], None]

    def factory(key: tuple[str, int]) -> object:
        return falsies[key[1]]

    pool = new_pool(factory=factory, finalizer=finalized.append, ttl=0)
    for n, falsy in enumerate(falsies):
        with pool.get(("lease", n)) as resource:
            assert resource is falsy
        assert pool.acquire(("key", n)) is falsy
        pool.release(("key", n))
        assert finalized[-2] is falsy and finalized[-1] is falsy
    assert len(finalized) == 8 and len(pool) == 0


def test_an_old_lease_never_touches_the_new_entry_of_its_key(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=10, clock=ManualClock())
    old_lease = pool.get("k")
    old = old_lease.__enter__()
    pool.clear()
    assert rec.finalized == [old]
    with pool.get("k") as new:
        assert new is not old
        old_lease.__exit__(None, None, None)  # a no-op: its entry is gone
        assert pool.stats.referenced_entries == 1
    assert pool.stats.idle_entries == 1 and rec.finalized == [old]


def test_key_based_acquire_and_release(rec: Recorder, new_pool: PoolMaker) -> None:
    pool = new_pool(ttl=10, clock=ManualClock())
    pool.release("missing")  # no entry: a no-op
    resource = pool.acquire("k")
    assert pool.acquire("k") is resource
    pool.release("k")
    assert pool.stats.referenced_entries == 1
    pool.release("k")
    assert pool.stats.idle_entries == 1
    with pytest.raises(ValueError, match="Reference count for key 'k' is already 0"):
        pool.release("k")
    assert pool.stats.idle_entries == 1 and rec.finalized == []


@pytest.mark.parametrize("operation", ["get", "acquire", "release", "expire", "in"])
def test_an_unhashable_key_raises_before_any_state_changes(
    operation: str, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=10, clock=ManualClock())
    lease_once(pool, "warm")
    before = pool.stats
    key: Any = ["unhashable"]
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: pool.get(key),
        "acquire": lambda: pool.acquire(key),
        "release": lambda: pool.release(key),
        "expire": lambda: pool.expire(key),
        "in": lambda: key in pool,
    }
    with pytest.raises(TypeError, match=r"unhashable") as info:
        calls[operation]()
    assert "['unhashable']" in str(info.value)
    assert operation in str(info.value)
    assert pool.stats == before


def test_a_hit_arms_no_timer_and_releases_share_one(new_pool: PoolMaker) -> None:
    clock = SpyClock()
    pool = new_pool(ttl=10, clock=clock)
    for key in range(20):
        lease_once(pool, key)
    assert clock.armed == 1 and clock.pending_timers == 1
    for key in range(20):  # hits of idle entries
        pool.acquire(key)
    assert clock.armed == 1 and clock.pending_timers == 1
    for key in range(20):
        pool.release(key)
    assert clock.pending_timers == 1


# -- §2 / §11 single flight across threads --------------------------------------

N = 8


def test_threads_missing_one_key_share_one_factory_call(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    gate = Gate()

    def factory(key: object) -> Res:
        gate.block()
        return rec.factory(key)

    pool = new_pool(factory=factory, ttl=10, clock=ManualClock())
    workers = [in_thread(lambda: pool.acquire("k")) for _ in range(N)]
    gate.wait_entered()
    until(lambda: pool.stats.misses == N, "every thread to join the creation")
    stats = pool.stats
    assert (stats.creating, stats.total_entries, stats.created) == (1, 0, 0)
    assert all(w.thread.is_alive() for w in workers)  # they block meanwhile
    gate.open()
    results = [w.result() for w in workers]
    assert rec.created == [results[0]] and all(r is results[0] for r in results)
    stats = pool.stats
    assert (stats.creating, stats.referenced_entries, stats.created) == (0, 1, 1)
    for _ in range(N - 1):
        pool.release("k")
    assert pool.stats.referenced_entries == 1  # one reference per waiter
    pool.release("k")
    assert pool.stats.idle_entries == 1


def test_a_failing_factory_reaches_every_waiting_thread_and_caches_nothing(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    gate = Gate()
    calls: list[object] = []

    def factory(key: object) -> Res:
        calls.append(key)
        if len(calls) == 1:
            gate.block()
            raise ConnectionError("cannot reach k")
        return rec.factory(key)

    pool = new_pool(factory=factory, ttl=10, clock=ManualClock())
    workers = [in_thread(lambda: pool.acquire("k")) for _ in range(N)]
    gate.wait_entered()
    until(lambda: pool.stats.misses == N, "every thread to join the creation")
    gate.open()
    errors = [w.exception() for w in workers]
    assert isinstance(errors[0], ConnectionError)
    assert all(e is errors[0] for e in errors)  # that very exception
    assert calls == ["k"] and "k" not in pool and len(pool) == 0
    stats = pool.stats
    assert (stats.factory_errors, stats.creating, stats.referenced_entries) == (1, 0, 0)
    assert lease_once(pool) is rec.created[0]  # the next acquire calls it again
    assert calls == ["k", "k"]


def test_factories_of_different_keys_run_at_once_and_a_hit_never_waits(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    barrier = threading.Barrier(2, timeout=TIMEOUT)  # breaks unless both run
    gate = Gate()

    def factory(key: str) -> Res:
        if key != "warm":
            barrier.wait()
            gate.block()
        return rec.factory(key)

    pool = new_pool(factory=factory, ttl=10, clock=ManualClock())
    warm = lease_once(pool, "warm")
    workers = [in_thread(lambda k=k: lease_once(pool, k)) for k in ("a", "b")]
    try:
        gate.wait_entered()  # both factories passed the barrier together
        assert lock_free(pool)
        with pool.get("warm") as again:  # in this thread, while both run
            assert again is warm
        assert pool.stats.creating == 2
    finally:
        gate.open()
    assert sorted(w.result()[0] for w in workers) == ["a", "b"]


def test_a_factory_may_use_the_pool_for_other_keys(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool: Pool

    def factory(key: str) -> Res:
        if key == "outer":
            with pool.get("inner") as inner:
                other = pool.acquire("other")
                pool.release("other")
                return ["outer", inner, other]
        return rec.factory(key)

    pool = new_pool(factory=factory, ttl=10, clock=ManualClock())
    outer = in_thread(lambda: lease_once(pool, "outer")).result()
    assert outer[0] == "outer" and outer[1][0] == "inner" and outer[2][0] == "other"
    assert len(pool) == 3 and pool.stats.idle_entries == 3


@pytest.mark.parametrize(
    ("path", "cycle"),
    [("directly", "'a' -> 'a'"), ("through another key", "'a' -> 'b' -> 'a'")],
)
def test_a_factory_acquiring_its_own_key_raises_naming_the_cycle(
    path: str, cycle: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    pool: Pool

    def factory(key: str) -> Res:
        if key == "a":
            pool.acquire("a" if path == "directly" else "b")
        elif key == "b":
            pool.acquire("a")
        return rec.factory(key)

    pool = new_pool(factory=factory, ttl=10, clock=ManualClock())
    error = in_thread(lambda: pool.acquire("a")).exception()  # never a wait
    assert isinstance(error, RuntimeError)
    assert "cycle" in str(error) and cycle in str(error)
    stats = pool.stats
    assert (len(pool), stats.creating, stats.referenced_entries) == (0, 0, 0)
    assert lease_once(pool, "c")[0] == "c"  # the pool works on


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_a_waiting_thread_interrupted_leaves_no_reference_behind(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    """A KeyboardInterrupt (here a BaseException a signal handler raises)
    in a thread waiting for another's creation: that waiter is withdrawn,
    the creation goes on for the others."""
    gate = Gate()

    def factory(key: object) -> Res:
        gate.block()
        return rec.factory(key)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupt

    pool = new_pool(factory=factory, ttl=10, clock=ManualClock())
    main = threading.get_ident()
    old = signal.signal(signal.SIGUSR1, interrupt)
    try:
        first = in_thread(lambda: pool.acquire("k"))
        gate.wait_entered()

        def kick() -> None:  # once this thread blocks in its wait
            until(lambda: pool.stats.misses == 2, "the main thread to join")
            until(lambda: blocked_in_wait(main), "the main thread to wait")
            signal.pthread_kill(main, signal.SIGUSR1)

        kicker = in_thread(kick)
        with pytest.raises(Interrupt):
            pool.acquire("k")
        kicker.result()
    finally:
        signal.signal(signal.SIGUSR1, old)
        gate.open()
    resource = first.result()
    assert pool.stats.referenced_entries == 1
    pool.release("k")  # the first thread's reference was the only one
    assert pool.stats.idle_entries == 1 and rec.created == [resource]


@pytest.mark.parametrize("ttl", [0, 0.0001])
def test_threads_churning_keys_share_each_live_resource_and_finalize_it_once(
    ttl: float, rec: Recorder, new_pool: PoolMaker
) -> None:
    """Threads lease a few keys over and over while the last releases (ttl
    0) or the reaper (a short ttl, the real clock) retire them: every
    holder of a key at a given moment holds the same object, nothing held
    is ever finalized, and each resource made is finalized exactly once."""
    held: dict[object, tuple[Res, int]] = {}
    lock = threading.Lock()
    faults: list[str] = []

    def finalizer(resource: Res) -> None:
        with lock:
            if resource[0] in held and held[resource[0]][0] is resource:
                faults.append(f"finalized while held: {resource}")
        rec.finalizer(resource)

    pool = new_pool(finalizer=finalizer, ttl=ttl, name="churning")

    def churn(seed: int) -> None:
        for n in range(400):
            key = (seed * 5 + n) % 8
            if ttl and n % 40 == 39:  # let the reaper in, while others churn
                reaped = pool.stats.expired
                until(lambda r=reaped: pool.stats.expired > r, "a reap")
            with pool.get(key) as resource:
                with lock:
                    other, count = held.get(key, (resource, 0))
                    if other is not resource:
                        faults.append(f"two live resources of {key}")
                    held[key] = (resource, count + 1)
                with lock:
                    resource_, count = held[key]
                    if count == 1:
                        del held[key]
                    else:
                        held[key] = (resource_, count - 1)

    workers = [in_thread(lambda n=n: churn(n)) for n in range(6)]
    for worker in workers:
        worker.result()
    pool.close()
    assert faults == []
    assert all(rec.finalized_once(r) for r in rec.created)
    stats = pool.stats
    assert stats.finalized == stats.created == len(rec.created)
    assert stats.total_entries == stats.pending_cleanup == stats.creating == 0


# -- §11 no lock held while user code runs --------------------------------------


@pytest.mark.parametrize(
    "hook", ["factory", "validate", "on_remove", "finalizer", "on_error"]
)
def test_no_lock_is_held_while_user_code_runs(
    hook: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    """Another thread observes the pool (every observation takes its lock)
    from inside each piece of user code."""
    seen: list[bool] = []
    pool: Pool

    def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            seen.append(lock_free(pool))
            return fn(*args)

        return call

    def failing(resource: Res) -> None:
        raise OSError("close failed")

    options: dict[str, Any] = {
        "factory": rec.factory,
        "validate": Validator(True),
        "on_remove": rec.on_remove,
        "finalizer": failing if hook == "on_error" else rec.finalizer,
        "on_error": Reports(),
    }
    options[hook] = checked(options[hook])
    pool = new_pool(ttl=10, clock=ManualClock(), **options)
    lease_once(pool)
    lease_once(pool)  # validate runs
    pool.expire("k")  # on_remove, the finalizer, on_error run
    assert seen and all(seen), f"{hook} ran with the pool's lock held"


# -- §2 / §11 user code may call back into the pool -----------------------------

CALLS = ["other key", "expire", "clear", "close"]


def _call_back(pool: Pool, call: str) -> str:
    """Make ``call`` on ``pool`` and say how it ended."""
    try:
        if call == "other key":
            lease_once(pool, "other")
        elif call == "expire":
            pool.expire("k")  # the very key being created or finalized
        elif call == "clear":
            pool.clear()
        else:
            pool.close()
    except BaseException as exc:
        return repr(exc)
    return "returned"


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("where", ["factory", "finalizer", "reaper's finalizer"])
def test_user_code_may_call_back_into_the_pool_without_deadlock(
    where: str, call: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    """Even ``clear`` and ``close``: a call made from inside a creation or a
    finalization never waits for that creation or finalization itself."""
    outcomes: list[str] = []
    done = threading.Event()
    pool: Pool

    def factory(key: str) -> Res:
        if key == "k" and where == "factory":
            outcomes.append(_call_back(pool, call))
        return rec.factory(key)

    def finalizer(resource: Res) -> None:
        if resource[0] == "k" and where != "factory" and not outcomes:
            outcomes.append(_call_back(pool, call))
            done.set()
        rec.finalizer(resource)

    reaping = where == "reaper's finalizer"
    pool = new_pool(
        factory=factory,
        finalizer=finalizer,
        ttl=0.01 if reaping else 0,
        name=f"callback-{where}-{call}".replace(" ", "-").replace("'", ""),
    )
    in_thread(lambda: lease_once(pool)).result()
    if reaping:
        assert done.wait(TIMEOUT), "the reaper never finalized the entry"
    assert outcomes == ["returned"]
    pool.close()  # whatever is left goes now
    assert len(pool) == 0 and reapers(pool.name) == []
    assert all(rec.finalized_once(r) for r in rec.created), rec.finalized
    assert pool.stats.finalized == pool.stats.created == len(rec.created)


# -- §3 idle TTL, the ManualClock -----------------------------------------------


def test_an_idle_entry_is_reused_before_its_deadline_and_reaped_after(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = ManualClock(100)
    pool = new_pool(ttl=10, clock=clock, on_remove=rec.on_remove)
    resource = lease_once(pool)
    assert pool.pending_cleanup == {"k": 110.0}  # on the pool's clock
    clock.advance(9.999)
    assert lease_once(pool) is resource and rec.finalized == []
    clock.advance(10.001)  # (released again at 109.999)
    assert rec.finalized == [resource] and "k" not in pool
    assert rec.removed == [("k", resource, RemovalCause.IDLE)]
    assert pool.stats.expired == 1 and clock.pending_timers == 0
    assert lease_once(pool) is not resource


def test_a_manual_clock_reaps_in_the_advancing_thread_and_no_reaper_thread_exists(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=30, clock=clock, name="manual")
    resource = lease_once(pool)
    assert reapers("manual") == []
    clock.advance(29)
    assert rec.finalized == []
    advancer = in_thread(lambda: clock.advance(1))
    advancer.result()
    assert rec.finalized == [resource]  # done when advance returned
    assert rec.threads == [advancer.thread.name]
    assert reapers("manual") == [] and clock.pending_timers == 0


def test_a_manual_clock_reaps_a_large_batch_in_one_advance(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=5, clock=clock)
    for key in range(1000):
        lease_once(pool, key)
    clock.advance(5)
    assert len(rec.finalized) == 1000 and len(pool) == 0
    assert pool.stats.expired == 1000 and clock.pending_timers == 0


# -- §3 / §11 the reaper thread -------------------------------------------------


@pytest.mark.parametrize("name", [None, "billing-db"])
def test_the_reaper_is_one_daemon_thread_named_after_the_pool(
    name: str | None, rec: Recorder, new_pool: PoolMaker
) -> None:
    def connect(key: object) -> Res:
        return rec.factory(key)

    pool = new_pool(factory=connect, ttl=60, name=name)
    expected = name or connect.__qualname__
    assert pool.name == expected
    with pool.get("a"), pool.get("b"):
        assert reapers(expected) == []  # nothing idle yet
    lease_once(pool, "c")
    [reaper] = reapers(expected)  # one for every idle entry
    assert reaper.daemon and reaper.name == REAPER + expected
    pool.close()
    assert not reaper.is_alive()  # close waited for it


def test_the_reaper_finalizes_on_time_with_nobody_calling_the_pool(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=0.01, name="on-time", on_remove=rec.on_remove)
    resource = lease_once(pool)
    rec.wait_finalized(1)  # nobody calls the pool meanwhile
    assert rec.finalized == [resource] and rec.threads == [REAPER + "on-time"]
    assert rec.removed == [("k", resource, RemovalCause.IDLE)]
    assert "k" not in pool and pool.stats.expired == 1
    join_reapers("on-time")  # nothing idle: it ends


@pytest.mark.parametrize("how", ["reaped", "cleared", "expired"])
def test_the_reaper_thread_ends_once_nothing_is_idle(
    how: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    """The reaper "exists only while something is idle and ends when nothing
    is": an idle-free pool leaves no thread behind, however its last idle
    entry went."""
    name = f"ends-{how}"
    pool = new_pool(ttl=0.01 if how == "reaped" else 60, name=name)
    lease_once(pool)
    if how == "reaped":
        rec.wait_finalized(1)
    else:
        assert len(reapers(name)) == 1
        if how == "cleared":
            pool.clear()
        else:
            pool.expire("k")
        assert len(rec.finalized) == 1
    assert pool.stats.idle_entries == 0
    join_reapers(name)
    assert not pool.closed


def test_ttl_zero_churn_never_starts_a_reaper_thread(
    rec: Recorder, new_pool: PoolMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    start = threading.Thread.start

    def spy(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", spy)

    def factory(key: object) -> Res:
        if key == "bad":
            raise ConnectionError("bad")
        return rec.factory(key)

    pool = new_pool(factory=factory, ttl=0, name="churn")

    def churn() -> None:
        for key in range(50):
            lease_once(pool, key % 5)
            pool.acquire(key)
            pool.expire(key)
            pool.release(key)
            with contextlib.suppress(ConnectionError):
                pool.acquire("bad")

    workers = [in_thread(churn) for _ in range(4)]
    for worker in workers:
        worker.result()
    pool.clear()
    assert len(rec.finalized) == len(rec.created) > 0
    assert not [name for name in started if name.startswith(REAPER)]
    assert reapers("churn") == []


def test_a_slow_finalizer_in_the_reaper_delays_only_the_entries_behind_it(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    gate = Gate()

    def finalizer(resource: Res) -> None:
        if resource[0] == "slow" and resource[1] == 0:
            gate.block()
        rec.finalizer(resource)

    pool = new_pool(finalizer=finalizer, ttl=0.01, name="slow")
    try:
        slow = lease_once(pool, "slow")
        gate.wait_entered()  # the reaper runs its finalizer, and waits
        assert pool.pending_cleanup == {"slow": None} and "slow" not in pool
        lease_once(pool, "behind")  # idle, reaped after the slow one
        # Meanwhile the pool serves every caller, in the caller's thread.
        fresh = in_thread(lambda: lease_once(pool, "slow")).result()
        assert fresh is not slow
        held = pool.acquire("held")
        pool.expire("held")
        pool.release("held")
        assert rec.finalized == [held]
        assert rec.threads == [threading.current_thread().name]
    finally:
        gate.open()
    rec.wait_finalized(4)  # slow, behind and the fresh slow: by the reaper
    assert rec.finalized[1] is slow
    assert rec.threads[1:] == [REAPER + "slow"] * 3
    assert len(pool) == 0
    join_reapers("slow")


def test_close_waits_for_a_finalizer_the_reaper_runs(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    gate, closing = Gate(), threading.Event()
    events: list[str] = []

    def finalizer(resource: Res) -> None:
        if resource[0] == "slow":
            gate.block()
        rec.finalizer(resource)
        events.append(f"finalized {resource[0]}")

    def on_remove(key: object, resource: Res, cause: RemovalCause) -> None:
        if cause is RemovalCause.CLEARED:
            closing.set()

    pool = new_pool(finalizer=finalizer, on_remove=on_remove, ttl=0.01, name="closing")
    held = pool.acquire("held")
    slow = lease_once(pool, "slow")
    gate.wait_entered()

    def close() -> None:
        pool.close()
        events.append("closed")

    closer = in_thread(close)
    try:
        assert closing.wait(TIMEOUT)  # close has evicted "held"
        # close cannot return while the slow finalizer runs: a bounded wait
        # for something that must NOT happen (it never fails a correct pool).
        closer.thread.join(0.1)
        assert closer.thread.is_alive(), "close returned before the finalizer ended"
    finally:
        gate.open()
    closer.result()
    assert events.index("finalized slow") < events.index("closed")
    assert rec.finalized_once(slow) and rec.finalized_once(held)
    assert reapers("closing") == []
    pool.release("held")  # an outstanding lease after close: a no-op


@pytest.mark.parametrize("error", [OSError("close failed"), Interrupt()])
def test_the_reaper_survives_a_failing_finalizer(
    error: BaseException, rec: Recorder, new_pool: PoolMaker
) -> None:
    failed = threading.Event()

    def finalizer(resource: Res) -> None:
        if resource[0] == "bad":
            failed.set()
            raise error
        rec.finalizer(resource)

    pool = new_pool(finalizer=finalizer, ttl=0.01, name="survivor")
    lease_once(pool, "bad")
    assert failed.wait(TIMEOUT)
    good = lease_once(pool, "good")  # the same reaper, or a new one, reaps it
    rec.wait_finalized(1)
    assert rec.finalized == [good] and len(pool) == 0
    assert pool.stats.finalizer_errors == 1 and pool.stats.finalized == 2
    join_reapers("survivor")


# -- §4 expire ------------------------------------------------------------------


def test_expire_of_an_unknown_key_is_a_no_op(new_pool: PoolMaker) -> None:
    pool = new_pool(ttl=10, clock=ManualClock())
    pool.expire("missing")
    assert len(pool) == 0 and pool.stats == PoolStats()


def test_expire_finalizes_an_idle_entry_before_returning(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=10, clock=ManualClock(), on_remove=rec.on_remove)
    resource = lease_once(pool)
    pool.expire("k")
    assert rec.finalized == [resource] and "k" not in pool
    assert rec.removed == [("k", resource, RemovalCause.EXPIRED)]
    assert pool.pending_cleanup == {}


@pytest.mark.parametrize("reacquired", [False, True])
def test_expire_drains_leases_first_and_a_reacquire_clears_the_mark(
    reacquired: bool, rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=10, clock=ManualClock())
    with pool.get("k") as resource:
        with pool.get("k"):
            pool.expire("k")
            assert rec.finalized == [] and "k" in pool
        assert rec.finalized == []  # one lease left
        if reacquired:
            pool.acquire("k")
            pool.release("k")
    if reacquired:
        assert rec.finalized == [] and pool.stats.idle_entries == 1
    else:
        assert rec.finalized == [resource] and "k" not in pool


def test_expire_marks_an_entry_being_created(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    gate = Gate()

    def factory(key: object) -> Res:
        gate.block()
        return rec.factory(key)

    pool = new_pool(factory=factory, ttl=10, clock=ManualClock())
    worker = in_thread(lambda: pool.acquire("k"))
    gate.wait_entered()
    pool.expire("k")
    gate.open()
    resource = worker.result()
    assert "k" in pool and rec.finalized == []
    pool.release("k")  # its last release: finalized, though ttl is 10
    assert rec.finalized == [resource] and "k" not in pool


def test_expiry_is_atomic_and_a_new_acquire_never_waits_for_the_old_finalizer(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    gate = Gate()

    def finalizer(resource: Res) -> None:
        if resource[1] == 0:
            gate.block()
        rec.finalizer(resource)

    pool = new_pool(finalizer=finalizer, ttl=10, clock=ManualClock())
    old = lease_once(pool)
    expirer = in_thread(lambda: pool.expire("k"))
    try:
        gate.wait_entered()
        assert "k" not in pool and pool.pending_cleanup == {"k": None}
        assert (pool.stats.finalized, pool.stats.pending_cleanup) == (0, 1)
        fresh = in_thread(lambda: lease_once(pool)).result()
        assert fresh is not old
        assert expirer.thread.is_alive()  # expire returns after its finalizer
    finally:
        gate.open()
    expirer.result()
    assert rec.finalized == [old] and lease_once(pool) is fresh


# -- §5 clear and close ---------------------------------------------------------


def test_clear_finalizes_every_entry_held_or_idle_and_later_releases_are_no_ops(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=10, clock=clock, on_remove=rec.on_remove)
    idle = lease_once(pool, "idle")
    keyed = pool.acquire("keyed")
    lease = pool.get("leased")
    leased = lease.__enter__()
    pool.clear()
    assert sorted(map(id, rec.finalized)) == sorted(map(id, [idle, keyed, leased]))
    assert {cause for _, _, cause in rec.removed} == {RemovalCause.CLEARED}
    assert len(pool) == 0 and pool.pending_cleanup == {}
    assert clock.pending_timers == 0  # every deadline dropped
    assert keyed[0] == "keyed" and leased[0] == "leased"  # holders keep theirs
    pool.release("keyed")  # no-ops, never a ValueError
    lease.__exit__(None, None, None)
    fresh = pool.acquire("keyed")
    assert fresh is not keyed
    pool.release("keyed")
    assert pool.stats.idle_entries == 1 and pool.stats.removed.cleared == 3
    assert not pool.closed and lease_once(pool, "idle") is not idle


def test_clear_drains_the_generations_that_finalizers_start(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool: Pool
    chain = {"a": "b", "b": "c"}

    def finalizer(resource: Res) -> None:
        rec.finalizer(resource)
        if resource[0] in chain:
            lease_once(pool, chain[resource[0]])  # idle: a new generation

    pool = new_pool(finalizer=finalizer, ttl=10, clock=ManualClock())
    lease_once(pool, "a")
    pool.clear()
    assert [r[0] for r in rec.finalized] == ["a", "b", "c"]
    assert len(pool) == 0 and pool.stats.removed.cleared == 3


@pytest.mark.parametrize("busy", ["creation", "finalization"])
def test_clear_timeout_names_the_key_still_busy(
    busy: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    gate = Gate()

    def factory(key: object) -> Res:
        if busy == "creation" and key == "slow":
            gate.block()
        return rec.factory(key)

    def finalizer(resource: Res) -> None:
        if busy == "finalization" and resource[0] == "slow":
            gate.block()
        rec.finalizer(resource)

    pool = new_pool(factory=factory, finalizer=finalizer, ttl=10, clock=ManualClock())
    if busy == "finalization":
        lease_once(pool, "slow")
        worker = in_thread(lambda: pool.expire("slow"))
    else:
        worker = in_thread(lambda: pool.acquire("slow"))
    try:
        gate.wait_entered()
        for _ in range(2):  # and again: it honours its timeout each time
            with pytest.raises(TimeoutError, match="'slow'"):
                pool.clear(timeout=0.05)
    finally:
        gate.open()
    worker.result()
    pool.clear(timeout=TIMEOUT)
    assert len(pool) == 0 and [r[0] for r in rec.finalized] == ["slow"]


@pytest.mark.parametrize("busy", ["creation", "finalization"])
@pytest.mark.parametrize("operation", ["clear", "close"])
def test_clear_and_close_wait_for_work_in_flight_then_finalize_what_it_left(
    operation: str, busy: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    """Another thread's creation or finalization is in flight: the call
    waits for it and finalizes what it made. The gate opens from inside
    the call (``on_remove`` of the entry it evicts first), so the call
    is waiting by the time the work ends."""
    gate = Gate()
    acquired: list[object] = []
    pool: Pool

    def factory(key: object) -> Res:
        if busy == "creation" and key == "slow":
            gate.block()
        return rec.factory(key)

    def finalizer(resource: Res) -> None:
        if busy == "finalization" and resource[0] == "slow":
            gate.block()
        rec.finalizer(resource)

    def on_remove(key: object, resource: Res, cause: RemovalCause) -> None:
        if key == "other":
            try:
                pool.acquire("late")
            except PoolClosedError:
                acquired.append(PoolClosedError)
            else:
                acquired.append(pool.release("late"))
            gate.open()

    pool = new_pool(
        factory=factory,
        finalizer=finalizer,
        on_remove=on_remove,
        ttl=10,
        clock=ManualClock(),
    )
    worker: Worker[Any]
    if busy == "finalization":
        lease_once(pool, "slow")
        worker = in_thread(lambda: pool.expire("slow"))
    else:
        worker = in_thread(lambda: lease_once(pool, "slow"))
    gate.wait_entered()
    lease_once(pool, "other")
    getattr(pool, operation)()
    [slow] = [r for r in rec.finalized if r[0] == "slow"]  # by the time it returned
    worker.result()  # the acquirer got its resource; clear/close retired it
    assert [r for r in rec.created if r[0] == "slow"] == [slow]
    if operation == "close":
        assert acquired == [PoolClosedError] and pool.closed
    assert len(pool) == 0 and pool.pending_cleanup == {}
    assert pool.stats.creating == 0 and pool.stats.pending_cleanup == 0


@pytest.mark.parametrize("error", [OSError("close failed"), Interrupt()])
def test_a_failing_finalizer_costs_no_other_entry_its_finalization(
    error: BaseException, rec: Recorder, new_pool: PoolMaker
) -> None:
    """An ``Exception`` is reported and the rest go on; a ``BaseException``
    is re-raised once every entry is evicted."""
    reported = Reports()

    def finalizer(resource: Res) -> None:
        if resource[0] == "b":
            raise error
        rec.finalizer(resource)

    pool = new_pool(
        finalizer=finalizer,
        ttl=10,
        clock=ManualClock(),
        on_error=reported,
    )
    for key in "abc":
        lease_once(pool, key)
    pool.acquire("held")
    if isinstance(error, Exception):
        pool.clear()
        assert reported == [(error, "finalize", "b")]
    else:
        with pytest.raises(Interrupt):
            pool.clear()
    assert sorted(r[0] for r in rec.finalized) == ["a", "c", "held"]
    assert len(pool) == 0 and pool.pending_cleanup == {}
    stats = pool.stats
    assert (stats.finalized, stats.finalizer_errors, stats.pending_cleanup) == (4, 1, 0)


def test_close_finalizes_everything_and_later_acquires_raise_pool_closed_error(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=10, clock=ManualClock(), name="closed")
    idle = lease_once(pool, "idle")
    keyed = pool.acquire("keyed")
    lease = pool.get("leased")
    leased = lease.__enter__()
    assert not pool.closed
    pool.close()
    assert pool.closed and len(pool) == 0
    assert all(rec.finalized_once(r) for r in (idle, keyed, leased))
    with pytest.raises(PoolClosedError, match=r"acquire\('keyed'\).*closed"):
        pool.acquire("keyed")
    with pytest.raises(PoolClosedError, match=r"get\('k'\).*closed"):
        lease_once(pool)
    assert isinstance(PoolClosedError(), RuntimeError)
    pool.release("keyed")  # outstanding leases: no-ops
    lease.__exit__(None, None, None)
    pool.close()  # idempotent
    stats = pool.stats
    assert (stats.finalized, stats.removed.cleared, stats.created) == (3, 3, 3)
    assert bool(pool) and "closed" in repr(pool)


def test_with_pool_closes_it_on_exit(rec: Recorder) -> None:
    with SyncResourcePool(rec.factory, finalizer=rec.finalizer, ttl=60) as pool:
        resource = lease_once(pool)
        assert not pool.closed and len(reapers(pool.name)) == 1
    assert pool.closed and rec.finalized == [resource]
    assert reapers(pool.name) == []


# -- §7 errors and observation --------------------------------------------------


@pytest.mark.parametrize("where", ["release", "reap", "expire", "clear"])
def test_a_finalizer_error_is_logged_counted_and_passed_to_on_error(
    where: str, new_pool: PoolMaker, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    hook = Reports()

    def finalizer(resource: Res) -> None:
        raise OSError(f"closing {resource[0]} failed")

    pool = new_pool(
        finalizer=finalizer,
        ttl=0 if where == "release" else 10,
        clock=clock,
        on_error=hook,
    )
    with caplog.at_level(logging.ERROR, logger="ttlpool"):
        lease_once(pool, "db")
        if where == "reap":
            clock.advance(10)
        elif where == "expire":
            pool.expire("db")
        elif where == "clear":
            pool.clear()
    [(exc, operation, key)] = hook
    assert isinstance(exc, OSError) and (operation, key) == ("finalize", "db")
    records = [r for r in caplog.records if r.name == "ttlpool" and r.exc_info]
    assert [r.exc_info[1] for r in records if r.exc_info] == [exc]
    assert "'db'" in records[0].getMessage()
    stats = pool.stats
    assert (stats.finalizer_errors, stats.errors, stats.finalized) == (1, 1, 1)
    assert len(pool) == 0


def test_an_on_error_hook_that_raises_is_logged_and_the_pool_keeps_working(
    rec: Recorder, new_pool: PoolMaker, caplog: pytest.LogCaptureFixture
) -> None:
    def finalizer(resource: Res) -> None:
        raise ValueError("finalizer failed")

    def on_error(exc: BaseException, operation: str, key: object) -> None:
        raise RuntimeError("hook failed")

    pool = new_pool(finalizer=finalizer, ttl=0, on_error=on_error)
    with caplog.at_level(logging.ERROR, logger="ttlpool"):
        lease_once(pool, "a")  # neither error escapes
    failures = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert {type(f) for f in failures} == {ValueError, RuntimeError}
    assert len(pool) == 0 and pool.stats.finalizer_errors == 1
    assert lease_once(pool, "a") is rec.created[-1]


def test_a_base_exception_from_on_error_is_reraised_once_the_bookkeeping_is_done(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    def finalizer(resource: Res) -> None:
        raise ValueError("finalizer failed")

    def on_error(exc: BaseException, operation: str, key: object) -> None:
        raise Interrupt

    pool = new_pool(finalizer=finalizer, ttl=0, on_error=on_error)
    with pytest.raises(Interrupt):
        lease_once(pool)
    stats = pool.stats
    assert (len(pool), stats.pending_cleanup, stats.finalized) == (0, 0, 1)
    assert (stats.referenced_entries, stats.finalizer_errors) == (0, 1)
    assert pool.pending_cleanup == {}


def test_stats_count_a_scripted_scenario(rec: Recorder, new_pool: PoolMaker) -> None:
    clock = ManualClock()

    def factory(key: str) -> Res:
        if key == "bad":
            raise ConnectionError("bad")
        return rec.factory(key)

    def finalizer(resource: Res) -> None:
        if resource[0] == "c":
            raise OSError("close failed")
        rec.finalizer(resource)

    pool = new_pool(
        factory=factory, finalizer=finalizer, ttl=10, max_idle=1, clock=clock
    )
    lease_once(pool, "a")  # miss, created
    lease_once(pool, "a")  # hit
    lease_once(pool, "b")  # max_idle: "a" evicted
    with pytest.raises(ConnectionError):
        pool.acquire("bad")
    clock.advance(10)  # "b" expires
    lease_once(pool, "c")
    pool.expire("c")  # its finalizer fails
    pool.acquire("d")
    stats = pool.stats
    assert isinstance(stats, PoolStats)
    assert attrs.asdict(stats, recurse=False) | {"removed": None} == attrs.asdict(
        PoolStats(
            total_entries=1,
            referenced_entries=1,
            creating=0,
            hits=1,
            misses=5,
            created=4,
            finalized=3,
            expired=1,
            evicted=1,
            factory_errors=1,
            finalizer_errors=1,
            errors=1,
        ),
        recurse=False,
    ) | {"removed": None}
    removed = stats.removed
    assert (removed.evicted, removed.idle, removed.expired) == (1, 1, 1)
    assert removed.total == 3
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.hits = 0  # type: ignore[misc]


def test_pending_cleanup_maps_idle_keys_to_deadlines_and_finalizing_keys_to_none(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    gate = Gate()

    def finalizer(resource: Res) -> None:
        if resource[0] == "x":
            gate.block()
        rec.finalizer(resource)

    clock = ManualClock(100)
    pool = new_pool(finalizer=finalizer, ttl=10, clock=clock)
    lease_once(pool, "a")
    clock.advance(5)
    lease_once(pool, "b")
    pool.acquire("held")
    lease_once(pool, "x")
    expirer = in_thread(lambda: pool.expire("x"))
    try:
        gate.wait_entered()
        assert pool.pending_cleanup == {"a": 110.0, "b": 115.0, "x": None}
        assert pool.stats.pending_cleanup == 3
    finally:
        gate.open()
    expirer.result()
    assert pool.pending_cleanup == {"a": 110.0, "b": 115.0}


def test_len_in_bool_repr_and_properties_describe_the_pool(
    new_pool: PoolMaker,
) -> None:
    pool = new_pool(ttl=10, clock=ManualClock(), name="described")
    assert len(pool) == 0 and bool(pool) and "k" not in pool
    with pool.get("k"):
        lease_once(pool, "idle")
        assert len(pool) == 2 and "k" in pool and "idle" in pool
        text = repr(pool)
        assert "SyncResourcePool" in text and "'described'" in text
        assert "open" in text and "entries=2" in text and "referenced=1" in text
    assert (pool.ttl, pool.name, pool.closed) == (10.0, "described", False)


# -- §10 validate ---------------------------------------------------------------


def test_validate_is_called_only_when_an_idle_entry_is_handed_out_again(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    validate = Validator(True)
    pool = new_pool(ttl=10, clock=ManualClock(), validate=validate)
    with pool.get("k") as resource, pool.get("k"):  # created, then a hit in use
        assert pool.acquire("k") is resource
        pool.release("k")
    assert validate.calls == []
    for _ in range(3):
        assert lease_once(pool) is resource
    assert validate.calls == [resource] * 3 and rec.created == [resource]


@pytest.mark.parametrize("verdict", [False, LookupError("stale")])
def test_validate_saying_no_or_raising_retires_the_entry_for_a_new_one(
    verdict: object, rec: Recorder, new_pool: PoolMaker
) -> None:
    reported = Reports()
    pool = new_pool(
        ttl=10,
        clock=ManualClock(),
        validate=Validator(verdict),
        on_remove=rec.on_remove,
        on_error=reported,
    )
    old = lease_once(pool)
    fresh = lease_once(pool)
    assert fresh is not old and rec.finalized == [old]
    assert rec.removed == [("k", old, RemovalCause.INVALID)]
    assert pool.stats.removed.invalid == 1
    if isinstance(verdict, Exception):
        assert reported == [(verdict, "validate", "k")]
    else:
        assert reported == []


@pytest.mark.parametrize("verdict", [True, False])
def test_one_validation_and_at_most_one_factory_call_serve_every_thread(
    verdict: bool, rec: Recorder, new_pool: PoolMaker
) -> None:
    gate = Gate()
    validate = Validator(verdict, gate)
    pool = new_pool(ttl=10, clock=ManualClock(), validate=validate)
    old = lease_once(pool)
    misses = pool.stats.misses
    workers = [in_thread(lambda: pool.acquire("k")) for _ in range(N)]
    try:
        gate.wait_entered()
        until(lambda: pool.stats.misses == misses + N - 1, "the threads to join")
        assert pool.stats.creating == 1 and lock_free(pool)
    finally:
        gate.open()
    results = [w.result() for w in workers]
    assert all(r is results[0] for r in results)
    assert validate.calls == [old]
    assert (results[0] is old) is verdict
    assert len(rec.created) == (1 if verdict else 2)
    assert pool.stats.referenced_entries == 1
    for _ in range(N):
        pool.release("k")
    assert pool.stats.idle_entries == 1


# -- §10 max_lifetime -----------------------------------------------------------

#: The max_lifetime of the tests below: every entry retires in (0.9 L, L].
L = 100.0


@pytest.mark.parametrize("clock_kind", ["manual", "still"])
def test_an_entry_past_its_lifetime_is_not_handed_out_but_its_holder_keeps_it(
    clock_kind: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = ManualClock() if clock_kind == "manual" else StillClock()
    pool = new_pool(ttl=1000, max_lifetime=L, clock=clock, on_remove=rec.on_remove)
    with pool.get("k") as old:
        clock.advance(L)
        with pool.get("k") as fresh:
            assert fresh is not old and rec.created == [old, fresh]
        assert pool.acquire("k") is fresh  # a hit of the new entry
        pool.release("k")
        clock.advance(L / 2)
        assert rec.finalized == [] and rec.removed == []
    assert rec.finalized == [old]  # at its holder's last release
    assert rec.removed == [("k", old, RemovalCause.LIFETIME)]
    stats = pool.stats
    assert (stats.referenced_entries, stats.idle_entries, stats.removed.lifetime) == (
        0,
        1,
        1,
    )


def test_key_based_holders_past_the_lifetime_release_both_entries(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=1000, max_lifetime=L, clock=clock, on_remove=rec.on_remove)
    old = pool.acquire("k")
    clock.advance(L)
    fresh = pool.acquire("k")
    assert fresh is not old and rec.finalized == []
    pool.release("k")
    pool.release("k")
    assert rec.finalized == [old]
    assert rec.removed == [("k", old, RemovalCause.LIFETIME)]
    assert pool.stats.idle_entries == 1 and pool.stats.referenced_entries == 0
    with pytest.raises(ValueError, match="'k'"):
        pool.release("k")


@pytest.mark.parametrize("ttl", [None, 1000])
def test_an_idle_entry_is_finalized_on_time_at_its_lifetime(
    ttl: float | None, rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=ttl, max_lifetime=L, clock=clock, on_remove=rec.on_remove)
    resource = lease_once(pool)
    retire_at = pool.pending_cleanup["k"]
    assert retire_at is not None and 0.9 * L < retire_at <= L
    clock.advance(retire_at - 0.001)
    assert rec.finalized == [] and "k" in pool
    clock.advance(0.001)  # nobody acquires: the timer does it
    assert rec.finalized == [resource]
    assert rec.removed == [("k", resource, RemovalCause.LIFETIME)]
    assert len(pool) == 0 and clock.pending_timers == 0


def test_the_reaper_thread_finalizes_an_idle_entry_at_its_lifetime(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=None, max_lifetime=0.02, on_remove=rec.on_remove, name="aging")
    resource = lease_once(pool)
    rec.wait_finalized(1)
    assert rec.removed == [("k", resource, RemovalCause.LIFETIME)]
    assert rec.threads == [REAPER + "aging"] and len(pool) == 0
    join_reapers("aging")


def test_an_idle_entry_past_its_lifetime_is_finalized_at_once_by_an_acquire(
    rec: Recorder, new_pool: PoolMaker
) -> None:
    clock = StillClock()  # no timer ever fires
    pool = new_pool(ttl=None, max_lifetime=L, clock=clock, on_remove=rec.on_remove)
    old = lease_once(pool)
    clock.advance(L)
    with pool.get("k") as fresh:
        assert fresh is not old and rec.finalized == [old]
        assert rec.removed == [("k", old, RemovalCause.LIFETIME)]


def test_lifetimes_are_drawn_from_the_last_tenth(new_pool: PoolMaker) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=None, max_lifetime=L, clock=clock)
    for key in range(50):  # all made at the same instant
        lease_once(pool, key)
    deadlines = pool.pending_cleanup
    assert set(deadlines) == set(range(50)) and clock.pending_timers <= 1
    assert all(d is not None and 0.9 * L < d <= L for d in deadlines.values())
    assert len(set(deadlines.values())) > 1  # they do not retire together


# -- §10 on_remove --------------------------------------------------------------

Scenario = Callable[[PoolMaker, ManualClock], tuple[Pool, Res]]


def _released(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=0)
    return pool, lease_once(pool)


def _idle(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=10)
    resource = lease_once(pool)
    clock.advance(10)
    return pool, resource


def _evicted(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=10, max_idle=1)
    resource = lease_once(pool)
    lease_once(pool, "other")
    return pool, resource


def _expired(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=10)
    resource = lease_once(pool)
    pool.expire("k")
    return pool, resource


def _expired_held(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=10)
    with pool.get("k") as resource:
        pool.expire("k")
    return pool, resource


def _lifetime(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=1000, max_lifetime=5)
    resource = lease_once(pool)
    clock.advance(5)
    return pool, resource


def _invalid(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=10, validate=Validator(False))
    resource = lease_once(pool)
    lease_once(pool)
    return pool, resource


def _cleared(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=10)
    with pool.get("k") as resource:
        pool.clear()
    return pool, resource


def _closed(new_pool: PoolMaker, clock: ManualClock) -> tuple[Pool, Res]:
    pool = new_pool(ttl=10)
    resource = lease_once(pool)
    pool.close()
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
}


@pytest.mark.parametrize("how", list(CAUSES))
def test_on_remove_is_called_once_per_entry_with_its_cause_before_the_finalizer(
    how: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    scenario, cause = CAUSES[how]
    clock = ManualClock()

    def new(**options: Any) -> Pool:
        return new_pool(on_remove=rec.on_remove, clock=clock, **options)

    pool, resource = scenario(new, clock)
    assert rec.removed[0] == ("k", resource, cause)
    assert rec.log[:2] == [("remove", resource), ("finalize", resource)]
    stats = pool.stats
    assert stats.removed[cause] == 1 == getattr(stats.removed, cause.name.lower())
    pool.close()  # whatever is left goes now, CLEARED
    for made in rec.created:
        assert [c for _, r, c in rec.removed if r is made] != []
        assert sum(r is made for _, r, _ in rec.removed) == 1
        assert rec.finalized_once(made)
    stats = pool.stats
    assert stats.finalized == len(rec.created) == stats.removed.total
    for each in RemovalCause:
        assert stats.removed[each] == sum(c is each for _, _, c in rec.removed)


@pytest.mark.parametrize("how", ["released", "idle", "cleared"])
def test_an_exception_from_on_remove_is_reported_and_the_finalizer_still_runs(
    how: str, rec: Recorder, new_pool: PoolMaker
) -> None:
    clock, boom = ManualClock(), KeyError("on_remove broke")
    reported = Reports()

    def on_remove(key: object, resource: Res, cause: RemovalCause) -> None:
        raise boom

    pool = new_pool(
        on_remove=on_remove,
        on_error=reported,
        ttl=0 if how == "released" else 10,
        clock=clock,
    )
    resource = lease_once(pool)
    if how == "idle":
        clock.advance(10)
    elif how == "cleared":
        pool.clear()
    assert reported == [(boom, "on_remove", "k")]
    assert rec.finalized == [resource] and len(pool) == 0
    assert pool.stats.errors == 1 and pool.stats.removed.total == 1


# -- §10 leak_timeout -----------------------------------------------------------


def leak_reports(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "ttlpool" and r.levelno == logging.WARNING
    ]


def says_seconds(message: str, seconds: float) -> bool:
    """Whether ``message`` names ``seconds`` as a duration."""
    for match in re.finditer(r"(\d+(?:\.\d+)?)\s*(?:s|sec|secs|seconds)\b", message):
        if float(match.group(1)) == seconds:
            return True
    return False


def test_a_lease_held_too_long_logs_one_warning_naming_key_time_and_stack(
    new_pool: PoolMaker, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=10, leak_timeout=5, clock=clock)
    caplog.set_level(logging.WARNING, logger="ttlpool")
    with pool.get("db-conn"):
        clock.advance(3)
        assert leak_reports(caplog) == []
        clock.advance(4)  # held 7 s: past the 5 s
        [report] = leak_reports(caplog)
        message = report.getMessage()
        assert "'db-conn'" in message and says_seconds(message, 7)
        me = test_a_lease_held_too_long_logs_one_warning_naming_key_time_and_stack
        assert me.__name__ in message and os.path.basename(__file__) in message
        clock.advance(100)
    clock.advance(100)
    assert len(leak_reports(caplog)) == 1


def test_a_lease_released_in_time_is_never_reported_and_off_by_default(
    new_pool: PoolMaker, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    pool = new_pool(ttl=None, leak_timeout=5, clock=clock)
    plain = new_pool(ttl=None, clock=clock)
    caplog.set_level(logging.WARNING, logger="ttlpool")
    for _ in range(3):
        with pool.get("k"):
            clock.advance(4.9)
    with plain.get("k"):
        assert clock.pending_timers == 0  # no watch without the option
        clock.advance(1e6)
    assert leak_reports(caplog) == [] and clock.pending_timers == 0


def test_a_lease_held_too_long_is_reported_by_the_reaper_thread(
    new_pool: PoolMaker,
) -> None:
    """With the real clock nobody needs to call the pool: the reaper thread
    exists while a lease is watched, and ends once nothing is."""
    reported = threading.Event()
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            reported.set()

    logger = logging.getLogger("ttlpool")
    handler = Catch(logging.WARNING)
    logger.addHandler(handler)
    try:
        pool = new_pool(ttl=None, leak_timeout=0.01, name="leaky")
        with pool.get("db-conn"):
            assert reported.wait(TIMEOUT), "the held lease was never reported"
    finally:
        logger.removeHandler(handler)
    [record] = records
    assert "'db-conn'" in record.getMessage()
    assert record.threadName == REAPER + "leaky"
    join_reapers("leaky")


@contextlib.contextmanager
def collecting(
    action: Literal["always", "error"],
) -> Generator[tuple[list[str], list[Any]], None, None]:
    """Collect garbage at the end of the block with warnings filtered by
    ``action``; yield the ResourceWarnings and unraisable reports seen."""
    seen: list[str] = []
    unraisable: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(action)
            yield seen, unraisable
            gc.collect()
        seen += [str(w.message) for w in caught if w.category is ResourceWarning]
    finally:
        sys.unraisablehook = hook


@pytest.mark.parametrize("action", ["always", "error"])
@pytest.mark.parametrize("ttl", [0, 10])
def test_a_lease_collected_while_entered_warns_and_gives_back_its_reference(
    ttl: float, action: Literal["always", "error"], rec: Recorder, new_pool: PoolMaker
) -> None:
    pool = new_pool(ttl=ttl, leak_timeout=5, clock=ManualClock())
    lease = pool.get("db-conn")
    resource = lease.__enter__()
    assert pool.stats.referenced_entries == 1
    with collecting(action) as (seen, unraisable):
        del lease
    if action == "always":
        [warning] = seen
    else:
        [report] = unraisable
        assert isinstance(report.exc_value, ResourceWarning)
        warning = str(report.exc_value)
    assert "'db-conn'" in warning
    assert pool.stats.referenced_entries == 0
    if ttl == 0:
        assert rec.finalized == [resource] and len(pool) == 0
    else:
        assert rec.finalized == [] and lease_once(pool, "db-conn") is resource


@pytest.mark.parametrize("case", ["held", "idle", "closed", "empty", "off"])
def test_an_unclosed_pool_collected_while_holding_entries_warns(case: str) -> None:
    rec = Recorder()
    pool: Pool = SyncResourcePool(
        rec.factory,
        ttl=0 if case == "empty" else None,
        leak_timeout=None if case == "off" else 5,
    )
    pool.acquire("k")
    if case != "held":
        pool.release("k")
    if case == "closed":
        pool.close()
    if case == "off":
        pool.close()  # (closed, so it is not left behind: its warning is off)
        pool = SyncResourcePool(rec.factory, ttl=None)
        lease_once(pool)
    with collecting("always") as (seen, unraisable):
        del pool
    assert unraisable == []
    if case in ("held", "idle"):
        [warning] = seen
        assert "unclosed SyncResourcePool" in warning
    else:
        assert seen == []


# -- §11 fork safety ------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns about fork() while other threads run: this test forks
# on purpose while the pool's reaper and a worker run; the child leaves
# with os._exit.
@pytest.mark.filterwarnings(
    "ignore:This process .*is multi-threaded:DeprecationWarning"
)
def test_a_forked_child_starts_empty_with_a_reaper_of_its_own(
    new_pool: PoolMaker,
) -> None:
    """At the fork the parent's reaper is inside a finalizer, a factory
    runs in another thread and a lease is held: the child's pool starts
    empty, waits for none of that, and reaps its own idle entries with a
    reaper thread of its own. The parent goes on untouched."""
    parent = os.getpid()
    creating, reaping = Gate(), Gate()
    finalized: list[tuple[Res, str]] = []

    def factory(key: str) -> Res:
        if key == "creating" and os.getpid() == parent:
            creating.block()
        return [key, os.getpid()]

    def finalizer(resource: Res) -> None:
        if resource[0] == "doomed" and os.getpid() == parent:
            reaping.block()
        finalized.append((resource, threading.current_thread().name))

    pool = new_pool(factory=factory, finalizer=finalizer, ttl=0.05, name="forked")
    held = pool.acquire("held")
    doomed = lease_once(pool, "doomed")
    creator = in_thread(lambda: pool.acquire("creating"))

    async def child() -> dict[str, Any]:
        mine = os.getpid()
        stats = pool.stats
        seen: dict[str, Any] = {
            "len": len(pool),
            "counts": [stats.total_entries, stats.creating, stats.pending_cleanup],
            "pending_cleanup": pool.pending_cleanup,
            "in": ["held" in pool, "creating" in pool],
        }
        pool.release("held")  # the parent's lease: nothing to release here
        before = len(finalized)
        seen["fresh"] = [pool.acquire("creating")[1] == mine]  # no wait
        pool.release("creating")
        seen["fresh"].append(lease_once(pool, "idle")[1] == mine)
        until(lambda: len(finalized) == before + 2, "the child's reaps")
        seen["reaped"] = sorted((r[0], r[1] == mine, t) for r, t in finalized[before:])
        pool.close()  # waits for none of the parent's work
        seen["after_close"] = [t.name for t in reapers("forked")]
        return seen

    try:
        creating.wait_entered()
        reaping.wait_entered()  # the parent's reaper is in the finalizer
        seen = report_from_child(child, timeout=TIMEOUT)
    finally:
        creating.open()
        reaping.open()
    assert seen["len"] == 0 and seen["counts"] == [0, 0, 0]
    assert seen["pending_cleanup"] == {} and seen["in"] == [False, False]
    assert seen["fresh"] == [True, True]
    reaper = REAPER + "forked"
    assert seen["reaped"] == [["creating", True, reaper], ["idle", True, reaper]]
    assert seen["after_close"] == []
    # The parent's pool went on untouched.
    made = creator.result()
    until(lambda: finalized, "the parent's reaper to finish")
    assert finalized == [(doomed, reaper)]
    assert len(pool) == 2 and pool.stats.referenced_entries == 2
    pool.release("held")
    pool.release("creating")
    pool.close()
    assert sorted(r[0] for r, _ in finalized) == ["creating", "doomed", "held"]
    assert held in [r for r, _ in finalized] and made in [r for r, _ in finalized]
    assert all(r[1] == parent for r, _ in finalized)
