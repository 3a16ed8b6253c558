"""clear, aclose, errors and observability, drop-in for wool (SPEC §5, §7, §9).

Every interleaving is forced with events, never with sleeps, and time moves
only through :class:`ttlpool.testing.ManualClock`: a ttlpool pool with a
finite ``ttl`` always gets one. (The wool-style program cannot pass a clock
to wool; its ``ttl`` is an hour and it clears before it ends, so no real
timer fires.) A ``clear(timeout=...)`` that must time out waits on a
finalizer that never ends by itself, so it times out whatever the machine's
speed; ``asyncio.wait_for`` bounds only what would otherwise hang on a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import attrs
import pytest

from ttlpool import PoolClosedError, PoolStats, RemovalCause, ResourcePool
from ttlpool.testing import ManualClock


class Conn:
    """A resource with an identity: its key and a serial number."""

    def __init__(self, key: object, serial: int) -> None:
        self.key = key
        self.serial = serial

    def __repr__(self) -> str:
        return f"<Conn {self.key!r} #{self.serial}>"


class Recorder:
    """A factory and finalizer that log what they make and retire."""

    def __init__(self) -> None:
        self.made: list[Conn] = []
        self.finalized: list[Conn] = []

    def factory(self, key: object) -> Conn:
        conn = Conn(key, len(self.made))
        self.made.append(conn)
        return conn

    def finalizer(self, conn: Conn) -> None:
        self.finalized.append(conn)

    def finalized_keys(self) -> list[object]:
        return sorted(str(conn.key) for conn in self.finalized)


class Abort(BaseException):
    """A BaseException that is neither an interrupt nor a cancellation."""


HookCall = tuple[BaseException, str, object]


def hook_into(calls: list[HookCall]) -> Callable[[BaseException, str, object], None]:
    def on_error(exc: BaseException, operation: str, key: object) -> None:
        calls.append((exc, operation, key))

    return on_error


def pool_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ttlpool"]


async def finish_other_tasks() -> None:
    """Wait for every other task of this loop (cleanup after a failed check)."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=5)


def run_on_private_loop(main: Coroutine[Any, Any, None]) -> bool:
    """Run ``main`` on a loop of its own; true if a KeyboardInterrupt escaped
    the loop instead of ending ``main``. Leaves nothing pending either way."""
    loop = asyncio.new_event_loop()
    # A task that ended with an interrupt nobody retrieved is logged when it
    # is garbage collected; that report belongs to this loop only.
    loop.set_exception_handler(lambda loop, context: None)
    task = loop.create_task(main)
    try:
        loop.run_until_complete(task)
    except KeyboardInterrupt:
        return True
    finally:
        leftovers = asyncio.all_tasks(loop)
        for leftover in leftovers:
            leftover.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return False


# -- §5 clear --------------------------------------------------------------------


async def test_clear_finalizes_every_entry_held_or_idle_and_drops_deadlines() -> None:
    clock = ManualClock()
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=10, clock=clock)
    await pool.acquire("held-by-key")
    lease = pool.get("held-by-lease")
    await lease.__aenter__()
    async with pool.get("idle"):
        pass
    assert pool.pending_cleanup == {"idle": 10.0}
    assert clock.pending_timers == 1

    await pool.clear()

    assert rec.finalized_keys() == ["held-by-key", "held-by-lease", "idle"]
    assert len(pool) == 0
    assert pool.pending_cleanup == {}
    assert pool.stats.pending_cleanup == 0
    assert pool.stats.idle_entries == pool.stats.referenced_entries == 0
    assert clock.pending_timers == 0
    await clock.advance(100)
    assert len(rec.finalized) == 3  # the dropped deadline finalized nothing
    await lease.__aexit__(None, None, None)
    await pool.release("held-by-key")
    assert len(rec.finalized) == 3


async def test_cleared_holder_keeps_its_object_and_its_lease_spares_new_entry() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=0)
    async with pool.get("k") as old:
        await pool.clear()
        assert rec.finalized == [old]
        assert old.key == "k"  # the holder still has its object
        new = await pool.acquire("k")
        assert new is not old
    # Leaving the old lease released nothing of the new entry ...
    assert rec.finalized == [old]
    assert "k" in pool
    assert pool.stats.referenced_entries == 1
    # ... whose only reference is still there to release.
    await pool.release("k")
    assert rec.finalized == [old, new]
    assert len(pool) == 0


async def test_key_release_after_clear_is_a_no_op() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=0)
    held = await pool.acquire("k")
    await pool.clear()
    await pool.release("k")  # no entry any more: no error, nothing happens
    assert rec.finalized == [held]
    assert pool.stats.finalized == 1
    assert len(pool) == 0


