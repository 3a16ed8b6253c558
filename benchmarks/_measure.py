"""Figures, groups, and the interleaving runner every measurement goes through.

A *group* is one measurement (say, "warm hit") and holds one *figure* per
variant (ttlpool, wool, the floor, ...). A figure is the list of samples it
got, one per repetition, or the reason it was skipped. Ratios are taken per
repetition (variant sample / reference sample of the same repetition) and
their median is reported, so a slow moment of a noisy machine hits both
sides of a ratio alike.

The runner interleaves: repetition ``r`` runs every variant once, starting
with a different variant each time, so no variant always runs first (warm
caches) or last (after the others' garbage).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = [
    "Figure",
    "Group",
    "Results",
    "interleave",
    "interleave_sync",
    "quiet_gc",
    "ratio_samples",
]

#: One sample of a case: a value per group key (most cases feed one group).
Sample = Mapping[str, float]


@dataclass
class Figure:
    """One variant's samples in one group (or why it has none)."""

    name: str
    samples: list[float] = field(default_factory=list)
    skipped: str | None = None
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def low(self) -> float | None:
        return min(self.samples) if self.samples else None

    @property
    def high(self) -> float | None:
        return max(self.samples) if self.samples else None


@dataclass
class Group:
    """One measurement: a figure per variant, ratios to ``reference``."""

    key: str
    title: str
    unit: str
    reference: str
    figures: dict[str, Figure] = field(default_factory=dict)
    note: str = ""

    def figure(self, name: str) -> Figure:
        if name not in self.figures:
            self.figures[name] = Figure(name)
        return self.figures[name]

    def order(self, names: Sequence[str]) -> None:
        """Put these figures first, in this order (the table's order)."""
        first = {n: self.figures[n] for n in names if n in self.figures}
        self.figures = {**first, **self.figures}

    def skip(self, name: str, reason: str) -> None:
        self.figure(name).skipped = reason

    def ratio(self, name: str) -> float | None:
        """Median over repetitions of ``name`` / the reference (same repetition)."""
        ref = self.figures.get(self.reference)
        fig = self.figures.get(name)
        if ref is None or fig is None:
            return None
        return ratio_of(fig, ref)


def ratio_samples(num: Figure, den: Figure) -> list[float]:
    """Per-repetition ratios when both figures have one sample per repetition."""
    if len(num.samples) != len(den.samples):
        return []
    return [a / b for a, b in zip(num.samples, den.samples, strict=True) if b > 0]


def ratio_of(num: Figure, den: Figure) -> float | None:
    """Median of same-repetition ratios, else the ratio of the medians."""
    if not num.samples or not den.samples:
        return None
    paired = ratio_samples(num, den)
    if paired:
        return statistics.median(paired)
    top, bottom = num.median, den.median
    if top is None or not bottom:
        return None
    return top / bottom


@dataclass
class Results:
    """Every group of one run, in the order they were measured."""

    groups: dict[str, Group] = field(default_factory=dict)

    def group(self, key: str, title: str, unit: str, reference: str) -> Group:
        if key not in self.groups:
            self.groups[key] = Group(key, title, unit, reference)
        return self.groups[key]

    def record(self, variant: str, sample: Sample) -> None:
        for key, value in sample.items():
            self.groups[key].figure(variant).samples.append(value)


@contextmanager
def quiet_gc(*, collect: bool = True) -> Iterator[None]:
    """No cyclic garbage collection during a sample.

    ``collect`` first runs a full collection, so garbage of earlier samples
    is not counted; leave it off where timing starts right away (a full
    collection leaves the CPU caches cold and takes milliseconds).
    """
    was_enabled = gc.isenabled()
    if collect:
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _rotated(names: Sequence[str], rep: int) -> list[str]:
    shift = rep % len(names) if names else 0
    return [*names[shift:], *names[:shift]]


async def interleave(
    results: Results,
    reps: int,
    cases: Mapping[str, Callable[[], Awaitable[Sample]]],
    *,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Run each case ``warmup`` times untimed, then ``reps`` rounds of all."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            await cases[name]()
    for rep in range(reps):
        for name in _rotated(names, rep):
            results.record(name, await cases[name]())
        if progress is not None:
            progress(f"{rep + 1}/{reps}")


def interleave_sync(
    results: Results,
    reps: int,
    cases: Mapping[str, Callable[[], Sample]],
    *,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> None:
    """:func:`interleave` for cases that run outside any event loop."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    for rep in range(reps):
        for name in _rotated(names, rep):
            results.record(name, cases[name]())
        if progress is not None:
            progress(f"{rep + 1}/{reps}")


def now_ns() -> int:
    """The one timer of the suite."""
    return time.perf_counter_ns()
