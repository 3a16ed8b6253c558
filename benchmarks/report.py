"""The outputs of a run: the printed table, the targets, JSON, the PNG chart.

Targets are the issue's speed and size goals. Each is a ratio of two
figures (the median of their same-repetition ratios) or one figure's
value, compared with a limit and printed PASS or MISS. They are a report:
a miss never changes the exit status.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._measure import Figure, Group, Results, ratio_of
from benchmarks._optional import attr, load
from benchmarks._settings import Settings

__all__ = [
    "SHORT",
    "Target",
    "evaluate",
    "render_table",
    "targets",
    "write_chart",
    "write_json",
]

#: A short name for each group (chart labels), in the order of the table.
SHORT = {
    "warm_hit": "1 warm hit",
    "churn_sync": "2a churn, sync",
    "churn_async": "2b churn, async",
    "tasks": "3 100 tasks, 1 key",
    "behind_slow": "4a hot key behind slow factory",
    "five_slow": "4b 5 slow keys (wall)",
    "memory": "5a memory per idle entry",
    "stats": "5b stats",
    "reap_due": "6a reaping: last finalizer late by",
    "reap_stall": "6b reaping: longest stall",
    "reap_stall_cpu": "6c reaping: longest stall, CPU",
    "scale_1": "7a hit, 1 key cached",
    "scale_n": "7b hit, many keys cached",
    "dispatch": "W1 dispatch (asyncio)",
    "dispatch_uvloop": "W1u dispatch (uvloop)",
    "run_sync": "W2 run_sync (asyncio)",
    "run_sync_uvloop": "W2u run_sync (uvloop)",
}


def ordered(results: Results) -> list[Group]:
    """The groups in table order (unknown ones last, as measured)."""
    rank = {key: i for i, key in enumerate(SHORT)}
    groups = list(results.groups.values())
    return sorted(groups, key=lambda g: rank.get(g.key, len(rank)))


# -- units --------------------------------------------------------------------


def fmt_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "B":
        return f"{value:,.0f} B"
    magnitude = abs(value)
    # 999.5 and up would print as "1e+03" with three significant digits.
    if magnitude >= 999.5e6:
        return f"{value / 1e9:.2f} s"
    if magnitude >= 999.5e3:
        return f"{value / 1e6:.3g} ms"
    if magnitude >= 999.5:
        return f"{value / 1e3:.3g} µs"
    return f"{value:.3g} ns"


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.3g}x"


# -- targets ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One goal: ``num / den`` (or ``num`` alone, divided by ``scale``) vs ``limit``.

    ``num`` and ``den`` are ``(group key, variant)``. ``use_max`` compares
    the worst repetition instead of the median (for "never over" goals).
    """

    text: str
    num: tuple[str, str]
    den: tuple[str, str] | None
    op: str
    limit: float
    scale: float = 1.0
    unit: str = "x"
    use_max: bool = False


def _targets_for(flavour: str, suffix: str) -> list[Target]:
    run, run_sync = "WorkerLoopPool.run", "WorkerLoopPool.run_sync"
    return [
        Target(
            f"WorkerLoopPool.run ≤ 1.10x a raw warm loop ({flavour})",
            (f"dispatch{suffix}", run),
            (f"dispatch{suffix}", "raw warm loop"),
            "<=",
            1.10,
        ),
        Target(
            f"WorkerLoopPool.run ≥ 3x faster than a new loop per call ({flavour})",
            (f"dispatch{suffix}", "new loop + thread per call"),
            (f"dispatch{suffix}", run),
            ">=",
            3.0,
        ),
        Target(
            f"run_sync at least as fast as anyio's blocking portal ({flavour})",
            (f"run_sync{suffix}", run_sync),
            (f"run_sync{suffix}", "anyio blocking portal"),
            "<=",
            1.0,
        ),
    ]


