"""Typed use of the public API, checked by ``mypy --strict`` and ``pyright``.

Not a test module (pytest collects ``test_*.py`` only) and never run: the
type checkers are its test. Each ``assert_type`` fails the check if the
inferred type is wrong, ``Any`` included, and each ``# type: ignore[code]``
marks a line that must stay an error: both checkers report an ignore that
has become unnecessary (``warn_unused_ignores`` in mypy's strict mode,
``reportUnnecessaryTypeIgnoreComment`` in pyright's configuration).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ttlpool import (
    DrainReport,
    PoolClosedError,
    PoolStats,
    RemovalCause,
    Removals,
    Resource,
    ResourcePool,
    SyncResource,
    SyncResourcePool,
    WorkerLoopPool,
    drain_tasks,
)
from ttlpool.clock import Clock
from ttlpool.testing import ManualClock

if TYPE_CHECKING:
    # Only the checkers read this import; typing_extensions is no dependency.
    from typing_extensions import assert_type
else:

    def assert_type(value: object, expected: object) -> object:
        return value


class Connection:
    """A resource type of our own."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def close(self) -> None: ...


async def connect(dsn: str) -> Connection:
    return Connection(dsn)


def connect_sync(dsn: str) -> Connection:
    return Connection(dsn)


async def close(connection: Connection) -> None:
    await connection.close()


def close_sync(connection: Connection) -> None: ...


async def resource_type_flows_from_factory_to_lease() -> None:
    pool = ResourcePool(connect, finalizer=close, ttl=30.0)
    assert_type(pool, ResourcePool[str, Connection])

    lease = pool.get("db")
    assert_type(lease, Resource[Connection])
    async with lease as connection:
        assert_type(connection, Connection)
        dsn: str = connection.dsn
        del dsn

    async with pool.get("db") as connection:
        assert_type(connection, Connection)
        not_a_str: str = connection  # type: ignore[assignment]
        del not_a_str

    acquired = await pool.acquire("db")
    assert_type(acquired, Connection)
    await pool.release("db")


async def sync_factory_and_finalizer_give_the_same_types() -> None:
    pool = ResourcePool(connect_sync, finalizer=close_sync, ttl=None)
    assert_type(pool, ResourcePool[str, Connection])
    async with pool.get("db") as connection:
        assert_type(connection, Connection)


async def keys_are_checked_against_the_factory() -> None:
    pool = ResourcePool(connect, ttl=math.inf, max_idle=8)
    pool.get(42)  # type: ignore[arg-type]
    await pool.acquire(b"db")  # type: ignore[arg-type]
    await pool.expire("db")


async def explicit_parameters_and_options(clock: Clock) -> None:
    def report(error: BaseException, operation: str, key: Any) -> None:
        print(f"{operation} of {key!r} failed: {error!r}")

    pool: ResourcePool[tuple[str, int], Connection] = ResourcePool(
        lambda key: Connection(f"{key[0]}:{key[1]}"),
        finalizer=Connection.close,
        ttl=0,
        max_idle=None,
        on_error=report,
        per_loop=False,
        clock=clock,
    )
    async with pool.get(("db", 5432)) as connection:
        assert_type(connection, Connection)


async def pool_members_have_precise_types() -> None:
    clock = ManualClock()
    async with ResourcePool(connect, ttl=30, clock=clock) as pool:
        assert_type(pool, ResourcePool[str, Connection])
        stats = pool.stats
        assert_type(stats, PoolStats)
        count: int = stats.total_entries + stats.pending_cleanup + stats.hits
        del count
        assert_type(pool.pending_cleanup, dict[str, float | None])
        assert_type(pool.ttl, float)
        assert_type(pool.closed, bool)
        assert_type(len(pool), int)
        assert_type("db" in pool, bool)
        await clock.advance(30)
        await pool.clear(timeout=5.0)
    await pool.aclose()


async def closed_pool_error_is_a_runtime_error(
    pool: ResourcePool[str, Connection],
) -> None:
    try:
        await pool.acquire("db")
    except PoolClosedError as error:
        runtime_error: RuntimeError = error
        del runtime_error


def constructor_arguments_are_checked() -> None:
    wrong_finalizer: Callable[[int], Awaitable[None]]

    async def takes_int(value: int) -> None: ...

    wrong_finalizer = takes_int
    # Bare ignores: the error code depends on whether the constructor is
    # overloaded; mypy and pyright still report them if they become unused.
    ResourcePool(connect, finalizer=wrong_finalizer)  # type: ignore
    ResourcePool(connect, ttl="30")  # type: ignore


async def double(x: int) -> int:
    return 2 * x


async def worker_loops_return_the_coroutine_result_type() -> None:
    async with WorkerLoopPool(ttl=30) as loops:
        assert_type(loops, WorkerLoopPool)
        assert_type(await loops.run(double, 21), int)
        assert_type(await loops.run(double, 21, key="other"), int)
        async with loops.lease() as loop:
            assert_type(loop, asyncio.AbstractEventLoop)
        assert_type(loops.stats, PoolStats)


def worker_loops_from_plain_threads(loops: WorkerLoopPool) -> None:
    assert_type(loops.run_sync(double, 1), int)


async def drain_reports_what_it_did() -> None:
    report = await drain_tasks(timeout=5.0)
    assert_type(report, DrainReport)
    assert_type(report.complete, bool)
    assert_type(report.left, tuple[asyncio.Task[Any], ...])


async def alive(connection: Connection) -> bool:
    return not connection.dsn.startswith("closed:")


def removed(dsn: str, connection: Connection, cause: RemovalCause) -> None: ...


async def lifecycle_options_take_the_pool_types() -> None:
    pool = ResourcePool(
        connect,
        finalizer=close,
        ttl=30,
        validate=alive,
        max_lifetime=3600,
        on_remove=removed,
        leak_timeout=60,
    )
    assert_type(pool, ResourcePool[str, Connection])
    sync_pool = ResourcePool(
        connect_sync, validate=lambda connection: bool(connection.dsn)
    )
    assert_type(sync_pool, ResourcePool[str, Connection])
    counts = pool.stats.removed
    assert_type(counts, Removals)
    assert_type(counts.lifetime, int)
    assert_type(counts[RemovalCause.INVALID], int)
    assert_type(counts.total, int)
    await pool.aclose()


def lifecycle_options_are_checked() -> None:
    def wrong_removed(dsn: str, connection: Connection) -> None: ...

    ResourcePool(connect, on_remove=wrong_removed)  # type: ignore
    ResourcePool(connect, max_lifetime="1h")  # type: ignore


def sync_pools_are_generic_in_key_and_resource() -> None:
    def alive_sync(connection: Connection) -> bool:
        return bool(connection.dsn)

    with SyncResourcePool(
        connect_sync,
        finalizer=close_sync,
        ttl=30,
        validate=alive_sync,
        max_lifetime=3600,
        on_remove=removed,
        leak_timeout=60,
        clock=ManualClock(),
        name="db",
    ) as pool:
        assert_type(pool, SyncResourcePool[str, Connection])
        lease = pool.get("db")
        assert_type(lease, SyncResource[Connection])
        with lease as connection:
            assert_type(connection, Connection)
        assert_type(pool.acquire("db"), Connection)
        pool.release("db")
        pool.expire("db")
        pool.clear(timeout=1.0)
        assert_type(pool.stats, PoolStats)
        assert_type(pool.pending_cleanup, dict[str, float | None])
        assert_type(pool.name, str)
        pool.get(42)  # type: ignore[arg-type]
        SyncResourcePool(connect_sync, validate=alive)  # type: ignore
