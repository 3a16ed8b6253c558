"""The hand-over guarantee (SPEC section 6), proved without threads.

What it proves. Whatever the interleaving of event loops acquiring,
releasing, reaping, running, stopping and closing, of sweeps, ``clear``
and ``expire`` from other loops, and of leases given back by the garbage
collector from any thread, every resource the pool creates is finalized
exactly once: on its own loop while that loop runs, or, only once its loop
has closed, on the one loop that adopted its partition. Every request sent
to a partition's owner (``ttlpool._handover``) is carried out, answered
once, and never lost, and counts never drift.

How. A :class:`HandoverMachine` (a Hypothesis ``RuleBasedStateMachine``)
drives the real ``ResourcePool`` internals on :class:`FakeLoop` objects
instead of asyncio loops, with a sync factory and finalizer so that no
task is needed. No thread runs: a loop "runs" only in the sense that the
machine may take a step on it, and each rule is one event that real
threads race on:

- a step on a running loop: ``acquire`` (as ``Resource.__aenter__`` runs
  it: a hit, or the slow path; also ``acquire_again``, so that acquires
  are a larger share of the steps), ``release`` (as ``Resource.__aexit__``),
  ``fire_timer`` (the loop's idle timer comes due), ``deliver`` (the loop
  runs the next callback another thread queued: a mailbox delivery, a
  posted release, an answer), ``sweep``, one generation of ``clear`` (of a
  new clear, or the next generation of the one that loop runs), ``expire``
  and ``aclose`` (their synchronous part, up to the first ``await``);
- a change of a loop's state: ``stop_loop``, ``run_loop`` (a stopped loop
  runs again), ``close_loop`` (a stopped loop closes: the callbacks queued
  on it are dropped and never run), ``close_at_next_post`` (the loop's
  thread closes it between another thread's look at it and that thread's
  ``call_soon_threadsafe``), ``new_loop``;
- ``release_from_anywhere``: the garbage collector closes a lease's
  coroutine on some other loop's thread, or on a thread with no loop;
- ``advance_clock``: time passes.

While the machine simulates a step on a loop, asyncio's running loop is
that fake loop (``asyncio.events._set_running_loop``, as asyncio itself
sets it while a loop runs a callback), so the code under test sees the
world it would see on that loop's thread. The pool's lock is replaced by a
probe that fails instead of deadlocking if it is taken twice.

The invariants run after every step (:meth:`HandoverMachine.check`, and
the finalizer, which notes where it runs): no resource finalized twice;
each finalized on its own loop while that loop was the running one, or,
only once its loop closed, on the one loop that adopted its partition;
``created == finalized + total_entries`` (with sync finalizers nothing is
in flight) and the live entries are exactly the resources not finalized;
each entry's count is the leases held plus the releases posted or dropped;
one timer at most per loop, armed while an idle entry has a deadline; a
request waiting in a mailbox is unanswered and has exactly one delivery
queued on its open loop, and none joins a loop that closed; no reply is
answered twice. After a sweep, a ``clear`` generation, an ``expire``, a
reap or a miss, no partition of a loop that was closed before it is left.
The teardown closes every loop, clears from a fresh one until a generation
finds nothing, and checks that every resource was finalized exactly once,
the pool is empty and every request was answered exactly once.

What this cannot see: an interleaving inside one pool call (each rule is
atomic, but for ``close_at_next_post``), which is what the pool's lock is
for and what the thread hammers of ``test_loops.py`` exercise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ttlpool import PoolClosedError, ResourcePool
from ttlpool._aio import resolve
from ttlpool._clear import _expire_work, clear_generation
from ttlpool._core import Entry
from ttlpool._handover import Answer, Mailbox, Owner
from ttlpool._partition import Partition

KEYS = st.integers(min_value=0, max_value=2)
PICK = st.integers(min_value=0, max_value=1_000)  # an index, taken modulo a length
#: How many loops one run may make (it starts with two), and have open at once.
MAX_LOOPS = 8
MAX_OPEN_LOOPS = 4

RUNNING, STOPPED, CLOSED = "running", "stopped", "closed"

Reply = asyncio.Future[Answer]
Part = Partition[int, "Res"]


# -- the fake world ----------------------------------------------------------------


class World:
    """What the fake loops report to the machine: every answer ever sent."""

    def __init__(self) -> None:
        #: How many times each reply future was answered, even when the
        #: caller's loop had closed and the answer was dropped.
        self.answers: Counter[int] = Counter()
        self.violations: list[str] = []

    def answered(self, reply: Reply, value: Answer) -> None:
        self.answers[id(reply)] += 1
        if value[1] is not None:
            self.violations.append(f"a request's work raised {value[1]!r}")


class FakeLoop(asyncio.AbstractEventLoop):
    """Enough of an event loop for the pool's cross-loop paths.

    ``call_soon``/``call_soon_threadsafe`` queue callbacks that the machine
    runs one at a time (``deliver``); ``close`` drops them. Every other loop
    method is ``AbstractEventLoop``'s, which raises ``NotImplementedError``:
    a path that needs more than this fails loudly.
    """

    def __init__(self, name: str, world: World) -> None:
        self.name = name
        self.world = world
        self.state = RUNNING
        #: Stops and closes (in its own thread) just before the next
        #: callback another thread posts to it arrives.
        self.closing = False
        #: The requests waiting in each mailbox whose delivery ``close``
        #: dropped: no request may join them later.
        self.mail_at_close: dict[Mailbox, int] = {}
        self.queue: deque[tuple[Callable[..., object], tuple[Any, ...], Any]] = deque()

    def __repr__(self) -> str:
        return f"<FakeLoop {self.name} {self.state}>"

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> None:
        if self.state == CLOSED:
            raise RuntimeError("Event loop is closed")
        self.queue.append((callback, args, context))

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> None:
        if callback is resolve:  # an answer to a request, maybe dropped below
            self.world.answered(args[0], args[1])
        if self.closing and asyncio.events._get_running_loop() is not self:
            self.state = STOPPED
            self.close()
        self.call_soon(callback, *args, context=context)

    def is_running(self) -> bool:
        return self.state == RUNNING

    def is_closed(self) -> bool:
        return self.state == CLOSED

    def close(self) -> None:
        assert self.state == STOPPED, "asyncio closes only a loop that is not running"
        self.state = CLOSED
        for callback, _, _ in self.queue:
            if isinstance(mailbox := getattr(callback, "__self__", None), Mailbox):
                self.mail_at_close[mailbox] = len(mailbox.requests)
        self.queue.clear()

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def get_debug(self) -> bool:  # asyncio.Future asks
        return False


@contextlib.contextmanager
def on_loop(loop: FakeLoop | None) -> Iterator[None]:
    """Be ``loop``'s thread for one step: it is asyncio's running loop."""
    assert asyncio.events._get_running_loop() is None, "a step inside a step"
    asyncio.events._set_running_loop(loop)
    try:
        yield
    finally:
        asyncio.events._set_running_loop(None)


class FakeTimer:
    __slots__ = ("callback", "cancelled", "fired", "loop", "when")

    def __init__(
        self, loop: FakeLoop, when: float, callback: Callable[[], Any]
    ) -> None:
        self.loop = loop
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired or self.loop.state == CLOSED)


class FakeClock:
    """The pool's clock: time moves and timers fire only when the machine says."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.time = 0.0
        self.timers: list[FakeTimer] = []

    def now(self) -> float:
        return self.time

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], Any]
    ) -> FakeTimer:
        if asyncio.events._get_running_loop() is not loop:
            self.world.violations.append(f"a timer of {loop} armed from another loop")
        timer = FakeTimer(cast(FakeLoop, loop), when, callback)
        self.timers.append(timer)
        return timer

    def pending(self, loop: FakeLoop) -> list[FakeTimer]:
        """The timers of ``loop`` that may still fire."""
        return [t for t in self.timers if t.loop is loop and t.pending]


