"""The chart of a run: every row a bar that points right for good news.

Rows are grouped by the question they answer ("Is it faster than wool?",
"How close to the floor?", ...), one panel per question. In every panel a
bar is *how many times better ttlpool is* than what the row compares it
with: the other's time (or bytes) divided by ttlpool's, so right of 1 is
better and left of 1 worse, whatever the row. Targets are drawn in the
same terms: "ttlpool ≤ 1.7x the floor" becomes a line at 1/1.7 on the
floor's row, and the bar must reach it. A row with a target is green when
it passes, red when it misses; other rows are grey. A panel of absolute
limits ("stats < 10 µs") shows each as limit / measured, so 1 is the line.

:func:`chart_sections` builds the rows as plain data (also written to the
JSON); :func:`write_chart` draws them with matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._measure import Figure, Results, ratio_of
from benchmarks._optional import attr, load
from benchmarks.report import fmt_ratio
from benchmarks.targets import RUN, RUN_SYNC, SHORT, SYNC_CACHE, SYNC_POOL

__all__ = ["Row", "Section", "chart_sections", "write_chart"]

Where = tuple[str, str]

PASS_COLOUR, MISS_COLOUR, PLAIN_COLOUR = "#3a923a", "#d03b3b", "#9aa5b8"


@dataclass
class Row:
    """One bar: ``value`` = how many times better ttlpool is (> 1: better)."""

    label: str
    value: float
    #: Where the bar must reach (same terms as ``value``), if a target applies.
    threshold: float | None = None
    status: str | None = None  # "PASS" or "MISS" when there is a target
    #: The target as the text report words it (with the measured ratio in
    #: the same words when the bar is its inverse: "2.46x the floor's time").
    annotation: str = ""


@dataclass
class Section:
    """One panel: a question, what its bars are, and its rows."""

    question: str
    bar: str
    rows: list[Row] = field(default_factory=list)


def _figure(results: Results, where: Where) -> Figure | None:
    group = results.groups.get(where[0])
    fig = group.figures.get(where[1]) if group else None
    if fig is None or fig.skipped or not fig.samples:
        return None
    return fig


_SYMBOL = {"<=": "≤", "<": "<", ">=": "≥"}


def _limit_text(verdict: dict[str, Any]) -> str:
    unit = "x" if verdict["unit"] == "x" else f" {verdict['unit']}"
    return f"target {_SYMBOL[verdict['op']]} {verdict['limit']:g}{unit}"


def _ratio_row(
    results: Results,
    verdicts: list[dict[str, Any]],
    label: str,
    other: Where,
    ours: Where,
    whose: str = "the other's",
) -> Row | None:
    """A bar of ``other / ours``, with the target on this pair if there is one.

    ``whose`` names the other side for a target worded the other way round
    ("ttlpool ≤ 1.7x *the floor's*").
    """
    for verdict in verdicts:
        pair = (tuple(verdict["num"]), tuple(verdict["den"] or ()))
        value = verdict["value"]
        if value is None or value <= 0 or pair not in ((other, ours), (ours, other)):
            continue
        limit, status = verdict["limit"], verdict["status"]
        if pair == (other, ours):  # "ttlpool ≥ 4x faster": already our terms
            return Row(label, value, limit, status, _limit_text(verdict))
        # "ttlpool ≤ 1.7x the floor": the bar is 1/value, the line at 1/limit.
        annotation = f"{fmt_ratio(value)} {whose}, {_limit_text(verdict)}"
        return Row(label, 1.0 / value, 1.0 / limit, status, annotation)
    num, den = _figure(results, other), _figure(results, ours)
    if num is None or den is None:
        return None
    value = ratio_of(num, den)
    if value is None or value <= 0 or math.isnan(value):
        return None
    return Row(label, value)


def _add(section: Section, row: Row | None) -> None:
    if row is not None:
        section.rows.append(row)


def _against(results: Results, verdicts: list[dict[str, Any]], other: str) -> Section:
    """Rows of ``other / ttlpool`` for the pool groups (wool, or the floor)."""
    if other == "wool":
        section = Section(
            "Is it faster than wool?",
            "wool's time (memory: bytes) / ttlpool's; right of 1: ttlpool is faster",
        )
        keys = [
            *("warm_hit", "churn_sync", "churn_async", "tasks", "behind_slow"),
            *("five_slow", "memory", "stats", "reap_due", "reap_stall"),
        ]
    else:
        section = Section(
            "How close to the floor? (a bare async context manager: one dict "
            "lookup, one increment)",
            "the floor's time (memory: bytes) / ttlpool's; 1 would be as cheap "
            "as the floor",
        )
        keys = ["warm_hit", "churn_sync", "churn_async", "tasks", "five_slow"]
        keys.append("memory")
    for key in keys:
        whose = "bytes" if key == "memory" else "time"
        whose = f"{'the floor' if other == 'floor' else other}'s {whose}"
        where = (key, other), (key, "ttlpool")
        label = SHORT.get(key, key)
        _add(section, _ratio_row(results, verdicts, label, *where, whose))
    if other == "wool":
        for suffix, flavour in (("", "asyncio"), ("_uvloop", "uvloop")):
            group = f"dispatch{suffix}"
            where = (
                (group, "wool ResourcePool ttl=30"),
                (
                    group,
                    "ttlpool.ResourcePool ttl=30",
                ),
            )
            label = f"W1 worker loops kept in a pool, ttl=30 ({flavour})"
            _add(section, _ratio_row(results, verdicts, label, *where))
    return section


def _at_scale(results: Results, verdicts: list[dict[str, Any]]) -> Section:
    section = Section(
        "Does a warm hit stay flat with many keys cached?",
        "the time with 1 key cached / the time with many; 1 is flat",
    )
    group = results.groups.get("scale_n")
    many = group.title.split(" with ")[-1].split(" keys")[0] if group else "many"
    for name in ("ttlpool", "wool", "floor"):
        label = f"7 {name}: 1 key against {many}"
        where = ("scale_1", name), ("scale_n", name)
        whose = "the time at 1 key"
        _add(section, _ratio_row(results, verdicts, label, *where, whose))
    return section


def _policies(results: Results, verdicts: list[dict[str, Any]]) -> Section:
    """Measurement 8: each lifecycle option set, against none (ttlpool only)."""
    section = Section(
        "What does a lifecycle option cost on a warm hit? (ttlpool only)",
        "the time with every option at its default / the time with the row's "
        "option set; 1 costs nothing",
    )
    group = results.groups.get("policy_hit")
    for name in group.figures if group else ():
        if name in ("defaults", "floor"):
            continue
        where = ("policy_hit", "defaults"), ("policy_hit", name)
        whose = "the defaults' time"
        _add(section, _ratio_row(results, verdicts, f"8 {name}", *where, whose))
    return section


def _sync(results: Results, verdicts: list[dict[str, Any]]) -> Section:
    """S1-S3: SyncResourcePool against its floor, and a hit against cachetools."""
    section = Section(
        "How close is SyncResourcePool to the floor? (plain threads; the floor: "
        "a dict under a threading.Lock, one lookup, one increment)",
        "the floor's time (or the row's other's) / SyncResourcePool's; 1 would "
        "be as cheap",
    )
    for key in ("sync_hit", "sync_threads_keys", "sync_threads_shared", "sync_churn"):
        where = (key, "floor"), (key, SYNC_POOL)
        label = SHORT.get(key, key)
        _add(section, _ratio_row(results, verdicts, label, *where, "the floor's time"))
    for key in ("sync_hit", "sync_threads_keys", "sync_threads_shared"):
        where = (key, SYNC_CACHE), (key, SYNC_POOL)
        label = f"{SHORT.get(key, key)}: {SYNC_CACHE}"
        _add(section, _ratio_row(results, verdicts, label, *where))
    return section


def _limits(verdicts: list[dict[str, Any]]) -> Section:
    """The targets on one figure's value (no ratio): limit / measured."""
    section = Section(
        "Does it stay within its limits?",
        "the limit / ttlpool's figure; right of 1: under the limit",
    )
    for verdict in verdicts:
        value = verdict["value"]
        if verdict["den"] is not None or value is None:
            continue
        group = verdict["num"][0]
        unit = "" if verdict["unit"] == "x" else f" {verdict['unit']}"
        shown = f"{value:.3g}{unit}"
        # A figure at or below 0 (a timer that fired on time) is far under.
        measured = max(value, verdict["limit"] * 1e-4)
        section.rows.append(
            Row(
                f"{SHORT.get(group, group)}",
                verdict["limit"] / measured,
                1.0,
                verdict["status"],
                f"{shown}, {_limit_text(verdict)}",
            )
        )
    return section


