"""Plain threads hammering one ``SyncResourcePool``: the sync pool's hammer.

Many worker threads (8 to 16) share a few keys (2 to 4) of one pool and run
a bounded, seeded, random mix of leases (some nested, some held across a
short sleep or an ``expire``), ``acquire``/``release`` by key, ``expire``,
``clear`` and reads of ``stats``/``pending_cleanup``/``len``/``in``, while
a *janitor* thread calls ``clear()`` at milestones of their progress and,
in one of the two endings, ``close()`` while they still run (they then
meet ``PoolClosedError`` and stop); in the other, the pool is closed once
every worker is done. Idle TTLs: ``0`` and a few milliseconds (so that the
reaper thread starts, reaps and ends while the workers run). With the
lifecycle options, ``validate`` says no one time in five, lifetimes pass
while the workers run, ``on_remove`` is recorded and leases are watched
(``leak_timeout``: some outlive it). The factory fails now and then; the
finalizer raises now and then.

What is checked, every resource at a time (:class:`Recorder`):

- every resource created is finalized exactly once, and each finalizer
  call runs to its end; ``stats.finalized == stats.created``, the gauges
  are zero, and the error counts match what the user code raised;
- the pool never hands out a resource whose finalizer began before the
  acquire was called (a holder may go on using an object that ``clear``
  retired under it: that is allowed, and not checked);
- a resource is never finalized while a lease holds it, except by a
  ``clear``/``close`` running at that moment;
- ``validate`` never sees a finalized resource; ``on_remove`` runs once per
  resource, before its finalizer, and its causes add up to
  ``stats.removed``;
- no thread is left: every worker ends (a deadlock shows as threads still
  running after :data:`TIMEOUT`, with their stacks), and the reaper thread
  is gone once ``close()`` returned; after it, acquires raise
  ``PoolClosedError`` and a second ``close()`` changes nothing.

Used by ``tests/test_sync_hammer.py`` (a few seeds per run) and by
``python -m tests.stress`` (many seeds). Every wait is bounded; nothing
sleeps to wait for an event (the short sleeps in workers and user code only
vary the interleavings).
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Generator
from contextlib import contextmanager, suppress
from typing import Any

from ttlpool import PoolClosedError, PoolStats, RemovalCause, SyncResourcePool

#: Upper bound for any single wait in this module (generous: CI is slow).
TIMEOUT = 20.0
#: Idle TTLs: finalized at the last release, and real ones of a few
#: milliseconds, which pass many times while the workers run.
TTLS = (0, 0.001, 0.004)
#: ``max_lifetime`` with the lifecycle options: passes while workers run.
LIFETIME = 0.003
#: ``leak_timeout`` with the lifecycle options: some leases outlive it (a
#: warning, collected with the pool's log), and each lease is watched by
#: the reaper thread.
LEAK_TIMEOUT = 0.002
#: How a run ends: the janitor thread closes the pool while the workers
#: still run, or the pool is closed once every worker is done.
CLOSE_WHILE_RUNNING, CLOSE_AFTER = "close-while-running", "close-after"
ENDINGS = (CLOSE_WHILE_RUNNING, CLOSE_AFTER)
#: (ttl, lifecycle options, ending) a seed picks from.
MODES = [
    (ttl, lifecycle, ending)
    for ttl in TTLS
    for lifecycle in (False, True)
    for ending in ENDINGS
]
#: Thread switch intervals a seed picks from: CPython's default, and short
#: ones (more preemption points; the reaper gets the GIL on time).
SWITCH_INTERVALS = (0.005, 1e-4, 1e-5)
KEYS = ("a", "b", 0, None)
#: How often each key is picked: the rare ones go idle long enough to be
#: reaped while the workers hammer the others.
KEY_WEIGHTS = (1.0, 0.2, 0.05, 0.01)
OPS_PER_WORKER = 200


class FactoryError(Exception):
    """What the factory raises now and then."""


class FinalizerError(Exception):
    """What the finalizer raises now and then (after doing its work)."""


class Res:
    """A pooled resource: what it is, who holds it, when it was finalized."""

    __slots__ = ("finalized_at", "holders", "key", "serial")

    def __init__(self, serial: int, key: object) -> None:
        self.serial = serial
        self.key = key
        #: Leases inside their ``with`` block now (under the recorder's lock).
        self.holders = 0
        #: The recorder's tick at which the finalizer began (None: not yet).
        self.finalized_at: int | None = None

    def __repr__(self) -> str:
        return f"<Res #{self.serial} {self.key!r}>"


class Recorder:
    """The pool's user code (factory, finalizer, hooks), recording what it
    was asked to do under one lock, and the checks over what it recorded.

    ``tick()`` numbers events: an acquire takes a tick before it calls the
    pool, the finalizer one when it begins; a resource handed out by an
    acquire that ticked after its finalizer began was handed out finalized.
    """

    def __init__(self, seed: float) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self._ticks = itertools.count()
        self._serials = itertools.count(1)
        self.created: dict[int, Res] = {}
        self.finalized: Counter[int] = Counter()
        self.begun: set[int] = set()
        self.completed: set[int] = set()
        self.removed: dict[int, list[RemovalCause]] = {}
        self.violations: list[str] = []
        self.reported: list[tuple[type[BaseException], str, object]] = []
        self.factory_errors = 0
        self.finalizer_errors = 0
        #: ``clear``/``close`` calls running now: only they may finalize a
        #: resource a lease holds.
        self.clearing = 0

    def tick(self) -> int:
        with self.lock:
            return next(self._ticks)

    def _roll(self) -> float:
        with self.lock:
            return self.rng.random()

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    # -- user code ----------------------------------------------------------------

    def factory(self, key: object) -> Res:
        roll = self._roll()
        if roll < 0.04:
            with self.lock:
                self.factory_errors += 1
            raise FactoryError(f"no resource for {key!r}")
        if roll < 0.2:  # a slow one: others join its creation
            time.sleep(0.0002)
        with self.lock:
            res = Res(next(self._serials), key)
            self.created[res.serial] = res
        return res

    def finalizer(self, res: Res) -> None:
        roll = self._roll()
        with self.lock:
            res.finalized_at = next(self._ticks)
            self.finalized[res.serial] += 1
            self.begun.add(res.serial)
            if res.holders and not self.clearing:
                self.violations.append(
                    f"{res!r} finalized while {res.holders} lease(s) held it, "
                    "with no clear or close running"
                )
        try:
            if roll < 0.1:
                time.sleep(0.0002)
            if roll > 0.96:
                with self.lock:
                    self.finalizer_errors += 1
                raise FinalizerError(f"cannot finalize {res!r}")
        finally:
            with self.lock:
                self.completed.add(res.serial)

    def validate(self, res: Res) -> bool:
        if res.finalized_at is not None:
            self.violation(f"validate({res!r}) after its finalizer began")
        return self._roll() >= 0.2

    def on_remove(self, key: object, res: Res, cause: RemovalCause) -> None:
        with self.lock:
            self.removed.setdefault(res.serial, []).append(cause)
            if res.finalized_at is not None:
                self.violations.append(f"on_remove of {res!r} after its finalizer")
            if key != res.key:
                self.violations.append(f"on_remove({key!r}, {res!r}): not its key")

    def on_error(self, exc: BaseException, operation: str, key: object) -> None:
        with self.lock:
            self.reported.append((type(exc), operation, key))

    # -- what the threads do with it --------------------------------------------------

    def handed_out(self, res: object, key: object, asked_at: int) -> Res:
        """Check what an acquire that ticked ``asked_at`` returned."""
        if not isinstance(res, Res) or res.key != key:
            self.violation(f"acquire of {key!r} returned {res!r}")
            assert isinstance(res, Res)
        finalized_at = res.finalized_at
        if finalized_at is not None and finalized_at < asked_at:
            self.violation(
                f"{res!r} handed out for {key!r} after its finalizer began "
                f"(tick {finalized_at}, acquire at tick {asked_at})"
            )
        return res

    def hold(self, res: Res, delta: int) -> None:
        with self.lock:
            res.holders += delta

    @contextmanager
    def clearing_now(self) -> Generator[None, None, None]:
        with self.lock:
            self.clearing += 1
        try:
            yield
        finally:
            with self.lock:
                self.clearing -= 1

    def clear(self, pool: SyncResourcePool[Any, Res]) -> None:
        with self.clearing_now():
            pool.clear(timeout=TIMEOUT)

    # -- checks ---------------------------------------------------------------------

    def check(self, pool: SyncResourcePool[Any, Res], lifecycle: bool) -> None:
        """After ``close``: exactly once, to the end, with exact counts."""
        with self.lock:
            assert not self.violations, "\n".join(self.violations)
            created, finalized = dict(self.created), Counter(self.finalized)
            cut_off = self.begun - self.completed
            removed = {s: list(c) for s, c in self.removed.items()}
        assert created, "the hammer made nothing"
        unknown = set(finalized) - set(created)
        assert not unknown, f"finalized objects the factory never made: {unknown}"
        wrong = {s: finalized[s] for s in created if finalized[s] != 1}
        assert not wrong, f"serial -> finalizer calls (must be 1 each): {wrong}"
        assert not cut_off, f"finalizers that never reached their end: {cut_off}"

        stats = pool.stats
        gauges = (
            stats.total_entries,
            stats.referenced_entries,
            stats.idle_entries,
            stats.pending_cleanup,
            stats.creating,
        )
        assert gauges == (0, 0, 0, 0, 0), stats
        assert len(pool) == 0 and pool.pending_cleanup == {}, stats
        assert stats.created == len(created), stats
        assert stats.finalized == stats.created, stats
        assert stats.removed.total == stats.finalized, stats
        assert stats.abandoned == 0, stats
        assert stats.factory_errors == self.factory_errors, stats
        assert stats.finalizer_errors == self.finalizer_errors, stats
        assert stats.errors == len(self.reported) == self.finalizer_errors, (
            stats,
            self.reported,
        )
        assert all(op == "finalize" for _, op, _ in self.reported), self.reported
        assert stats.expired == stats.removed.idle, stats
        assert stats.evicted == stats.removed.evicted, stats
        if lifecycle:
            once = {s: removed.get(s) for s in created if len(removed.get(s, [])) != 1}
            assert not once, f"serial -> on_remove causes (must be 1 each): {once}"
            causes = Counter(c[0] for c in removed.values())
            assert all(
                stats.removed[cause] == causes[cause] for cause in RemovalCause
            ), (stats.removed, causes)
        else:
            assert stats.removed.lifetime == stats.removed.invalid == 0, stats


class Progress:
    """How far the workers got: the janitor waits on it (no sleeping)."""

    def __init__(self, workers: int) -> None:
        self.cond = threading.Condition()
        self.ops = 0
        self.workers = workers
        self.finished = 0

    def step(self) -> None:
        with self.cond:
            self.ops += 1
            self.cond.notify_all()

    def worker_done(self) -> None:
        with self.cond:
            self.finished += 1
            self.cond.notify_all()

    def reach(self, ops: int) -> bool:
        """Wait until the workers made ``ops`` operations; false if they all
        ended first (or after ``TIMEOUT``)."""
        with self.cond:
            self.cond.wait_for(
                lambda: self.ops >= ops or self.finished == self.workers, TIMEOUT
            )
            return self.ops >= ops


# -- the threads --------------------------------------------------------------------


def lease(
    pool: SyncResourcePool[Any, Res],
    rec: Recorder,
    rng: random.Random,
    keys: tuple[object, ...],
    key: object,
    depth: int = 0,
) -> None:
    """``with pool.get(key)``, doing a little inside."""
    asked_at = rec.tick()
    with pool.get(key) as got:
        res = rec.handed_out(got, key, asked_at)
        rec.hold(res, +1)
        try:
            roll = rng.random()
            if roll < 0.15:
                time.sleep(rng.random() * 0.0005)
            elif roll < 0.35 and depth == 0:  # a nested lease, maybe the same key
                lease(pool, rec, rng, keys, rng.choice(keys), depth + 1)
            elif roll < 0.38:
                pool.expire(key)  # marked: finalized at the last release
        finally:
            rec.hold(res, -1)


def work(
    pool: SyncResourcePool[Any, Res],
    rec: Recorder,
    rng: random.Random,
    keys: tuple[object, ...],
    progress: Progress,
) -> None:
    """One worker: a bounded random mix of operations, then it gives back
    what it acquired by key (no-ops once the pool is closed)."""
    keyed: list[object] = []
    try:
        for _ in range(OPS_PER_WORKER):
            roll = rng.random()
            key = rng.choices(keys, KEY_WEIGHTS[: len(keys)])[0]
            try:
                if roll < 0.50:
                    lease(pool, rec, rng, keys, key)
                elif roll < 0.57:
                    asked_at = rec.tick()
                    rec.handed_out(pool.acquire(key), key, asked_at)
                    keyed.append(key)
                elif roll < 0.72 and keyed:
                    pool.release(keyed.pop(rng.randrange(len(keyed))))
                elif roll < 0.735:
                    pool.expire(key)
                elif roll < 0.74:
                    rec.clear(pool)
                elif roll < 0.80:
                    observe(pool, keys)
                elif roll < 0.88:  # a pause: keys go idle, the reaper reaps
                    time.sleep(rng.random() * 0.004)
            except FactoryError:
                pass
            except PoolClosedError:
                break
            progress.step()
    finally:
        for key in keyed:
            pool.release(key)


def observe(pool: SyncResourcePool[Any, Res], keys: tuple[object, ...]) -> None:
    """Read the pool from a worker, while the others work (SPEC 7)."""
    stats = pool.stats
    assert stats.referenced_entries + stats.idle_entries == stats.total_entries
    assert min(stats.total_entries, stats.idle_entries, stats.creating) >= 0
    assert stats.finalized <= stats.created
    pending = pool.pending_cleanup
    assert all(deadline is None or deadline > 0 for deadline in pending.values())
    assert len(pool) >= 0
    for key in keys:
        _ = key in pool


def janitor(
    pool: SyncResourcePool[Any, Res],
    rec: Recorder,
    progress: Progress,
    plan: list[tuple[int, str]],
) -> None:
    """``clear`` (and maybe ``close``) from a thread of its own, at
    milestones of the workers' progress."""
    for milestone, action in plan:
        if not progress.reach(milestone):
            return
        if action == "clear":
            rec.clear(pool)
        else:
            with rec.clearing_now():
                pool.close()


