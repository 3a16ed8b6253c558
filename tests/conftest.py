"""Shared fixtures: every test must leave no thread or task behind."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator

import pytest


def _stray_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t not in before
        and t.is_alive()
        and (not t.daemon or t.name.startswith("ttlpool"))
    ]


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail a test that leaves a non-daemon or ttlpool thread alive.

    Threads get a short grace period to finish exiting (a joined thread can
    still be alive for a moment after its last statement).
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while (stray := _stray_threads(before)) and time.monotonic() < deadline:
        stray[0].join(timeout=0.05)
    assert not stray, f"test left threads behind: {stray}"
    gc.collect()


@pytest.fixture(autouse=True)
async def no_pending_tasks() -> object:
    """Fail an async test that leaves a task pending on its loop."""
    yield
    me = asyncio.current_task()
    for _ in range(3):  # let tasks finishing right now finish
        await asyncio.sleep(0)
    pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    assert not pending, f"test left tasks pending: {pending}"