_WORKER_LABELS = {
    "raw warm loop, .result()": "raw warm loop, .result()",
    "ttlpool.ResourcePool ttl=30": "loops kept in a ttlpool ResourcePool",
    "wool ResourcePool ttl=30": "loops kept in a wool ResourcePool",
    "wool ResourcePool ttl=0": "loops in a wool ResourcePool, ttl=0",
}


def _workers(results: Results, verdicts: list[dict[str, Any]], sync: bool) -> Section:
    ours = RUN_SYNC if sync else RUN
    if sync:
        section = Section(
            "Is run_sync worth it? (a trivial coroutine, called from a plain thread)",
            "the other's time / WorkerLoopPool.run_sync's; right of 1: run_sync "
            "is faster (raw warm loop: run_coroutine_threadsafe(...).result())",
        )
        others = ["raw warm loop, .result()", "anyio blocking portal"]
        others += ["asgiref async_to_sync", "asyncio.run per call"]
        others.append("uvloop.run per call")
    else:
        section = Section(
            "Is the worker loop worth it? (WorkerLoopPool.run of a trivial "
            "coroutine, awaited from a loop)",
            "the other's time / WorkerLoopPool.run's; right of 1: run is faster "
            "(pools of loops: ttl=30 unless named)",
        )
        others = ["raw warm loop", "new loop + thread per call"]
        others += ["ttlpool.ResourcePool ttl=30", "wool ResourcePool ttl=30"]
        others.append("wool ResourcePool ttl=0")
    base = "run_sync" if sync else "dispatch"
    for suffix, flavour in (("", "asyncio"), ("_uvloop", "uvloop")):
        key = f"{base}{suffix}"
        for other in others:
            label = f"{flavour}: {_WORKER_LABELS.get(other, other)}"
            where = (key, other), (key, ours)
            whose = "the raw loop's time"
            _add(section, _ratio_row(results, verdicts, label, *where, whose))
    return section


