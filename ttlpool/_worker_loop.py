"""One warm event loop on its daemon thread.

What lives here: :class:`_WorkerLoop`, an event loop and the daemon thread
that runs it until it is retired; it *admits* requests (what must be ended
if the loop goes away, each a :class:`_Request`) and callbacks until it
starts retiring, then drains, stops, and its thread closes the loop and
ends every request still tracked.

What it must not know: the pool and the adapter (it imports none of
:mod:`ttlpool.pool`, :mod:`ttlpool.worker`, :mod:`ttlpool._control`), what
a request is (:mod:`ttlpool._requests`: it only tells one that its loop is
gone), keys, the TTL, and whether a loop is a worker or the adapter's
control loop: a ``_WorkerLoop`` is the same either way.

State that two threads reach
----------------------------

``_WorkerLoop``
    ``_retiring``, ``_requests``, ``_exit_callbacks``, ``_exited``: any
    thread, under ``_lock``. ``loop``: run by ``thread`` alone; other
    threads post to it through ``admit``, ``post``, ``decide_and_post``
    and ``retire``, under ``_lock`` and only while not retiring, so never
    to a closed loop (the one other poster, ``_Call.cancel``, tolerates a
    closed loop).
    ``_drainer``: its thread only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
from collections.abc import Callable
from typing import Protocol

from ttlpool._aio import resolve_threadsafe
from ttlpool.drain import drain_tasks

__all__ = ["_Request", "_WorkerLoop"]

log = logging.getLogger("ttlpool")

#: How often to look whether a thread that signalled its exit has ended.
_DEATH_POLL = 0.001


class _Request(Protocol):
    """What a loop tracks: a call or a lease to end if the loop goes away."""

    def loop_gone(self, reason: str) -> None:
        """The loop this request was admitted to is gone, or given up on."""
        ...


class _WorkerLoop:
    """An event loop and the daemon thread that runs it until it is retired.

    The thread runs the loop until :meth:`retire` has drained it; a stray
    ``loop.stop()`` by user code only restarts it. Then the thread closes
    the loop itself (async generators, default executor, ``close``), ends
    every request still tracked (:meth:`fail_all_requests`) and calls the
    exit callbacks, so that nothing waits for it forever.
    """

    __slots__ = (
        "_drain_timeout",
        "_drainer",
        "_executor_timeout",
        "_exit_callbacks",
        "_exited",
        "_lock",
        "_requests",
        "_retiring",
        "loop",
        "thread",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        drain_timeout: float | None,
        executor_timeout: float | None,
    ) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._drain_timeout = drain_timeout
        self._executor_timeout = executor_timeout
        self._lock = threading.Lock()
        self._retiring = False
        self._exited = False
        self._drainer: asyncio.Task[None] | None = None
        self._exit_callbacks: list[Callable[[], object]] = []
        self._requests: set[_Request] = set()

    def __repr__(self) -> str:
        state = "exited" if self._exited else "retiring" if self._retiring else "warm"
        return f"<_WorkerLoop {self.thread.name} {state}>"

    # -- any thread ----------------------------------------------------------

    def start(self) -> None:
        """Start the thread; if it cannot start, close the loop and raise."""
        try:
            self.thread.start()
        except BaseException:
            self.loop.close()
            raise

    @property
    def retiring(self) -> bool:
        """It admits nothing more (read without the lock: a hint)."""
        return self._retiring

    def admit(
        self, request: _Request | None, start: Callable[[], object] | None = None
    ) -> bool:
        """Track ``request`` and run ``start`` on the loop, unless retiring.

        Admission and retirement take the same lock, so everything
        admitted is posted to the loop before the drain is, and starts
        before the drain looks at the loop's tasks.
        """
        with self._lock:
            if self._retiring:
                return False
            if request is not None:
                self._requests.add(request)
            if start is not None:
                self.loop.call_soon_threadsafe(start)
        return True

    def post(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` on the loop, unless retiring: :meth:`admit` alone."""
        return self.admit(None, callback)

    def decide_and_post(
        self, decide: Callable[[], Callable[[], object] | None]
    ) -> bool:
        """Unless retiring, call ``decide()`` and run the callback it returns
        (if any) on the loop; return whether ``decide`` was called.

        Both happen under the admission lock, so whatever ``decide`` did is
        followed up on the loop before a retirement can start its drain:
        the two cannot fall apart. ``decide`` must be short and take no
        lock but leaf locks (it runs under this loop's).
        """
        with self._lock:
            if self._retiring:
                return False
            callback = decide()
            if callback is not None:
                self.loop.call_soon_threadsafe(callback)
        return True

    def forget(self, request: _Request) -> bool:
        """Stop tracking ``request``; return whether none is tracked now."""
        with self._lock:
            self._requests.discard(request)
            return not self._requests

    def retire(self) -> None:
        """Admit nothing more; drain the loop, then stop it (idempotent)."""
        with self._lock:
            self._retire_locked()

    def retire_if_idle(self) -> bool:
        """:meth:`retire`, only if no request is tracked; return whether it
        started retiring now."""
        with self._lock:
            if self._retiring or self._requests:
                return False
            self._retire_locked()
            return True

    def _retire_locked(self) -> None:
        if not self._retiring:
            self._retiring = True
            self.loop.call_soon_threadsafe(self._start_drain)

    def add_exit_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the thread has closed its loop (or now)."""
        with self._lock:
            if not self._exited:
                self._exit_callbacks.append(callback)
                return
        callback()

    def fail_all_requests(self, reason: str) -> None:
        """End every request still tracked, telling each ``reason``."""
        with self._lock:
            requests, self._requests = self._requests, set()
        for request in requests:
            request.loop_gone(reason)

    def disown_after_fork(self) -> None:
        """In a forked child, where this loop's thread does not exist.

        The loop admits nothing and counts as exited, so that nothing in
        the child posts to it or waits for it. The lock is a fresh one: the
        parent's may have been held by another thread at the fork.
        """
        self._lock = threading.Lock()
        self._retiring = True
        self._exited = True
        self._exit_callbacks = []

    async def wait_ended(self, timeout: float | None, grace: float) -> bool:
        """Wait, without blocking the running loop, until the thread ends.

        At most ``timeout`` seconds (``None``: no bound) for the thread to
        close its loop and signal its exit, then at most ``grace`` seconds
        for it to run its last statements. Returns whether it ended.
        """
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        self.add_exit_callback(functools.partial(resolve_threadsafe, exited, None))
        done, _ = await asyncio.wait({exited}, timeout=timeout)
        if not done:
            exited.cancel()
            return False
        deadline = loop.time() + grace
        while self.thread.is_alive():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_DEATH_POLL)
        return True

    # -- the loop's own thread -----------------------------------------------

    def _start_drain(self) -> None:
        self._drainer = self.loop.create_task(
            self._drain_then_stop(), name=f"{self.thread.name}-drain"
        )

    async def _drain_then_stop(self) -> None:
        try:
            await drain_tasks(timeout=self._drain_timeout)
        finally:
            self.loop.stop()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            while True:
                loop.run_forever()
                if self._drainer is not None and self._drainer.done():
                    break
        finally:
            with self._lock:
                self._retiring = True
            try:
                self._close_loop()
            finally:
                with self._lock:
                    self._exited = True
                    callbacks, self._exit_callbacks = self._exit_callbacks, []
                self.fail_all_requests(f"event loop {self.thread.name} closed")
                for callback in callbacks:
                    callback()

    def _close_loop(self) -> None:
        loop = self.loop
        try:
            if self._drainer is None:  # run_forever raised: drain here instead
                loop.run_until_complete(drain_tasks(timeout=self._drain_timeout))
            loop.run_until_complete(loop.shutdown_asyncgens())
            if sys.version_info >= (3, 12):
                loop.run_until_complete(
                    loop.shutdown_default_executor(self._executor_timeout)
                )
            else:
                loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            log.exception("ttlpool: closing event loop of %s failed", self.thread.name)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
