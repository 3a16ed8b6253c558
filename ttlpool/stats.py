"""The frozen statistics value returned by ``ResourcePool.stats``."""

from __future__ import annotations

import attrs

__all__ = ["PoolStats"]


@attrs.frozen(slots=True)
class PoolStats:
    """A snapshot of a pool's state and running totals.

    Gauges (what the pool holds now):

    - ``total_entries``: entries cached, referenced or idle.
    - ``referenced_entries``: entries with at least one lease.
    - ``idle_entries``: entries with no lease, kept warm.
    - ``pending_cleanup``: idle entries waiting for a finite deadline, plus
      finalizations in flight.
    - ``creating``: keys whose factory is running.

    Running totals since the pool was built: ``hits``, ``misses``, ``created``,
    ``finalized``, ``expired`` (by the idle TTL), ``evicted`` (by
    ``max_idle``), ``factory_errors``, ``finalizer_errors``, ``errors``
    (every error the pool caught and reported, finalizers included) and
    ``abandoned`` (finalizers cut off because their event loop closed while
    they ran: reported, never run twice, not counted in ``finalized``).

    Every resource created is, at any moment, an entry, a finalization in
    flight (in ``pending_cleanup``), finalized or abandoned.
    """

    total_entries: int = 0
    referenced_entries: int = 0
    idle_entries: int = 0
    pending_cleanup: int = 0
    creating: int = 0
    hits: int = 0
    misses: int = 0
    created: int = 0
    finalized: int = 0
    expired: int = 0
    evicted: int = 0
    factory_errors: int = 0
    finalizer_errors: int = 0
    errors: int = 0
    abandoned: int = 0
