"""The benchmark suite runs: ``python -m benchmarks --smoke`` end to end.

Numbers from a smoke run mean nothing; this only proves that every
measurement, the table, the JSON and the chart work, that each optional
competitor is measured when it is installed, and that a missing optional
package is reported as skipped rather than faked. Speed targets are never
asserted here.

The chart and the competitors need the ``bench`` extra: without it those
tests skip, saying so, except under ``TTLPOOL_REQUIRE_BENCH=1`` (set by
.ci/run), where they fail (see the ``bench_extra`` fixture).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
    assert {t["status"] for t in smoke.document["targets"]} <= {"PASS", "MISS", "n/a"}


def test_smoke_run_draws_the_chart(smoke: SmokeRun, bench_extra: Any) -> None:
    bench_extra("matplotlib")
    assert smoke.chart.stat().st_size > 0
    assert "chart skipped" not in smoke.stdout


@pytest.mark.parametrize(
    ("name", "module", "python"),
    [
        pytest.param("wool", "wool.runtime.resourcepool", (3, 11), id="wool"),
        pytest.param("uvloop", "uvloop", (3, 10), id="uvloop"),
        pytest.param("anyio", "anyio.from_thread", (3, 10), id="anyio"),
        pytest.param("asgiref", "asgiref.sync", (3, 10), id="asgiref"),
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
