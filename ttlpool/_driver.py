"""What every driver of a ledger does the same way, with or without a loop.

A *driver* carries out a ledger's decisions: it calls the factory,
``validate``, ``on_remove`` and the finalizer, and reports what they raise.
Two drivers share this code: :class:`~ttlpool._partition.Partition` (one
event loop's share of a ``ResourcePool``) and ``ttlpool.sync``'s driver (a
``SyncResourcePool``, for plain threads). What differs between them is
left to four hooks: how a waiter is woken (:meth:`Driver._wake`), how the
idle timer is armed (:meth:`Driver.arm`), what becomes of an awaitable
that a factory or ``validate`` returned (:meth:`Driver._start_creation`),
and of one a finalizer returned (``awaits``: awaited in a job, or a
``TypeError`` for a driver with no loop).

Who touches what: a driver's ``ledger`` and ``settings`` follow the rules of
the driver that owns them (see each subclass's module); nothing here holds
state of its own.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from ttlpool._aio import is_awaitable
from ttlpool._core import ARM, EVICTED, FINALIZE, Creation, Entry, Ledger
from ttlpool._jobs import INSIDE, FinalizationTask, RemoveHook, Settings, cycle_message
from ttlpool.stats import RemovalCause

__all__ = ["Driver", "factory_failed", "not_sync"]

K = TypeVar("K")
T = TypeVar("T")

log = logging.getLogger("ttlpool")


def factory_failed(exc: BaseException, key: object) -> BaseException:
    """``exc``, which the factory for ``key`` raised, with a note that says so."""
    if sys.version_info >= (3, 11):
        exc.add_note(f"ttlpool: factory for key {key!r} failed")
    return exc


def not_sync(result: object, name: str, key: object, hint: str) -> TypeError:
    """The error for a callable that had to be sync and returned an
    awaitable (closed here if it is a coroutine, so it never warns)."""
    if asyncio.iscoroutine(result):
        result.close()
    return TypeError(
        f"{name} returned an awaitable ({result!r}) for key {key!r}: {hint}"
    )


class Driver(Generic[K, T]):
    """The calls into user code that both drivers make (see the module doc)."""

    __slots__ = ()

    ledger: Ledger[K, T]
    settings: Settings
    now: Callable[[], float]
    #: Whether an awaitable a finalizer returns is awaited (in a job of the
    #: driver's loop); if not, it is a ``TypeError``, reported.
    awaits: bool = True

    # -- hooks -----------------------------------------------------------------

    def _wake(self, creation: Creation[K, T]) -> None:
        """Wake every waiter of a creation that ended."""
        raise NotImplementedError

    def arm(self) -> None:
        """Arm the idle timer for the ledger's next deadline, if it has one."""
        raise NotImplementedError

    def _start_creation(self, creation: Creation[K, T], awaitable: Any) -> None:
        """What the factory (or ``validate``, while ``creation.stale`` is
        set) returned is an awaitable."""
        raise NotImplementedError

    def _start_finalization(
        self, entry: Entry[K, T], awaitable: Any
    ) -> FinalizationTask:
        """Await, in a job, what the finalizer of ``entry`` returned."""
        raise NotImplementedError

    def _forsaken(self) -> bool:
        """Whether a fork left this driver behind (its resources are the
        parent's: it finalizes nothing)."""
        return False

    # -- creation --------------------------------------------------------------

    def create(self, creation: Creation[K, T]) -> None:
        """Call the factory for ``creation`` (first ``validate``, for the idle
        entry it may hand out again); an awaitable result goes to
        :meth:`_start_creation`. A ``BaseException`` from a sync factory or
        ``validate`` fails the creation's waiters and is re-raised."""
        if creation.stale is not None:
            validate = self.settings.validate
            assert validate is not None
            try:
                verdict: object = validate(creation.stale.resource)
            except BaseException as exc:
                verdict = exc
            if is_awaitable(verdict):
                self._start_creation(creation, verdict)
                return
            if self.validated(creation, verdict):
                return
        try:
            result = self.settings.factory(creation.key)
        except BaseException as exc:
            self.creation_ended(creation, error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not is_awaitable(result):
            self.creation_ended(creation, result)
            return
        self._start_creation(creation, result)

    def validated(self, creation: Creation[K, T], verdict: object) -> bool:
        """What ``validate`` said of ``creation.stale`` (an exception it
        raised, or its answer): true when that ended the creation (the
        entry is handed out again, or a ``BaseException`` failed it, and
        is re-raised); false when the entry was retired and the factory
        must make a new one."""
        ledger, key = self.ledger, creation.key
        cause = RemovalCause.INVALID
        if isinstance(verdict, Exception):
            self.settings.report(verdict, "validate", key)
        elif not isinstance(verdict, BaseException) and verdict:
            settled = ledger.revalidated(creation, self.now())
            if settled is not None:
                self._wake(creation)
                if settled[1]:  # nobody waits any more
                    self.after_release(*settled)
                return True
            cause = RemovalCause.LIFETIME
        self.finalize([ledger.invalidated(creation, cause)])
        if isinstance(verdict, BaseException) and not isinstance(verdict, Exception):
            self.creation_ended(creation, error=verdict)
            raise verdict
        return False

    def creation_ended(
        self,
        creation: Creation[K, T],
        resource: Any = None,
        error: BaseException | None = None,
    ) -> int:
        """Record the factory's outcome and wake every waiter up; return what
        the ledger decided for an entry nobody waits for any more."""
        action = 0
        if error is not None:
            self.ledger.failed(creation, factory_failed(error, creation.key))
        else:
            action = self.ledger.created(creation, resource, self.now())[1]
        self._wake(creation)
        return action

    def joining(self, creation: Creation[K, T]) -> None:
        """A waiter is about to wait for ``creation``: if the calling code
        runs inside of it, that is a cycle (``RuntimeError``; the waiter is
        withdrawn)."""
        inside = INSIDE.get()
        if creation in inside:
            self.ledger.withdraw(creation)
            raise RuntimeError(cycle_message(creation, inside))

    def gave_up(self, creation: Creation[K, T]) -> None:
        """A waiter stopped waiting (cancelled, interrupted): withdrawn, or,
        if the creation ended meanwhile, its reference released."""
        counted = self.ledger.withdraw(creation)
        if counted is not None:
            self.release_soon(counted)

    # -- release and finalization ------------------------------------------------

    def release_soon(self, entry: Entry[K, T]) -> None:
        """Release one reference of ``entry`` without waiting for what the
        release starts (a finalizer runs on in its job)."""
        action = self.ledger.release(entry, self.now())
        if action:
            self.after_release(entry, action)

    def after_release(self, entry: Entry[K, T], action: int) -> list[FinalizationTask]:
        """Do what a release decided: arm the timer, finalize the entry and
        the entries ``max_idle`` evicted. Returns the finalization jobs."""
        if action & ARM:
            self.arm()
        doomed = [entry] if action & FINALIZE else []
        if action & EVICTED:
            doomed += self.ledger.take_victims()
        return self.finalize(doomed)

    def finalize(self, entries: Iterable[Entry[K, T]]) -> list[FinalizationTask]:
        """Call ``on_remove`` and the finalizer of each evicted entry; return
        the jobs that await what the finalizers returned.

        Every entry is finalized (or its finalizer reported as failed) even
        if one finalizer or the ``on_error`` hook raises a ``BaseException``;
        that is re-raised after the last one.
        """
        if self._forsaken():
            return []
        ledger, finalizer = self.ledger, self.settings.finalizer
        on_remove = self.settings.on_remove
        tasks: list[FinalizationTask] = []
        interrupt: BaseException | None = None
        for entry in entries:
            if on_remove is not None:
                raised = self._removed(on_remove, entry)
                interrupt = interrupt or raised
            if finalizer is None:
                ledger.finalized(entry, True)
                continue
            try:
                result = finalizer(entry.resource)
                if is_awaitable(result):
                    if self.awaits:
                        tasks.append(self._start_finalization(entry, result))
                        continue
                    hint = "a SyncResourcePool's finalizer must be sync"
                    raise not_sync(result, "finalizer", entry.key, hint)
            except BaseException as exc:
                ledger.finalized(entry, False)
                raised = self._failed(exc, entry.key)
                interrupt = interrupt or raised
                continue
            ledger.finalized(entry, True)
        if interrupt is not None:
            raise interrupt
        return tasks

    def _removed(
        self, on_remove: RemoveHook, entry: Entry[K, T]
    ) -> BaseException | None:
        """Call ``on_remove`` for an evicted entry, with the cause the ledger
        recorded; what it raises is reported like a finalizer's."""
        try:
            result = on_remove(entry.key, entry.resource, self.ledger.finalizing[entry])
            if is_awaitable(result):
                hint = "on_remove must be a sync callable"
                raise not_sync(result, "on_remove", entry.key, hint)
        except BaseException as exc:
            return self._failed(exc, entry.key, "on_remove")
        return None

    def _failed(
        self, exc: BaseException, key: object, operation: str = "finalize"
    ) -> BaseException | None:
        """Report a finalizer's (or hook's) ``Exception``; return, logged,
        the ``BaseException`` to re-raise (``exc``, or one ``on_error`` raised)."""
        if isinstance(exc, Exception):
            interrupt = self.settings.report(exc, operation, key)
        else:
            interrupt = exc
        if interrupt is not None:
            log.error(
                "ttlpool: %s of key %r raised", operation, key, exc_info=interrupt
            )
        return interrupt
