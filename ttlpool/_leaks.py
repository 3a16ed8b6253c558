"""Leak reports of a pool built with ``leak_timeout`` (SPEC 10).

Three leaks, three reports:

- a lease held longer than ``leak_timeout``: one warning on the ``ttlpool``
  logger, naming the key, how long it has been held and the stack that
  acquired it (captured at each acquire, which is what the option costs);
- a lease collected while entered (dropped, or its coroutine closed before
  it left): a ``ResourceWarning`` naming the key, after its reference was
  given back, so that the entry is not held forever;
- a pool collected while it still holds entries, never closed: a
  ``ResourceWarning`` ("unclosed ResourcePool"), like an unclosed file.

A pool without ``leak_timeout`` hands out plain :class:`~ttlpool.Resource`
leases and registers nothing: the option costs nothing when off. A
``ResourceWarning`` is ignored by default; ``-W error`` turns each into a
failure (from a collection, as an unraisable exception).

Who touches what: a :class:`WatchedResource` is its task's, like any lease;
its :class:`_Watch` is shared with the timer of the lease's loop, and its
one flag is set once, by whichever thread ends the lease (a plain store:
the timer only reads it).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import traceback
import warnings
from types import CodeType, FrameType, TracebackType
from typing import Any, TypeVar

from ttlpool._lease import Resource
from ttlpool._partitions import Partitions
from ttlpool.clock import Clock, TimerHandle

__all__ = ["WatchedResource", "warn_unclosed"]

T = TypeVar("T")

log = logging.getLogger("ttlpool")


class _Watch:
    """One entered lease, as its loop's timer sees it."""

    __slots__ = ("ended", "timer")

    def __init__(self) -> None:
        self.ended = False
        self.timer: TimerHandle | None = None


def _held_too_long(
    watch: _Watch,
    key: object,
    clock: Clock,
    acquired_at: float,
    timeout: float,
    stack: Stack,
) -> None:
    if watch.ended:
        return
    log.warning(
        "ttlpool: a lease of key %r has been held for %.3g s, past leak_timeout "
        "(%g s); it was acquired at (most recent call last):\n%s",
        key,
        clock.now() - acquired_at,
        timeout,
        _format(stack),
    )


#: Where the acquiring stack ends: the first frame of asyncio's (the task
#: step that runs the acquirer's coroutines).
_ASYNCIO = os.path.dirname(asyncio.__file__) + os.sep

#: An acquiring stack, innermost frame first: code objects and line numbers
#: only (a few microseconds; the source lines are read if it is reported).
Stack = list[tuple[CodeType, int]]


def _acquiring_stack(depth: int) -> Stack:
    """The caller's stack from ``depth`` frames up, to the task's first frame."""
    stack: Stack = []
    frame: FrameType | None = inspect.currentframe()
    for _ in range(depth + 1):
        frame = frame.f_back if frame is not None else None
    while frame is not None and not frame.f_code.co_filename.startswith(_ASYNCIO):
        stack.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return stack


def _format(stack: Stack) -> str:
    frames = [
        traceback.FrameSummary(code.co_filename, lineno, code.co_name)
        for code, lineno in reversed(stack)
    ]
    return "".join(traceback.format_list(frames)).rstrip("\n")


class WatchedResource(Resource[T]):
    """A lease of a pool with ``leak_timeout`` (see the module doc)."""

    __slots__ = ("_watch",)

    def __init__(self, partitions: Partitions[Any, T], key: Any) -> None:
        super().__init__(partitions, key)
        self._watch: _Watch | None = None

    async def __aenter__(self) -> T:
        resource = await super().__aenter__()
        part = self._part
        assert part is not None
        settings = part.settings
        timeout = settings.leak_timeout
        assert timeout is not None
        stack = _acquiring_stack(1)
        watch = self._watch = _Watch()
        now = settings.clock.now()
        report = functools.partial(
            _held_too_long, watch, self._key, settings.clock, now, timeout, stack
        )
        watch.timer = settings.clock.call_at(part.loop, now + timeout, report)
        return resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        watch = self._watch
        if watch is not None and not watch.ended:
            watch.ended = True
            if watch.timer is not None and exc_type is not GeneratorExit:
                watch.timer.cancel()  # (on its loop: a closed coroutine may not be)
        await super().__aexit__(exc_type, exc, tb)
        if exc_type is GeneratorExit:  # given back already: now say so
            self._collected("its coroutine was closed before it left")

    def __del__(self) -> None:
        part = getattr(self, "_part", None)
        if part is None:  # never entered, or left
            return
        self._part = None
        if self._watch is not None:
            self._watch.ended = True
        entry: Any = self._entry
        Partitions.release_from_anywhere(part, entry)
        self._collected("it was garbage collected")

    def _collected(self, how: str) -> None:
        warnings.warn(
            f"ttlpool: a lease of key {self._key!r} was never left: {how} while "
            "entered; its reference was given back (leave every lease: "
            "`async with pool.get(key)`)",
            ResourceWarning,
            stacklevel=2,
        )


def warn_unclosed(partitions: Partitions[Any, Any]) -> None:
    """What a pool's collection runs (with ``leak_timeout``): a
    ``ResourceWarning`` if it holds entries and was never closed."""
    if partitions.closed:
        return
    with partitions.lock:
        ledgers = partitions.ledgers()
    held = sum(len(ledger.entries) + len(ledger.retiring) for ledger in ledgers)
    if held:
        warnings.warn(
            f"unclosed ResourcePool holding {held} entries: close it with "
            "`await pool.aclose()` (or `async with pool`) before dropping it",
            ResourceWarning,
            stacklevel=2,
        )
