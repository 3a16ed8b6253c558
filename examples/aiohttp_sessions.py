"""One warm ``aiohttp.ClientSession`` per base URL, kept by a ``ResourcePool``.

A ``ClientSession`` owns a connection pool, a cookie jar and DNS cache: it is
meant to live long and serve many requests. Creating one per request throws
all of that away (a new TCP, and maybe TLS, handshake every time); keeping
one forever leaks it when a host is no longer used. A ``ResourcePool`` keyed
by base URL keeps each session while it is in use and for ``ttl`` seconds
after its last request, then closes it.

Run it against any HTTP server::

    python examples/aiohttp_sessions.py http://127.0.0.1:8080/ http://127.0.0.1:8080/a

Each session belongs to the event loop that created it, which is the pool's
default (``per_loop=True``): a pool used from two loops keeps two sessions
per base URL, one per loop, and never hands one loop's session to another.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp

from ttlpool import PoolStats, ResourcePool
from ttlpool.clock import Clock

__all__ = ["close_session", "fetch", "main", "open_session", "session_pool"]


async def open_session(base_url: str) -> aiohttp.ClientSession:
    """The pool's factory: a session for URLs relative to ``base_url``."""
    return aiohttp.ClientSession(
        base_url=base_url,
        timeout=aiohttp.ClientTimeout(total=30),
        raise_for_status=True,
    )


async def close_session(session: aiohttp.ClientSession) -> None:
    """The pool's finalizer: close the session and its connections."""
    await session.close()


def session_pool(
    *, ttl: float | None = 60.0, max_idle: int | None = 32, clock: Clock | None = None
) -> ResourcePool[str, aiohttp.ClientSession]:
    """A pool of sessions keyed by base URL (``"http://host:port"``).

    A session nobody uses is closed ``ttl`` seconds after its last request,
    and at most ``max_idle`` unused sessions stay open. ``clock`` is for
    tests (``ttlpool.testing.ManualClock``).
    """
    return ResourcePool(
        open_session, finalizer=close_session, ttl=ttl, max_idle=max_idle, clock=clock
    )


def split_url(url: str) -> tuple[str, str]:
    """``"http://h:1/a?b"`` -> ``("http://h:1", "/a?b")``: the pool key and the rest."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + parts.query
    return f"{parts.scheme}://{parts.netloc}", rest


async def fetch(pool: ResourcePool[str, aiohttp.ClientSession], url: str) -> str:
    """GET ``url`` through the warm session of its base URL; return the body."""
    base_url, rest = split_url(url)
    async with pool.get(base_url) as session, session.get(rest) as response:
        return await response.text()


async def main(urls: Sequence[str], *, rounds: int = 2) -> PoolStats:
    """Fetch every URL ``rounds`` times, concurrently within a round.

    Only the first round opens sessions (one per base URL); later rounds
    reuse them and their open connections. Leaving the ``async with``
    closes the pool, which closes every session. Returns the pool's final
    statistics.
    """
    async with session_pool() as pool:
        for round_number in range(1, rounds + 1):
            bodies = await asyncio.gather(*(fetch(pool, url) for url in urls))
            for url, body in zip(urls, bodies, strict=True):
                print(f"round {round_number}: {url}: {len(body)} characters")
        print(f"{pool.stats.created} sessions opened for {len(urls) * rounds} requests")
    return pool.stats


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} URL [URL ...]")
    asyncio.run(main(sys.argv[1:]))