def chart_sections(results: Results, verdicts: list[dict[str, Any]]) -> list[Section]:
    """The chart's panels, in order, without the empty ones."""
    sections = [
        _against(results, verdicts, "wool"),
        _against(results, verdicts, "floor"),
        _at_scale(results, verdicts),
        _policies(results, verdicts),
        _sync(results, verdicts),
        _limits(verdicts),
        _workers(results, verdicts, sync=False),
        _workers(results, verdicts, sync=True),
    ]
    return [s for s in sections if s.rows]


def sections_json(sections: list[Section]) -> list[dict[str, Any]]:
    return [asdict(section) for section in sections]


# -- drawing ------------------------------------------------------------------

#: Inches: the header (title, explanation, legend), a panel's heading, a
#: row, the bottom margin; the figure's width and where the axes sit in it.
_HEADER, _HEADING, _ROW, _BOTTOM = 1.0, 0.95, 0.26, 0.4
_WIDTH, _LEFT, _RIGHT = 15.0, 0.29, 0.67
#: The fraction of an axis's width kept free each side of the bars.
_PAD = 0.04
#: Columns right of a panel (in fractions of the panel's width): the value
#: (right-aligned), PASS or MISS, and the target as the text report words it.
_VALUE_AT, _STATUS_AT, _TARGET_AT = 1.115, 1.135, 1.225
_CELL: dict[str, Any] = {"va": "center", "fontsize": 9}


def _x_range(values: list[float]) -> tuple[float, float]:
    """Log-axis limits that show 1 and every value, with a little room."""
    low, high = min([*values, 1.0]), max([*values, 1.0])
    decades = max(math.log10(high / low), math.log10(2.0))
    pad = 10 ** (decades * _PAD / (1 - 2 * _PAD))
    return low / pad, high * pad


