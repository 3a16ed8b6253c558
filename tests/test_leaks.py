"""Leak reports of ``leak_timeout`` (SPEC §10): a lease held too long, a
lease collected while entered, a pool collected unclosed.

The other lifecycle policies are in ``tests/test_policies.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from ttlpool import Resource, ResourcePool
from ttlpool.testing import ManualClock

Res = list[object]


class Recorder:
    """A factory and finalizer that record what they did."""

    def __init__(self) -> None:
        self.created: list[Res] = []
        self.finalized: list[Res] = []

    def factory(self, key: object) -> Res:
        resource: Res = [key, len(self.created)]
        self.created.append(resource)
        return resource

    def finalizer(self, resource: Res) -> None:
        self.finalized.append(resource)


def leak_reports(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The warnings logged on the ``ttlpool`` logger."""
    return [
        r
        for r in caplog.records
        if r.name == "ttlpool" and r.levelno == logging.WARNING
    ]


def says_seconds(message: str, seconds: float) -> bool:
    """Whether ``message`` names ``seconds`` as a duration ("7 s", "7.0s",
    "7 seconds"; not a line number of a stack)."""
    for match in re.finditer(r"(\d+(?:\.\d+)?)\s*(?:s|sec|secs|seconds)\b", message):
        if float(match.group(1)) == seconds:
            return True
    return False


class Collected:
    """What a garbage collection reported: the warnings it emitted, and the
    exceptions that reached ``sys.unraisablehook`` (raised in a ``__del__``
    or a weakref finalizer, where they cannot propagate)."""

    def __init__(self) -> None:
        self.warnings: list[warnings.WarningMessage] = []
        self.unraisable: list[Any] = []

    def resource_warnings(self) -> list[str]:
        return [
            str(w.message)
            for w in self.warnings
            if issubclass(w.category, ResourceWarning)
        ]


@contextlib.contextmanager
def collecting(action: str = "always") -> Iterator[Collected]:
    """Run the block with warnings filtered by ``action`` ("always": each
    is recorded; "error": each is raised) and ``sys.unraisablehook``
    replaced, then collect garbage; report what happened. Set up and torn
    down in the test itself, whatever pytest does with the hook between
    test phases."""
    collected = Collected()
    hook = sys.unraisablehook
    sys.unraisablehook = collected.unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(action)
            yield collected
            gc.collect()
        collected.warnings = list(caught)
    finally:
        sys.unraisablehook = hook


# -- a lease held too long --------------------------------------------------------


async def test_a_lease_held_too_long_logs_one_warning_naming_key_time_and_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    pool = ResourcePool(Recorder().factory, ttl=10, leak_timeout=5, clock=clock)
    caplog.set_level(logging.WARNING, logger="ttlpool")
    async with pool.get("db-conn"):
        await clock.advance(3)
        assert leak_reports(caplog) == []
        await clock.advance(4)  # held 7 s: past the 5 s, reported at once
        reports = leak_reports(caplog)
        assert len(reports) == 1
        message = reports[0].getMessage()
        assert "'db-conn'" in message
        assert says_seconds(message, 7)  # the time held (not the timeout alone)
        # Where it was acquired: this very function, in the stack.
        me = test_a_lease_held_too_long_logs_one_warning_naming_key_time_and_stack
        assert me.__name__ in message
        assert __file__.rsplit("/", 1)[-1] in message
        await clock.advance(100)  # held on: no second report
        assert len(leak_reports(caplog)) == 1
    await clock.advance(100)
    assert len(leak_reports(caplog)) == 1
    await pool.aclose()


async def test_each_lease_held_too_long_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    pool = ResourcePool(Recorder().factory, ttl=10, leak_timeout=5, clock=clock)
    caplog.set_level(logging.WARNING, logger="ttlpool")
    async with pool.get("a"), pool.get("a"), pool.get("b"):
        await clock.advance(5)
        await clock.advance(5)
    messages = [r.getMessage() for r in leak_reports(caplog)]
    assert len(messages) == 3
    assert sum("'a'" in m for m in messages) == 2
    assert sum("'b'" in m for m in messages) == 1
    await pool.aclose()


async def test_a_lease_released_in_time_is_never_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    pool = ResourcePool(Recorder().factory, ttl=None, leak_timeout=5, clock=clock)
    caplog.set_level(logging.WARNING, logger="ttlpool")
    for _ in range(3):
        async with pool.get("k"):
            await clock.advance(4.9)
    lease = pool.get("k")  # entered and left by hand, a body that raised
    await lease.__aenter__()
    await clock.advance(1)
    await lease.__aexit__(ValueError, ValueError("body"), None)
    await clock.advance(1000)
    assert leak_reports(caplog) == []
    assert clock.pending_timers == 0  # every lease's timer went with it
    await pool.aclose()


async def test_leak_timeout_is_off_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    pool = ResourcePool(Recorder().factory, ttl=None, clock=clock)
    caplog.set_level(logging.DEBUG, logger="ttlpool")
    lease = pool.get("k")
    assert type(lease) is Resource  # the plain lease: no watch, no stack
    async with lease:
        assert clock.pending_timers == 0
        await clock.advance(1e9)
    assert [r for r in caplog.records if r.name == "ttlpool"] == []
    await pool.aclose()


# -- a lease collected while entered ----------------------------------------------


