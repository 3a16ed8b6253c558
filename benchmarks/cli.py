"""``python -m benchmarks``: run the suite, print the table, write JSON and a chart.

Modes: ``--smoke`` (seconds; proves the suite runs, numbers mean nothing),
``--quick`` (about a minute on a 2-core machine), full (the default, a few
minutes). Progress goes to stderr; the table to stdout. The exit status
is 0 whether targets pass or miss: they are a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ttlpool
from benchmarks._measure import Results
from benchmarks._memory import measure_memory
from benchmarks._optional import describe, pretend_missing, version_of
from benchmarks._pin import CpuPin
from benchmarks._settings import MODES, Settings
from benchmarks.chart import chart_sections, sections_json, write_chart
from benchmarks.policies import measure_policies
from benchmarks.pools import measure_pools
from benchmarks.report import render_table, write_json
from benchmarks.targets import evaluate
from benchmarks.threads import measure_threads
from benchmarks.workers import measure_dispatch, measure_run_sync

__all__ = ["main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECTIONS = (
    "hits",
    "tasks",
    "slow",
    "memory",
    "reap",
    "scale",
    "policies",
    "dispatch",
    "run_sync",
    "sync",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "ttlpool side by side with wool's ResourcePool and a floor (a bare "
            "async context manager). Medians with min-max over interleaved "
            "repetitions, and the median of same-repetition ratios."
        ),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="about a minute on a 2-core machine"
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds with tiny sizes: proves the suite runs (for CI)",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions of every figure"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / "latest.json",
        help="where to write the JSON results (default: %(default)s)",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=RESULTS_DIR / "ratios.png",
        help="where to draw the PNG chart of ratios (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated sections to run (default: all of %(default)s)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help=(
            "let the OS place the threads of the dispatch figures (W1, W2) "
            "instead of pinning them all to one CPU"
        ),
    )
    parser.add_argument(
        "--without",
        default="",
        help=(
            "comma-separated optional packages to treat as not installed "
            "(wool, uvloop, anyio, asgiref, matplotlib, cachetools, worker)"
        ),
    )
    return parser


def _say(message: str) -> None:
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = MODES[mode]
    if args.reps is not None:
        if args.reps < 1:
            raise SystemExit("--reps must be at least 1")
        settings = settings.with_reps(args.reps)
    return settings


def _meta(
    settings: Settings, seconds: float, optional: dict[str, str], pin: CpuPin
) -> dict[str, Any]:
    return {
        "mode": settings.mode,
        "settings": {k: v for k, v in vars(settings).items() if k != "mode"},
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "ttlpool": getattr(ttlpool, "__version__", None) or version_of("ttlpool"),
        "optional": optional,
        "dispatch_cpu": pin.cpu,
        "dispatch_placement": pin.description,
        "seconds": round(seconds, 1),
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


async def _on_a_loop(
    results: Results, settings: Settings, sections: set[str], pin: CpuPin
) -> None:
    await measure_pools(results, settings, _say, sections=sections)
    if "policies" in sections:  # ttlpool only: no competitor to skip
        await measure_policies(results, settings, _say)
    if "dispatch" in sections:
        await measure_dispatch(results, settings, _say, pin)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {sorted(unknown)}")
    without = {s.strip() for s in args.without.split(",") if s.strip()}
    try:
        pretend_missing(without)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    optional = describe()
    _say(f"{settings.mode} mode; optional: {optional}")

    started = time.perf_counter()
    pin = CpuPin.choose(enabled=not args.no_pin)
    results = Results()
    in_loop = sections - {"memory", "run_sync", "sync"}
    asyncio.run(_on_a_loop(results, settings, in_loop, pin))
    if "memory" in sections:
        measure_memory(results, settings, _say)
    if "run_sync" in sections:
        measure_run_sync(results, settings, _say, pin)
    if "sync" in sections:  # plain threads, no event loop
        measure_threads(results, settings, _say, pin)
    seconds = time.perf_counter() - started

    meta = _meta(settings, seconds, optional, pin)
    verdicts = evaluate(results, settings)
    header = [
        f"ttlpool {meta['ttlpool']} benchmarks: {settings.mode} mode, "
        f"{meta['python']}, {meta['platform']}, {meta['cpus']} CPUs, "
        f"{meta['seconds']} s",
        "Each figure: median and min .. max over repetitions; the implementations "
        "take turns within every repetition.",
        "x column: median over repetitions of (variant / reference) in the same "
        "repetition. Time per operation unless the title says wall time.",
        f"W1, W2 (dispatch to worker loops): {settings.dispatch_reps} rounds of "
        f"short samples; {pin.description}.",
        "Optional: " + ", ".join(f"{name} {what}" for name, what in optional.items()),
    ]
    print(render_table(results, verdicts, header))
    sections = chart_sections(results, verdicts)
    write_json(args.json, results, verdicts, meta, sections_json(sections))
    print(f"\nJSON: {args.json}")
    why_not = write_chart(
        args.chart,
        sections,
        f"ttlpool {meta['ttlpool']} benchmarks ({settings.mode} mode, "
        f"{meta['python']}, {meta['cpus']} CPUs; worker loop threads {pin.short})",
    )
    print(f"chart: {args.chart}" if why_not is None else f"chart skipped: {why_not}")
    return 0