def _stacks(threads: list[threading.Thread]) -> str:
    frames = sys._current_frames()  # pyright: ignore[reportPrivateUsage]
    out: list[str] = []
    for thread in threads:
        frame = frames.get(thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame else "(gone)\n"
        out.append(f"--- {thread.name}:\n{stack}")
    return "".join(out)


def join_all(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threads if t.is_alive()]
    assert not stuck, (
        f"deadlock: threads still running after {TIMEOUT}s:\n{_stacks(stuck)}"
    )


def in_thread(call: Callable[[], object], name: str) -> None:
    """Run ``call`` in a thread of its own, bounded by ``TIMEOUT``; re-raise
    what it raised."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    join_all([thread])
    if raised:
        raise raised[0]


@contextmanager
def switching_every(seconds: float) -> Generator[None, None, None]:
    """Run with this thread switch interval (restored afterwards): a short
    one preempts threads in more places, and lets the reaper run on time."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@contextmanager
def quiet_ttlpool_log() -> Generator[list[logging.LogRecord], None, None]:
    """Collect the ``ttlpool`` logger's records instead of printing them
    (each finalizer error logs a traceback); restored afterwards."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("ttlpool")
    handler = Collect(logging.DEBUG)
    propagate, level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = propagate, level


def run_sync_hammer(seed: int, ttl: float, lifecycle: bool, ending: str) -> PoolStats:
    """One hammer run and its checks; raises ``AssertionError`` on a
    problem. Returns the pool's final stats (what the run did)."""
    rng = random.Random(seed)
    n_workers = rng.choice((8, 12, 16))
    keys = KEYS[: rng.choice((2, 3, 4))]
    rec = Recorder(rng.random())
    name = f"hammer-{seed}"
    options: dict[str, Any] = {
        "ttl": ttl,
        "max_idle": rng.choice((None, None, 1)),
        "on_error": rec.on_error,
        "name": name,
    }
    if lifecycle:
        options.update(
            validate=rec.validate,
            max_lifetime=LIFETIME,
            on_remove=rec.on_remove,
            leak_timeout=LEAK_TIMEOUT,
        )
    # The janitor's plan: three clears and, maybe, a close, each when the
    # workers made that many operations.
    total_ops = n_workers * OPS_PER_WORKER
    plan = [(ops, "clear") for ops in rng.sample(range(total_ops // 10, total_ops), 3)]
    if ending == CLOSE_WHILE_RUNNING:
        plan.append((rng.randrange(total_ops // 3, total_ops * 9 // 10), "close"))
    plan.sort()

    with quiet_ttlpool_log() as records, switching_every(rng.choice(SWITCH_INTERVALS)):
        pool = SyncResourcePool(rec.factory, finalizer=rec.finalizer, **options)
        try:
            _hammer(pool, rec, rng, keys, n_workers, plan)
        except BaseException:
            with suppress(Exception):  # the first problem is the one to see
                in_thread(pool.close, f"{name}-closer")
            raise
        in_thread(pool.close, f"{name}-closer")
        assert pool.closed
        reapers = [
            t for t in threading.enumerate() if t.name == f"ttlpool-reaper-{name}"
        ]
        assert not reapers, f"reaper thread alive after close(): {reapers}"
        rec.check(pool, lifecycle)
        errors_logged = sum(r.levelno >= logging.ERROR for r in records)
        assert errors_logged >= rec.finalizer_errors, (errors_logged, rec)

        # Closed for good: acquires raise, a second close changes nothing.
        before = pool.stats

        def enter(key: object) -> object:
            return pool.get(key).__enter__()

        for acquire in (pool.acquire, enter):
            try:
                acquire(keys[0])
            except PoolClosedError:
                pass
            else:
                raise AssertionError("an acquire after close() did not raise")
        in_thread(pool.close, f"{name}-closer")
        assert pool.stats == before, (before, pool.stats)
    return before


def _hammer(
    pool: SyncResourcePool[Any, Res],
    rec: Recorder,
    rng: random.Random,
    keys: tuple[object, ...],
    n_workers: int,
    plan: list[tuple[int, str]],
) -> None:
    progress = Progress(n_workers)
    errors: list[str] = []
    errors_lock = threading.Lock()
    start = threading.Barrier(n_workers + 1, timeout=TIMEOUT)

    def guarded(call: Callable[[], None]) -> Callable[[], None]:
        def target() -> None:
            try:
                start.wait()
                call()
            except BaseException:
                with errors_lock:
                    errors.append(
                        f"{threading.current_thread().name}:\n{traceback.format_exc()}"
                    )

        return target

    def worker(worker_rng: random.Random) -> Callable[[], None]:
        def run() -> None:
            try:
                work(pool, rec, worker_rng, keys, progress)
            finally:
                progress.worker_done()

        return run

    threads = [
        threading.Thread(
            target=guarded(worker(random.Random(rng.random()))),
            name=f"sync-hammer-{i}",
            daemon=True,
        )
        for i in range(n_workers)
    ]
    threads.append(
        threading.Thread(
            target=guarded(lambda: janitor(pool, rec, progress, plan)),
            name="sync-hammer-janitor",
            daemon=True,
        )
    )
    for thread in threads:
        thread.start()
    join_all(threads)
    assert not errors, "\n".join(errors)


def run_seed(seed: int) -> list[str]:
    """The sync hammer once for ``seed``, in the mode the seed picks; the
    problems found, as text (nothing of the run outlives it)."""
    ttl, lifecycle, ending = MODES[seed % len(MODES)]
    mode = f"ttl={ttl} {ending}" + (" with lifecycle options" if lifecycle else "")
    try:
        run_sync_hammer(seed, ttl, lifecycle, ending)
    except Exception:
        return [f"seed {seed} sync hammer {mode}:\n{traceback.format_exc()}"]
    return []
