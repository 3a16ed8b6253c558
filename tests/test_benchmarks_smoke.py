"""The benchmark suite runs: ``python -m benchmarks --smoke`` end to end.

Numbers from a smoke run mean nothing; this only proves that every
measurement, the table, the JSON and (when matplotlib is installed) the
chart work, and that a missing optional package is reported as skipped
rather than faked. Speed targets are never asserted here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Any]:
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
    return done, json.loads(out_json.read_text())


def test_smoke_run_prints_the_table_and_writes_json_and_chart(tmp_path: Path) -> None:
    done, document = _run(tmp_path)
    assert "1. Warm hit" in done.stdout
    assert "Targets" in done.stdout
    groups = {group["key"]: group for group in document["groups"]}
    for key in ("warm_hit", "churn_sync", "churn_async", "tasks", "behind_slow"):
        ttlpool = next(f for f in groups[key]["figures"] if f["name"] == "ttlpool")
        assert ttlpool["samples"], key
        assert ttlpool["median"] > 0
    for key in ("memory", "stats", "reap_due", "reap_stall", "scale_1", "scale_n"):
        assert key in groups
    assert "dispatch" in groups and "run_sync" in groups
    assert {t["status"] for t in document["targets"]} <= {"PASS", "MISS", "n/a"}
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "ratios.png").stat().st_size > 0


def test_a_missing_competitor_is_skipped_not_faked(tmp_path: Path) -> None:
    done, document = _run(
        tmp_path,
        "--only",
        "hits,memory",
        "--without",
        "wool,uvloop,anyio,asgiref,matplotlib",
    )
    groups = {group["key"]: group for group in document["groups"]}
    for key in ("warm_hit", "memory"):
        wool = next(f for f in groups[key]["figures"] if f["name"] == "wool")
        assert wool["skipped"] and not wool["samples"]
    assert "skipped: wool skipped (--without wool)" in done.stdout
    assert "chart skipped" in done.stdout
    assert not (tmp_path / "ratios.png").exists()


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
