"""The benchmark suite runs: ``python -m benchmarks --smoke`` end to end.

Numbers from a smoke run mean nothing; this only proves that every
measurement, the table, the JSON and the chart work, that every target is
printed with a verdict (and measured, when the bench extra is installed),
that the chart's bars all point right for good news with each target's
line where its verdict says, that the dispatch figures say how they were
sampled, that each optional competitor is measured when it is installed,
and that a missing optional package is reported as skipped rather than
faked. Whether a target passes is never asserted here.

The chart and the competitors need the ``bench`` extra: without it those
tests skip, saying so, except under ``TTLPOOL_REQUIRE_BENCH=1`` (set by
.ci/run), where they fail (see the ``bench_extra`` fixture).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"

#: Every target the run must print (a piece of each line that names it).
TARGETS = [
    f"warm hit ≤ 1.7x the floor (the target on every Python version; "
    f"this run: {PYTHON})",
    "warm hit ≥ 4x faster than wool",
    "churn ≥ 2x faster than wool (sync factory/finalizer)",
    f"(async factory/finalizer; the Python {PYTHON} target:",
    "cached key behind another key's slow factory < 1 ms",
    "5 slow keys in about one factory time",
    "memory per idle entry ≤ 1.5x the floor",
    "stats < 10 µs at",
    "reaping: no loop stall over 5 ms, wall clock",
    "reaping: no loop stall over 5 ms in CPU time",
    "reaping: last finalizer within 20 ms past due",
    "keys within 1.2x of 1 key",
    "validate set: a hit on an entry in use ≤ 1.15x the hit with every option",
    "on_remove set: a warm hit ≤ 1.1x the hit with every option",
    "validate set: reuse of an idle entry (validated each time), reported",
    "max_lifetime set: a warm hit, reported",
    "leak_timeout set: a lease (stack captured, timer armed), reported",
    "SyncResourcePool warm hit (1 thread) ≤ 2x the floor (a dict under a "
    "threading.Lock)",
    "SyncResourcePool warm hit, 8 threads on 8 keys, reported",
    "SyncResourcePool warm hit, 8 threads on one key, reported",
    "SyncResourcePool churn (ttl=0, sync factory/finalizer), reported",
    *(
        text.format(loops=loops, run=run)
        for loops, run in (("asyncio", "asyncio.run"), ("uvloop", "uvloop.run"))
        for text in (
            "WorkerLoopPool.run ≤ 1.10x a raw warm loop ({loops} loops)",
            "WorkerLoopPool.run ≥ 3x faster than a new loop per call ({loops} loops)",
            "run_sync ≤ 1.15x a raw warm loop's "
            "run_coroutine_threadsafe(...).result() ({loops} loops)",
            "run_sync ≥ 1.5x faster than anyio's blocking portal ({loops} loops)",
            "run_sync ≥ 2.5x faster than {run} per call ({loops} loops)",
        )
    ),
]

#: The questions the chart's panels answer, in order.
QUESTIONS = [
    "Is it faster than wool?",
    "How close to the floor?",
    "Does a warm hit stay flat",
    "What does a lifecycle option cost on a warm hit?",
    "How close is SyncResourcePool to the floor?",
    "Does it stay within its limits?",
    "Is the worker loop worth it?",
    "Is run_sync worth it?",
]


class SmokeRun(NamedTuple):
    stdout: str
    document: Any
    chart: Path


def _run(tmp_path: Path, *extra: str) -> SmokeRun:
    out_json = tmp_path / "results.json"
    chart = tmp_path / "ratios.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--reps",
            "1",
            "--json",
            str(out_json),
            "--chart",
            str(chart),
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return SmokeRun(done.stdout, json.loads(out_json.read_text()), chart)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """One full smoke run, shared by the tests that read its output."""
    return _run(tmp_path_factory.mktemp("smoke"))


def _groups(document: Any) -> dict[str, Any]:
    return {group["key"]: group for group in document["groups"]}


def test_smoke_run_prints_the_table_and_writes_json(smoke: SmokeRun) -> None:
    assert "1. Warm hit" in smoke.stdout
    assert "Targets" in smoke.stdout
    groups = _groups(smoke.document)
    for key in ("warm_hit", "churn_sync", "churn_async", "tasks", "behind_slow"):
        ttlpool = next(f for f in groups[key]["figures"] if f["name"] == "ttlpool")
        assert ttlpool["samples"], key
        assert ttlpool["median"] > 0
    for key in ("memory", "stats", "reap_due", "reap_stall", "scale_1", "scale_n"):
        assert key in groups
    assert "dispatch" in groups and "run_sync" in groups
    assert "8. Warm hit with lifecycle options" in smoke.stdout
    _assert_policy_group(groups)
    assert "S1. SyncResourcePool warm hit, 1 thread" in smoke.stdout
    _assert_sync_groups(groups)
    assert {t["status"] for t in smoke.document["targets"]} <= {"PASS", "MISS", "n/a"}


#: The variants of measurement 8 (lifecycle options), in the table's order.
POLICY_VARIANTS = [
    "defaults",
    "validate, idle reuse",
    "validate, entry in use",
    "max_lifetime",
    "leak_timeout",
    "on_remove",
    "floor",
]


def _assert_policy_group(groups: dict[str, Any]) -> None:
    """Measurement 8: every variant measured, ratios to the defaults, and
    the check that its validate rows are what they say (ttlpool only)."""
    group = groups["policy_hit"]
    assert group["reference"] == "defaults"
    assert [f["name"] for f in group["figures"]] == POLICY_VARIANTS
    for figure in group["figures"]:
        assert not figure["skipped"] and figure["samples"], figure["name"]
        assert figure["median"] > 0
    assert re.search(
        r"validate ran ([\d,]+) times in \1 idle reuses and 0 times in", group["note"]
    ), group["note"]
    assert "the labels are wrong" not in group["note"]


#: The groups of the sync section (SyncResourcePool from plain threads).
SYNC_GROUPS = ["sync_hit", "sync_threads_keys", "sync_threads_shared", "sync_churn"]
SYNC_CACHE = "cachetools TTLCache + Lock"


def _assert_sync_groups(groups: dict[str, Any]) -> None:
    """S1-S3: SyncResourcePool and the floor measured in every row, with
    ratios to SyncResourcePool; cachetools in the hit rows, measured or
    skipped with the reason (never in churn: a cache does not churn)."""
    for key in SYNC_GROUPS:
        group = groups[key]
        assert group["reference"] == "SyncResourcePool"
        names = [f["name"] for f in group["figures"]]
        wanted = ["SyncResourcePool", "floor"]
        if key != "sync_churn":
            wanted.append(SYNC_CACHE)
        assert names == wanted, key
        for figure in group["figures"]:
            if figure["name"] == SYNC_CACHE and figure["skipped"]:
                assert figure["skipped"].startswith("cachetools ")
                assert not figure["samples"]
                continue
            assert not figure["skipped"] and figure["samples"], (key, figure)
            assert figure["median"] > 0
    assert "8 threads released at a barrier" in groups["sync_threads_keys"]["note"]
    assert "8 threads released at a barrier" in groups["sync_threads_shared"]["note"]


def _target_lines(stdout: str) -> list[tuple[str, str, str]]:
    """(status, target text, measured line) for each target the run printed."""
    block = stdout.split("Targets (a report: a miss does not fail the run)\n")[1]
    lines = block.split("\n\nJSON:")[0].splitlines()
    found = []
    for first, second in zip(lines[::2], lines[1::2], strict=True):
        match = re.fullmatch(r"  (PASS|MISS|n/a)\s+(.+)", first)
        assert match, first
        found.append((match[1], match[2], second.strip()))
    return found


def test_every_target_is_printed_with_a_verdict(smoke: SmokeRun) -> None:
    printed = _target_lines(smoke.stdout)
    texts = [text for _, text, _ in printed]
    for wanted in TARGETS:
        assert sum(wanted in text for text in texts) == 1, (wanted, texts)
    assert len(printed) == len(TARGETS) == len(smoke.document["targets"])
    for status, _, measured in printed:
        if status == "n/a":
            assert measured.endswith("= n/a (a figure was skipped)")
        else:
            assert re.search(r" = \S+.* \(target (<=|<|>=) [\d.]+", measured)


def test_with_the_bench_extra_every_target_is_measured(
    smoke: SmokeRun, bench_extra: Any
) -> None:
    """A target naming a variant that does not exist would read n/a forever."""
    bench_extra("wool.runtime.resourcepool", python=(3, 11))
    bench_extra("uvloop")
    bench_extra("anyio.from_thread")
    assert [status for status, _, _ in _target_lines(smoke.stdout)] == [
        t["status"] for t in smoke.document["targets"]
    ]
    assert all(t["status"] in ("PASS", "MISS") for t in smoke.document["targets"])


def test_the_dispatch_figures_say_how_they_were_sampled(smoke: SmokeRun) -> None:
    header = smoke.stdout.split("\n\n")[0]
    assert "W1, W2 (dispatch to worker loops):" in header
    assert "pinned to CPU" in header or "not pinned" in header
    groups = _groups(smoke.document)
    for key in ("dispatch", "run_sync"):
        assert "rounds; a sample is" in groups[key]["note"]
        lengths = {len(f["samples"]) for f in groups[key]["figures"] if f["samples"]}
        assert len(lengths) == 1, "every variant once a round: ratios are paired"


def test_smoke_run_draws_the_chart(smoke: SmokeRun, bench_extra: Any) -> None:
    bench_extra("matplotlib")
    assert smoke.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "chart skipped" not in smoke.stdout


def test_the_chart_groups_rows_by_question_and_right_is_better(
    smoke: SmokeRun,
) -> None:
    sections = smoke.document["chart"]
    # Panels in the order of QUESTIONS (one whose competitor is not
    # installed may be missing); these five need nothing optional.
    asked = [
        next(i for i, q in enumerate(QUESTIONS) if s["question"].startswith(q))
        for s in sections
    ]
    assert asked == sorted(set(asked))
    assert {1, 2, 3, 4, 5} <= set(asked)
    rows = [row for section in sections for row in section["rows"]]
    assert all(row["value"] > 0 for row in rows)
    # Every target with a value is drawn, with its line, on one bar that
    # passes exactly when it reaches the line on the right-is-better axis.
    measured = [t for t in smoke.document["targets"] if t["status"] != "n/a"]
    marked = [row for row in rows if row["status"] is not None]
    assert len(marked) == len(measured)
    for row in marked:
        assert row["threshold"] > 0
        assert (row["value"] >= row["threshold"]) == (row["status"] == "PASS"), row
    floor = next(s for s in sections if s["question"].startswith("How close"))
    warm = next(r for r in floor["rows"] if r["label"] == "1 warm hit")
    target = next(t for t in measured if t["target"].startswith("warm hit ≤"))
    assert warm["value"] == pytest.approx(1 / target["value"])  # floor / ttlpool
    assert warm["threshold"] == pytest.approx(1 / 1.7)


@pytest.mark.parametrize(
    ("name", "module", "python"),
    [
        pytest.param("wool", "wool.runtime.resourcepool", (3, 11), id="wool"),
        pytest.param("uvloop", "uvloop", (3, 10), id="uvloop"),
        pytest.param("anyio", "anyio.from_thread", (3, 10), id="anyio"),
        pytest.param("asgiref", "asgiref.sync", (3, 10), id="asgiref"),
        pytest.param("cachetools", "cachetools", (3, 10), id="cachetools"),
    ],
)
def test_smoke_run_measures_each_installed_competitor(
    smoke: SmokeRun,
    bench_extra: Any,
    name: str,
    module: str,
    python: tuple[int, int],
) -> None:
    bench_extra(module, python=python)
    figures = [
        figure
        for key, group in _groups(smoke.document).items()
        for figure in group["figures"]
        if name in key or name in figure["name"]
    ]
    assert figures, f"no figure of {name} in the smoke run"
    # A figure of this group may still skip for another package (wool's
    # columns in the uvloop dispatch group, on Python 3.10).
    skipped = {
        f["name"]: f["skipped"]
        for f in figures
        if (f["skipped"] or "").startswith(f"{name} ")
    }
    assert not skipped
    assert all(f["samples"] for f in figures if not f["skipped"])


def test_a_missing_competitor_is_skipped_not_faked(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        "--only",
        "hits,memory",
        "--without",
        "wool,uvloop,anyio,asgiref,matplotlib",
    )
    groups = _groups(run.document)
    for key in ("warm_hit", "memory"):
        wool = next(f for f in groups[key]["figures"] if f["name"] == "wool")
        assert wool["skipped"] and not wool["samples"]
    assert "skipped: wool skipped (--without wool)" in run.stdout
    assert "chart skipped" in run.stdout
    assert not run.chart.exists()
    statuses = {text: status for status, text, _ in _target_lines(run.stdout)}
    assert statuses["warm hit ≥ 4x faster than wool"] == "n/a"
    assert statuses["memory per idle entry ≤ 1.5x the floor"] in ("PASS", "MISS")


def test_only_policies_measures_the_lifecycle_options_alone(tmp_path: Path) -> None:
    run = _run(tmp_path, "--only", "policies")
    groups = _groups(run.document)
    assert list(groups) == ["policy_hit"]
    _assert_policy_group(groups)
    statuses = {
        t["target"]: t["status"]
        for t in run.document["targets"]
        if t["num"][0] == "policy_hit"
    }
    assert len(statuses) == 5
    assert set(statuses.values()) <= {"PASS", "MISS"}
    assert all(
        t["status"] == "n/a"
        for t in run.document["targets"]
        if t["num"][0] != "policy_hit"
    )


def test_only_sync_measures_the_sync_pool_alone(tmp_path: Path) -> None:
    """``--only sync``: S1-S3 and their targets, nothing else; without
    cachetools its column says skipped, and the targets (all against the
    floor) are still measured."""
    run = _run(tmp_path, "--only", "sync", "--without", "cachetools")
    groups = _groups(run.document)
    assert list(groups) == SYNC_GROUPS
    _assert_sync_groups(groups)
    for key in SYNC_GROUPS[:3]:
        cache = next(f for f in groups[key]["figures"] if f["name"] == SYNC_CACHE)
        assert cache["skipped"] == "cachetools skipped (--without cachetools)"
    assert "skipped: cachetools skipped (--without cachetools)" in run.stdout
    statuses = {
        t["target"]: t["status"]
        for t in run.document["targets"]
        if t["num"][0] in SYNC_GROUPS
    }
    assert len(statuses) == 4
    assert set(statuses.values()) <= {"PASS", "MISS"}
    assert all(
        t["status"] == "n/a"
        for t in run.document["targets"]
        if t["num"][0] not in SYNC_GROUPS
    )


def test_no_pin_lets_the_os_place_the_threads(tmp_path: Path) -> None:
    run = _run(tmp_path, "--only", "dispatch", "--no-pin", "--without", "uvloop")
    assert "not pinned (--no-pin): the OS places the threads" in run.stdout
    assert run.document["meta"]["dispatch_cpu"] is None
    assert "threads not pinned" in _groups(run.document)["dispatch"]["note"]


def test_help_lists_the_modes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "--quick" in done.stdout and "--smoke" in done.stdout
