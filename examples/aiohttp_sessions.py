"""One warm ``aiohttp.ClientSession`` per base URL, kept by a ``ResourcePool``.

A ``ClientSession`` owns a connection pool, a cookie jar and DNS cache: it is
meant to live long and serve many requests. Creating one per request throws
all of that away (a new TCP, and maybe TLS, handshake every time); keeping
one forever leaks it when a host is no longer used. A ``ResourcePool`` keyed
by base URL keeps each session while it is in use and for ``ttl`` seconds
after its last request, then closes it.

A session kept warm can still go bad in two ways, and the pool has an
answer to each:

* Closed behind the pool's back. ``ClientSession`` is an async context
  manager itself, so ``async with pool.get(url) as s, s:`` (one ``s`` too
  many) closes the pool's session, and every later request through it
  fails with ``RuntimeError: Session is closed``. ``validate`` checks an
  idle session before it is handed out again: a closed one is retired
  (cause ``INVALID``) and a new one opened in its place.
* Never idle. Under steady traffic a session never reaches its ``ttl``, so
  it lives as long as the process: its kept-alive connections stay with
  the servers they first reached (a DNS change or a new backend behind a
  load balancer goes unseen) and its cookie jar only grows.
  ``max_lifetime`` recycles it: past that age it is no longer handed out,
  and it is closed once its last request is done (cause ``LIFETIME``).
  Each session's lifetime is drawn from the last tenth of
  ``max_lifetime``, so sessions opened together are not recycled together.

``on_remove`` is told of every session leaving the pool, and why.

Before (a session per request: a new handshake every time)::

    async def fetch(url):
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                return await response.text()

After::

    pool = ResourcePool(
        open_session,
        finalizer=close_session,
        ttl=60,                    # close a session unused for 60 s
        max_lifetime=300,          # recycle a session after about 5 minutes
        validate=session_is_open,  # never hand out a closed session
        on_remove=log_removal,     # log which session left the pool, and why
    )
    async with pool.get(base_url) as session, session.get(path) as response:
        body = await response.text()

Run it against any HTTP server::

    python examples/aiohttp_sessions.py http://127.0.0.1:8080/ http://127.0.0.1:8080/a

Each session belongs to the event loop that created it, which is the pool's
default (``per_loop=True``): a pool used from two loops keeps two sessions
per base URL, one per loop, and never hands one loop's session to another.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp

from ttlpool import PoolStats, RemovalCause, ResourcePool
from ttlpool.clock import Clock

__all__ = [
    "close_session",
    "fetch",
    "log_removal",
    "main",
    "open_session",
    "parse_args",
    "session_is_open",
    "session_pool",
]

log = logging.getLogger(__name__)


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


def session_is_open(session: aiohttp.ClientSession) -> bool:
    """The pool's ``validate``: may this idle session be handed out again?

    Not once it is closed (``closed`` is also true once its connector is).
    """
    return not session.closed


def log_removal(
    base_url: str, session: aiohttp.ClientSession, cause: RemovalCause
) -> None:
    """The pool's ``on_remove``: log the session leaving the pool, and why.

    A session found closed (``INVALID``) is a warning: some code closed a
    session it did not own.
    """
    level = logging.WARNING if cause is RemovalCause.INVALID else logging.INFO
    log.log(level, "session for %s left the pool: %s", base_url, cause.name)


def session_pool(
    *,
    ttl: float | None = 60.0,
    max_lifetime: float | None = 300.0,
    max_idle: int | None = 32,
    clock: Clock | None = None,
) -> ResourcePool[str, aiohttp.ClientSession]:
    """A pool of sessions keyed by base URL (``"http://host:port"``).

    A session nobody uses is closed ``ttl`` seconds after its last request,
    one older than ``max_lifetime`` seconds is replaced, a closed one is
    never handed out, and at most ``max_idle`` unused sessions stay open.
    ``clock`` is for tests (``ttlpool.testing.ManualClock``).
    """
    return ResourcePool(
        open_session,
        finalizer=close_session,
        ttl=ttl,
        max_lifetime=max_lifetime,
        max_idle=max_idle,
        validate=session_is_open,
        on_remove=log_removal,
        clock=clock,
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


async def main(
    urls: Sequence[str],
    *,
    rounds: int = 2,
    ttl: float | None = 60.0,
    max_lifetime: float | None = 300.0,
    clock: Clock | None = None,
) -> PoolStats:
    """Fetch every URL ``rounds`` times, concurrently within a round.

    Only the first round opens sessions (one per base URL); later rounds
    reuse them and their open connections. Leaving the ``async with``
    closes the pool, which closes every session. Returns the pool's final
    statistics. ``ttl``, ``max_lifetime`` and ``clock``: as for
    :func:`session_pool`.
    """
    async with session_pool(ttl=ttl, max_lifetime=max_lifetime, clock=clock) as pool:
        for round_number in range(1, rounds + 1):
            bodies = await asyncio.gather(*(fetch(pool, url) for url in urls))
            for url, body in zip(urls, bodies, strict=True):
                print(f"round {round_number}: {url}: {len(body)} characters")
        print(f"{pool.stats.created} sessions opened for {len(urls) * rounds} requests")
    return pool.stats


def absolute_url(text: str) -> str:
    """An argparse ``type``: a URL :func:`split_url` accepts, else a usage error."""
    try:
        split_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def seconds(text: str) -> float | None:
    """An argparse ``type``: seconds ``>= 0``; ``inf`` for no limit (``None``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, not {text!r}")
    return None if math.isinf(value) else value


def positive_seconds(text: str) -> float | None:
    """:func:`seconds`, but ``> 0``."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, not {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``URL [URL ...]`` and options; ``--help`` for usage."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").partition("\n")[0].replace("``", ""),
    )
    parser.add_argument(
        "urls", metavar="URL", nargs="+", type=absolute_url, help="an http(s) URL"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="how many times to fetch every URL (default: %(default)s)",
    )
    parser.add_argument(
        "--ttl",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="close a session unused this long; inf: never (default: %(default)s)",
    )
    parser.add_argument(
        "--max-lifetime",
        type=positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="replace a session this old; inf: never (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    return args


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    asyncio.run(
        main(
            args.urls, rounds=args.rounds, ttl=args.ttl, max_lifetime=args.max_lifetime
        )
    )
