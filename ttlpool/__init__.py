"""ttlpool: keyed, reference-counted async resources kept warm for an idle TTL.

See :class:`ResourcePool` for the contract and :class:`WorkerLoopPool` for
warm event loops on daemon threads.
"""

from ttlpool.errors import PoolClosedError
from ttlpool.pool import Resource, ResourcePool
from ttlpool.stats import PoolStats

__all__ = ["PoolClosedError", "PoolStats", "Resource", "ResourcePool"]

__version__ = "0.1.0"