def targets(memory_entries: int, scale_keys: int) -> list[Target]:
    """The issue's targets, worded with this run's sizes."""
    return [
        Target(
            "warm hit ≤ 2x the floor",
            ("warm_hit", "ttlpool"),
            ("warm_hit", "floor"),
            "<=",
            2.0,
        ),
        Target(
            "warm hit ≥ 4x faster than wool",
            ("warm_hit", "wool"),
            ("warm_hit", "ttlpool"),
            ">=",
            4.0,
        ),
        Target(
            "churn ≥ 2x faster than wool (sync factory/finalizer)",
            ("churn_sync", "wool"),
            ("churn_sync", "ttlpool"),
            ">=",
            2.0,
        ),
        Target(
            "churn ≥ 2x faster than wool (async factory/finalizer)",
            ("churn_async", "wool"),
            ("churn_async", "ttlpool"),
            ">=",
            2.0,
        ),
        Target(
            "cached key behind another key's slow factory < 1 ms",
            ("behind_slow", "ttlpool"),
            None,
            "<",
            1.0,
            scale=1e6,
            unit=" ms",
        ),
        Target(
            "5 slow keys in about one factory time (≤ 1.5 factory times)",
            ("five_slow", "ttlpool"),
            None,
            "<=",
            1.5,
            scale=math.nan,  # set from the factory delay by ``evaluate``
            unit=" factory times",
        ),
        Target(
            "memory per idle entry ≤ 2x the floor",
            ("memory", "ttlpool"),
            ("memory", "floor"),
            "<=",
            2.0,
        ),
        Target(
            f"stats < 10 µs at {memory_entries:,} entries",
            ("stats", "ttlpool"),
            None,
            "<",
            10.0,
            scale=1e3,
            unit=" µs",
        ),
        Target(
            "reaping: no loop stall over 5 ms, wall clock (worst repetition)",
            ("reap_stall", "ttlpool"),
            None,
            "<=",
            5.0,
            scale=1e6,
            unit=" ms",
            use_max=True,
        ),
        Target(
            "reaping: no loop stall over 5 ms in CPU time (worst repetition)",
            ("reap_stall_cpu", "ttlpool"),
            None,
            "<=",
            5.0,
            scale=1e6,
            unit=" ms",
            use_max=True,
        ),
        Target(
            "reaping: last finalizer within 20 ms past due",
            ("reap_due", "ttlpool"),
            None,
            "<=",
            20.0,
            scale=1e6,
            unit=" ms",
        ),
        Target(
            f"warm hit at {scale_keys:,} keys within 1.2x of 1 key",
            ("scale_n", "ttlpool"),
            ("scale_1", "ttlpool"),
            "<=",
            1.2,
        ),
        *_targets_for("asyncio loops", ""),
        *_targets_for("uvloop loops", "_uvloop"),
    ]


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
}


def _find(results: Results, where: tuple[str, str]) -> Figure | None:
    group = results.groups.get(where[0])
    if group is None:
        return None
    fig = group.figures.get(where[1])
    if fig is None or fig.skipped or not fig.samples:
        return None
    return fig


def evaluate(results: Results, settings: Settings) -> list[dict[str, Any]]:
    """Each target with its measured value and PASS, MISS or n/a."""
    slow_delay = settings.slow_delay
    verdicts: list[dict[str, Any]] = []
    for target in targets(settings.memory_entries, settings.scale_keys):
        num = _find(results, target.num)
        den = _find(results, target.den) if target.den else None
        value: float | None = None
        if num is not None and target.den is None:
            scale = slow_delay * 1e9 if math.isnan(target.scale) else target.scale
            raw = num.high if target.use_max else num.median
            value = None if raw is None else raw / scale
        elif num is not None and den is not None:
            value = ratio_of(num, den)
        status = "n/a"
        if value is not None:
            ok = _COMPARE[target.op](value, target.limit)
            status = "PASS" if ok else "MISS"
        if target.den is None:
            measured = f"{target.num[1]}"
        elif target.den[0] == target.num[0]:
            measured = f"{target.num[1]} / {target.den[1]}"
        else:
            measured = (
                f"{target.num[1]} [{SHORT.get(target.num[0], target.num[0])}] / "
                f"{target.den[1]} [{SHORT.get(target.den[0], target.den[0])}]"
            )
        verdicts.append(
            {
                "target": target.text,
                "measured": measured,
                "value": value,
                "op": target.op,
                "limit": target.limit,
                "unit": target.unit.strip(),
                "status": status,
            }
        )
    return verdicts


# -- the table ----------------------------------------------------------------