async def test_key_release_after_clear_does_not_touch_the_new_entry() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=0)
    old = await pool.acquire("k")  # holder A, key-based
    await pool.clear()
    new = await pool.acquire("k")  # holder B gets a new entry
    await pool.release("k")  # A's release: its entry was cleared
    try:
        assert rec.finalized == [old], "B's resource was finalized under it"
        assert pool.stats.referenced_entries == 1
    finally:
        await pool.aclose()
    assert rec.finalized == [old, new]


@pytest.mark.parametrize("then", ["keeps", "releases"])
async def test_clear_drains_generations_of_entries_that_finalizers_acquire(
    then: str,
) -> None:
    clock = ManualClock()
    rec = Recorder()
    successor = {"gen1": "gen2", "gen2": "gen3", "gen3": "gen4"}

    async def finalizer(conn: Conn) -> None:
        rec.finalized.append(conn)
        following = successor.get(str(conn.key))
        if following is not None:
            await pool.acquire(following)
            if then == "releases":
                await pool.release(following)  # idle with a deadline

    pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=30, clock=clock)
    await pool.acquire("gen1")

    await pool.clear()

    # Each generation's finalizer made the next entry; clear took them all.
    assert [conn.key for conn in rec.finalized] == ["gen1", "gen2", "gen3", "gen4"]
    assert rec.finalized == rec.made
    assert len(pool) == 0
    assert pool.pending_cleanup == {}
    assert clock.pending_timers == 0


async def test_clear_waits_for_a_creation_in_flight_then_finalizes_it() -> None:
    rec = Recorder()
    factory_started, let_factory_finish = asyncio.Event(), asyncio.Event()

    async def factory(key: object) -> Conn:
        factory_started.set()
        await let_factory_finish.wait()
        return rec.factory(key)

    pool = ResourcePool(factory, finalizer=rec.finalizer, ttl=0)
    acquirer = asyncio.create_task(pool.acquire("slow"))
    await factory_started.wait()
    clearing = asyncio.create_task(pool.clear())
    await asyncio.sleep(0)  # clear's first step runs (tasks run in FIFO order)
    assert pool.stats.creating == 1
    assert not clearing.done()

    let_factory_finish.set()
    conn = await acquirer
    await clearing

    assert rec.made == [conn]
    assert rec.finalized == [conn]
    assert len(pool) == 0
    assert pool.stats.creating == 0
    await pool.release("slow")  # the acquirer's release is a no-op
    assert rec.finalized == [conn]


async def test_clear_timeout_raises_timeout_error_naming_the_key_left() -> None:
    let_finish = asyncio.Event()
    ended: list[object] = []

    async def finalizer(conn: Conn) -> None:
        await let_finish.wait()
        ended.append(conn.key)

    pool = ResourcePool(Recorder().factory, finalizer=finalizer, ttl=0)
    await pool.acquire("stuck-key")

    with pytest.raises(TimeoutError, match=r"clear.*'stuck-key'"):
        # The finalizer never ends by itself. The outer bound only stops a
        # clear that ignores its own timeout (its TimeoutError names nothing).
        await asyncio.wait_for(pool.clear(timeout=0.01), timeout=10)

    assert "stuck-key" not in pool  # evicted all the same
    assert pool.pending_cleanup == {"stuck-key": None}
    let_finish.set()
    await pool.aclose()  # waits for the finalizer the timed-out clear left
    assert ended == ["stuck-key"]
    assert pool.stats.pending_cleanup == 0


async def test_a_later_clear_times_out_too_naming_the_key_still_finalizing() -> None:
    let_finish = asyncio.Event()

    async def finalizer(conn: Conn) -> None:
        await let_finish.wait()

    pool = ResourcePool(Recorder().factory, finalizer=finalizer, ttl=0)
    await pool.acquire("stuck-key")
    with pytest.raises(TimeoutError, match=r"clear.*'stuck-key'"):
        await asyncio.wait_for(pool.clear(timeout=0.01), timeout=10)
    try:
        # Nothing is cached any more, but the first clear's finalizer still
        # runs: this clear waits for it, up to its own timeout, and says so.
        with pytest.raises(TimeoutError, match=r"clear.*'stuck-key'"):
            await asyncio.wait_for(pool.clear(timeout=0.01), timeout=10)
    finally:
        let_finish.set()
        await pool.aclose()
        await finish_other_tasks()


