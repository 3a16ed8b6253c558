"""``SyncResourcePool`` and ``SyncResource``: the same pool for plain threads.

What lives here: the arguments the pool is built with, checked where they
enter; the lease (:class:`SyncResource`) and its hot path; statistics; and
the fork hook. The ledger decides everything (:mod:`ttlpool._core`); the
driver (:mod:`ttlpool._threads`) carries its decisions out with threads:
blocking waiters, a reaper thread, the drain of ``clear``.

Who touches what: a pool's ``_driver`` is replaced only in a child after
``os.fork()`` (by the one thread that exists there); a lease keeps the
driver it entered on, so a lease entered before the fork gives its
reference back to the parent's (forsaken) ledger, never to the child's.
Every other piece of shared state is the driver's, under its rules.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from ttlpool._checks import (
    check_callable,
    check_key,
    check_max_idle,
    check_seconds,
    check_ttl,
    unhashable,
)
from ttlpool._core import Entry, Ledger
from ttlpool._entries import Entries
from ttlpool._jobs import ErrorHook, Settings
from ttlpool._leaks import Watch, unwatch, warn_held, watch_lease
from ttlpool._locked_ledger import LockedLedger
from ttlpool._snapshot import new_totals, snapshot
from ttlpool._threads import ThreadDriver
from ttlpool.clock import Clock, MonotonicClock
from ttlpool.stats import PoolStats, RemovalCause

__all__ = ["SyncResource", "SyncResourcePool"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: The ledger's unlocked release, which a lease calls under the lock.
_release: Callable[[Entries[Any, Any], Entry[Any, Any], float], int]
_release = Entries.release  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

#: A lease's ``_entry`` once it left.
_LEFT: Any = object()


class SyncResource(Generic[T]):
    """One lease of a pooled resource: a single-use context manager.

    Entering acquires the key's resource (creating it if needed, in this
    thread, or waiting for the thread that creates it) and returns it;
    leaving releases exactly that acquisition. If ``clear`` retired the
    entry meanwhile, leaving is a no-op. Entering twice, or leaving before
    entering or twice, raises ``RuntimeError``; leaving never swallows the
    body's exception.
    """

    __slots__ = ("__weakref__", "_driver", "_entry", "_key", "_watch")

    _watch: Watch

    def __init__(self, driver: ThreadDriver[Any, T], key: Hashable) -> None:
        self._driver = driver
        self._key = key
        self._entry: Entry[Any, T] | None = None

    def __enter__(self) -> T:
        if self._entry is not None:
            raise RuntimeError(
                "Cannot re-acquire a resource that has already been acquired "
                f"(get({self._key!r}): a lease can be entered only once)"
            )
        driver = self._driver
        if driver.inline:
            # (acquire and release, not ``with``: half the cost on 3.11-3.13)
            ledger: Ledger[Any, T] = driver.ledger
            lock = driver.lock
            lock.acquire()
            try:
                # Ledger.hit, inlined as in the async lease: the warm hit is hot.
                entry = ledger.entries.get(self._key)
                if entry is not None:
                    if entry.refs:
                        entry.refs += 1
                        if ledger.doomed:  # (only a held entry is marked)
                            ledger.doomed.discard(entry)
                        ledger.hits += 1
                    elif not ledger.validates:  # (else validated first)
                        entry.refs = 1
                        ledger.idle_count -= 1
                        ledger.hits += 1
                    else:
                        entry = None
            finally:
                lock.release()
            if entry is not None:
                self._entry = entry
                return entry.resource
        entry = self._entry = driver.acquire(self._key, "get")
        if driver.settings.leak_timeout is not None:
            self._watch = watch_lease(
                self,
                driver.settings,
                driver.call_at,
                functools.partial(driver.give_back, entry),
                self._key,
                depth=2,
            )
        return entry.resource

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._entry
        if entry is None or entry is _LEFT:
            state = "was not acquired" if entry is None else "has already been released"
            raise RuntimeError(
                f"Cannot release a resource that {state} (get({self._key!r}): "
                "a lease can be left only once, after entering)"
            )
        self._entry = _LEFT
        driver = self._driver
        if driver.inline:
            now = driver.now()
            ledger, lock = driver.ledger, driver.lock
            lock.acquire()
            try:
                # Entries.release's common cases, inlined as in the async
                # lease: still held, or a warm key released again (see
                # IdleOrder.reuse_before).
                refs = entry.refs - 1
                if refs > 0:
                    entry.refs = refs
                    return
                if (
                    not refs
                    and now <= ledger.reuse_before
                    and ledger.queue
                    and ledger.queue[-1] is entry
                ):
                    entry.refs = 0
                    ledger.idle_count += 1
                    entry.deadline = ledger.last_deadline
                    return
                action = _release(ledger, entry, now)
            finally:
                lock.release()
            if action:
                driver.after_release(entry, action)
            return
        if driver.settings.leak_timeout is not None:
            unwatch(self._watch, self._key, closed=False)
        driver.release_soon(entry)

    def __repr__(self) -> str:
        entry = self._entry
        state = "new" if entry is None else "left" if entry is _LEFT else "entered"
        return f"<SyncResource key={self._key!r} {state}>"


class SyncResourcePool(Generic[K, T]):
    """Keyed, reference-counted resources for plain threads, kept warm for
    an idle time-to-live: the contract of :class:`~ttlpool.ResourcePool`,
    with no event loop.

    ``factory(key)`` makes a key's resource and ``finalizer(resource)``
    retires it; both are sync (an awaitable result is a ``TypeError``
    naming the parameter). Threads that acquire a missing key at once
    share one factory call, which runs in the first one's thread with no
    lock held; the others block until it ends and get its resource or its
    exception. A factory may use the pool for other keys.

    An entry nobody holds stays warm for ``ttl`` seconds (``0``: finalized
    at its last release; ``None`` or ``math.inf``: until ``expire``,
    ``max_idle``, ``clear`` or ``close``), then a daemon thread of the pool,
    ``ttlpool-reaper-<name>``, finalizes it. That thread exists only while
    something is idle (or a lease is watched, with ``leak_timeout``): a
    pool with nothing idle has no thread (it ends at its next wake-up that
    finds nothing due: ``expire``, ``clear`` and ``close`` wake it; a hit
    touches no timer). It finalizes one entry after another: a slow
    finalizer delays only the entries behind it.

    ``max_idle``, ``on_error``, ``clock``, ``validate``, ``max_lifetime``,
    ``on_remove`` and ``leak_timeout`` are :class:`~ttlpool.ResourcePool`'s,
    sync. ``name`` names the pool in its reaper thread's name (default: the
    factory's name). With a :class:`~ttlpool.testing.ManualClock` there is
    no reaper thread: ``clock.advance(seconds)`` runs the reaps that are
    due, in the calling thread. After ``os.fork()`` the child's pool starts
    empty (the parent's resources are never finalized there).
    """

    __slots__ = ("__weakref__", "_driver", "_name", "_new_ledger", "_ttl")

    def __init__(
        self,
        factory: Callable[[K], T],
        *,
        finalizer: Callable[[T], object] | None = None,
        ttl: float | None = 0.0,
        max_idle: int | None = None,
        on_error: ErrorHook | None = None,
        clock: Clock | None = None,
        validate: Callable[[T], bool] | None = None,
        max_lifetime: float | None = None,
        on_remove: Callable[[K, T, RemovalCause], object] | None = None,
        leak_timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        where = "SyncResourcePool()"
        self._ttl = check_ttl(ttl, where)
        check_callable(factory, "factory", where, optional=False)
        for param, value in (
            ("factory", factory),
            ("finalizer", finalizer),
            ("on_error", on_error),
            ("validate", validate),
            ("on_remove", on_remove),
        ):
            check_callable(value, param, where, optional=True)
            if inspect.iscoroutinefunction(value):
                raise TypeError(
                    f"{where}: {param} {value!r} is a coroutine function: a "
                    "SyncResourcePool never awaits (use ResourcePool)"
                )
        if not isinstance(cast(object, name), (str, type(None))):
            raise TypeError(f"{where}: name must be a str or None, not {name!r}")
        self._name: str = name or str(
            getattr(factory, "__qualname__", type(factory).__name__)
        )
        lifetime = check_seconds(max_lifetime, "max_lifetime", where, positive=True)
        limit = check_max_idle(max_idle, where)
        policies = {"validates": validate is not None, "max_lifetime": lifetime}
        self._new_ledger: Callable[[], LockedLedger[K, T]] = lambda: LockedLedger(
            self._ttl, limit, threading.Lock(), **policies
        )
        settings = Settings(
            factory,
            finalizer,
            on_error,
            clock if clock is not None else MonotonicClock(),
            None,
            validate=validate,
            on_remove=on_remove,
            leak_timeout=check_seconds(
                leak_timeout, "leak_timeout", where, positive=True
            ),
        )
        self._driver: ThreadDriver[K, T] = ThreadDriver(
            settings, self._new_ledger(), self._name
        )
        _EVERY.add(self)
        if leak_timeout is not None:
            weakref.finalize(self, _warn_unclosed, self._driver).atexit = False

    # -- public API ----------------------------------------------------------

    @property
    def ttl(self) -> float:
        """The idle time-to-live in seconds (``math.inf`` for never)."""
        return self._ttl

    @property
    def name(self) -> str:
        """The pool's name, as its reaper thread carries it."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._driver.closed

    def get(self, key: K) -> SyncResource[T]:
        """A single-use lease of ``key``'s resource, for ``with``.

        Raises ``TypeError`` at once if ``key`` is unhashable.
        """
        try:
            hash(key)
        except TypeError:
            raise unhashable("get", key) from None
        return SyncResource(self._driver, key)

    def acquire(self, key: K) -> T:
        """Acquire ``key``'s resource, creating it on a miss; pair it with
        one :meth:`release` of the same key, or use :meth:`get`."""
        check_key(key, "acquire")
        driver = self._driver
        entry = driver.acquire(key, "acquire")
        driver.ledger.hold(entry)
        return entry.resource

    def release(self, key: K) -> None:
        """Release one acquisition of ``key``.

        A key with no entry is a no-op; a key whose entry holds no reference
        raises ``ValueError``. At the last release the entry is finalized
        within this call (``ttl == 0``, or marked by :meth:`expire`) or
        becomes idle until its deadline.
        """
        check_key(key, "release")
        driver = self._driver
        entry, action = driver.ledger.release_key(key, driver.now())
        if entry is not None and action:
            driver.after_release(entry, action)

    def expire(self, key: K) -> None:
        """Retire ``key``, draining leases first: an idle entry is finalized
        within this call; a referenced one, or one being created, is marked
        and finalized at its last release, unless acquired again first.
        Unknown keys are a no-op."""
        check_key(key, "expire")
        driver = self._driver
        entry = driver.ledger.expire(key)
        if entry is not None:
            driver.poke()
            driver.finalize([entry])

    def clear(self, *, timeout: float | None = None) -> None:
        """Finalize every entry now, referenced or not, in this thread.

        Repeats, generation after generation, until nothing it found or
        that appeared while it ran is left: it waits for the creations and
        finalizations other threads run, then finalizes what they left.
        An ``Exception`` from a finalizer is reported and the rest go on; a
        ``BaseException`` is re-raised once every entry is evicted. Holders
        keep their objects; their later release is a no-op. Called from
        inside a factory or finalizer of this pool, it does not wait for
        that creation or finalization itself. Raises ``TimeoutError`` naming
        what is left if ``timeout`` seconds pass first.
        """
        self._driver.clear(check_seconds(timeout, "timeout", "clear"), "clear")

    def close(self) -> None:
        """Close the pool for good, then :meth:`clear` it and wait for the
        reaper thread to end. Every later acquire raises
        :class:`~ttlpool.PoolClosedError`; releases of outstanding leases
        become no-ops. Idempotent."""
        driver = self._driver
        with driver.lock:
            driver.closed = True
        driver.clear(None, "close")
        driver.join_reaper()

    def __enter__(self) -> SyncResourcePool[K, T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def stats(self) -> PoolStats:
        """A snapshot of gauges and running totals; safe from any thread."""
        driver = self._driver
        with driver.lock:
            return snapshot([driver.ledger], *new_totals(), driver.settings.errors)

    @property
    def pending_cleanup(self) -> dict[K, float | None]:
        """Each key with pending cleanup: its idle deadline (on the pool's
        clock, ``time.monotonic`` by default), or ``None`` while finalizing."""
        return self._driver.ledger.pending_cleanup()

    def __len__(self) -> int:
        return len(self._driver.ledger.entries)

    def __contains__(self, key: object) -> bool:
        check_key(key, "contains (`key in pool`)")
        return key in self._driver.ledger.entries

    def __bool__(self) -> bool:
        return True  # a pool is a pool, empty or not

    def __repr__(self) -> str:
        s = self.stats
        state = "closed" if self.closed else "open"
        return (
            f"<SyncResourcePool {self._name!r} {state} entries={s.total_entries} "
            f"referenced={s.referenced_entries} idle={s.idle_entries} "
            f"creating={s.creating} ttl={self._ttl}>"
        )

    def _forget(self) -> None:
        """In a child after ``os.fork()``: start empty, on a new ledger."""
        old = self._driver
        old.forsake()
        self._driver = ThreadDriver(
            old.settings.renewed(None), self._new_ledger(), self._name
        )
        self._driver.closed = old.closed


def _warn_unclosed(driver: ThreadDriver[Any, Any]) -> None:
    if not driver.closed and not driver.forsaken:
        warn_held(
            "SyncResourcePool", [driver.ledger], "`pool.close()` (or `with pool`)"
        )


#: Every pool, for the fork hook.
_EVERY: weakref.WeakSet[SyncResourcePool[Any, Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_EVERY):
        pool._forget()  # pyright: ignore[reportPrivateUsage]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
