"""A :class:`~ttlpool.stats.PoolStats` from ledgers: what both pools report.

``ResourcePool`` sums the ledgers of its event loops (and the totals of
those it retired), ``SyncResourcePool`` reports its one ledger: the same
sum either way. Nothing here holds state; the caller reads the ledgers
under the lock that guards them, or accepts a snapshot that is a moment
stale (plain integers, read one at a time).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

from ttlpool._core import Ledger
from ttlpool.stats import PoolStats, RemovalCause, Removals

__all__ = ["TOTALS", "add_totals", "new_totals", "snapshot"]

#: PoolStats totals and the Ledger attributes that count them.
TOTALS = {
    "hits": "hits",
    "misses": "misses",
    "created": "created_total",
    "finalized": "finalized_total",
    "expired": "expired_total",
    "evicted": "evicted_total",
    "factory_errors": "factory_errors",
    "finalizer_errors": "finalizer_errors",
    "abandoned": "abandoned_total",
}


def new_totals() -> tuple[dict[str, int], list[int]]:
    """Zero totals (by PoolStats name) and removals (by RemovalCause)."""
    return dict.fromkeys(TOTALS, 0), [0] * len(RemovalCause)


def add_totals(
    totals: dict[str, int], removed: list[int], ledger: Ledger[Any, Any]
) -> None:
    """Add a ledger's running totals to ``totals`` (by PoolStats name) and
    its removals to ``removed`` (by RemovalCause)."""
    for name, attr in TOTALS.items():
        totals[name] += getattr(ledger, attr)
    removed[:] = map(operator.add, removed, ledger.removed)


def snapshot(
    ledgers: Iterable[Ledger[Any, Any]],
    totals: dict[str, int],
    removed: list[int],
    errors: int,
) -> PoolStats:
    """The stats of ``ledgers``, on top of ``totals`` and ``removed``
    (which this adds to: pass copies)."""
    total_entries = referenced = idle = creating = pending = 0
    for ledger in ledgers:
        add_totals(totals, removed, ledger)
        total_entries += len(ledger.entries)
        referenced += ledger.referenced
        idle += ledger.idle_count
        creating += len(ledger.creating)
        pending += ledger.pending_cleanup_count()
    return PoolStats(
        total_entries=total_entries,
        referenced_entries=referenced,
        idle_entries=idle,
        pending_cleanup=pending,
        creating=creating,
        **totals,
        errors=errors,
        removed=Removals(*removed),
    )