async def test_clear_runs_finalizers_concurrently() -> None:
    started = {"left": asyncio.Event(), "right": asyncio.Event()}
    other = {"left": "right", "right": "left"}

    async def finalizer(conn: Conn) -> None:
        # Each waits for the other to start: sequential finalizers deadlock.
        started[conn.key].set()
        await started[other[conn.key]].wait()

    pool = ResourcePool(Recorder().factory, finalizer=finalizer, ttl=None)
    await pool.acquire("left")
    async with pool.get("right"):
        pass

    await asyncio.wait_for(pool.clear(), timeout=10)

    assert len(pool) == 0
    assert pool.stats.finalized == 2


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_a_finalizer_exception_is_reported_and_the_other_finalizers_still_run(
    style: str, caplog: pytest.LogCaptureFixture
) -> None:
    called: list[object] = []
    hook: list[HookCall] = []

    def close(conn: Conn) -> None:
        called.append(conn.key)
        if conn.key == "bad":
            raise ValueError("bad finalizer")

    async def aclose(conn: Conn) -> None:
        close(conn)

    pool = ResourcePool(
        Recorder().factory,
        finalizer=close if style == "sync" else aclose,
        ttl=None,
        on_error=hook_into(hook),
    )
    for key in ("a", "bad", "c"):
        await pool.acquire(key)
    await pool.release("c")

    with caplog.at_level(logging.ERROR, logger="ttlpool"):
        await pool.clear()  # the Exception is reported, not raised

    assert sorted(called) == ["a", "bad", "c"]
    assert len(pool) == 0
    [(exc, operation, key)] = hook
    assert isinstance(exc, ValueError)
    assert (operation, key) == ("finalize", "bad")
    [record] = pool_records(caplog)
    assert record.levelno >= logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[1] is exc
    assert record.exc_info[2] is not None  # with its traceback
    assert "'bad'" in record.getMessage()
    stats = pool.stats
    assert (stats.finalized, stats.finalizer_errors, stats.errors) == (3, 1, 1)


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_a_base_exception_is_reraised_after_every_entry_is_evicted(
    style: str,
) -> None:
    called: list[object] = []

    def close(conn: Conn) -> None:
        called.append(conn.key)
        if conn.key == "b":
            raise Abort

    async def aclose(conn: Conn) -> None:
        close(conn)

    rec = Recorder()
    pool = ResourcePool(
        rec.factory, finalizer=close if style == "sync" else aclose, ttl=None
    )
    for key in ("a", "b", "c", "d"):
        await pool.acquire(key)
    await pool.release("d")

    with pytest.raises(Abort):
        await pool.clear()

    assert len(pool) == 0
    assert pool.stats.total_entries == 0
    assert sorted(called) == ["a", "b", "c", "d"]
    fresh = await pool.acquire("b")  # the pool goes on working
    assert fresh is rec.made[-1]
    assert fresh.serial == 4
    await pool.release("b")


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_a_base_exception_does_not_cut_later_generations_short(
    style: str,
) -> None:
    called: list[object] = []

    async def abort() -> None:
        raise Abort

    def finalizer(conn: Conn) -> Awaitable[object] | None:
        # Plain function: it raises at once ("sync") or returns an awaitable
        # that raises ("async"); the other key's awaitable acquires a key.
        called.append(conn.key)
        if conn.key == "aborts":
            if style == "sync":
                raise Abort
            return abort()
        if conn.key == "acquires":
            return pool.acquire("appeared")
        return None

    pool = ResourcePool(Recorder().factory, finalizer=finalizer, ttl=None)
    await pool.acquire("aborts")
    await pool.acquire("acquires")
    try:
        with pytest.raises(Abort):
            await pool.clear()
        assert len(pool) == 0, "an entry that appeared during clear survived it"
        assert sorted(called) == ["aborts", "acquires", "appeared"]
    finally:
        await pool.aclose()


def test_keyboard_interrupt_from_a_sync_finalizer_reaches_clear_caller() -> None:
    called: list[object] = []

    def finalizer(conn: Conn) -> None:
        called.append(conn.key)
        if conn.key == "b":
            raise KeyboardInterrupt

    pool = ResourcePool(Recorder().factory, finalizer=finalizer, ttl=None)
    seen: list[tuple[int, list[object]]] = []

    async def program() -> None:
        for key in ("a", "b", "c"):
            await pool.acquire(key)
        await pool.release("c")
        try:
            await pool.clear()
        except KeyboardInterrupt:
            seen.append((len(pool), sorted(called)))

    escaped = run_on_private_loop(program())

    assert sorted(called) == ["a", "b", "c"]  # every finalizer ran either way
    assert not escaped, "the KeyboardInterrupt escaped the loop, not clear()"
    assert seen == [(0, ["a", "b", "c"])]


