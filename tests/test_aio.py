"""``ttlpool._aio.start_task``: the pool's tasks start eagerly on every version.

A creation or finalization task runs its first step inside ``start_task``,
as the task itself: a factory or finalizer coroutine that never suspends
is done without a trip through the event loop (3.12+: asyncio's
``eager_start``; before: the step is taken from asyncio's ready queue and
run at once), and one that suspends goes on in the loop as that task.
A loop with no such queue (uvloop) runs the first step in turn.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Callable

import pytest

from tests.conftest import BenchExtra
from ttlpool import ResourcePool
from ttlpool._aio import FinishingTask, start_task


@pytest.mark.parametrize("finishing", [False, True], ids=["task", "finishing"])
async def test_a_first_step_that_never_suspends_is_done_when_start_task_returns(
    finishing: bool,
) -> None:
    loop = asyncio.get_running_loop()
    caller = asyncio.current_task()
    inside: list[asyncio.Task[object] | None] = []

    async def first_step() -> int:
        inside.append(asyncio.current_task())
        return 42

    task = start_task(loop, first_step(), finishing=finishing)
    assert task.done(), "the first step waited for the loop"
    assert task.result() == 42
    assert inside == [task], "the first step did not run as its own task"
    assert asyncio.current_task() is caller, "the caller's task was not restored"
    assert isinstance(task, FinishingTask) is finishing


async def test_a_first_step_that_suspends_goes_on_as_the_task_it_started_as() -> None:
    loop = asyncio.get_running_loop()
    caller = asyncio.current_task()
    gate = loop.create_future()
    steps: list[tuple[str, asyncio.Task[object] | None]] = []

    async def two_steps() -> str:
        steps.append(("first", asyncio.current_task()))
        await gate
        steps.append(("second", asyncio.current_task()))
        return "done"

    task = start_task(loop, two_steps())
    assert steps == [("first", task)] and not task.done()
    assert asyncio.current_task() is caller
    gate.set_result(None)
    assert await task == "done"
    assert steps == [("first", task), ("second", task)]


async def test_cancelling_a_suspended_task_cancels_that_task_not_its_starter() -> None:
    """What ``asyncio.timeout`` inside a factory relies on: the task that
    ``current_task()`` names in the first step is the one cancelled."""
    loop = asyncio.get_running_loop()
    named: list[asyncio.Task[object] | None] = []

    async def waits_forever() -> None:
        named.append(asyncio.current_task())
        await loop.create_future()

    task = start_task(loop, waits_forever())
    assert named[0] is task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


def test_a_loop_without_asyncios_ready_queue_runs_the_first_step_in_turn(
    bench_extra: BenchExtra,
) -> None:
    """uvloop: before 3.12 the first step waits its turn; from 3.12 asyncio
    starts it eagerly on any loop."""
    uvloop = bench_extra("uvloop")
    order: list[str] = []

    async def first_step() -> None:
        order.append("task")

    async def main() -> None:
        task = start_task(asyncio.get_running_loop(), first_step())
        order.append("starter")
        await task

    uvloop.run(main())
    eager = sys.version_info >= (3, 12)
    assert order == (["task", "starter"] if eager else ["starter", "task"])


async def test_coroutine_factory_and_finalizer_never_suspending_take_no_turn() -> None:
    """The pool's churn with coroutine factories: no iteration of the loop."""
    loop = asyncio.get_running_loop()
    turns = 0
    original: Callable[[], None] = loop._run_once  # type: ignore[attr-defined]

    def counted() -> None:
        nonlocal turns
        turns += 1
        original()

    async def factory(key: str) -> object:
        return object()

    async def finalizer(resource: object) -> None:
        return None

    pool: ResourcePool[str, object] = ResourcePool(factory, finalizer=finalizer, ttl=0)
    setattr(loop, "_run_once", counted)  # noqa: B010
    try:
        for _ in range(5):
            async with pool.get("k"):
                pass
    finally:
        delattr(loop, "_run_once")
    assert turns == 0
    stats = pool.stats
    assert (stats.created, stats.finalized) == (5, 5)


class _OtherThreadAppends(collections.deque):  # type: ignore[type-arg]
    """A ready queue to which "another thread" appends a handle right after
    the first read of its last item: the moment ``call_soon_threadsafe``
    can strike between ``_step_now``'s check and anything it does next."""

    def __init__(self, items: object, foreign: Callable[[], None]) -> None:
        super().__init__(items)  # type: ignore[arg-type]
        self.foreign = foreign

    def __getitem__(self, index: int) -> object:
        item = super().__getitem__(index)
        if index == -1 and self.foreign is not None:
            foreign, self.foreign = self.foreign, None  # type: ignore[assignment]
            asyncio.get_running_loop().call_soon_threadsafe(foreign)
        return item


@pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="3.12+ starts tasks eagerly itself"
)
async def test_a_callback_another_thread_queues_during_an_eager_start_is_not_lost() -> (
    None
):
    """The first step runs once, and a handle appended by another thread
    meanwhile still runs (taking the last item of the queue out, as the
    eager start once did, took that handle instead and ran the step twice)."""
    loop = asyncio.get_running_loop()
    ran: list[str] = []
    steps: list[str] = []

    async def one_step() -> None:
        steps.append("step")

    ready = loop._ready  # type: ignore[attr-defined]
    loop._ready = _OtherThreadAppends(ready, lambda: ran.append("foreign"))  # type: ignore[attr-defined]
    try:
        task = start_task(loop, one_step())
        assert task.done() and steps == ["step"]
        for _ in range(3):
            await asyncio.sleep(0)
    finally:
        rest = loop._ready  # type: ignore[attr-defined]
        loop._ready = collections.deque(rest)  # type: ignore[attr-defined]
    assert ran == ["foreign"], "another thread's callback was lost"
    assert steps == ["step"], "the first step ran twice"