def _ticks(ax: Any, low: float, high: float) -> None:
    """Ticks labelled as ratios ("0.5x", "2x", "1,000x"): powers of ten on
    wide axes, 1-2-5 on narrower ones, every digit on narrow ones."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    span = high / low
    subs: tuple[float, ...] = (1.0,)
    if span < 4:
        subs = tuple(float(d) for d in range(1, 10))
    elif span < 300:
        subs = (1.0, 2.0, 5.0)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_ratio(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def write_chart(path: Path, sections: list[Section], title: str) -> str | None:
    """Draw ``sections`` as a PNG at ``path``; the reason if nothing is drawn."""
    matplotlib, why = load("matplotlib")
    if matplotlib is None:
        return why
    if not sections:
        return "no ratios to draw"
    attr(matplotlib, "use")("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [len(s.rows) + 0.4 for s in sections]
    height = _HEADER + _BOTTOM + len(sections) * _HEADING + _ROW * sum(rows)
    canvas, axes = plt.subplots(
        len(sections),
        1,
        figsize=(_WIDTH, height),
        gridspec_kw={"height_ratios": rows},
        squeeze=False,
    )
    canvas.subplots_adjust(
        left=_LEFT,
        right=_RIGHT,
        top=1.0 - (_HEADER + _HEADING) / height,
        bottom=_BOTTOM / height,
        hspace=_HEADING / (_ROW * sum(rows) / len(rows)),
    )
    for ax, section in zip((a[0] for a in axes), sections, strict=True):
        _panel(ax, section)
        top = ax.get_position().y1
        canvas.text(
            0.01,
            top + 0.36 / height,
            section.question,
            fontsize=11.5,
            fontweight="bold",
        )
        canvas.text(
            0.01, top + 0.12 / height, f"bar: {section.bar}", fontsize=9, color="#333"
        )
    canvas.text(0.01, 1 - 0.3 / height, title, fontsize=13, fontweight="bold")
    canvas.text(
        0.01,
        1 - 0.58 / height,
        "Every bar: how many times better ttlpool is than what its row names "
        "(the other's time or bytes / ttlpool's), on a log scale. "
        "Right of 1 is better, left of 1 worse.",
        fontsize=10,
    )
    canvas.legend(
        handles=[
            Patch(color=PASS_COLOUR, label="target met"),
            Patch(color=MISS_COLOUR, label="target missed"),
            Patch(color=PLAIN_COLOUR, label="no target"),
            Line2D([], [], color="black", linewidth=2.5, label="target: reach this"),
            Line2D(
                [], [], color="#555", linewidth=0.8, label="1: as good as the other"
            ),
        ],
        loc="upper left",
        bbox_to_anchor=(0.005, 1 - 0.65 / height),
        ncol=5,
        fontsize=9.5,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.savefig(path, dpi=100)
    plt.close(canvas)
    return None


def _colour(row: Row) -> str:
    if row.status is None:
        return PLAIN_COLOUR
    return PASS_COLOUR if row.status == "PASS" else MISS_COLOUR


def _panel(ax: Any, section: Section) -> None:
    rows = section.rows
    positions = list(range(len(rows)))[::-1]
    values = [r.value for r in rows]
    # Bars grow from 1 (as good as the other): right is better, left worse.
    ax.barh(
        positions,
        [v - 1.0 for v in values],
        left=1.0,
        color=[_colour(r) for r in rows],
        height=0.7,
    )
    ax.set_xscale("log")
    low, high = _x_range([*values, *(r.threshold for r in rows if r.threshold)])
    ax.set_xlim(low, high)
    _ticks(ax, low, high)
    ax.axvline(1.0, color="#555", linewidth=0.8)
    side = ax.get_yaxis_transform()  # x in axes fraction, y in rows
    for y, row in zip(positions, rows, strict=True):
        if row.threshold:
            line = [row.threshold] * 2
            ax.plot(line, [y - 0.45, y + 0.45], color="black", lw=2.5)
        # Right of the panel, in columns: the value, the verdict, the target.
        ax.text(_VALUE_AT, y, fmt_ratio(row.value), transform=side, ha="right", **_CELL)
        if row.status is not None:
            ax.text(_STATUS_AT, y, row.status, transform=side, **_CELL)
            ax.texts[-1].set(color=_colour(row), fontweight="bold")
            ax.text(_TARGET_AT, y, row.annotation, transform=side, **_CELL)
    ax.set_yticks(positions)
    ax.set_yticklabels([r.label for r in rows], fontsize=9)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.tick_params(axis="x", labelsize=8.5)
    ax.grid(axis="x", which="major", color="#e4e4e4", linewidth=0.6)
    ax.set_axisbelow(True)
