"""Measurement 5: memory per idle entry and the cost of ``stats``.

Each figure comes from a fresh child process (``python -m
benchmarks._memory IMPL ENTRIES``), so one pool's garbage, free lists and
arenas never count against another's. The child fills a pool with
``ENTRIES`` idle entries under ``tracemalloc`` (keys and resources are
made before tracing starts, so only the pool's own bookkeeping counts),
then times ``pool.stats``, and prints one JSON line.

The parent runs the children one after the other, rotating which
implementation goes first, ``memory_reps`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._impls import Thing, close_pool, pool_makers
from benchmarks._measure import Results, now_ns
from benchmarks._settings import Settings
from benchmarks.floor import FloorPool

__all__ = ["main", "measure_memory"]

#: How long a child spends timing ``stats`` (at least ``_MIN_STATS`` samples).
_STATS_BUDGET_NS = 1_000_000_000
_MIN_STATS = 5
_MAX_STATS = 200
#: Each ``stats`` sample runs calls for about this long (cheap ``stats``
#: is timed in batches, an O(n) one call at a time).
_SAMPLE_NS = 1_000_000


def _time_stats(pool: Any) -> list[float]:
    """Nanoseconds per ``pool.stats`` read, one value per sample."""
    start = now_ns()
    pool.stats  # noqa: B018 - reading the property is the measurement
    first = max(1, now_ns() - start)
    batch = max(1, _SAMPLE_NS // first)
    samples: list[float] = []
    began = now_ns()
    while len(samples) < _MAX_STATS and (
        len(samples) < _MIN_STATS or now_ns() - began < _STATS_BUDGET_NS
    ):
        start = now_ns()
        for _ in range(batch):
            pool.stats  # noqa: B018
        samples.append((now_ns() - start) / batch)
    return samples


async def _child(impl: str, entries: int) -> dict[str, Any]:
    keys = list(range(entries))
    things = [Thing() for _ in keys]
    factory: Callable[[int], object] = things.__getitem__
    pool: Any
    if impl == "floor":
        pool = FloorPool()
        pool.put(-1, Thing())
    else:
        makers, _ = pool_makers()
        pool = makers[impl](factory, ttl=3600)
        # First use builds per-loop structures; they are not per entry.
        async with pool.get(-1):
            pass
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    if impl == "floor":
        for key in keys:
            pool.put(key, things[key])
    else:
        get = pool.get
        for key in keys:
            async with get(key):
                pass
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    total = pool.stats.total_entries
    stats_ns = _time_stats(pool)
    if impl != "floor":
        await close_pool(pool)
    return {
        "impl": impl,
        "entries": entries,
        "total_entries": total,
        "bytes_per_entry": (after - before) / entries,
        "stats_ns": stats_ns,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._memory")
    parser.add_argument("impl", choices=["ttlpool", "wool", "floor"])
    parser.add_argument("entries", type=int)
    args = parser.parse_args(argv)
    outcome = asyncio.run(_child(args.impl, args.entries))
    print(json.dumps(outcome))
    return 0


def _run_child(impl: str, entries: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._memory", impl, str(entries)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"memory child for {impl} exited {done.returncode}: {done.stderr[-2000:]}"
        )
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


def measure_memory(
    results: Results, settings: Settings, say: Callable[[str], None]
) -> None:
    """Measurement 5 into ``results`` (child processes, rotated order)."""
    n = settings.memory_entries
    memory = results.group(
        "memory",
        f"5a. Memory per idle entry at {n:,} entries (tracemalloc, child process)",
        "B",
        "ttlpool",
    )
    memory.note = "floor: a dict of slotted (resource, count) entries"
    stats = results.group(
        "stats",
        f"5b. pool.stats at {n:,} idle entries",
        "ns",
        "ttlpool",
    )
    stats.note = "samples: every timed batch of every child run"
    makers, skipped = pool_makers()
    for name, why in skipped.items():
        memory.skip(name, why)
        stats.skip(name, why)
    impls = [*makers, "floor"]
    for rep in range(settings.memory_reps):
        shift = rep % len(impls)
        for impl in [*impls[shift:], *impls[:shift]]:
            say(f"5 memory and stats: {impl} child, {n:,} entries")
            try:
                outcome = _run_child(impl, n)
            except Exception as exc:
                memory.skip(impl, f"failed: {exc}")
                stats.skip(impl, f"failed: {exc}")
                continue
            if outcome["total_entries"] < n:
                memory.figure(
                    impl
                ).note = f"only {outcome['total_entries']:,} entries were cached"
            memory.figure(impl).samples.append(outcome["bytes_per_entry"])
            stats.figure(impl).samples.extend(outcome["stats_ns"])
    memory.order(["ttlpool", "wool", "floor"])
    stats.order(["ttlpool", "wool", "floor"])
    for fig in stats.figures.values():
        if fig.samples:
            fig.note = fig.note or f"median of {len(fig.samples)} timed batches"


if __name__ == "__main__":
    raise SystemExit(main())
