"""Offload loop-blocking work to a warm worker event loop.

Some code blocks the event loop that runs it: a legacy client doing
blocking I/O inside ``async def``, a library that calls
``loop.run_until_complete`` itself, a CPU-heavy parse. Run on the
application's loop, it stalls every other task (and here, the server that
would answer it). The old fix was a new event loop and thread per call:
correct, but about 3.4x the cost of a warm loop, and every call paid
thread start-up and loop teardown. ``WorkerLoopPool`` keeps the loop and its
thread warm between calls and reaps them once idle for ``ttl`` seconds.

Run it against any HTTP server::

    python examples/worker_loops.py http://127.0.0.1:8080/ http://127.0.0.1:8080/a

Before (a new loop and thread per call)::

    def fetch_in_new_loop(url):
        result = []
        work = lambda: result.append(asyncio.run(fetch_blocking(url)))
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        return result[0]

After::

    loops = WorkerLoopPool(ttl=30)
    body = await loops.run(fetch_blocking, url)   # from async code
    body = loops.run_sync(fetch_blocking, url)    # from a plain thread
    await loops.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import urllib.request
from collections.abc import Sequence

from ttlpool import WorkerLoopPool

__all__ = ["fetch_all", "fetch_blocking", "main", "parse_args"]


async def fetch_blocking(url: str) -> tuple[str, str]:
    """Legacy code: an ``async def`` that blocks its loop with sync I/O.

    Returns the body and the name of the thread that ran it.
    """
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    return body, threading.current_thread().name


async def fetch_all(
    loops: WorkerLoopPool, urls: Sequence[str]
) -> list[tuple[str, str]]:
    """Fetch each URL on the warm worker loop, one after another."""
    return [await loops.run(fetch_blocking, url) for url in urls]


async def main(urls: Sequence[str]) -> None:
    async with WorkerLoopPool(ttl=30, name="example-worker") as loops:
        for body, thread in await fetch_all(loops, urls):
            print(f"{thread}: {body[:60]!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``URL [URL ...]``; ``--help`` for usage."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").partition("\n")[0].replace("``", ""),
    )
    parser.add_argument(
        "urls", metavar="URL", nargs="+", help="a URL for urllib to fetch"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args().urls))