@pytest.mark.parametrize("action", ["always", "error"])
@pytest.mark.parametrize("ttl", [0, 10])
async def test_a_lease_collected_while_entered_warns_and_gives_back_its_reference(
    ttl: float, action: str
) -> None:
    """The warning is emitted from the lease's ``__del__``: recorded where
    warnings are recorded; where they are errors (``-W error``), it cannot
    propagate from there and reaches ``sys.unraisablehook`` instead. Either
    way the reference was given back first."""
    rec = Recorder()
    pool = ResourcePool(
        rec.factory,
        finalizer=rec.finalizer,
        ttl=ttl,
        leak_timeout=5,
        clock=ManualClock(),
    )
    lease = pool.get("db-conn")
    resource = await lease.__aenter__()
    assert pool.stats.referenced_entries == 1
    with collecting(action) as collected:
        del lease
    if action == "always":
        assert collected.unraisable == []
        [warning] = collected.resource_warnings()
    else:
        assert collected.warnings == []
        [report] = collected.unraisable
        assert isinstance(report.exc_value, ResourceWarning)
        warning = str(report.exc_value)
    assert "'db-conn'" in warning
    await asyncio.sleep(0)  # the release was posted to the loop: it runs now
    stats = pool.stats
    assert stats.referenced_entries == 0
    if ttl == 0:
        assert rec.finalized == [resource] and len(pool) == 0
    else:
        assert rec.finalized == [] and stats.idle_entries == 1
        async with pool.get("db-conn") as again:  # the same entry, warm
            assert again is resource
    await pool.aclose()
    assert rec.finalized == [resource]


async def test_a_lease_collected_after_it_was_left_or_never_entered_does_not_warn() -> (
    None
):
    pool = ResourcePool(Recorder().factory, ttl=0, leak_timeout=5, clock=ManualClock())
    lease = pool.get("k")
    async with lease:
        pass
    never_entered = pool.get("k")
    with collecting() as collected:
        del lease, never_entered
    assert collected.resource_warnings() == [] and collected.unraisable == []
    await pool.aclose()


# -- a pool collected unclosed ------------------------------------------------------


@pytest.mark.parametrize("held", [True, False])
async def test_an_unclosed_pool_collected_while_holding_entries_warns(
    held: bool,
) -> None:
    pool = ResourcePool(Recorder().factory, ttl=None, leak_timeout=5)
    lease = pool.get("k")
    await lease.__aenter__()
    if not held:
        await lease.__aexit__(None, None, None)  # idle, still in the pool
    with collecting() as collected:
        del pool
    assert collected.unraisable == []
    [warning] = collected.resource_warnings()
    assert "unclosed ResourcePool" in warning
    if held:  # the lease outlives its pool, entered: left now, a no-op
        await lease.__aexit__(None, None, None)


async def test_an_unclosed_pool_collected_under_w_error_is_an_unraisable_warning() -> (
    None
):
    """What really happens with ``-W error`` and nobody catching warnings:
    the warning, raised in the pool's weakref finalizer, cannot propagate
    and reaches ``sys.unraisablehook`` (which pytest turns into a failure of
    the test that dropped the pool)."""
    pool = ResourcePool(Recorder().factory, ttl=None, leak_timeout=5)
    async with pool.get("k"):
        pass
    with collecting("error") as collected:
        del pool
    assert collected.warnings == []
    [report] = collected.unraisable
    assert isinstance(report.exc_value, ResourceWarning)
    assert "unclosed ResourcePool" in str(report.exc_value)


@pytest.mark.parametrize("case", ["closed", "empty", "off"])
async def test_a_pool_collected_closed_or_empty_or_without_leak_timeout_does_not_warn(
    case: str,
) -> None:
    pool = ResourcePool(
        Recorder().factory,
        ttl=0 if case == "empty" else None,
        leak_timeout=None if case == "off" else 5,
    )
    async with pool.get("k"):
        pass
    if case == "closed":
        await pool.aclose()
    assert len(pool) == (0 if case in ("closed", "empty") else 1)
    with collecting() as collected:
        del pool
    assert collected.resource_warnings() == [] and collected.unraisable == []


@pytest.mark.parametrize("action", ["always", "error"])
async def test_a_lease_whose_coroutine_is_closed_while_entered_warns_once_given_back(
    action: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A coroutine dropped inside ``async with pool.get(key)`` is closed:
    the lease leaves with ``GeneratorExit``, gives its reference back, and
    then says so (under ``-W error`` the warning is what ``close()``
    raises: the reference was given back first)."""
    clock = ManualClock()
    rec = Recorder()
    pool = ResourcePool(rec.factory, ttl=10, leak_timeout=5, clock=clock)
    entered = asyncio.Event()

    async def holder() -> None:
        async with pool.get("db-conn"):
            entered.set()
            await asyncio.Event().wait()

    coro = holder()
    coro.send(None)  # by hand, to its first suspension (inside the lease)
    assert entered.is_set() and pool.stats.referenced_entries == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(action)
        if action == "error":
            with pytest.raises(ResourceWarning, match="'db-conn'"):
                coro.close()
        else:
            coro.close()
    if action == "always":
        [warning] = [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert "'db-conn'" in str(warning.message)
    await asyncio.sleep(0)  # the release was posted to the loop: it runs now
    assert pool.stats.referenced_entries == 0 and pool.stats.idle_entries == 1
    caplog.set_level(logging.WARNING, logger="ttlpool")
    await clock.advance(100)  # its watch ended with it: no report
    assert leak_reports(caplog) == []
    await pool.aclose()
