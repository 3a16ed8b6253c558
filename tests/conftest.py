"""Shared fixtures: every test must leave no thread or task behind."""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

#: Set to 1 by .ci/run, which installs the ``bench`` extra: a test that needs
#: one of its packages then fails where the package is missing, instead of
#: skipping, so that a green run means the test ran.
REQUIRE_BENCH = os.environ.get("TTLPOOL_REQUIRE_BENCH") == "1"

BenchExtra = Callable[..., ModuleType]


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


@pytest.fixture
def bench_extra() -> BenchExtra:
    """``bench_extra(module, python=(3, 11))`` imports a module of the ``bench``
    extra (wool, matplotlib, uvloop, anyio, asgiref, cachetools).

    Where it does not import, the test is skipped, saying so, unless
    ``TTLPOOL_REQUIRE_BENCH=1``, where the test fails. ``python`` is the
    oldest Python the package installs on (wool needs 3.11; see the markers
    of the extra in pyproject.toml): below it the test is skipped either way.
    """

    def load(module: str, *, python: tuple[int, int] = (3, 10)) -> ModuleType:
        if sys.version_info < python:
            pytest.skip(
                f"{module} does not install on Python < {python[0]}.{python[1]}"
            )
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            if REQUIRE_BENCH:
                pytest.fail(
                    f"{module} does not import ({exc}), and TTLPOOL_REQUIRE_BENCH=1 "
                    "says the bench extra is installed"
                )
            pytest.skip(
                f"{module} does not import ({exc}): "
                "pip install -e '.[test,bench]' to run this test"
            )

    return load
