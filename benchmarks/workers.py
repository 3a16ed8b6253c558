"""Worker-loop measurements: time per dispatch of a trivial coroutine.

``run`` figures are awaited from this process's asyncio loop and run on a
worker loop in another thread; ``run_sync`` figures are called from the
main thread with no event loop running. Each group is measured twice when
uvloop is installed: with asyncio worker loops and with uvloop ones.

The loop pools built around wool's and ttlpool's ``ResourcePool`` here use
a minimal factory (a loop on a daemon thread) and finalizer (stop it, join
the thread) of our own, the shape a worker service wraps around a pool.

How the figures are sampled: many short samples (``dispatch_calls`` calls,
``cold_calls`` for the variants that start a loop per call), every variant
once per round in a rotating order, the ratio taken within each round and
its median over rounds reported. Every thread is pinned to one CPU while
they run, unless ``--no-pin`` (see :mod:`benchmarks._pin` for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import ttlpool
from benchmarks._impls import close_pool
from benchmarks._measure import Results, Sample, interleave, interleave_sync, now_ns
from benchmarks._optional import attr, load
from benchmarks._pin import CpuPin
from benchmarks._settings import Settings

__all__ = ["measure_dispatch", "measure_run_sync"]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
Progress = Callable[[str], None]

RUN = "WorkerLoopPool.run"
RUN_SYNC = "WorkerLoopPool.run_sync"
RAW = "raw warm loop"
NEW = "new loop + thread per call"
RAW_SYNC = "raw warm loop, .result()"

#: Untimed rounds before the timed ones (threads start, code and caches warm).
WARMUP_ROUNDS = 3


def _sampling(settings: Settings, pin: CpuPin) -> str:
    """The note every dispatch group carries: how it was sampled and placed."""
    return (
        f"{settings.dispatch_reps} rounds; a sample is {settings.dispatch_calls} "
        f"calls ({settings.cold_calls} for the variants that set up a loop per "
        f"call), each variant once a round; threads {pin.short}"
    )


async def _noop() -> None:
    return None


class LoopThread:
    """An event loop running forever on a daemon thread, closed by that thread."""

    __slots__ = ("loop", "thread")

    def __init__(self, loop_factory: LoopFactory) -> None:
        self.loop = loop = loop_factory()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self.thread = threading.Thread(target=run, name="bench-loop", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


async def _dispatch(loop: asyncio.AbstractEventLoop) -> None:
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_noop(), loop))


def _timed(
    calls: int, once: Callable[[], Awaitable[object]], group: str
) -> Callable[[], Awaitable[Sample]]:
    async def case() -> Sample:
        start = now_ns()
        for _ in range(calls):
            await once()
        return {group: (now_ns() - start) / calls}

    return case


def _worker_pool_class() -> tuple[Any, str | None]:
    module, why = load("worker")
    if module is None:
        return None, why
    cls = getattr(module, "WorkerLoopPool", None)
    if cls is None:
        return None, "ttlpool.worker has no WorkerLoopPool"
    return cls, None


async def _dispatch_group(
    results: Results,
    settings: Settings,
    say: Progress,
    group: str,
    flavour: str,
    loop_factory: LoopFactory,
    pin: CpuPin,
) -> None:
    label = "W1" if flavour == "asyncio" else "W1u"
    worker_cls, worker_why = _worker_pool_class()
    wool, wool_why = load("wool")
    reference = RUN if worker_cls is not None else RAW
    grp = results.group(
        group,
        f"{label}. Dispatch of a trivial coroutine to a worker loop ({flavour}), "
        "awaited from an asyncio loop",
        "ns",
        reference,
    )
    grp.note = _sampling(settings, pin)
    if worker_cls is None:
        grp.note += f"; {RUN} skipped, so ratios are to the raw warm loop"
    for name in (RUN, RAW, NEW):
        grp.figure(name)  # table order
    calls, cold = settings.dispatch_calls, settings.cold_calls
    cleanups: list[Callable[[], Awaitable[None]]] = []
    cases: dict[str, Any] = {}

    async def new_loop_per_call() -> None:
        fresh = LoopThread(loop_factory)
        try:
            await _dispatch(fresh.loop)
        finally:
            fresh.stop()

    cases[NEW] = _timed(cold, new_loop_per_call, group)

    warm = LoopThread(loop_factory)

    async def stop_warm() -> None:
        warm.stop()

    cleanups.append(stop_warm)
    cases[RAW] = _timed(calls, lambda: _dispatch(warm.loop), group)

    if worker_cls is not None:
        try:
            loops = worker_cls(ttl=30.0, loop_factory=loop_factory)
        except Exception as exc:
            grp.skip(RUN, f"WorkerLoopPool() failed: {exc!r}")
        else:
            cleanups.append(loops.stop)
            cases[RUN] = _timed(calls, lambda: loops.run(_noop), group)
    else:
        grp.skip(RUN, worker_why or "skipped")

    def make_loop(key: object) -> LoopThread:
        return LoopThread(loop_factory)

    def stop_loop(lt: LoopThread) -> None:
        lt.stop()

    def around(pool: Any) -> Callable[[], Awaitable[None]]:
        async def once() -> None:
            async with pool.get("worker") as lt:
                await _dispatch(lt.loop)

        return once

    pool_classes: list[tuple[str, Any]] = [
        ("ttlpool.ResourcePool", ttlpool.ResourcePool)
    ]
    if wool is not None:
        pool_classes.append(("wool ResourcePool", attr(wool, "ResourcePool")))
    else:
        for ttl in (30, 0):
            grp.skip(f"wool ResourcePool ttl={ttl}", wool_why or "skipped")
    for pool_label, cls in pool_classes:
        for ttl in (30, 0):
            if pool_label.startswith("ttlpool") and ttl == 0:
                continue  # the same as a new loop per call, plus a pool
            pool = cls(make_loop, finalizer=stop_loop, ttl=ttl)
            cleanups.append(_closer(pool))
            cases[f"{pool_label} ttl={ttl}"] = _timed(
                cold if ttl == 0 else calls, around(pool), group
            )
    try:
        say(f"W1 dispatch ({flavour})")
        await _guarded_interleave(results, settings.dispatch_reps, grp.key, cases, say)
    finally:
        for cleanup in reversed(cleanups):
            try:
                await cleanup()
            except Exception as exc:  # report, and keep the run going
                say(f"cleanup of a {flavour} dispatch variant failed: {exc!r}")


def _closer(pool: Any) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        await close_pool(pool)

    return close


async def _guarded_interleave(
    results: Results, reps: int, group: str, cases: dict[str, Any], say: Progress
) -> None:
    """Interleave; a variant that raises is skipped with the error, not fatal."""
    grp = results.groups[group]
    guarded: dict[str, Any] = {}
    for name, case in cases.items():
        guarded[name] = _guard(grp, name, case)
    await interleave(results, reps, guarded, warmup=WARMUP_ROUNDS)


def _failed(grp: Any, name: str, failed: list[str], exc: Exception) -> Sample:
    """A variant raised: drop its samples and skip it from now on, saying why."""
    failed.append(repr(exc))
    grp.figure(name).samples.clear()
    grp.skip(name, f"failed: {exc!r}")
    return {}


def _guard(grp: Any, name: str, case: Callable[[], Awaitable[Sample]]) -> Any:
    failed: list[str] = []

    async def guarded() -> Sample:
        if failed:
            return {}
        try:
            return await case()
        except Exception as exc:
            return _failed(grp, name, failed, exc)

    return guarded


def _uvloop_skipped(
    results: Results, name: str, title: str, reference: str, why: str | None
) -> None:
    """Record a uvloop group as skipped, saying why, instead of faking it."""
    grp = results.group(name, title, "ns", reference)
    grp.note = why or "uvloop skipped"
    grp.skip("uvloop", grp.note)


async def measure_dispatch(
    results: Results, settings: Settings, say: Progress, pin: CpuPin
) -> None:
    """W1: dispatches awaited from this loop, asyncio and uvloop worker loops."""
    with pin.applied():
        await _dispatch_group(
            results, settings, say, "dispatch", "asyncio", asyncio.new_event_loop, pin
        )
    uvloop, why = load("uvloop")
    if uvloop is None:
        _uvloop_skipped(
            results,
            "dispatch_uvloop",
            "W1u. Dispatch to a worker loop (uvloop)",
            RUN,
            why,
        )
        return
    with pin.applied():
        await _dispatch_group(
            results,
            settings,
            say,
            "dispatch_uvloop",
            "uvloop",
            attr(uvloop, "new_event_loop"),
            pin,
        )


# -- run_sync -----------------------------------------------------------------


def _timed_sync(calls: int, once: Callable[[], object], group: str) -> Any:
    def case() -> Sample:
        start = now_ns()
        for _ in range(calls):
            once()
        return {group: (now_ns() - start) / calls}

    return case


def _guard_sync(grp: Any, name: str, case: Callable[[], Sample]) -> Any:
    failed: list[str] = []

    def guarded() -> Sample:
        if failed:
            return {}
        try:
            return case()
        except Exception as exc:
            return _failed(grp, name, failed, exc)

    return guarded


def _run_sync_group(
    results: Results,
    settings: Settings,
    say: Progress,
    group: str,
    flavour: str,
    loop_factory: LoopFactory,
    uvloop: Any,
    pin: CpuPin,
) -> None:
    label = "W2" if uvloop is None else "W2u"
    worker_cls, worker_why = _worker_pool_class()
    anyio_from_thread, anyio_why = load("anyio")
    asgiref_sync, asgiref_why = load("asgiref")
    reference = RUN_SYNC if worker_cls is not None else RAW_SYNC
    grp = results.group(
        group,
        f"{label}. run_sync of a trivial coroutine from a plain thread ({flavour} "
        "worker loops)",
        "ns",
        reference,
    )
    grp.note = _sampling(settings, pin)
    if worker_cls is None:
        grp.note += f"; {RUN_SYNC} skipped, so ratios are to the raw warm loop"
    for name in (RUN_SYNC, RAW_SYNC):
        grp.figure(name)  # table order
    calls, cold = settings.dispatch_calls, settings.cold_calls
    cases: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        warm = LoopThread(loop_factory)
        stack.callback(warm.stop)
        cases[RAW_SYNC] = _timed_sync(
            calls,
            lambda: asyncio.run_coroutine_threadsafe(_noop(), warm.loop).result(),
            group,
        )
        if worker_cls is not None:
            try:
                loops = worker_cls(ttl=30.0, loop_factory=loop_factory)
            except Exception as exc:
                grp.skip(RUN_SYNC, f"WorkerLoopPool() failed: {exc!r}")
            else:
                stack.callback(_stop_quietly, loops, say)
                cases[RUN_SYNC] = _timed_sync(
                    calls, lambda: loops.run_sync(_noop), group
                )
        else:
            grp.skip(RUN_SYNC, worker_why or "skipped")
        portal_name = "anyio blocking portal"
        if anyio_from_thread is not None:
            options = {"use_uvloop": True} if uvloop is not None else {}
            portal = stack.enter_context(
                attr(anyio_from_thread, "start_blocking_portal")(
                    backend_options=options
                )
            )
            cases[portal_name] = _timed_sync(calls, lambda: portal.call(_noop), group)
        else:
            grp.skip(portal_name, anyio_why or "skipped")
        asgiref_name = "asgiref async_to_sync"
        if uvloop is not None:
            pass  # asgiref picks its own loop: only in the asyncio group
        elif asgiref_sync is not None:
            to_sync = attr(asgiref_sync, "async_to_sync")(_noop)
            cases[asgiref_name] = _timed_sync(cold, to_sync, group)
        else:
            grp.skip(asgiref_name, asgiref_why or "skipped")
        if uvloop is None:
            cases["asyncio.run per call"] = _timed_sync(
                cold, lambda: asyncio.run(_noop()), group
            )
        else:
            cases["uvloop.run per call"] = _timed_sync(
                cold, lambda: attr(uvloop, "run")(_noop()), group
            )
        say(f"W2 run_sync ({flavour})")
        interleave_sync(
            results,
            settings.dispatch_reps,
            {name: _guard_sync(grp, name, case) for name, case in cases.items()},
            warmup=WARMUP_ROUNDS,
        )


def _stop_quietly(loops: Any, say: Progress) -> None:
    """``await loops.stop()`` from this thread; a failure is reported, not fatal."""
    try:
        asyncio.run(loops.stop())
    except Exception as exc:
        say(f"WorkerLoopPool.stop() failed: {exc!r}")


def measure_run_sync(
    results: Results, settings: Settings, say: Progress, pin: CpuPin
) -> None:
    """W2: ``run_sync`` and its alternatives, from a thread with no loop."""
    with pin.applied():
        _run_sync_group(
            results,
            settings,
            say,
            "run_sync",
            "asyncio",
            asyncio.new_event_loop,
            None,
            pin,
        )
    uvloop, why = load("uvloop")
    if uvloop is None:
        _uvloop_skipped(
            results,
            "run_sync_uvloop",
            "W2u. run_sync from a plain thread (uvloop worker loops)",
            RUN_SYNC,
            why,
        )
        return
    with pin.applied():
        _run_sync_group(
            results,
            settings,
            say,
            "run_sync_uvloop",
            "uvloop",
            attr(uvloop, "new_event_loop"),
            uvloop,
            pin,
        )