class LockReenteredError(RuntimeError):
    """The pool took its lock while already holding it."""


class ProbeLock:
    """A one-thread stand-in for ``threading.Lock`` that fails instead of hanging."""

    def __init__(self) -> None:
        self.depth = 0

    def __enter__(self) -> None:
        if self.depth:
            raise LockReenteredError("threading.Lock taken twice: this deadlocks")
        self.depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1


class Res:
    """A resource: numbered, and knowing the loop and partition that made it."""

    __slots__ = ("key", "loop", "n", "part")

    def __init__(self, n: int, key: int, loop: FakeLoop, part: Part | None) -> None:
        self.n = n
        self.key = key
        self.loop = loop
        self.part = part

    def __repr__(self) -> str:
        return f"Res({self.n}, key={self.key}, {self.loop.name})"


class Lease:
    """An entered lease: what ``Resource`` keeps between enter and exit."""

    __slots__ = ("entry", "part")

    def __init__(self, part: Part, entry: Entry[int, Res]) -> None:
        self.part = part
        self.entry = entry


def _is_deliver(callback: Callable[..., object], mailbox: Mailbox) -> bool:
    return getattr(callback, "__self__", None) is mailbox and (
        getattr(callback, "__func__", None) is Mailbox.deliver
    )


# -- the machine ---------------------------------------------------------------------


