"""How much work each mode does (``--smoke``, ``--quick``, full)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["MODES", "Settings"]


@dataclass(frozen=True)
class Settings:
    mode: str
    #: Repetitions of the fast figures (hits, churn, tasks, dispatches).
    reps: int
    #: Leases per sample of a hot-path figure.
    batch: int
    #: Rounds of 100 concurrent tasks per sample.
    task_rounds: int
    #: Repetitions of the slow-factory figures, and how slow the factory is.
    slow_reps: int
    slow_delay: float
    #: Idle entries of the memory and ``stats`` figures, and child runs each.
    memory_entries: int
    memory_reps: int
    #: Reaping: entries, their TTL, repetitions.
    reap_entries: int
    reap_ttl: float
    reap_reps: int
    #: Cached keys of the "flat at scale" figure.
    scale_keys: int
    #: Dispatch figures (W1, W2): calls per sample to a warm loop, and to a
    #: new loop per call; rounds, each taking one sample of every variant.
    #: Many short samples in alternation, not a few long ones: a ratio is
    #: taken within a round, so a slow moment of the machine (or a thread
    #: the OS moved) touches both sides of it.
    dispatch_calls: int
    cold_calls: int
    dispatch_reps: int

    def with_reps(self, reps: int) -> Settings:
        """Every repetition count set to ``reps`` (the ``--reps`` flag)."""
        return dataclasses.replace(
            self,
            reps=reps,
            slow_reps=reps,
            memory_reps=reps,
            reap_reps=reps,
            dispatch_reps=reps,
        )


MODES = {
    "smoke": Settings(
        mode="smoke",
        reps=2,
        batch=200,
        task_rounds=2,
        slow_reps=1,
        slow_delay=0.02,
        memory_entries=2_000,
        memory_reps=1,
        reap_entries=500,
        reap_ttl=0.02,
        reap_reps=1,
        scale_keys=5_000,
        dispatch_calls=5,
        cold_calls=1,
        dispatch_reps=3,
    ),
    "quick": Settings(
        mode="quick",
        reps=11,
        batch=5_000,
        task_rounds=10,
        slow_reps=3,
        slow_delay=0.2,
        memory_entries=100_000,
        memory_reps=1,
        reap_entries=10_000,
        reap_ttl=0.05,
        reap_reps=3,
        scale_keys=1_000_000,
        dispatch_calls=20,
        cold_calls=2,
        dispatch_reps=150,
    ),
    "full": Settings(
        mode="full",
        reps=31,
        batch=20_000,
        task_rounds=40,
        slow_reps=7,
        slow_delay=0.2,
        memory_entries=100_000,
        memory_reps=3,
        reap_entries=10_000,
        reap_ttl=0.05,
        reap_reps=9,
        scale_keys=1_000_000,
        dispatch_calls=20,
        cold_calls=2,
        dispatch_reps=500,
    ),
}
