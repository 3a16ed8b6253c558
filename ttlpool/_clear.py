"""``clear`` and ``expire``: the operations that reach every event loop.

What lives here: the generations of ``clear`` (ask every running loop to
clear its own partition, leave a request with every stopped one, adopt the
partitions of closed loops, clear here, wait, and again until a generation
finds nothing) and the spread of ``expire``. What does not: how a request
reaches a loop and who claims it (:mod:`ttlpool._handover`), the map of
partitions and adoption (:mod:`ttlpool._partitions`), what one partition
does (:mod:`ttlpool._partition`).

Nothing here holds state of its own: a call's generations live in its
frame, and every shared structure is reached through ``Partitions``, under
its rules.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Hashable, Iterable
from typing import Any, TypeVar, cast

from ttlpool._core import Ledger
from ttlpool._handover import Answer, Owner, answer_of
from ttlpool._jobs import INSIDE, FinalizationTask, InsideOf, wait_finalizations
from ttlpool._partition import Partition
from ttlpool._partitions import Partitions

__all__ = ["clear", "clear_generation", "expire"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

log = logging.getLogger("ttlpool")


async def expire(partitions: Partitions[K, T], key: K) -> None:
    """``ResourcePool.expire``: retire ``key`` in every loop's entries."""
    loop = asyncio.get_running_loop()
    here = partitions.home(loop)
    partitions.sweep(here)
    tasks = here.expire(key)
    asked: list[tuple[Partition[K, T], asyncio.Future[Answer]]] = []
    if partitions.shared is None:
        work = functools.partial(_expire_work, key)
        asked, _, adopted = partitions.send_all(here, work)
        tasks += partitions.adopt(here, adopted)
    await wait_finalizations(tasks)
    for part, reply in asked:
        answer = await answer_of(part.mailbox, reply, None)
        if answer is not None and answer[1] is not None:
            raise answer[1]


async def clear(
    partitions: Partitions[K, T], timeout: float | None, operation: str
) -> None:
    """``clear`` and ``aclose``: generations until nothing is left."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    skip = INSIDE.get()
    here = partitions.home(loop)
    left: set[Partition[K, T]] = set()
    interrupt: BaseException | None = None
    while True:
        did, waits, asked, raised = clear_generation(partitions, here, skip, left)
        interrupt = interrupt or raised
        try:
            if waits:
                remaining = None if deadline is None else deadline - loop.time()
                done, pending = await asyncio.wait(waits, timeout=remaining)
                interrupt = interrupt or _raised(done)
                if pending:
                    raise TimeoutError
            for part, reply in asked:
                answer = await answer_of(part.mailbox, reply, deadline)
                if answer is None:
                    did = True  # it stopped or closed: route it again
                    continue
                did = did or answer[0]
                interrupt = interrupt or answer[1]
        except TimeoutError:
            raise TimeoutError(
                f"{operation}: timed out after {timeout}s with keys still being "
                f"finalized or created: {_keys_left(partitions)}"
            ) from None
        if not did:
            break
    if left:
        _report_left(operation, left)
    if interrupt is not None:
        raise interrupt


def clear_generation(
    partitions: Partitions[K, T],
    here: Partition[K, T],
    skip: tuple[InsideOf, ...],
    left: set[Partition[K, T]],
) -> tuple[
    bool,
    list[asyncio.Task[Any]],
    list[tuple[Partition[K, T], asyncio.Future[Answer]]],
    BaseException | None,
]:
    """What one generation of ``clear`` does before it waits.

    Asks every running loop to clear its own partition, leaves a request
    with every stopped one (added to ``left``, and not asked again),
    adopts the partitions of closed loops, and clears ``here``. Returns
    whether it found anything, the jobs here to wait for, the requests
    to wait for, and a ``BaseException`` a sync finalizer raised (after
    all of that was done).
    """
    work = functools.partial(_clear_work, skip)
    asked, stopped, adopted = partitions.send_all(here, work, left)
    left.update(stopped)
    interrupt: BaseException | None = None
    try:
        partitions.adopt(here, adopted)
    except BaseException as exc:  # a sync finalizer's
        interrupt = exc
    try:
        found, waits = here.clear(skip)
    except BaseException as exc:  # a sync finalizer's
        interrupt = interrupt or exc
        found, waits = True, []
    return bool(adopted) or found, waits, asked, interrupt


def _report_left(operation: str, left: Iterable[Partition[K, T]]) -> None:
    stopped = [p for p in left if p.mailbox.owner is Owner.LIVE]
    keys = sorted({repr(k) for p in stopped for k in _keys_of(p.ledger)})
    if not keys:
        return
    level = logging.WARNING if operation == "aclose" else logging.INFO
    log.log(
        level,
        "ttlpool: %s left the entries of %d event loop(s) that are stopped, not "
        "closed, to those loops: they are finalized when each runs again "
        "(keys %s); if a loop is closed first, call clear() or aclose() again "
        "from a running loop to finalize its entries",
        operation,
        len(stopped),
        ", ".join(keys),
    )


def _keys_left(partitions: Partitions[Any, Any]) -> str:
    with partitions.lock:
        ledgers = partitions.ledgers()
    keys = sorted({repr(k) for ledger in ledgers for k in _keys_of(ledger)})
    return ", ".join(keys) or "(finalizer tasks)"


def _expire_work(key: Any, part: Partition[Any, Any]) -> bool | Awaitable[bool]:
    tasks = part.expire(key)
    return _answer_after_finalizations(tasks) if tasks else False


def _clear_work(
    skip: tuple[InsideOf, ...], part: Partition[Any, Any]
) -> bool | Awaitable[bool]:
    did, waits = part.clear(skip)
    return _answer_after_jobs(waits) if waits else did


def _keys_of(ledger: Ledger[Any, Any]) -> list[object]:
    """Every key a ledger holds, creates or finalizes (copies: any thread)."""
    return [
        *ledger.entries.copy(),
        *ledger.creating.copy(),
        *(entry.key for entry in ledger.finalizing.copy()),
    ]


async def _answer_after_finalizations(tasks: list[FinalizationTask]) -> bool:
    await wait_finalizations(tasks)
    return True


async def _answer_after_jobs(waits: list[asyncio.Task[Any]]) -> bool:
    done, _ = await asyncio.wait(waits)
    interrupt = _raised(done)
    if interrupt is not None:
        raise interrupt
    return True


def _raised(tasks: Iterable[asyncio.Task[Any]]) -> BaseException | None:
    """The first ``BaseException`` a finalization job returned (jobs report
    every ``Exception`` themselves and end quietly)."""
    for task in tasks:
        if not task.cancelled() and isinstance(task.result(), BaseException):
            return cast(BaseException, task.result())
    return None
