"""Work that crosses event loops: one hand-over, one guarantee.

The guarantee. A request sent to a partition's owner (a clear, an expire, a
release from a foreign thread) is carried out exactly once, by the first of:

- the owner's event loop, when the callback that :meth:`Mailbox.send` posted
  to it runs (:meth:`Mailbox.deliver` claims every waiting request under
  the lock, then carries each out);
- the caller that finds the owner's loop closed and adopts the partition
  (:meth:`Mailbox.route` returns ``ADOPT`` to exactly one caller, which
  takes the waiting requests with :meth:`Mailbox.take_requests`). Adoption
  moves the whole partition to the adopter's loop, where it is cleared: a
  request to a closed loop needs no work of its own, only an answer.

A request is never carried out twice (a claim empties the mailbox under the
lock) and never lost (a loop that closes never runs again, so whoever finds
it closed adopts it, and a loop that runs again delivers its mail first).

The owner of a partition is a small state machine. Its state changes only
under the pool's lock:

    LIVE ──(its loop is closed; one caller adopts it)──> ADOPTED
    LIVE ──(os.fork(): the child forgets the parent's partitions)──> FORKED

While LIVE, only the loop's own thread touches the partition's ledger.
Once ADOPTED, only the adopter does. A FORKED partition finalizes nothing.

Nothing waits on a loop that is not running. :meth:`Mailbox.route` tells a
caller how to reach the owner: ``HERE`` (the caller is on the owner's loop),
``ASK`` (the loop runs: send the request and wait for the answer), ``LEAVE``
(the loop is stopped, not closed, and may run again: send the request and do
not wait; the loop carries it out when it runs again), ``ADOPT`` (closed:
this caller is now the owner) or ``GONE`` (adopted or forked already). A
caller that waits (:func:`answer_of`) also looks at the owner again after
1 ms, 2 ms, 4 ms, and so on up to 1 s: a loop can stop or close after it
was asked, and asyncio tells no one when it does. That look only decides
whether to keep waiting; it never claims or runs anything.

A loop that shuts down (``Mailbox.closing``, set when ``asyncio.run``
closes its async generators) claims no more requests: it could not finish
them before it closes. They stay in the mailbox for the adopter.

Who touches what: ``Mailbox.owner``, ``requests``, ``posted`` and
``closing`` are written only under ``lock`` (the pool's lock); ``busy``
only on the owner's loop; ``loop`` never changes.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Any

from ttlpool._aio import (
    call_soon_threadsafe,
    resolve_threadsafe,
    start_task,
)

__all__ = [
    "Answer",
    "Mailbox",
    "Owner",
    "Request",
    "Route",
    "answer_of",
]

#: How long a caller first waits for an answer before it looks at the
#: owner's loop again, and the longest it waits between two looks.
FIRST_LOOK = 0.001
LAST_LOOK = 1.0


class Owner(enum.Enum):
    LIVE = "live"
    ADOPTED = "adopted"
    FORKED = "forked"


class Route(enum.Enum):
    HERE = "here"
    ASK = "ask"
    LEAVE = "leave"
    ADOPT = "adopt"
    GONE = "gone"


#: What the owner answers: whether it found anything to do, and a
#: ``BaseException`` that the work raised once its bookkeeping was done
#: (the caller re-raises it).
Answer = tuple[bool, "BaseException | None"]

#: A request's work, run on the owner's loop: whether it did anything, or
#: an awaitable of that (waited for in a task on the owner's loop).
Work = Callable[[], "bool | Awaitable[bool]"]


class Request:
    """One piece of work for a partition's owner, and the future of the
    caller that waits for it (``None`` when nobody waits)."""

    __slots__ = ("reply", "work")

    def __init__(self, work: Work, reply: asyncio.Future[Answer] | None) -> None:
        self.work = work
        self.reply = reply

    def answer(self, done: bool, error: BaseException | None = None) -> None:
        """Tell the caller, on its own loop (nothing if it stopped waiting)."""
        if self.reply is not None:
            resolve_threadsafe(self.reply, (done, error))

    def run_and_answer(
        self, loop: asyncio.AbstractEventLoop, busy: set[asyncio.Task[None]]
    ) -> None:
        """Run the work on ``loop`` (the owner's, running) and answer; a
        task that waits for the work's outcome is kept in ``busy``."""
        try:
            outcome = self.work()
        except BaseException as exc:  # the caller re-raises it
            self.answer(True, exc)
            return
        if isinstance(outcome, bool):
            self.answer(outcome)
            return
        task = start_task(loop, self._answer_when_done(outcome), finishing=True)
        if not task.done():
            busy.add(task)
            task.add_done_callback(busy.discard)

    async def _answer_when_done(self, outcome: Awaitable[bool]) -> None:
        try:
            done = await outcome
        except BaseException as exc:  # the caller re-raises it
            self.answer(True, exc)
        else:
            self.answer(done)


class Mailbox:
    """The owner of one partition and the requests waiting for it."""

    __slots__ = ("busy", "closing", "lock", "loop", "owner", "posted", "requests")

    def __init__(self, loop: asyncio.AbstractEventLoop, lock: Any) -> None:
        self.loop = loop
        self.lock = lock
        self.owner = Owner.LIVE
        self.requests: list[Request] = []
        #: A :meth:`deliver` callback is queued on ``loop``.
        self.posted = False
        #: ``loop`` shuts down: it claims no more requests (whoever adopts
        #: the partition once the loop closed does).
        self.closing = False
        #: Tasks of requests carried out, still waiting for their work.
        self.busy: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Mailbox {self.owner.value} requests={len(self.requests)}>"

    # -- any thread, under ``lock`` ------------------------------------------

    def route(self, caller_loop: asyncio.AbstractEventLoop) -> Route:
        """How a caller on ``caller_loop`` reaches the owner (see the module doc).

        ``ADOPT`` is answered once: the caller that gets it is the owner
        from then on.
        """
        if self.owner is not Owner.LIVE:
            return Route.GONE
        loop = self.loop
        if loop is caller_loop:
            return Route.HERE
        if loop.is_closed():
            self.owner = Owner.ADOPTED
            return Route.ADOPT
        return Route.ASK if loop.is_running() else Route.LEAVE

    def send(self, request: Request, caller_loop: asyncio.AbstractEventLoop) -> Route:
        """Route ``request`` from a caller on ``caller_loop``; queue it for ``ASK``
        and ``LEAVE``. ``HERE``, ``ADOPT`` and ``GONE`` queue nothing."""
        route = self.route(caller_loop)
        if route is Route.ASK or route is Route.LEAVE:
            if not self.posted:
                if not call_soon_threadsafe(self.loop, self.deliver):
                    self.owner = Owner.ADOPTED  # it closed just now
                    return Route.ADOPT
                self.posted = True
            self.requests.append(request)
        return route

    def take_requests(self) -> list[Request]:
        """The requests no owner will carry out (after ``ADOPT``): the
        adopter answers them."""
        requests, self.requests = self.requests, []
        return requests

    # -- the owner's loop ------------------------------------------------------

    def deliver(self) -> None:
        """Claim every waiting request, then carry each out (in order)."""
        with self.lock:
            self.posted = False
            if self.owner is not Owner.LIVE or self.closing:
                return  # a forked child's copy of the loop, or shutting down
            requests = self.take_requests()
        for request in requests:
            request.run_and_answer(self.loop, self.busy)


async def answer_of(
    mailbox: Mailbox, reply: asyncio.Future[Answer], deadline: float | None
) -> Answer | None:
    """Wait for the owner's answer to a request sent with ``ASK``.

    Returns ``None`` if the owner's loop stopped or closed before answering
    (the request stays with it, or goes to whoever adopts it) and raises
    ``TimeoutError`` once ``deadline`` (on the caller's loop clock) passes.
    """
    loop = asyncio.get_running_loop()
    look = FIRST_LOOK
    while True:
        wait = look if deadline is None else min(look, deadline - loop.time())
        if wait <= 0:
            raise TimeoutError
        done, _ = await asyncio.wait({reply}, timeout=wait)
        if done:
            return reply.result()
        if not mailbox.loop.is_running():
            return None
        look = min(look * 2, LAST_LOOK)
