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

A lease of a pool with ``leak_timeout`` takes its out-of-line paths
(:mod:`ttlpool._lease`), which call :func:`watch` once entered and
:func:`unwatch` once left; a pool without it registers nothing and runs
the same inlined hit and release: the option costs nothing when off. A
``ResourceWarning`` is ignored by default; ``-W error`` turns each into a
failure (from a collection, as an unraisable exception).

Who touches what: a :class:`Watch` belongs to its lease (its task's), and
is shared with the timer of the lease's loop and with the lease's weakref
finalizer; ``ended`` is set once, by whichever ends the lease (a plain
store: the timer only reads it).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from ttlpool._core import Entry, Ledger
from ttlpool._jobs import Settings
from ttlpool._partition import Partition
from ttlpool._partitions import Partitions
from ttlpool.clock import Clock, TimerCallback, TimerHandle

__all__ = ["Watch", "unwatch", "warn_held", "warn_unclosed", "watch", "watch_lease"]

log = logging.getLogger("ttlpool")


class Watch:
    """One entered lease of a pool with ``leak_timeout``: its timer, and
    what runs if the lease is collected first."""

    __slots__ = ("collected", "ended", "timer")

    def __init__(self) -> None:
        self.ended = False
        self.timer: TimerHandle | None = None
        self.collected: weakref.finalize[Any, Any] | None = None


def _held_too_long(
    watched: Watch,
    key: object,
    clock: Clock,
    acquired_at: float,
    timeout: float,
    stack: Stack,
) -> None:
    if watched.ended:
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
#: step that runs the acquirer's coroutines), or of threading's (the
#: bootstrap of the acquirer's thread).
_ENDS = (os.path.dirname(asyncio.__file__) + os.sep, threading.__file__)

#: An acquiring stack, innermost frame first: code objects and line numbers
#: only (a few microseconds; the source lines are read if it is reported).
Stack = list[tuple[CodeType, int]]


def _acquiring_stack(depth: int) -> Stack:
    """The caller's stack from ``depth`` frames up, to the task's first frame."""
    stack: Stack = []
    frame: FrameType | None = inspect.currentframe()
    for _ in range(depth + 1):
        frame = frame.f_back if frame is not None else None
    while frame is not None and not frame.f_code.co_filename.startswith(_ENDS):
        stack.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return stack


def _format(stack: Stack) -> str:
    frames = [
        traceback.FrameSummary(code.co_filename, lineno, code.co_name)
        for code, lineno in reversed(stack)
    ]
    return "".join(traceback.format_list(frames)).rstrip("\n")


def watch(lease: object, part: Partition[Any, Any], entry: Entry[Any, Any]) -> Watch:
    """Start watching ``lease``, just entered on ``part`` with ``entry`` (its
    pool has a ``leak_timeout``); the caller's caller acquired it."""
    return watch_lease(
        lease,
        part.settings,
        functools.partial(part.settings.clock.call_at, part.loop),
        functools.partial(Partitions.release_from_anywhere, part, entry),
        entry.key,
        depth=3,
    )


def watch_lease(
    lease: object,
    settings: Settings,
    call_at: Callable[[float, TimerCallback], TimerHandle],
    give_back: Callable[[], object],
    key: object,
    *,
    depth: int,
) -> Watch:
    """Start watching ``lease`` of ``key``: ``call_at(when, callback)`` arms
    its timer, ``give_back()`` releases its reference if it is collected
    while entered; the acquirer's frame is ``depth`` frames up from here."""
    timeout, clock = settings.leak_timeout, settings.clock
    assert timeout is not None
    stack = _acquiring_stack(depth)
    watched = Watch()
    now = clock.now()
    report = functools.partial(_held_too_long, watched, key, clock, now, timeout, stack)
    watched.timer = call_at(now + timeout, report)
    watched.collected = weakref.finalize(lease, _collected, watched, give_back, key)
    watched.collected.atexit = False
    return watched


def unwatch(watched: Watch, key: object, closed: bool) -> None:
    """The lease left (``closed``: its coroutine was closed while it was
    entered, and its reference given back: that is reported)."""
    watched.ended = True
    if watched.collected is not None:
        watched.collected.detach()
    if closed:
        _warn_never_left(key, "its coroutine was closed before it left")
    elif watched.timer is not None:
        watched.timer.cancel()  # (a closed coroutine may be on any thread)


def _collected(watched: Watch, give_back: Callable[[], object], key: object) -> None:
    """The lease was garbage collected while entered: give its reference back."""
    watched.ended = True
    give_back()
    _warn_never_left(key, "it was garbage collected")


def _warn_never_left(key: object, how: str) -> None:
    warnings.warn(
        f"ttlpool: a lease of key {key!r} was never left: {how} while "
        "entered; its reference was given back (leave every lease: "
        "`with pool.get(key)`, or `async with` for a ResourcePool)",
        ResourceWarning,
        stacklevel=3,
    )


def warn_unclosed(partitions: Partitions[Any, Any]) -> None:
    """What a pool's collection runs (with ``leak_timeout``): a
    ``ResourceWarning`` if it holds entries and was never closed."""
    if partitions.closed:
        return
    with partitions.lock:
        ledgers = partitions.ledgers()
    hint = "`await pool.aclose()` (or `async with pool`)"
    warn_held("ResourcePool", ledgers, hint)


def warn_held(kind: str, ledgers: list[Ledger[Any, Any]], hint: str) -> None:
    """A ``ResourceWarning`` if an unclosed pool, collected, held entries."""
    held = sum(len(ledger.entries) + len(ledger.retiring) for ledger in ledgers)
    if held:
        warnings.warn(
            f"unclosed {kind} holding {held} entries: close it with {hint} "
            "before dropping it",
            ResourceWarning,
            stacklevel=3,
        )
