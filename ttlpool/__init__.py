"""ttlpool: keyed, reference-counted async resources kept warm for an idle TTL.

See :class:`ResourcePool` for the contract, :class:`SyncResourcePool` for
the same pool in plain threads, and :class:`WorkerLoopPool` for warm event
loops on daemon threads.
"""

from ttlpool.drain import DrainReport, drain_tasks
from ttlpool.errors import PoolClosedError
from ttlpool.pool import Resource, ResourcePool
from ttlpool.stats import PoolStats, RemovalCause, Removals
from ttlpool.sync import SyncResource, SyncResourcePool
from ttlpool.worker import WorkerLoopPool

__all__ = [
    "DrainReport",
    "PoolClosedError",
    "PoolStats",
    "RemovalCause",
    "Removals",
    "Resource",
    "ResourcePool",
    "SyncResource",
    "SyncResourcePool",
    "WorkerLoopPool",
    "drain_tasks",
]

__version__ = "0.1.0"