async def test_cancelled_clear_reraises_after_eviction_and_aclose_still_waits() -> None:
    started, let_finish = asyncio.Event(), asyncio.Event()
    ended: list[object] = []

    async def finalizer(conn: Conn) -> None:
        try:
            if conn.key == "slow":
                started.set()
                await let_finish.wait()
        finally:
            ended.append(conn.key)

    pool = ResourcePool(Recorder().factory, finalizer=finalizer, ttl=None)
    await pool.acquire("slow")
    await pool.acquire("quick")
    await pool.release("quick")
    clearing = asyncio.create_task(pool.clear())
    await started.wait()

    clearing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await clearing

    try:
        assert len(pool) == 0  # evicted before the cancellation got out
        assert pool.pending_cleanup == {"slow": None}
        let_finish.set()
        await pool.aclose()
        assert sorted(map(str, ended)) == ["quick", "slow"]
    finally:
        let_finish.set()
        await finish_other_tasks()


async def finalize_raising(conn: Conn) -> None:
    raise ValueError("finalizer failed")


def finalize_aborting(conn: Conn) -> None:
    raise Abort


@pytest.mark.parametrize(
    "finalizer",
    [
        pytest.param(lambda conn: None, id="returns-none"),
        pytest.param(lambda conn: "ignored", id="returns-a-value"),
        pytest.param(lambda conn: 1 / 0, id="raises"),
        pytest.param(finalize_raising, id="async-raises"),
        pytest.param(finalize_aborting, id="base-exception"),
    ],
)
async def test_evicted_whatever_the_finalizer_does_and_never_handed_out_again(
    finalizer: Callable[[Conn], object],
) -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=None)
    old = await pool.acquire("k")

    with contextlib.suppress(Abort):
        await pool.clear()

    assert "k" not in pool
    fresh = await pool.acquire("k")
    assert fresh is not old
    assert rec.made == [old, fresh]
    await pool.release("k")


# -- §5 aclose -------------------------------------------------------------------


async def test_acquire_after_aclose_raises_pool_closed_error() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=0)
    await pool.acquire("k")
    await pool.aclose()

    with pytest.raises(PoolClosedError, match="acquire") as info:
        await pool.acquire("k")
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(PoolClosedError, match=r"acquire|get"):
        async with pool.get("other"):
            pass
    assert len(rec.made) == 1  # no factory call after close
    assert len(pool) == 0


async def test_an_acquire_during_aclose_raises_pool_closed_error() -> None:
    started, let_finish = asyncio.Event(), asyncio.Event()

    async def finalizer(conn: Conn) -> None:
        started.set()
        await let_finish.wait()

    pool = ResourcePool(Recorder().factory, finalizer=finalizer, ttl=0)
    await pool.acquire("k")
    closing = asyncio.create_task(pool.aclose())
    await started.wait()
    try:
        with pytest.raises(PoolClosedError):
            await pool.acquire("k")
    finally:
        let_finish.set()
        await closing


async def test_aclose_is_idempotent() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=None)
    conn = await pool.acquire("k")

    await pool.aclose()
    await pool.aclose()

    assert pool.closed
    assert rec.finalized == [conn]  # finalized once, by the first aclose


async def test_releases_of_outstanding_leases_after_aclose_are_no_ops() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=0)
    lease = pool.get("by-lease")
    by_lease = await lease.__aenter__()
    by_key = await pool.acquire("by-key")

    await pool.aclose()
    assert rec.finalized_keys() == ["by-key", "by-lease"]

    await lease.__aexit__(None, None, None)
    await pool.release("by-key")
    assert sorted(rec.finalized, key=id) == sorted([by_lease, by_key], key=id)
    assert pool.stats.errors == 0


async def test_async_with_pool_closes_it_on_exit() -> None:
    rec = Recorder()
    async with ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=None) as pool:
        assert isinstance(pool, ResourcePool)
        conn = await pool.acquire("k")
        assert not pool.closed

    assert pool.closed
    assert rec.finalized == [conn]
    with pytest.raises(PoolClosedError):
        await pool.acquire("k")


async def test_closed_is_false_until_aclose_and_true_after() -> None:
    pool = ResourcePool(Recorder().factory)
    assert pool.closed is False
    await pool.clear()
    assert pool.closed is False  # clear does not close
    await pool.aclose()
    assert pool.closed is True


# -- §7 errors and observability -------------------------------------------------


