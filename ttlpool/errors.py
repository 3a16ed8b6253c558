"""Exceptions raised by ttlpool."""

from __future__ import annotations

__all__ = ["PoolClosedError"]


class PoolClosedError(RuntimeError):
    """Raised by an acquire on a pool that :meth:`ResourcePool.aclose` closed.

    It is a :class:`RuntimeError`, so code written against a pool that raised
    ``RuntimeError`` for the same misuse keeps working.
    """
