"""drain_tasks: the multi-generation drain of an event loop's tasks.

Each scenario runs on an event loop of its own (``asyncio.run``), so the
drain can only ever see the tasks the scenario made, never the harness's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import sys
from typing import Any

import pytest

from ttlpool.drain import DrainReport, drain_tasks

Tasks = list["asyncio.Task[Any]"]


async def _forever() -> None:
    await asyncio.Event().wait()


def _chain(depth: int, spawned: Tasks) -> asyncio.Task[None]:
    """A task whose cancellation starts the next link, ``depth`` links long.

    Each link, once cancelled, starts its successor in its ``finally`` and
    yields once, so the successor is running (not merely scheduled) by the
    time the drain sees it. A task cancelled before it first runs would
    never reach its ``try`` and end the chain early.
    """

    async def link(n: int) -> None:
        try:
            await _forever()
        finally:
            if n < depth:
                spawned.append(asyncio.create_task(link(n + 1), name=f"link-{n + 1}"))
                await asyncio.sleep(0)

    task = asyncio.create_task(link(1), name="link-1")
    spawned.append(task)
    return task


def test_three_generations_are_all_drained() -> None:
    spawned: Tasks = []

    async def scenario() -> DrainReport:
        _chain(3, spawned)
        await asyncio.sleep(0)  # link-1 is running
        report = await drain_tasks(timeout=30)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return report

    report = asyncio.run(scenario())
    # Round 1 finds link-1 only; link-2 appears while the drain waits for it,
    # link-3 while it waits for link-2: three rounds, one task each.
    assert report.generations == 3
    assert report.cancelled == 3
    assert report.failed == 0
    assert report.left == ()
    assert report.complete
    assert [task.get_name() for task in spawned] == ["link-1", "link-2", "link-3"]
    assert all(task.cancelled() for task in spawned)


def test_a_chain_deeper_than_the_recursion_limit_is_drained_iteratively() -> None:
    depth = sys.getrecursionlimit() + 500
    spawned: Tasks = []

    async def scenario() -> DrainReport:
        _chain(depth, spawned)
        await asyncio.sleep(0)
        return await drain_tasks(timeout=60)

    report = asyncio.run(scenario())
    assert report.generations == depth
    assert report.cancelled == depth
    assert report.complete
    assert all(task.cancelled() for task in spawned)


def test_a_task_that_cancels_and_restarts_others_in_its_finally() -> None:
    async def scenario() -> tuple[DrainReport, Tasks]:
        children: Tasks = [asyncio.create_task(_forever()) for _ in range(5)]
        replacements: Tasks = []

        async def supervisor() -> None:
            try:
                await _forever()
            finally:
                # Start fresh children, then cancel and await every child itself.
                replacements.extend(asyncio.create_task(_forever()) for _ in range(5))
                for child in children + replacements:
                    child.cancel()
                await asyncio.gather(*children, *replacements, return_exceptions=True)

        sup = asyncio.create_task(supervisor())
        await asyncio.sleep(0)
        report = await drain_tasks(timeout=30)
        assert sup.cancelled()
        return report, children + replacements

    report, all_children = asyncio.run(scenario())
    # One round: the supervisor and its five children; the replacements start
    # and end inside that round, awaited by the supervisor itself.
    assert report.generations == 1
    assert report.cancelled == 6
    assert report.complete
    assert all(child.cancelled() for child in all_children)


def test_a_task_ignoring_cancellation_is_left_named_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timeout = 0.05

    async def scenario() -> DrainReport:
        release = asyncio.Event()

        async def stubborn() -> None:
            while not release.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await release.wait()

        task = asyncio.create_task(stubborn(), name="stubborn-sentry")
        polite = asyncio.create_task(_forever(), name="polite")
        await asyncio.sleep(0)
        with caplog.at_level(logging.WARNING, logger="ttlpool"):
            # Not wrapped in wait_for: that would run the drain in a task of
            # its own and leave this one, the awaiter, to be cancelled.
            report = await drain_tasks(timeout=timeout)
        assert not task.done()
        assert polite.cancelled()
        release.set()
        await task
        return report

    report = asyncio.run(scenario())
    assert [task.get_name() for task in report.left] == ["stubborn-sentry"]
    assert not report.complete
    assert report.generations == 1
    assert report.cancelled == 2
    # The drain returned because its budget ran out, and not before.
    assert report.elapsed >= timeout
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert warnings[0].name == "ttlpool"
    assert "'stubborn-sentry'" in message
    assert "stubborn" in message.split("'stubborn-sentry'")[1]  # its coroutine
    assert "polite" not in message


def test_excluded_tasks_are_left_running() -> None:
    async def scenario() -> DrainReport:
        kept = asyncio.create_task(_forever(), name="kept")
        doomed = asyncio.create_task(_forever(), name="doomed")
        await asyncio.sleep(0)
        report = await drain_tasks(timeout=30, exclude=[kept])
        assert doomed.cancelled()
        assert not kept.done()
        kept.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await kept
        return report

    report = asyncio.run(scenario())
    assert report.cancelled == 1
    assert report.complete


def test_the_calling_task_is_never_cancelled() -> None:
    async def scenario() -> DrainReport:
        report = await drain_tasks(timeout=30)
        await asyncio.sleep(0)  # would raise CancelledError had it been cancelled
        return report

    report = asyncio.run(scenario())
    assert report == DrainReport(
        generations=0, cancelled=0, failed=0, left=(), elapsed=report.elapsed
    )


def test_an_exception_raised_while_draining_is_retrieved_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> DrainReport:
        async def fails_on_cancel() -> None:
            try:
                await _forever()
            finally:
                raise ValueError("cleanup broke")

        asyncio.create_task(fails_on_cancel(), name="clumsy")  # noqa: RUF006
        await asyncio.sleep(0)
        return await drain_tasks(timeout=30)

    with caplog.at_level(logging.DEBUG):
        report = asyncio.run(scenario())
        gc.collect()
    assert report.failed == 1
    assert report.complete
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].name == "ttlpool"
    assert "'clumsy'" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ValueError)
    assert not any("never retrieved" in r.getMessage() for r in caplog.records)


def test_timeout_zero_cancels_one_generation_and_returns_at_once() -> None:
    async def scenario() -> tuple[DrainReport, Tasks]:
        tasks: Tasks = [asyncio.create_task(_forever()) for _ in range(3)]
        await asyncio.sleep(0)
        report = await drain_tasks(timeout=0)
        # Cancelled, but they have not run since: they end on the next turn.
        assert not any(task.done() for task in tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        return report, tasks

    report, tasks = asyncio.run(scenario())
    assert report.generations == 1
    assert report.cancelled == 3
    assert set(report.left) == set(tasks)
    assert all(task.cancelled() for task in tasks)


def test_a_task_not_yet_started_is_cancelled_before_it_runs() -> None:
    ran: list[bool] = []

    async def scenario() -> DrainReport:
        async def never() -> None:
            ran.append(True)

        asyncio.create_task(never())  # noqa: RUF006
        return await drain_tasks(timeout=30)

    report = asyncio.run(scenario())
    assert report.cancelled == 1
    assert report.complete
    assert ran == []


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (math.nan, ValueError), (True, TypeError), ("1", TypeError)],
)
def test_a_bad_timeout_is_refused_naming_the_parameter(
    timeout: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="timeout"):
        asyncio.run(drain_tasks(timeout=timeout))


class _TimeFliesLoop(asyncio.SelectorEventLoop):
    """A loop whose clock jumps a year forward each time it is read.

    Any finite budget a drain keeps on this clock is spent by its second
    look at the time, however little real time has passed; only a drain
    with no bound can wait for a task that takes a few turns to end.
    """

    _YEAR = 365 * 24 * 3600.0

    def __init__(self) -> None:
        super().__init__()
        self._jumps = 0

    def time(self) -> float:
        self._jumps += 1
        return super().time() + self._jumps * self._YEAR


def _drain_a_slow_cleanup(timeout: float | None) -> tuple[DrainReport, list[str]]:
    """Drain, on a :class:`_TimeFliesLoop`, one task whose cleanup after
    cancellation waits until a helper task (excluded from the drain) has
    seen it start and let a few loop turns pass."""
    steps: list[str] = []

    async def scenario() -> DrainReport:
        cleaning, cleaned = asyncio.Event(), asyncio.Event()

        async def slow_cleanup() -> None:
            try:
                await _forever()
            except asyncio.CancelledError:
                cleaning.set()
                await cleaned.wait()
                steps.append("cleanup ended")
                raise

        async def finish_the_cleanup_later() -> None:
            await cleaning.wait()
            for _ in range(5):
                await asyncio.sleep(0)
            cleaned.set()

        task = asyncio.create_task(slow_cleanup(), name="slow-cleanup")
        helper = asyncio.create_task(finish_the_cleanup_later())
        await asyncio.sleep(0)
        report = await drain_tasks(timeout=timeout, exclude=[helper])
        steps.append("drain returned")
        # A drain that gave up left the cleanup running: let it end.
        await asyncio.gather(task, helper, return_exceptions=True)
        return report

    loop = _TimeFliesLoop()
    try:
        report = loop.run_until_complete(scenario())
    finally:
        loop.close()
    return report, steps


@pytest.mark.parametrize("timeout", [None, math.inf], ids=["None", "inf"])
def test_no_timeout_or_an_infinite_one_waits_for_a_slow_cleanup(
    timeout: float | None,
) -> None:
    report, steps = _drain_a_slow_cleanup(timeout)
    assert steps == ["cleanup ended", "drain returned"]
    assert report.complete
    assert report.generations == 1 and report.cancelled == 1


def test_a_finite_timeout_gives_up_on_the_same_slow_cleanup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The control for the test above: on the same loop, a year-long budget
    # is spent before the cleanup ends.
    with caplog.at_level(logging.WARNING, logger="ttlpool"):
        report, steps = _drain_a_slow_cleanup(timeout=365 * 24 * 3600.0)
    assert steps == ["drain returned", "cleanup ended"]
    assert [task.get_name() for task in report.left] == ["slow-cleanup"]
    assert "'slow-cleanup'" in caplog.text