async def test_a_ttl_reap_finalizer_error_is_logged_counted_and_passed_to_on_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    hook: list[HookCall] = []

    async def finalizer(conn: Conn) -> None:
        raise OSError(f"closing {conn.key} failed")

    pool = ResourcePool(
        Recorder().factory,
        finalizer=finalizer,
        ttl=5,
        clock=clock,
        on_error=hook_into(hook),
    )
    async with pool.get("db"):
        pass

    with caplog.at_level(logging.ERROR, logger="ttlpool"):
        await clock.advance(5)  # the pool reaps in a task of its own

    [(exc, operation, key)] = hook
    assert isinstance(exc, OSError)
    assert (operation, key) == ("finalize", "db")
    [record] = pool_records(caplog)
    assert record.exc_info is not None
    assert record.exc_info[1] is exc
    assert record.exc_info[2] is not None
    stats = pool.stats
    assert (stats.expired, stats.finalizer_errors, stats.errors) == (1, 1, 1)
    assert len(pool) == 0


async def test_an_on_error_hook_that_raises_is_logged_and_the_pool_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()

    def finalizer(conn: Conn) -> None:
        raise ValueError("finalizer failed")

    def on_error(exc: BaseException, operation: str, key: object) -> None:
        raise RuntimeError("hook failed")

    pool = ResourcePool(rec.factory, finalizer=finalizer, ttl=None, on_error=on_error)
    await pool.acquire("a")
    await pool.acquire("b")

    with caplog.at_level(logging.ERROR, logger="ttlpool"):
        await pool.clear()  # neither error escapes

    records = pool_records(caplog)
    failures = {type(r.exc_info[1]) for r in records if r.exc_info is not None}
    assert failures == {ValueError, RuntimeError}
    hook_records = [
        r for r in records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)
    ]
    assert len(hook_records) == 2  # one per key
    assert all("on_error" in r.getMessage() for r in hook_records)
    assert len(pool) == 0
    assert pool.stats.finalizer_errors == 2
    again = await pool.acquire("a")
    assert again is rec.made[-1]
    assert again.serial == 2