def event(method: Callable[..., None]) -> Callable[..., None]:
    """Mark a rule's run: ``broken`` stays set if it raises (see ``teardown``)."""

    @functools.wraps(method)
    def run(self: HandoverMachine, *args: Any, **kwargs: Any) -> None:
        self.broken = True
        method(self, *args, **kwargs)
        self.broken = False

    return run


class HandoverMachine(RuleBasedStateMachine):
    """One pool, a few fake loops; every rule is one event (module doc)."""

    per_loop = True
    steps = 0  # checked steps over every run: read by whoever measures one

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.clock = FakeClock(self.world)
        self.names = itertools.count()
        self.loops: list[FakeLoop] = []
        self.leases: list[Lease] = []
        self.made: list[Res] = []
        self.finalized: dict[int, FakeLoop | None] = {}
        #: The loop that finalized a closed loop's resources: one per loop.
        self.adopters: dict[FakeLoop, FakeLoop] = {}
        #: Every reply of a request seen queued or asked, by id (kept alive).
        self.replies: dict[int, Reply] = {}
        self.seen_answers: Counter[int] = Counter()
        self.partitions: list[Part] = []  # every partition ever made
        self.clears: dict[FakeLoop, set[Part]] = {}  # a clear's ``left``
        self.closed_before: set[FakeLoop] = set()  # when the last step began
        self.broken = False  # a step or a check raised: skip the final check
        self.pool: ResourcePool[int, Res] | None = None

    # -- set-up ------------------------------------------------------------------

    @initialize(
        ttl=st.sampled_from([0, 1.0, None]),
        max_idle=st.sampled_from([None, None, 1]),
        may_close=st.booleans(),
    )
    def setup(
        self, ttl: float | None, max_idle: int | None, may_close: bool = False
    ) -> None:
        #: Whether ``aclose`` may happen (it ends every later acquire, so
        #: not in every run), once some resources were made.
        self.may_close = may_close
        pool = ResourcePool(
            self.factory,
            finalizer=self.finalize,
            ttl=ttl,
            max_idle=max_idle,
            clock=self.clock,
            per_loop=self.per_loop,
        )
        # Before any partition takes it: every mailbox shares the pool's lock.
        pool._map.lock = cast(Any, ProbeLock())
        if pool._map.shared is not None:
            pool._map.shared.lock = cast(Any, ProbeLock())
        self.pool = pool
        self.ttl = math.inf if ttl is None else float(ttl)
        for _ in range(2):
            self.loops.append(self.make_loop())

    @property
    def p(self) -> ResourcePool[int, Res]:
        assert self.pool is not None
        return self.pool

    def factory(self, key: int) -> Res:
        loop = cast("FakeLoop | None", asyncio.events._get_running_loop())
        if loop is None or loop.state != RUNNING:
            self.world.violations.append(f"factory of {key} ran off any running loop")
            raise AssertionError("factory off loop")
        res = Res(len(self.made), key, loop, self.p._map.all.get(cast(Any, loop)))
        self.made.append(res)
        return res

    def finalize(self, res: Res) -> None:
        """The finalizer: checks where it runs (violations are checked later:
        an exception here would only be reported by the pool)."""
        here = cast("FakeLoop | None", asyncio.events._get_running_loop())
        bad = self.world.violations.append
        if res.n in self.finalized:
            bad(f"{res} finalized twice (on {self.finalized[res.n]} then {here})")
        self.finalized[res.n] = here
        if here is None or here.state != RUNNING:
            bad(f"{res} finalized on {here}, not a running loop")
            return
        if not self.per_loop or here is res.loop:
            return
        # Only a closed loop's resources are finalized elsewhere: by the one
        # loop that adopted its partition.
        if res.loop.state != CLOSED:
            bad(f"{res} finalized on {here} while its own loop is {res.loop.state}")
        if res.part is None or res.part.mailbox.owner is not Owner.ADOPTED:
            bad(f"{res} finalized on {here}, its partition not adopted")
        if self.p._map.all.get(cast(Any, res.loop)) is not None:
            bad(f"{res} finalized on {here} while its loop is still mapped")
        adopter = self.adopters.setdefault(res.loop, here)
        if adopter is not here:
            bad(f"{res.loop}'s resources finalized on {adopter} and on {here}")

    # -- helpers --------------------------------------------------------------------

    def make_loop(self, name: str | None = None) -> FakeLoop:
        name = name or f"L{next(self.names)}"
        return FakeLoop(name, self.world)  # type: ignore[abstract]

    @contextlib.contextmanager
    def step(self, loop: FakeLoop | None) -> Iterator[None]:
        """One step as ``loop``'s thread (``None``: a thread with no loop)."""
        assert loop is None or loop.state == RUNNING
        self.closed_before = set(self.in_state(CLOSED))
        with on_loop(loop):
            yield

    def in_state(self, state: str) -> list[FakeLoop]:
        return [loop for loop in self.loops if loop.state == state]

    def running(self) -> list[FakeLoop]:
        return self.in_state(RUNNING)

    @staticmethod
    def pick(items: list[Any], index: int) -> Any:
        return items[index % len(items)]

    def ask(self, asked: list[tuple[Part, Reply]]) -> None:
        """The caller waits for these answers (``answer_of``'s ``asyncio.wait``)."""
        for _, reply in asked:
            self.replies[id(reply)] = reply
            reply.add_done_callback(self.saw_answer)

    def saw_answer(self, reply: Reply) -> None:
        self.seen_answers[id(reply)] += 1
        done, error = reply.result()
        assert isinstance(done, bool) and error is None

    def nothing_closed_left(self) -> None:
        """The step (a pool operation from a live loop) adopted the partition
        of every loop closed when it began."""
        closed = self.closed_before
        left = [p for p in self.p._map.all.values() if p.loop in closed]
        assert not left, f"closed loops' partitions not adopted: {left}"

    # -- steps on a running loop -------------------------------------------------

    @precondition(lambda self: self.running())
    @rule(pick=PICK, key=KEYS)
    @event
    def acquire_again(self, pick: int, key: int) -> None:
        """``acquire`` once more: a second rule doubles its share of the
        steps (Hypothesis has no rule weights), so that leases and entries
        pile up between the clears and the closes."""
        self.acquire(pick, key)

    @precondition(lambda self: self.running())
    @rule(pick=PICK, key=KEYS)
    @event
    def acquire(self, pick: int, key: int) -> None:
        loop = self.pick(self.running(), pick)
        pool = self.p
        with self.step(loop):
            part = pool._map.parts.get(loop)
            entry = part.ledger.hit(key) if part is not None else None
            if part is None or entry is None:  # Resource.__aenter__'s slow path
                try:
                    part, found = pool._map.start_acquire(key, "acquire", part)
                except PoolClosedError:
                    assert pool.closed
                    return
                # A sync factory: start_acquire() settled the creation already.
                assert isinstance(found, Entry), found
                entry = found
                if len(pool._map.all) > 1:
                    self.nothing_closed_left()
        assert entry.live and entry.refs > 0 and entry.key == key
        if self.per_loop:
            assert entry.resource.loop is loop, f"{entry} handed out on {loop}"
        self.leases.append(Lease(part, entry))

    def given_back(self, entry: Entry[int, Res]) -> int:
        """References of ``entry`` given back from anywhere and not released
        yet: noted in a partition's ``given_back`` (posted to its loop, or
        left for whoever adopts it once that loop closed)."""
        return sum(part.given_back.count(entry) for part in self.all_partitions())

    def all_partitions(self) -> list[Part]:
        parts = list(self.partitions)
        parts += [p for p in self.p._map.all.values() if p not in parts]
        return parts

    def releasable(self) -> list[Lease]:
        return [lease for lease in self.leases if lease.part.loop.is_running()]

    @precondition(lambda self: self.releasable())
    @rule(pick=PICK)
    @event
    def release(self, pick: int) -> None:
        lease = self.pick(self.releasable(), pick)
        self.leases.remove(lease)
        part, entry = lease.part, lease.entry
        with self.step(cast(FakeLoop, part.loop)):  # Resource.__aexit__
            action = part.ledger.release(entry, part.now())
            if action:
                assert part.after_release(entry, action) == []

    @precondition(lambda self: self.leases)
    @rule(pick=PICK, where=PICK)
    @event
    def release_from_anywhere(self, pick: int, where: int) -> None:
        """A lease's coroutine is closed by the garbage collector on the
        thread of some running loop, or of none (``GeneratorExit``)."""
        lease = self.pick(self.leases, pick)
        self.leases.remove(lease)
        part, entry = lease.part, lease.entry
        here = self.pick([None, *self.running()], where)
        given = self.given_back(entry)
        with self.step(here):
            self.p._map.release_from_anywhere(part, entry)
        # Nothing is released in the collector's step, wherever it runs: the
        # release is noted, and posted to the lease's loop.
        assert self.given_back(entry) == given + 1

    @precondition(lambda self: any(self.clock.pending(loop) for loop in self.running()))
    @rule(pick=PICK)
    @event
    def fire_timer(self, pick: int) -> None:
        loop = self.pick([x for x in self.running() if self.clock.pending(x)], pick)
        timer = min(self.clock.pending(loop), key=lambda t: t.when)
        self.clock.time = max(self.clock.time, timer.when)
        timer.fired = True
        with self.step(loop):
            assert list(timer.callback() or ()) == []
        if len(self.p._map.all) > 1:
            self.nothing_closed_left()

    @precondition(lambda self: any(loop.queue for loop in self.running()))
    @rule(pick=PICK)
    @event
    def deliver(self, pick: int) -> None:
        loop = self.pick([x for x in self.running() if x.queue], pick)
        callback, args, context = loop.queue.popleft()
        with self.step(loop):
            if context is None:
                callback(*args)
            else:
                context.run(callback, *args)

    @precondition(lambda self: self.running())
    @rule(pick=PICK)
    @event
    def sweep(self, pick: int) -> None:
        loop = self.pick(self.running(), pick)
        with self.step(loop):
            self.p._map.sweep(self.p._map.home(loop))
        self.nothing_closed_left()

    @precondition(lambda self: self.running())
    @rule(pick=PICK, fresh=st.booleans())
    @event
    def clear(self, pick: int, fresh: bool) -> None:
        """One generation of ``clear`` (of a new one, or of the one this
        loop runs already: ``left`` spans its generations)."""
        loop = self.pick(self.running(), pick)
        left = self.clears.setdefault(loop, set())
        if fresh:
            left.clear()
        self.clear_generation(loop, left)

    def clear_generation(self, loop: FakeLoop, left: set[Part]) -> bool:
        with self.step(loop):
            here = self.p._map.home(loop)
            found, waits, asked, raised = clear_generation(self.p._map, here, (), left)
        assert waits == [] and raised is None
        assert not here.ledger.entries or not self.per_loop
        self.ask(asked)
        self.nothing_closed_left()
        return found

    @precondition(lambda self: self.running())
    @rule(pick=PICK, key=KEYS)
    @event
    def expire(self, pick: int, key: int) -> None:
        loop = self.pick(self.running(), pick)
        pool = self.p
        with self.step(loop):  # ResourcePool.expire, up to its first await
            here = pool._map.home(loop)
            pool._map.sweep(here)
            tasks = here.expire(key)
            asked: list[tuple[Part, Reply]] = []
            if pool._map.shared is None:
                work = functools.partial(_expire_work, key)
                asked, _, adopted = pool._map.send_all(here, work)
                tasks += pool._map.adopt(here, adopted)
        assert tasks == []
        self.ask(asked)
        self.nothing_closed_left()

    @precondition(
        lambda self: self.may_close and len(self.made) >= 3 and self.running()
    )
    @rule(pick=PICK)
    @event
    def aclose(self, pick: int) -> None:
        loop = self.pick(self.running(), pick)
        with self.step(loop):  # ResourcePool.aclose
            self.p._map.close()
        left: set[Part] = set()  # its first generation
        self.clears[loop] = left
        self.clear_generation(loop, left)
        self.may_close = False

    # -- a loop's life -------------------------------------------------------------

    @precondition(
        lambda self: (
            len(self.loops) < MAX_LOOPS
            and len([x for x in self.loops if x.state != CLOSED]) < MAX_OPEN_LOOPS
        )
    )
    @rule()
    @event
    def new_loop(self) -> None:
        self.loops.append(self.make_loop())

    @precondition(lambda self: self.running())
    @rule(pick=PICK)
    @event
    def stop_loop(self, pick: int) -> None:
        self.pick(self.running(), pick).state = STOPPED

    @precondition(lambda self: self.in_state(STOPPED))
    @rule(pick=PICK)
    @event
    def run_loop(self, pick: int) -> None:
        self.pick(self.in_state(STOPPED), pick).state = RUNNING

    @precondition(lambda self: self.in_state(STOPPED))
    @rule(pick=PICK)
    @event
    def close_loop(self, pick: int) -> None:
        self.pick(self.in_state(STOPPED), pick).close()

    def opened(self) -> list[FakeLoop]:
        return [x for x in self.loops if x.state != CLOSED and not x.closing]

    @precondition(lambda self: self.opened())
    @rule(pick=PICK)
    @event
    def close_at_next_post(self, pick: int) -> None:
        """The loop's thread stops and closes it right when another thread
        posts to it next: between that thread's look at the loop (running,
        or stopped) and its ``call_soon_threadsafe``."""
        self.pick(self.opened(), pick).closing = True

    @rule(seconds=st.sampled_from([0.25, 1.0, 2.5]))
    @event
    def advance_clock(self, seconds: float) -> None:
        self.clock.time += seconds

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def holds(self) -> None:
        if self.pool is None:
            return
        HandoverMachine.steps += 1
        self.broken = True
        self.check()
        self.broken = False

    def check(self) -> None:
        pool, world = self.p, self.world
        assert not world.violations, world.violations
        assert asyncio.events._get_running_loop() is None
        assert cast(ProbeLock, pool._map.lock).depth == 0
        for part in pool._map.all.values():
            if part not in self.partitions:
                self.partitions.append(part)

        # Counts: with sync finalizers nothing is ever in flight.
        stats = pool.stats
        assert stats.created == len(self.made)
        assert stats.finalized == len(self.finalized)
        assert stats.abandoned == 0 and stats.creating == 0 and stats.errors == 0
        assert stats.created == stats.finalized + stats.total_entries, stats
        idle = stats.idle_entries if self.ttl != math.inf else 0
        assert stats.pending_cleanup == idle, stats
        ledgers = pool._map.ledgers()
        live = {e.resource.n for ledger in ledgers for e in ledger.entries.values()}
        assert live == {r.n for r in self.made} - set(self.finalized)
        assert all(not ledger.finalizing for ledger in ledgers)

        # The partition map: one LIVE partition per loop not yet adopted.
        for loop, part in pool._map.all.items():
            assert part.loop is loop and part.mailbox.owner is Owner.LIVE

        # References: held leases, plus releases queued on their loop, plus
        # releases dropped with a closed loop (its adopter evicts the entry).
        held = Counter(lease.entry for lease in self.leases)
        for ledger in ledgers:
            for entry in ledger.entries.values():
                refs = held[entry] + self.given_back(entry)
                assert entry.refs == refs, (entry, refs)
                assert (entry.refs == 0) == (entry.key in ledger.idle)

        # Timers (per loop): an idle entry with a deadline has a timer armed
        # for it or earlier; a loop has at most one timer pending.
        for part in pool._map.all.values():
            loop = cast(FakeLoop, part.loop)
            if loop.is_closed():
                continue
            pending = self.clock.pending(loop)
            assert len(pending) <= 1, f"{loop}: {len(pending)} timers pending"
            if not self.per_loop:
                continue
            deadline = part.ledger.timer_deadline
            assert (deadline is None) == (not pending), (deadline, pending)
            if pending:
                assert part.timer is pending[0] and pending[0].when == deadline
            fronts = [e.deadline for e in part.ledger.idle.values()]
            if fronts and fronts[0] != math.inf:
                assert deadline is not None and deadline <= fronts[0]

        # Requests: a queued request is not answered yet, and its owner's
        # loop, unless closed, has exactly one delivery queued for it.
        for part in self.partitions:
            mailbox = part.mailbox
            loop = cast(FakeLoop, part.loop)
            for request in mailbox.requests:
                assert request.reply is not None
                self.replies[id(request.reply)] = request.reply
                assert world.answers[id(request.reply)] == 0
            if mailbox.owner is not Owner.LIVE:
                continue
            if loop.is_closed():  # no mail sent after it closed
                assert len(mailbox.requests) <= loop.mail_at_close.get(mailbox, 0)
                continue
            posts = sum(_is_deliver(cb, mailbox) for cb, _, _ in loop.queue)
            assert posts == mailbox.posted
            assert posts == 1 or not mailbox.requests, f"{mailbox}: mail lost"
        for reply_id, count in world.answers.items():
            assert reply_id in self.replies and count == 1, "answered twice"
        for reply_id, count in self.seen_answers.items():
            assert count == 1 and world.answers[reply_id] == 1

    # -- the end -------------------------------------------------------------------

    def teardown(self) -> None:
        if self.pool is None or self.broken:
            return  # a failure is being reported already
        for loop in self.loops:
            if loop.state == RUNNING:
                loop.state = STOPPED
            if loop.state == STOPPED:
                loop.close()
        last = self.make_loop("last")
        self.loops.append(last)
        left: set[Part] = set()
        for _ in range(5):
            if not self.clear_generation(last, left):
                break
            while last.queue:
                self.deliver(0)
        else:
            raise AssertionError("clear found work in five generations")
        self.check()
        assert self.p._map.all.keys() == {last}
        assert len(self.p) == 0
        assert sorted(self.finalized) == [r.n for r in self.made]
        for reply_id in self.replies:
            assert self.world.answers[reply_id] == 1, "a request never answered"
        assert all(not lease.entry.live for lease in self.leases)


