"""Run the hammers over many seeds: ``python -m tests.stress --seeds 2000``.

Each seed runs every hammer scenario of :mod:`tests.hammer` (loops that end
together, one loop closing the pool while the others run, loops that leave
one by one) once, in the pool mode and idle TTL the seed picks, and checks
that every resource was finalized exactly once, to its end, on its own loop
while that loop ran, with exact counts. Then it runs the sync hammer of
:mod:`tests.hammer_sync` (plain threads on a ``SyncResourcePool``, with
``clear`` and ``close`` from another thread) once, in the mode the seed
picks there. ``--only loops`` or ``--only sync`` runs one kind alone.
Seeds run in worker processes; a failure prints its seed, scenario and
what went wrong, and makes the exit status 1. ``--seed N`` reruns one seed
in this process.

The test suite runs a few seeds of each scenario; this is for many.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import multiprocessing
import sys
import time

from tests import hammer, hammer_sync

#: (per_loop, ttl, lifecycle options) a seed picks from.
MODES = [
    (per_loop, ttl, lifecycle)
    for per_loop in (True, False)
    for ttl in hammer.TTLS
    for lifecycle in (False, True)
]


#: The kinds of hammer, for ``--only``.
KINDS = ("loops", "sync")


def run_seed(seed: int, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """Every scenario of ``kinds`` once for ``seed``; the problems found,
    as text."""
    problems: list[str] = []
    if "loops" in kinds:
        per_loop, ttl, lifecycle = MODES[seed % len(MODES)]
        mode = f"{'per_loop' if per_loop else 'shared'} ttl={ttl}"
        mode += " with lifecycle options" if lifecycle else ""
        for scenario in hammer.SCENARIOS:
            for problem in hammer.run_scenario(
                scenario, seed, per_loop, ttl, lifecycle
            ):
                problems.append(f"seed {seed} {scenario} {mode}:\n{problem}")
    if "sync" in kinds:
        problems += hammer_sync.run_seed(seed)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.stress", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds")
    parser.add_argument("--start", type=int, default=1, help="the first seed")
    parser.add_argument("--seed", type=int, help="run this one seed, in-process")
    parser.add_argument(
        "--jobs", type=int, default=2, help="worker processes (default 2)"
    )
    parser.add_argument(
        "--only",
        choices=KINDS,
        help="run only the loop hammers or only the sync hammer (default: both)",
    )
    args = parser.parse_args(argv)
    kinds = KINDS if args.only is None else (args.only,)
    run = functools.partial(run_seed, kinds=kinds)
    if args.seed is not None:
        problems = run(args.seed)
        print("\n".join(problems) or f"seed {args.seed}: ok")
        return 1 if problems else 0

    seeds = range(args.start, args.start + args.seeds)
    started = time.monotonic()
    failed: list[int] = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        for done, (seed, problems) in enumerate(
            zip(seeds, pool.map(run, seeds, chunksize=4), strict=True), 1
        ):
            if problems:
                failed.append(seed)
                print("\n".join(problems), flush=True)
            if done % 50 == 0 or done == len(seeds):
                print(
                    f"stress: {done}/{len(seeds)} seeds, {len(failed)} failed, "
                    f"{time.monotonic() - started:.0f}s",
                    flush=True,
                )
    scenarios = len(hammer.SCENARIOS) if "loops" in kinds else 0
    scenarios += 1 if "sync" in kinds else 0
    print(
        f"stress: {len(seeds)} seeds x {scenarios} scenarios on Python "
        f"{sys.version.split()[0]}: "
        + (f"{len(failed)} failed (seeds {failed})" if failed else "all passed")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
