"""Plain threads hammering one ``SyncResourcePool`` (SPEC 11), a few seeds.

The machinery and what it checks are in :mod:`tests.hammer_sync`: 8 to 16
worker threads on 2 to 4 keys, ``clear`` and ``close`` from another thread
while they run, idle TTLs of 0 and a few milliseconds (the reaper thread
at work), the lifecycle options in half the modes; then every resource
created was finalized exactly once, none was handed out after its
finalizer began, and no thread is left. Each seed picks its mode
(``hammer_sync.MODES``): two seeds per mode here. ``python -m tests.stress``
runs many more (``--only sync`` for these alone; ``--seed N`` reruns one).
"""

from __future__ import annotations

import pytest

from tests import hammer_sync

SEEDS = range(1, 2 * len(hammer_sync.MODES) + 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_threads_hammering_a_sync_pool(seed: int) -> None:
    ttl, lifecycle, ending = hammer_sync.MODES[seed % len(hammer_sync.MODES)]
    stats = hammer_sync.run_sync_hammer(seed, ttl, lifecycle, ending)
    assert stats.created and stats.hits, stats