class SharedHandoverMachine(HandoverMachine):
    """The same events on a pool whose loops share their entries."""

    per_loop = False


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        stateful_step_count=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.mark.parametrize(
    ("machine", "examples"),
    # About 40 steps a run: some 60,000 steps, half a minute on our machine.
    [(HandoverMachine, 1000), (SharedHandoverMachine, 500)],
    ids=["per_loop", "shared"],
)
def test_handover(machine: type[HandoverMachine], examples: int) -> None:
    run_state_machine_as_test(machine, settings=_settings(examples))


def test_clear_adopts_a_loop_that_closed_after_it_was_left() -> None:
    """Regression (found by the machine): a generation of ``clear`` leaves
    its request with a stopped loop; that loop closes; the next generation
    of the same ``clear`` skipped it (it was "left") instead of adopting it,
    so ``clear`` returned with the closed loop's entries never finalized."""
    state = HandoverMachine()
    state.setup(ttl=None, max_idle=None)
    caller = state.loops[1]  # loops[0] is the one that stops
    for pick in (0, 1):  # an idle entry on each loop
        state.acquire(pick=pick, key=0)
        state.release(pick=0)
    state.stop_loop(pick=0)
    state.holds()
    left: set[Part] = set()
    # Generation 1 finalizes the caller's entry (so ``clear`` goes on) and
    # leaves its request with the stopped loop.
    assert state.clear_generation(caller, left)
    assert left and state.finalized == {1: caller}
    state.holds()
    state.close_loop(pick=0)
    state.holds()
    # Generation 2 adopts the loop that closed meanwhile.
    assert state.clear_generation(caller, left)
    assert state.finalized == {1: caller, 0: caller}
    assert not state.clear_generation(caller, left)  # and then clear ends
    state.holds()
    state.teardown()


