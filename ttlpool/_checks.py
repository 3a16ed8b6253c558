"""Argument checks shared by every entry point.

Each check takes the value, the parameter's name and the operation it
entered by, and raises ``TypeError`` or ``ValueError`` with a message that
names both, so a caller never has to guess which argument of which call was
wrong. Nothing here knows about pools, loops or threads.
"""

from __future__ import annotations

import math

__all__ = [
    "check_callable",
    "check_key",
    "check_max_idle",
    "check_seconds",
    "check_ttl",
    "unhashable",
]


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_ttl(ttl: object, operation: str) -> float:
    """Seconds an idle entry stays warm: ``>= 0``; ``None`` or inf for never."""
    if ttl is None:
        return math.inf
    if not _is_number(ttl):
        raise TypeError(
            f"{operation}: ttl must be a number of seconds or None, not {ttl!r}"
        )
    assert isinstance(ttl, (int, float))
    if math.isnan(ttl) or ttl < 0:
        raise ValueError(
            f"{operation}: ttl must be >= 0 seconds (or None/math.inf), not {ttl!r}"
        )
    return float(ttl)


def check_seconds(
    value: object, name: str, operation: str, *, positive: bool = False
) -> float | None:
    """A non-negative (``positive``: ``> 0``) duration; ``None`` or inf
    means no bound (``None``)."""
    if value is None:
        return None
    if not _is_number(value):
        raise TypeError(
            f"{operation}: {name} must be a number of seconds or None, not {value!r}"
        )
    assert isinstance(value, (int, float))
    if math.isnan(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(
            f"{operation}: {name} must be {bound} seconds (or None), not {value!r}"
        )
    return None if math.isinf(value) else float(value)


def check_max_idle(max_idle: object, operation: str) -> int | None:
    """How many unreferenced entries may stay warm: an int ``>= 0`` or None."""
    if max_idle is None:
        return None
    if isinstance(max_idle, bool) or not isinstance(max_idle, int):
        raise TypeError(
            f"{operation}: max_idle must be an int or None, not {max_idle!r}"
        )
    if max_idle < 0:
        raise ValueError(f"{operation}: max_idle must be >= 0, not {max_idle!r}")
    return max_idle


def check_callable(value: object, name: str, operation: str, *, optional: bool) -> None:
    """``value`` must be callable (or ``None`` when ``optional``)."""
    if value is None and optional:
        return
    if not callable(value):
        allowed = "callable or None" if optional else "callable"
        raise TypeError(f"{operation}: {name} must be {allowed}, not {value!r}")


def unhashable(operation: str, key: object) -> TypeError:
    """The error for a key that cannot be a pool key."""
    return TypeError(f"{operation}: key {key!r} is unhashable (keys must be hashable)")


def check_key(key: object, operation: str) -> None:
    """Raise :func:`unhashable` unless ``key`` is hashable."""
    try:
        hash(key)
    except TypeError:
        raise unhashable(operation, key) from None
