"""The outputs of a run: the printed table with its targets, and JSON.

The targets and their verdicts come from :mod:`benchmarks.targets`, the
chart from :mod:`benchmarks.chart`.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks._measure import Figure, Group, Results
from benchmarks.targets import SHORT

__all__ = ["fmt_ratio", "fmt_value", "ordered", "render_table", "write_json"]


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
    chart: list[dict[str, Any]],
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
        "chart": chart,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