async def test_a_factory_error_nobody_receives_is_reported_as_create(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook: list[HookCall] = []
    started, let_fail = asyncio.Event(), asyncio.Event()

    async def factory(key: object) -> Conn:
        started.set()
        await let_fail.wait()
        raise ConnectionError(f"cannot reach {key}")

    pool = ResourcePool(factory, ttl=0, on_error=hook_into(hook))
    waiter = asyncio.create_task(pool.acquire("remote"))
    await started.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert hook == []

    with caplog.at_level(logging.ERROR, logger="ttlpool"):
        let_fail.set()
        await pool.clear()  # waits for the creation in flight

    [(exc, operation, key)] = hook
    assert isinstance(exc, ConnectionError)
    assert (operation, key) == ("create", "remote")
    [record] = pool_records(caplog)
    assert record.exc_info is not None
    assert record.exc_info[1] is exc
    stats = pool.stats
    assert (stats.factory_errors, stats.errors, stats.creating) == (1, 1, 0)
    assert len(pool) == 0


async def _warm(pool: ResourcePool[Any, Any]) -> None:
    """Give the running loop its place in the pool (one entry, released)."""
    async with pool.get("warm"):
        pass


async def _use_lease(pool: ResourcePool[Any, Any], key: Any) -> None:
    async with pool.get(key):
        pass


USES: dict[str, Callable[[ResourcePool[Any, Any], Any], Awaitable[Any]]] = {
    "acquire": lambda pool, key: pool.acquire(key),
    "get": _use_lease,
    "release": lambda pool, key: pool.release(key),
    "expire": lambda pool, key: pool.expire(key),
}


@pytest.mark.parametrize(
    ("operation", "warm"),
    [
        ("acquire", False),
        ("acquire", True),
        ("get", False),
        ("get", True),
        ("release", True),
        ("release", False),
        ("expire", False),
        ("expire", True),
    ],
)
async def test_an_unhashable_key_raises_type_error_naming_the_operation(
    operation: str, warm: bool
) -> None:
    pool = ResourcePool(Recorder().factory, ttl=None)
    if warm:
        await _warm(pool)
    before = pool.stats

    # Entering a lease acquires: either name tells the reader what failed.
    named = r"get|acquire" if operation == "get" else operation
    with pytest.raises(TypeError, match=named):
        await USES[operation](pool, ["un", "hashable"])

    assert pool.stats == before  # raised before any state changed
    await pool.aclose()


async def test_an_over_release_raises_value_error_naming_key_and_operation() -> None:
    pool = ResourcePool(Recorder().factory, ttl=None)
    await pool.acquire("conn-7")
    await pool.release("conn-7")

    with pytest.raises(ValueError, match=r"release.*'conn-7'"):
        await pool.release("conn-7")

    assert pool.stats.idle_entries == 1
    await pool.aclose()


@pytest.mark.parametrize("use", ["acquire", "get"])
async def test_pool_closed_error_names_the_key_and_the_operation(use: str) -> None:
    pool = ResourcePool(Recorder().factory)
    await pool.aclose()

    with pytest.raises(PoolClosedError, match=r"(acquire|get).*'db-primary'"):
        await USES[use](pool, "db-primary")


SPEC_STATS_FIELDS = {
    "total_entries",
    "referenced_entries",
    "idle_entries",
    "pending_cleanup",
    "creating",
    "hits",
    "misses",
    "created",
    "finalized",
    "expired",
    "evicted",
    "factory_errors",
    "finalizer_errors",
}


async def test_stats_is_a_frozen_attrs_snapshot_with_every_spec_field() -> None:
    pool = ResourcePool(Recorder().factory, ttl=None)
    stats = pool.stats

    assert isinstance(stats, PoolStats)
    assert attrs.has(type(stats))
    names = {field.name for field in attrs.fields(type(stats))}
    assert names >= SPEC_STATS_FIELDS | {"errors"}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.hits = 1  # type: ignore[misc]
    await pool.acquire("k")
    assert stats.total_entries == 0  # a snapshot, not a live view
    assert pool.stats.total_entries == 1
    await pool.aclose()


def counters(pool: ResourcePool[Any, Any]) -> dict[str, int]:
    """Every counter of ``pool.stats``, removals by cause as ``removed.<cause>``."""
    flat = attrs.asdict(pool.stats, recurse=False)
    removed = attrs.asdict(flat.pop("removed"))
    flat.update({f"removed.{cause}": count for cause, count in removed.items()})
    return flat


async def test_stats_count_a_scripted_scenario() -> None:
    clock = ManualClock(start=1000.0)
    slow_started, let_slow_finish = asyncio.Event(), asyncio.Event()
    serials = itertools.count()

    async def factory(key: str) -> Conn:
        if key == "bad":
            raise ValueError("bad key")
        if key == "slow":
            slow_started.set()
            await let_slow_finish.wait()
        return Conn(key, next(serials))

    def finalizer(conn: Conn) -> None:
        if conn.key == "x":
            raise OSError("cannot close x")

    pool = ResourcePool(
        factory,
        finalizer=finalizer,
        ttl=10,
        max_idle=1,
        clock=clock,
        on_error=lambda exc, operation, key: None,
    )
    removed = {f"removed.{cause.name.lower()}" for cause in RemovalCause}
    expected = dict.fromkeys(SPEC_STATS_FIELDS | {"errors", "abandoned"} | removed, 0)
    assert counters(pool) == expected

    await pool.acquire("a")  # miss, created
    expected.update(misses=1, created=1, total_entries=1, referenced_entries=1)
    assert counters(pool) == expected

    await pool.acquire("a")  # hit
    await pool.release("a")
    await pool.release("a")  # idle until 1010
    expected.update(hits=1, referenced_entries=0, idle_entries=1, pending_cleanup=1)
    assert counters(pool) == expected

    async with pool.get("b"):  # b's release makes 2 idle: max_idle evicts a
        pass
    expected.update({"misses": 2, "created": 2, "evicted": 1, "finalized": 1})
    expected["removed.evicted"] = 1
    assert counters(pool) == expected

    await clock.advance(10)  # b expires by its TTL
    expected.update(
        expired=1, finalized=2, total_entries=0, idle_entries=0, pending_cleanup=0
    )
    expected["removed.idle"] = 1
    assert counters(pool) == expected

    with pytest.raises(ValueError, match="bad key"):
        await pool.acquire("bad")
    expected.update(misses=3, factory_errors=1)  # its waiter got it: not "errors"
    assert counters(pool) == expected

    async with pool.get("x"):
        pass
    await pool.expire("x")  # its finalizer fails
    expected.update(misses=4, created=3, finalized=3, finalizer_errors=1, errors=1)
    expected["removed.expired"] = 1  # (removed, though its finalizer failed)
    assert counters(pool) == expected

    acquirer = asyncio.create_task(pool.acquire("slow"))
    await slow_started.wait()
    expected.update(misses=5, creating=1)
    assert counters(pool) == expected

    let_slow_finish.set()
    await acquirer
    expected.update(created=4, creating=0, total_entries=1, referenced_entries=1)
    assert counters(pool) == expected

    await pool.clear()
    expected.update(finalized=4, total_entries=0, referenced_entries=0)
    expected["removed.cleared"] = 1
    assert counters(pool) == expected
    assert pool.stats.removed.total == pool.stats.finalized


async def test_running_totals_survive_aclose() -> None:
    rec = Recorder()
    pool = ResourcePool(rec.factory, finalizer=rec.finalizer, ttl=None)
    await pool.acquire("a")
    await pool.acquire("a")
    async with pool.get("b"):
        pass
    before = pool.stats
    assert (before.misses, before.hits, before.created) == (2, 1, 2)

    await pool.aclose()

    after = pool.stats
    assert (after.misses, after.hits, after.created) == (2, 1, 2)
    assert after.finalized == len(rec.finalized) == 2


async def test_pending_cleanup_maps_idle_to_deadline_and_finalizing_to_none() -> None:
    clock = ManualClock(start=100.0)
    finalizer_started, let_finalizer_finish = asyncio.Event(), asyncio.Event()

    async def finalizer(conn: Conn) -> None:
        if conn.key == "a":
            finalizer_started.set()
            await let_finalizer_finish.wait()

    pool = ResourcePool(Recorder().factory, finalizer=finalizer, ttl=10, clock=clock)
    held = await pool.acquire("held")
    async with pool.get("a"):
        pass
    await clock.advance(3)
    async with pool.get("b"):
        pass
    assert pool.pending_cleanup == {"a": 110.0, "b": 113.0}  # held has none
    assert pool.stats.pending_cleanup == 2

    expiring = asyncio.create_task(pool.expire("a"))
    await finalizer_started.wait()
    assert pool.pending_cleanup == {"a": None, "b": 113.0}
    assert pool.stats.pending_cleanup == 2
    assert "a" not in pool

    let_finalizer_finish.set()
    await expiring
    assert pool.pending_cleanup == {"b": 113.0}
    assert pool.stats.pending_cleanup == 1
    assert held.key == "held"
    await pool.aclose()


async def test_len_in_and_repr_describe_the_pool() -> None:
    clock = ManualClock()
    pool = ResourcePool(Recorder().factory, ttl=10, clock=clock)
    assert len(pool) == 0
    assert None not in pool
    assert re.search(r"entries\W*0\b", repr(pool))
    assert "open" in repr(pool)

    await pool.acquire(None)  # None is a key like any other
    async with pool.get("idle"):
        pass
    assert len(pool) == 2
    assert None in pool
    assert "idle" in pool
    assert "other" not in pool
    assert re.search(r"entries\W*2\b", repr(pool))
    assert "open" in repr(pool)

    await pool.aclose()
    assert len(pool) == 0
    assert "idle" not in pool
    assert "closed" in repr(pool)
    assert re.search(r"entries\W*0\b", repr(pool))


# -- §9 drop-in for wool's ResourcePool -------------------------------------------


async def wool_style_program(pool_class: Any) -> list[object]:
    """A program written against wool's public ``ResourcePool`` surface only.

    It returns what it observed; the same program on ttlpool must observe the
    same. Each observation lists the resources closed so far (sorted: the
    finalizers of one clear may run in any order). Resources are truthy
    (wool skips releasing falsy ones), ``ttl`` is long enough that no real
    timer fires, and ``pending_cleanup`` is read for its keys only (its
    values differ on purpose).
    """
    seen: list[object] = []
    closed: list[str] = []
    serials = itertools.count()

    async def connect(key: str) -> Conn:
        await asyncio.sleep(0)
        return Conn(key, next(serials))

    async def close(conn: Conn) -> None:
        await asyncio.sleep(0)
        closed.append(f"{conn.key}#{conn.serial}")

    def observe(label: str, pool: Any) -> None:
        stats = pool.stats
        seen.append(
            (
                label,
                stats.total_entries,
                stats.referenced_entries,
                stats.pending_cleanup,
                sorted(pool.pending_cleanup),
                sorted(closed),
            )
        )

    pool = pool_class(connect, finalizer=close, ttl=3600)
    async with pool.get("db") as db:
        seen.append(("leased", db.key, db.serial))
        observe("inside lease", pool)
    observe("after lease", pool)

    again = await pool.acquire("db")
    seen.append(("reacquired", again.serial))
    observe("reacquired", pool)
    await pool.expire("db")  # referenced: only marked
    observe("expired while held", pool)
    await pool.release("db")  # the last release finalizes it
    observe("released after expire", pool)

    async with pool.get("cache"):
        pass
    await pool.expire("cache")  # idle: finalized now
    observe("expired idle", pool)

    await pool.release("never-acquired")  # no-op
    await pool.acquire("x")
    await pool.release("x")
    try:
        await pool.release("x")
    except ValueError:
        seen.append("over-release: ValueError")

    lease = pool.get("single-use")
    async with lease:
        pass
    try:
        async with lease:
            pass
    except RuntimeError:
        seen.append("lease reuse: RuntimeError")

    held = await pool.acquire("held")
    observe("before clear", pool)
    await pool.clear()
    seen.append(("holder keeps", held.key, held.serial))
    observe("after clear", pool)
    await pool.release("held")  # its entry was cleared: no-op
    observe("released after clear", pool)

    async with pool_class(connect, finalizer=close, ttl=0) as scoped:
        async with scoped.get("scoped") as conn:
            seen.append(("scoped", conn.key, conn.serial))
        observe("ttl=0 after release", scoped)
        await scoped.acquire("kept")
        observe("held in scope", scoped)
    observe("after async with", scoped)
    return seen


WOOL_STYLE_OBSERVATIONS: list[object] = [
    ("leased", "db", 0),
    ("inside lease", 1, 1, 0, [], []),
    ("after lease", 1, 0, 1, ["db"], []),
    ("reacquired", 0),
    ("reacquired", 1, 1, 0, [], []),
    ("expired while held", 1, 1, 0, [], []),
    ("released after expire", 0, 0, 0, [], ["db#0"]),
    ("expired idle", 0, 0, 0, [], ["cache#1", "db#0"]),
    "over-release: ValueError",
    "lease reuse: RuntimeError",
    ("before clear", 3, 1, 2, ["single-use", "x"], ["cache#1", "db#0"]),
    ("holder keeps", "held", 4),
    ("after clear", 0, 0, 0, [], ["cache#1", "db#0", "held#4", "single-use#3", "x#2"]),
    (
        "released after clear",
        0,
        0,
        0,
        [],
        ["cache#1", "db#0", "held#4", "single-use#3", "x#2"],
    ),
    ("scoped", "scoped", 5),
    (
        "ttl=0 after release",
        0,
        0,
        0,
        [],
        ["cache#1", "db#0", "held#4", "scoped#5", "single-use#3", "x#2"],
    ),
    (
        "held in scope",
        1,
        1,
        0,
        [],
        ["cache#1", "db#0", "held#4", "scoped#5", "single-use#3", "x#2"],
    ),
    (
        "after async with",
        0,
        0,
        0,
        [],
        ["cache#1", "db#0", "held#4", "kept#6", "scoped#5", "single-use#3", "x#2"],
    ),
]


@pytest.mark.parametrize("implementation", ["ttlpool", "wool"])
async def test_a_wool_style_program_observes_the_same_on_both_pools(
    implementation: str, bench_extra: Callable[..., Any]
) -> None:
    if implementation == "wool":
        wool = bench_extra("wool.runtime.resourcepool", python=(3, 11))
        pool_class: Any = wool.ResourcePool
    else:
        pool_class = ResourcePool
    observed = await wool_style_program(pool_class)
    assert observed == WOOL_STYLE_OBSERVATIONS


async def test_ttlpool_pending_cleanup_values_are_deadlines_not_timers() -> None:
    # Documented difference: wool maps a key to its TimerHandle or cleanup
    # task; ttlpool to the idle deadline on the pool clock (None while the
    # finalizer runs), which a program can compare and print.
    clock = ManualClock(start=50.0)
    pool = ResourcePool(Recorder().factory, ttl=7, clock=clock)
    async with pool.get("k"):
        pass
    [deadline] = pool.pending_cleanup.values()
    assert isinstance(deadline, float)
    assert deadline == clock.now() + 7
    await pool.aclose()


async def test_ttlpool_async_with_closes_the_pool_where_wool_only_clears_it() -> None:
    # Documented difference: leaving ``async with`` on a wool pool clears it
    # and it stays usable; a ttlpool pool is closed for good.
    rec = Recorder()
    async with ResourcePool(rec.factory, finalizer=rec.finalizer) as pool:
        await pool.acquire("k")
    assert pool.closed
    assert len(rec.finalized) == 1
    with pytest.raises(PoolClosedError):
        await pool.acquire("k")


async def test_ttlpool_releases_a_falsy_resource_where_wool_skips_it() -> None:
    # Documented fix: wool's lease releases only truthy resources, so a
    # falsy one stays referenced forever; ttlpool releases it.
    finalized: list[object] = []
    pool = ResourcePool(lambda key: 0, finalizer=finalized.append, ttl=0)
    async with pool.get("zero") as zero:
        assert zero == 0
    assert finalized == [0]
    assert len(pool) == 0
