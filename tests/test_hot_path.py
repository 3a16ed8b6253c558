"""The warm hit's shortcut to the running loop's partition (SPEC section 6).

Before Python 3.12 a lease does not ask asyncio for the running loop (a
``getpid()`` system call) when it can help it: each thread's last partition
is kept, and trusted only while that partition's loop runs on this very
thread (``loop._thread_id``). A loop with no ``_thread_id`` (uvloop's) is
always asked for; ``os.fork()`` and ``aclose`` drop what was kept. Every
test here puts one loop where a stale kept partition would hand it another
loop's resource: it must get its own. From 3.12 there is no shortcut and
the same rules hold.

Resources are :class:`Conn` objects that remember the loop that made them;
the finalizer appends to a list, so "finalized exactly once" is a count.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.forked import report_from_child
from ttlpool import ResourcePool
from ttlpool._locked_ledger import LockedLedger
from ttlpool.testing import ManualClock

#: Upper bound for any single wait (generous: CI is slow).
TIMEOUT = 20.0

Loop = asyncio.AbstractEventLoop


class Conn:
    """A pooled resource that knows the loop that made it."""

    def __init__(self, serial: int, loop: Loop) -> None:
        self.serial = serial
        self.loop = loop

    def __repr__(self) -> str:
        return f"<Conn #{self.serial}>"


def new_pool(finalized: list[Conn]) -> ResourcePool[str, Conn]:
    """A per-loop pool whose idle entries stay (time moves only by hand)."""
    serials = itertools.count(1)

    def factory(key: str) -> Conn:
        return Conn(next(serials), asyncio.get_running_loop())

    return ResourcePool(
        factory, finalizer=finalized.append, ttl=30, clock=ManualClock()
    )


async def leases(pool: ResourcePool[str, Conn], count: int = 2) -> list[Conn]:
    """``count`` leases of key "k" one after the other: a miss, then hits."""
    got = []
    for _ in range(count):
        async with pool.get("k") as conn:
            got.append(conn)
    return got


def shut(loop: Loop) -> None:
    """End ``loop`` as ``asyncio.run`` does: shut its async generators, close."""
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def assert_finalized_once(finalized: list[Conn], *conns: Conn) -> None:
    assert sorted(c.serial for c in finalized) == sorted(c.serial for c in conns)


class LoopWithoutThreadId(asyncio.SelectorEventLoop):
    """asyncio's loop keeping the thread it runs on under another name, as
    uvloop keeps it in a C field: ``getattr(loop, "_thread_id")`` fails,
    and the loop still knows whether, and on which thread, it runs."""

    _running_on: int | None = None

    @property
    def _thread_id(self) -> int | None:
        raise AttributeError("_thread_id")

    @_thread_id.setter
    def _thread_id(self, thread: int | None) -> None:
        self._running_on = thread

    def is_running(self) -> bool:
        return self._running_on is not None

    def _check_thread(self) -> None:  # asyncio's debug-mode check
        if self._running_on not in (None, threading.get_ident()):
            raise RuntimeError("Non-thread-safe operation invoked on another loop")


@pytest.fixture(params=["asyncio", "asyncio-without-_thread_id", "uvloop"])
def new_loop(request: pytest.FixtureRequest, bench_extra: Any) -> Callable[[], Loop]:
    """A maker of event loops: asyncio's, one with no ``_thread_id``, uvloop's."""
    if request.param == "uvloop":
        uvloop = bench_extra("uvloop")
        return uvloop.new_event_loop  # type: ignore[no-any-return]
    if request.param == "asyncio-without-_thread_id":
        loop = LoopWithoutThreadId()
        assert not hasattr(loop, "_thread_id")
        loop.close()
        return LoopWithoutThreadId
    return asyncio.new_event_loop


def test_a_second_asyncio_run_does_not_reuse_the_first_loops_partition() -> None:
    """A thread's kept partition belongs to a loop that has ended: the next
    ``asyncio.run`` gets a fresh resource, and the first loop's idle one is
    finalized exactly once (adopted, since its loop closed)."""
    finalized: list[Conn] = []
    pool = new_pool(finalized)
    first = asyncio.run(leases(pool))
    assert first[0] is first[1]  # a hit: the same resource
    assert finalized == []

    async def second_run() -> list[Conn]:
        got = await leases(pool)
        await pool.aclose()
        return got

    second = asyncio.run(second_run())
    assert second[0] is second[1]
    assert second[0] is not first[0], "the second loop got the first loop's resource"
    assert second[0].loop is not first[0].loop
    assert_finalized_once(finalized, first[0], second[0])
    stats = pool.stats
    assert (stats.created, stats.finalized, stats.hits, stats.misses) == (2, 2, 2, 2)
    assert len(pool) == 0


def test_loops_run_in_turn_on_one_thread_each_get_their_own(
    new_loop: Callable[[], Loop],
) -> None:
    """Loops A, B, A, B run one after the other on one thread (asyncio's,
    one with no ``_thread_id``, uvloop's): each loop always gets its own
    resource, and a hit gets the same one."""
    finalized: list[Conn] = []
    pool = new_pool(finalized)
    a, b = new_loop(), new_loop()
    try:
        a1 = a.run_until_complete(leases(pool))
        b1 = b.run_until_complete(leases(pool))
        a2 = a.run_until_complete(leases(pool))
        b2 = b.run_until_complete(leases(pool))
        assert {c.loop for c in a1 + a2} == {a}, "loop A got another loop's resource"
        assert {c.loop for c in b1 + b2} == {b}, "loop B got another loop's resource"
        assert len({*a1, *a2}) == len({*b1, *b2}) == 1  # every later lease a hit
        stats = pool.stats
        assert (stats.created, stats.hits, stats.misses) == (2, 6, 2)
        shut(b)
        a.run_until_complete(pool.aclose())
        assert_finalized_once(finalized, a1[0], b1[0])
    finally:
        for loop in (a, b):
            if not loop.is_closed():
                shut(loop)


def test_a_loop_moved_to_another_thread_keeps_its_partition() -> None:
    """A loop run on thread A, then on thread B, finds its own resource on
    B; while it runs on B, thread A running another loop gets a resource of
    its own, not the moved loop's (which thread A kept from before)."""
    finalized: list[Conn] = []
    pool = new_pool(finalized)
    moved, other = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        before = moved.run_until_complete(leases(pool))  # this thread is A
        on_b: list[Conn] = []
        wake: list[asyncio.Future[None]] = []
        running = threading.Event()
        errors: list[BaseException] = []

        async def hold() -> None:
            async with pool.get("k") as conn:
                on_b.append(conn)
                wake.append(asyncio.get_running_loop().create_future())
                running.set()
                await asyncio.wait_for(wake[0], TIMEOUT)

        def thread_b() -> None:
            try:
                moved.run_until_complete(hold())
            except BaseException as exc:
                errors.append(exc)
            finally:
                running.set()

        b = threading.Thread(target=thread_b, name="hot-path-b", daemon=True)
        b.start()
        try:
            assert running.wait(TIMEOUT), "thread B did not start its loop"
            assert not errors, errors
            while_moved = other.run_until_complete(leases(pool))
        finally:
            if wake:
                moved.call_soon_threadsafe(wake[0].set_result, None)
            b.join(TIMEOUT)
        assert not b.is_alive(), "thread B did not end"
        assert not errors, errors
        assert on_b == [before[0]], "the moved loop lost its resource on thread B"
        assert {c.loop for c in while_moved} == {other}, "got the moved loop's resource"
        after = moved.run_until_complete(leases(pool))  # back on thread A
        assert after == before
        shut(other)
        moved.run_until_complete(pool.aclose())
        assert_finalized_once(finalized, before[0], while_moved[0])
    finally:
        for loop in (moved, other):
            if not loop.is_closed():
                shut(loop)


async def _in_forked_child(
    pool: ResourcePool[str, Conn], finalized: list[Conn]
) -> dict[str, Any]:
    got = await leases(pool)
    stats = pool.stats
    await pool.aclose()
    return {
        "serials": [c.serial for c in got],
        "own_loop": all(c.loop is asyncio.get_running_loop() for c in got),
        "counts": [stats.created, stats.hits, stats.misses],
        "finalized": [c.serial for c in finalized],
    }


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns about fork() when other threads are alive; this test
# starts none, and the child runs only this test's code (see test_loops).
@pytest.mark.filterwarnings(
    "ignore:This process .*is multi-threaded:DeprecationWarning"
)
def test_a_forked_child_does_not_hit_the_parents_kept_partition() -> None:
    """Forked from a coroutine, the child's thread has the parent's thread
    id and the parent's loop says it runs on it: the child still starts
    empty, makes its own resource and never finalizes the parent's."""
    finalized: list[Conn] = []
    pool = new_pool(finalized)

    async def parent() -> tuple[list[Conn], dict[str, Any]]:
        got = await leases(pool)
        seen = report_from_child(
            lambda: _in_forked_child(pool, finalized), timeout=TIMEOUT
        )
        return got + await leases(pool, 1), seen

    loop = asyncio.new_event_loop()
    try:
        got, seen = loop.run_until_complete(parent())
        assert seen["serials"][0] != got[0].serial, "the child got the parent's"
        assert seen["serials"][0] == seen["serials"][1] and seen["own_loop"]
        assert seen["counts"] == [1, 1, 1]
        assert seen["finalized"] == seen["serials"][:1]
        # The parent's resource is untouched, still warm, and its own.
        assert got[0] is got[1] is got[2] and finalized == []
        loop.run_until_complete(pool.aclose())
        assert_finalized_once(finalized, got[0])
    finally:
        shut(loop)


async def test_a_shared_ledgers_lease_counts_only_under_the_ledgers_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``per_loop=False`` every loop's threads count on one ledger, so
    the lease's inlined hit and release (which take no lock) must not touch
    it: every hit and every release, the last one and the ones before it,
    goes through the ``LockedLedger``, which holds its lock around each."""
    locked: list[str] = []
    hit, release = LockedLedger.hit, LockedLedger.release

    def counted_hit(
        self: LockedLedger[Any, Any], key: Any, now: float | None = None
    ) -> Any:
        assert not self.lock.locked()
        locked.append("hit")
        return hit(self, key, now)

    def counted_release(self: LockedLedger[Any, Any], entry: Any, now: float) -> int:
        assert not self.lock.locked()
        locked.append("release")
        return release(self, entry, now)

    monkeypatch.setattr(LockedLedger, "hit", counted_hit)
    monkeypatch.setattr(LockedLedger, "release", counted_release)
    pool: ResourcePool[str, object] = ResourcePool(
        lambda key: object(), ttl=30, per_loop=False, clock=ManualClock()
    )
    async with pool.get("k"):  # a miss, then its release
        pass
    locked.clear()
    async with pool.get("k"), pool.get("k"):  # two hits; 2 -> 1, then 1 -> 0
        pass
    assert locked == ["hit", "hit", "release", "release"]
    await pool.aclose()
