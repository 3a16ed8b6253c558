"""Pin every thread of this process to one CPU while the dispatch figures run.

A dispatch to a worker loop is a wake-up of another thread. On a small
machine its cost depends on where the OS put the two threads: on one CPU
the hand-over is a context switch; on two, the sleeping CPU must be woken
first, which on a virtual machine costs several times more. The OS picks
per thread and changes its mind now and then, so unpinned samples of the
same variant fall into two modes (on our 2-core CI machine about 47 µs
and 100-300 µs a call), and a ratio of two variants whose worker threads
landed differently measures the placement, not the code.

With every thread on one CPU there is one mode. What the figures then
measure is the work of a hand-over on one core, the same for every
variant; ``--no-pin`` lets the OS place the threads instead.

Linux only (``os.sched_setaffinity`` on each thread id in
``/proc/self/task``; a thread started later inherits its creator's mask, so
the worker threads the variants start are pinned too). Elsewhere nothing is
pinned, and the description says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CpuPin"]

_TASKS = Path("/proc/self/task")
_STAT = Path("/proc/stat")


def _busy_ticks() -> dict[int, int]:
    """Non-idle clock ticks so far, per CPU (empty if /proc/stat is unreadable)."""
    busy: dict[int, int] = {}
    try:
        lines = _STAT.read_text().splitlines()
    except OSError:
        return busy
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(f) for f in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        busy[int(name[3:])] = sum(ticks[:8]) - idle
    return busy


def _idlest(allowed: set[int]) -> int:
    """The allowed CPU that was busy least over the next 0.2 s (ties: highest)."""
    before = _busy_ticks()
    time.sleep(0.2)
    after = _busy_ticks()
    load = {cpu: after.get(cpu, 0) - before.get(cpu, 0) for cpu in allowed}
    return min(sorted(allowed, reverse=True), key=load.__getitem__)


def _thread_ids() -> list[int]:
    try:
        return [int(name) for name in os.listdir(_TASKS)]
    except OSError:
        return []


class CpuPin:
    """Which CPU the dispatch figures run on, and the context that pins them."""

    def __init__(self, cpu: int | None, description: str) -> None:
        self.cpu = cpu
        self.description = description

    @property
    def short(self) -> str:
        """A few words for a table note."""
        return "not pinned" if self.cpu is None else f"pinned to CPU {self.cpu}"

    @classmethod
    def choose(cls, *, enabled: bool) -> CpuPin:
        """Pick the CPU now (the least busy one), or say why nothing is pinned."""
        if not enabled:
            return cls(None, "not pinned (--no-pin): the OS places the threads")
        if not hasattr(os, "sched_setaffinity") or not _thread_ids():
            return cls(None, "not pinned: this platform has no os.sched_setaffinity")
        allowed = os.sched_getaffinity(0)
        if len(allowed) == 1:
            (only,) = allowed
            return cls(only, f"on CPU {only}, the only one this process may use")
        cpu = _idlest(allowed)
        return cls(
            cpu,
            f"every thread pinned to CPU {cpu} of {len(allowed)} "
            "(os.sched_setaffinity; --no-pin to let the OS place them)",
        )

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Every thread on ``cpu`` inside the block; the old masks restored after."""
        if self.cpu is None or not hasattr(os, "sched_setaffinity"):
            yield
            return
        masks: dict[int, set[int]] = {}
        for tid in _thread_ids():
            try:
                masks[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {self.cpu})
            except OSError:  # the thread ended meanwhile
                continue
        process_mask = masks.get(os.getpid(), os.sched_getaffinity(0))
        try:
            yield
        finally:
            # Threads started inside the block (and still alive) get the
            # process's old mask, the one they would have had.
            for tid in _thread_ids():
                try:
                    os.sched_setaffinity(tid, masks.get(tid, process_mask))
                except OSError:
                    continue
