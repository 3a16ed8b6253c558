"""The frozen statistics value returned by ``ResourcePool.stats``, and why
entries leave a pool (:class:`RemovalCause`)."""

from __future__ import annotations

import enum

import attrs

__all__ = ["PoolStats", "RemovalCause", "Removals"]


class RemovalCause(enum.IntEnum):
    """Why an entry left its pool: what ``on_remove(key, resource, cause)``
    is told, and what :attr:`PoolStats.removed` counts by."""

    #: Its last lease was released with ``ttl == 0``.
    RELEASED = 0
    #: It stayed idle for ``ttl`` seconds.
    IDLE = 1
    #: ``max_idle`` made room for an entry released after it.
    EVICTED = 2
    #: ``expire(key)`` retired it.
    EXPIRED = 3
    #: It outlived ``max_lifetime``.
    LIFETIME = 4
    #: ``validate`` said no (or raised) before it was handed out again.
    INVALID = 5
    #: ``clear()`` or ``aclose()`` finalized it.
    CLEARED = 6
    #: The event loop it belonged to closed.
    ORPHANED = 7


@attrs.frozen(slots=True)
class Removals:
    """Finalized entries by :class:`RemovalCause`: ``removed.idle``, or
    ``removed[RemovalCause.IDLE]``. They add up to ``PoolStats.finalized``
    (a finalizer cut off with its loop counts in ``abandoned`` instead)."""

    released: int = 0
    idle: int = 0
    evicted: int = 0
    expired: int = 0
    lifetime: int = 0
    invalid: int = 0
    cleared: int = 0
    orphaned: int = 0

    def __getitem__(self, cause: RemovalCause) -> int:
        return int(getattr(self, cause.name.lower()))

    @property
    def total(self) -> int:
        """Every removal counted here."""
        return sum(attrs.astuple(self))


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

    ``removed`` counts the finalized entries by why they left
    (:class:`Removals`).

    Every resource created is, at any moment, an entry, an entry past its
    ``max_lifetime`` still held (in ``pending_cleanup``), a finalization in
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
    removed: Removals = Removals()
