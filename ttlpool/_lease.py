"""``Resource``: one lease of a pooled resource, and the pool's hot path.

A warm hit (``async with pool.get(key)`` on a cached key) runs here and
nowhere else: the running loop's partition found in one lookup, then
:meth:`~ttlpool._core.Ledger.hit` and, at the exit, the common case of
:meth:`~ttlpool._core.Ledger.release` inlined (a method call costs a tenth
of the floor). Everything else is the ledger's: a miss, a partition shared
by every loop (its ledger locks), or a release that is not the common case.

Who touches what: a lease belongs to the task that entered it; it reads
and writes its partition's ledger only on that partition's loop (see
:mod:`ttlpool._partitions`), except when its coroutine is closed by the
garbage collector, when it only posts the release to that loop.
"""

from __future__ import annotations

import asyncio
import sys
from _thread import get_ident as _get_ident
from collections.abc import Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ttlpool._core import Entry
from ttlpool._jobs import wait_finalizations
from ttlpool._leaks import Watch, unwatch, watch
from ttlpool._partition import Partition
from ttlpool._partitions import Partitions

__all__ = ["Resource"]

T = TypeVar("T")

#: From 3.12 asking asyncio for the running loop is cheap; before, it costs
#: a system call and ``Partitions.current`` keeps a partition per thread.
_RUNNING_LOOP_IS_CHEAP = sys.version_info >= (3, 12)
_get_running_loop = asyncio.get_running_loop

#: A lease's ``_entry`` while its slow path awaits the acquire.
_ENTERING: Any = object()


class Resource(Generic[T]):
    """One lease of a pooled resource: a single-use async context manager.

    Entering acquires the key's resource (creating it if needed) and returns
    it; leaving releases exactly that acquisition, whatever the resource's
    truth value. A lease belongs to the entry it acquired: if ``clear``
    retired that entry, leaving is a no-op and never touches a newer entry
    of the same key. Entering twice, or leaving before entering or twice,
    raises ``RuntimeError``. Leaving never swallows the body's exception.
    """

    # ``_entry``: None (new), _ENTERING, then the entry acquired, for good.
    # ``_part``: unset until entered (one store fewer per lease on the hot
    # path), the partition while entered, None once left.
    __slots__ = ("__weakref__", "_entry", "_key", "_map", "_part", "_watch")

    # Declared here, not in __init__ (an annotation there costs a bytecode
    # or two per lease); ``_watch`` is set only when the pool has a
    # ``leak_timeout``.
    _part: Partition[Any, T] | None
    _watch: Watch

    def __init__(self, partitions: Partitions[Any, T], key: Hashable) -> None:
        self._map = partitions
        self._key = key
        self._entry: Entry[Any, T] | None = None

    async def __aenter__(self) -> T:
        if self._entry is not None:
            raise RuntimeError(
                "Cannot re-acquire a resource that has already been acquired "
                f"(get({self._key!r}): a lease can be entered only once)"
            )
        if _RUNNING_LOOP_IS_CHEAP:
            part = self._map.parts.get(_get_running_loop())
        else:
            thread = _get_ident()
            part = self._map.by_thread.get(thread)
            # Partitions.current, inlined (by_thread keeps only partitions
            # of loops with a _thread_id)
            if part is None or part.loop._thread_id != thread:  # type: ignore[attr-defined]
                part = self._map.current()
        if part is not None and part.inline:
            # Ledger.hit, inlined: the warm hit is hot.
            ledger = part.ledger
            entry = ledger.entries.get(self._key)
            if entry is not None:
                if entry.refs:
                    entry.refs += 1
                    if ledger.doomed:  # (only a held entry is marked)
                        ledger.doomed.discard(entry)
                elif ledger.validates:  # an idle entry is validated first
                    return await self._enter_slowly(part)
                else:
                    entry.refs = 1
                    ledger.idle_count -= 1
                ledger.hits += 1
                self._part = part
                self._entry = entry
                return entry.resource
        return await self._enter_slowly(part)

    async def _enter_slowly(self, part: Partition[Any, T] | None) -> T:
        """A hit on a shared ledger (which locks), a miss, a new loop, a
        pool with lifecycle options (``validate``, ``max_lifetime``,
        ``leak_timeout``)."""
        partitions, key = self._map, self._key
        entry = None
        if part is not None and not part.inline:  # (else its hit missed already)
            ledger = part.ledger
            entry = ledger.hit(key, part.now() if ledger.guarded else None)
        if entry is None:
            self._entry = _ENTERING
            try:
                part, found = partitions.start_acquire(key, "get", part)
                if isinstance(found, Entry):
                    entry = found
                else:
                    part, entry = await partitions.wait_for(part, found, key, "get")
            except BaseException:
                self._entry = None
                raise
        assert part is not None
        self._part = part
        self._entry = entry
        if part.settings.leak_timeout is not None:
            self._watch = watch(self, part, entry)
        return entry.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            part: Partition[Any, T] = self._part  # type: ignore[assignment]
            ledger = part.ledger
        except AttributeError:  # never entered (no _part), or left (None)
            raise RuntimeError(
                "Cannot release a resource that "
                f"{'has already been released' if self._left() else 'was not acquired'}"
                f" (get({self._key!r}): a lease can be left only once, after entering)"
            ) from None
        self._part = None
        entry: Entry[Any, T] = self._entry  # type: ignore[assignment]
        if exc_type is GeneratorExit:  # its coroutine is being closed: no await
            self._map.release_from_anywhere(part, entry)
            if part.settings.leak_timeout is not None:
                unwatch(self._watch, self._key, closed=True)
            return
        if part.inline:
            refs = entry.refs - 1
            if refs > 0:  # still held
                entry.refs = refs
                return
            # Ledger.release's common case, inlined: a warm key released
            # again, last in release order, within the same grid step (see
            # IdleOrder.reuse_before).
            if (
                not refs
                and ledger.queue
                and ledger.queue[-1] is entry
                and part.now() <= ledger.reuse_before
            ):
                entry.refs = 0
                ledger.idle_count += 1
                entry.deadline = ledger.last_deadline
                return
        if part.settings.leak_timeout is not None:
            unwatch(self._watch, self._key, closed=False)
        action = ledger.release(entry, part.now())
        if action:
            tasks = part.after_release(entry, action)
            if tasks:  # a sync finalizer leaves nothing to wait for
                await wait_finalizations(tasks)

    def _left(self) -> bool:
        return isinstance(self._entry, Entry) and getattr(self, "_part", 0) is None

    def __repr__(self) -> str:
        entry = self._entry
        state = (
            "new"
            if entry is None
            else "entering"
            if entry is _ENTERING
            else "left"
            if self._left()
            else "entered"
        )
        return f"<Resource key={self._key!r} {state}>"
