"""``LockedLedger``: one ledger for entries that every event loop shares.

With ``ResourcePool(per_loop=False)`` every loop's partition holds the same
ledger, so any loop may call any of its operations: each one runs under the
ledger's own thread lock, held only for that bookkeeping step (never while
user code runs, never across an ``await``). The decisions are
:class:`~ttlpool._core.Ledger`'s, unchanged.

Who touches what: any thread, always under ``lock``; after ``os.fork()`` the
child replaces ``lock`` (the parent's may have been held at the fork).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable
from typing import Any, TypeVar

from ttlpool._core import Creation, Entry, Ledger
from ttlpool.stats import RemovalCause

__all__ = ["LockedLedger"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class LockedLedger(Ledger[K, T]):
    """A ledger whose every operation holds one thread lock (shared partitions)."""

    __slots__ = ("lock",)

    def __init__(
        self,
        ttl: float | None,
        max_idle: int | None,
        lock: threading.Lock,
        **policies: Any,
    ) -> None:
        super().__init__(ttl, max_idle, **policies)
        self.lock = lock
        self.reusable = False  # (a lease's shortcut takes no lock)

    def hit(self, key: K, now: float | None = None) -> Entry[K, T] | None:
        with self.lock:
            return super().hit(key, now)

    def release(self, entry: Entry[K, T], now: float) -> int:
        with self.lock:
            return super().release(entry, now)

    def hold(self, entry: Entry[K, T]) -> None:
        with self.lock:
            super().hold(entry)

    def release_key(self, key: K, now: float) -> tuple[Entry[K, T] | None, int]:
        with self.lock:
            return super().release_key(key, now)

    def take_victims(self) -> list[Entry[K, T]]:
        with self.lock:
            return super().take_victims()

    def lookup(
        self, key: K, missed: bool = False, now: float = -math.inf
    ) -> tuple[Entry[K, T] | Creation[K, T], bool]:
        with self.lock:
            return super().lookup(key, missed, now)

    def listen(self, creation: Creation[K, T], listener: object) -> bool:
        with self.lock:
            return super().listen(creation, listener)

    def withdraw(self, creation: Creation[K, T]) -> Entry[K, T] | None:
        with self.lock:
            return super().withdraw(creation)

    def created(
        self, creation: Creation[K, T], resource: T, now: float
    ) -> tuple[Entry[K, T], int]:
        with self.lock:
            return super().created(creation, resource, now)

    def revalidated(
        self, creation: Creation[K, T], now: float
    ) -> tuple[Entry[K, T], int] | None:
        with self.lock:
            return super().revalidated(creation, now)

    def invalidated(self, creation: Creation[K, T], cause: RemovalCause) -> Entry[K, T]:
        with self.lock:
            return super().invalidated(creation, cause)

    def failed(self, creation: Creation[K, T], error: BaseException) -> None:
        with self.lock:
            super().failed(creation, error)

    def finalized(self, entry: Entry[K, T], ok: bool) -> None:
        with self.lock:
            super().finalized(entry, ok)

    def expire(self, key: K) -> Entry[K, T] | None:
        with self.lock:
            return super().expire(key)

    def evict_all(
        self, cause: RemovalCause = RemovalCause.CLEARED
    ) -> list[Entry[K, T]]:
        with self.lock:
            return super().evict_all(cause)

    def abandoned(self, entry: Entry[K, T]) -> None:
        with self.lock:
            super().abandoned(entry)

    def fail_creations(
        self, owner: object, error: BaseException
    ) -> list[Creation[K, T]]:
        with self.lock:
            return super().fail_creations(owner, error)

    def timer_fired(
        self, now: float, limit: int
    ) -> tuple[list[Entry[K, T]], float | None]:
        with self.lock:
            return super().timer_fired(now, limit)

    def timer_lost(self, now: float) -> float | None:
        with self.lock:
            return super().timer_lost(now)

    def timer_gone(self) -> None:
        with self.lock:
            super().timer_gone()

    def pending_cleanup(self) -> dict[K, float | None]:
        with self.lock:
            return super().pending_cleanup()