def test_a_loop_keeps_one_timer_when_another_loop_cleared_shared_entries() -> None:
    """Regression (found by the machine, shared entries): a ``clear`` from
    another loop empties the shared ledger, deadline included, but cannot
    cancel this loop's timer from there; the next release here armed a
    second timer beside the first, which the partition no longer tracked
    (so no later ``clear`` could cancel it)."""
    state = SharedHandoverMachine()
    state.setup(ttl=1.0, max_idle=None)
    first = state.loops[0]
    state.acquire(pick=0, key=0)
    state.release(pick=0)  # idle on ``first``: its timer is armed
    state.clear(pick=1, fresh=True)  # from the other loop; ``first`` is asked
    assert first.queue  # ... and has not run the request yet
    state.acquire(pick=0, key=0)
    state.release(pick=0)  # arms ``first``'s timer again
    state.holds()
    assert len(state.clock.pending(first)) == 1
    state.deliver(pick=0)  # the clear request, on ``first``: cancels it
    state.holds()
    assert state.clock.pending(first) == []
    state.teardown()


def test_shared_entry_gets_back_a_lease_given_back_after_its_loop_closed() -> None:
    """Regression (found by the machine): a lease's coroutine collected
    after its loop closed posted its release to that closed loop, which
    dropped it. Per loop, the adopter evicts the entry anyway; a shared
    entry stayed in the pool, referenced by nobody, never idling out. Now
    the release is noted in the partition's ``given_back`` and the adopter
    releases it."""
    state = SharedHandoverMachine()
    state.setup(ttl=0, max_idle=None)
    state.acquire(pick=0, key=0)  # on loops[0]
    state.stop_loop(pick=0)
    state.close_loop(pick=0)
    state.release_from_anywhere(pick=0, where=1)  # collected on loops[1]
    state.sweep(pick=0)  # loops[1] adopts the closed loop's partition
    state.holds()
    # Nobody holds the entry and ttl is 0: it should be finalized by now.
    assert state.p.stats.referenced_entries == 0