def _group_lines(group: Group) -> list[str]:
    lines = [f"{group.title}"]
    if group.note:
        lines.append(f"    ({group.note})")
    ref = f"x {group.reference}"
    lines.append(f"    {'variant':<30} {'median':>10}   {'min .. max':<23} {ref:>10}")
    for fig in group.figures.values():
        if fig.skipped or not fig.samples:
            lines.append(f"    {fig.name:<30} skipped: {fig.skipped or 'no samples'}")
            continue
        spread = (
            f"{fmt_value(fig.low, group.unit)} .. {fmt_value(fig.high, group.unit)}"
        )
        ratio = group.ratio(fig.name)
        note = f"   {fig.note}" if fig.note else ""
        lines.append(
            f"    {fig.name:<30} {fmt_value(fig.median, group.unit):>10}   "
            f"{spread:<23} {fmt_ratio(ratio):>10}{note}"
        )
    return lines


def render_table(
    results: Results, verdicts: list[dict[str, Any]], header: list[str]
) -> str:
    lines = [*header, ""]
    for group in ordered(results):
        lines += _group_lines(group)
        lines.append("")
    lines.append("Targets (a report: a miss does not fail the run)")
    for v in verdicts:
        value = v["value"]
        if value is None:
            shown = "n/a (a figure was skipped)"
        else:
            unit = "x" if v["unit"] == "x" else f" {v['unit']}"
            shown = f"{value:.3g}{unit}  (target {v['op']} {v['limit']:g}{unit})"
        lines.append(f"  {v['status']:<4}  {v['target']}")
        lines.append(f"        {v['measured']} = {shown}")
    return "\n".join(lines)


# -- JSON ---------------------------------------------------------------------


def _figure_json(group: Group, fig: Figure) -> dict[str, Any]:
    return {
        "name": fig.name,
        "skipped": fig.skipped,
        "note": fig.note,
        "samples": fig.samples,
        "median": fig.median,
        "min": fig.low,
        "max": fig.high,
        "ratio_to_reference": group.ratio(fig.name) if fig.samples else None,
        "stdev": statistics.stdev(fig.samples) if len(fig.samples) > 1 else None,
    }


def write_json(
    path: Path,
    results: Results,
    verdicts: list[dict[str, Any]],
    meta: dict[str, Any],
) -> None:
    document = {
        "meta": meta,
        "groups": [
            {
                "key": group.key,
                "title": group.title,
                "unit": group.unit,
                "reference": group.reference,
                "note": group.note,
                "figures": [_figure_json(group, f) for f in group.figures.values()],
            }
            for group in ordered(results)
        ],
        "targets": verdicts,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")


# -- the chart ----------------------------------------------------------------

_COLOURS = {"wool": "#c44e52", "floor": "#8c8c8c"}


def write_chart(path: Path, results: Results, title: str) -> str | None:
    """A PNG of every ratio to its group's reference; the reason if none."""
    matplotlib, why = load("matplotlib")
    if matplotlib is None:
        return why
    attr(matplotlib, "use")("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    ratios: list[float] = []
    colours: list[str] = []
    for group in ordered(results):
        short = SHORT.get(group.key, group.key)
        for fig in group.figures.values():
            ratio = group.ratio(fig.name) if fig.samples else None
            if fig.name == group.reference or ratio is None or ratio <= 0:
                continue
            labels.append(f"{short}: {fig.name} / {group.reference}")
            ratios.append(ratio)
            colour = next((c for k, c in _COLOURS.items() if k in fig.name), "#4c72b0")
            colours.append(colour)
    if not ratios:
        return "no ratios to draw"
    height = max(3.0, 0.28 * len(ratios) + 1.2)
    canvas, ax = plt.subplots(figsize=(11, height))
    positions = list(range(len(ratios)))[::-1]
    # Bars grow from 1 (same as the reference): right is slower, left faster.
    ax.barh(positions, [r - 1.0 for r in ratios], left=1.0, color=colours)
    ax.set_xscale("log")
    # Explicit limits: autoscaling clamps to the bars' base at 1 (sticky
    # edges) and can hide every bar below 1.
    ax.set_xlim(min([*ratios, 1.0]) / 2.5, max([*ratios, 1.0]) * 4.0)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=7)
    for y, ratio in zip(positions, ratios, strict=True):
        ax.text(ratio, y, f" {fmt_ratio(ratio)}", va="center", fontsize=7)
    ax.set_xlabel("ratio to the group's reference (median of same-run ratios, log)")
    ax.set_title(title, fontsize=9)
    canvas.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(canvas)
    return None
