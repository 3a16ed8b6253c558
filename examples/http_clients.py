"""One thread-safe HTTP client per host, shared by threads, in a ``SyncResourcePool``.

A ``concurrent.futures.ThreadPoolExecutor`` calling a few HTTP hosts should
not open a connection per request (a TCP, and maybe TLS, handshake every
time), nor keep one forever for a host it stopped calling. A
``SyncResourcePool`` keyed by base URL (scheme, host and port) keeps one
client per host while threads use it and for ``ttl`` seconds after its last
request; then the pool's reaper thread closes it. Only the standard
library is used: ``http.client.HTTPConnection``, kept alive (HTTP/1.1).

Thread safety. An ``HTTPConnection`` is not thread-safe: it carries one
request at a time, and a response must be read before the next request is
sent. A pool does not lend a resource to one thread at a time: every
thread that holds a key holds the same object at once (the pool counts
references, it does not check objects out). So the pooled resource here is
:class:`HostClient`, one ``HTTPConnection`` and a ``threading.Lock`` that
serializes the requests to its host: safe to share. Requests to one host
go one at a time over one kept-alive connection; requests to different
hosts run in parallel. (For parallel requests to one host, key the pool
by ``(base_url, slot)`` for a few slots.)

A connection kept alive can break, and there is an answer to each case:

* While the client sits idle (the server's keep-alive timeout, a restart):
  ``validate`` looks at an idle client before it is handed out again. A
  client whose connection the server closed (its socket is readable while
  no request is in flight: an end of file, or bytes nobody asked for), or
  a client closed behind the pool's back, is dropped (cause ``INVALID``)
  and a new one made in its place.
* While it is in use (a busy client is never idle, so never validated), or
  between ``validate`` and the request: the client sends a request again,
  once, on a new connection if the kept-alive one turns out to be closed
  (``RemoteDisconnected``, a reset, a broken pipe). Only ``GET`` is
  offered, because only an idempotent request may be sent twice. A new
  connection that fails is not retried.

Before (a connection per request)::

    def fetch(url):
        with urllib.request.urlopen(url) as response:
            return response.read()

After::

    pool = SyncResourcePool(
        HostClient,               # one client per base URL, made on a miss
        finalizer=close_client,   # close its connection
        ttl=30,                   # ...once unused for 30 s, in the reaper thread
        validate=client_is_usable,  # never hand out a broken client
    )
    with pool.get("http://127.0.0.1:8000") as client:
        response = client.get("/path")
    pool.close()

Run it against any HTTP servers::

    python examples/http_clients.py --workers 8 --requests 20 \\
        http://127.0.0.1:8000/ http://127.0.0.1:8001/a

It prints, per host, how many requests went over how many connections and
what came back, then how many clients the pool created: one per host.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import math
import selectors
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import urlsplit

from ttlpool import PoolStats, RemovalCause, SyncResourcePool
from ttlpool.clock import Clock

__all__ = [
    "HostClient",
    "Outcome",
    "Response",
    "Summary",
    "client_is_usable",
    "client_pool",
    "close_client",
    "describe",
    "fetch",
    "fetch_all",
    "main",
    "parse_args",
    "split_url",
]

#: A kept-alive connection found closed by the server when reused (no
#: answer, or a reset): a ``GET``, idempotent, may be sent again on a new
#: connection.
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


@dataclass(frozen=True)
class Response:
    """A response, read in full: ``connection`` is the ordinal (1, 2, ...)
    of the client's connection that carried it."""

    base_url: str
    path: str
    status: int
    reason: str
    body: bytes
    connection: int


class HostClient:
    """A thread-safe HTTP/1.1 client for one base URL (``scheme://host:port``).

    It holds one ``HTTPConnection``, opened on the first request and kept
    alive, and a lock that lets one request at a time use it: any number
    of threads may share the client. A response the server marks
    ``Connection: close`` closes the connection; the next request opens a
    new one. Once :meth:`close` is called every request raises
    ``RuntimeError``.
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a base URL (scheme://host:port): {base_url!r}")
        connection_class = {
            "http": http.client.HTTPConnection,
            "https": http.client.HTTPSConnection,
        }[parts.scheme]
        host, port = parts.hostname, parts.port  # no port: the scheme's
        self._connect: Callable[[], http.client.HTTPConnection] = lambda: (
            connection_class(host, port, timeout=timeout)
        )
        self.base_url = base_url
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._closed = False
        self._connections = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def connections_opened(self) -> int:
        """How many connections this client has opened so far."""
        return self._connections

    def get(self, path: str) -> Response:
        """``GET path`` on the client's host; the whole response.

        Waits for the requests of other threads to this host first. If the
        kept-alive connection turns out to be closed by the server, the
        request is sent once more on a new connection. Any other error
        (refused, timed out, a malformed response) closes the connection
        and is raised; the next request opens a new one.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the client for {self.base_url} is closed")
            reused = self._connection is not None
            try:
                return self._round_trip(path)
            except _STALE:
                if not reused:
                    raise
            return self._round_trip(path)  # on a new connection

    def _round_trip(self, path: str) -> Response:
        """One request and its response, under ``_lock``."""
        if self._connection is None:
            self._connection = self._connect()
            self._connections += 1
        connection = self._connection
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        except BaseException:
            self._drop_connection()  # in an unknown state: never reused
            raise
        if response.will_close:
            self._drop_connection()
        return Response(
            self.base_url,
            path,
            response.status,
            response.reason,
            body,
            self._connections,
        )

    def _drop_connection(self) -> None:
        """Close the connection, under ``_lock``."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def connection_broken(self, timeout: float = 0.0) -> bool:
        """Whether the idle kept-alive connection can no longer be used.

        It can't once it is readable with no request in flight: the server
        closed it (an end of file) or sent bytes nobody asked for. Waits up
        to ``timeout`` seconds for that. No connection (none opened yet, or
        the last one closed) is not broken: the next request opens one.
        """
        with self._lock:
            connection = self._connection
            sock: socket.socket | None = None if connection is None else connection.sock
            if sock is None:
                return False
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                return bool(selector.select(timeout))

    def close(self) -> None:
        """Close the connection (after the request in flight, if any) and
        refuse every later request. Idempotent."""
        with self._lock:
            self._closed = True
            self._drop_connection()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<HostClient {self.base_url} {state}>"


def close_client(client: HostClient) -> None:
    """The pool's finalizer: close the client and its connection."""
    client.close()


def client_is_usable(client: HostClient) -> bool:
    """The pool's ``validate``: may this idle client be handed out again?

    Not once it is closed, nor once the server closed its connection.
    """
    return not client.closed and not client.connection_broken()


def client_pool(
    *,
    ttl: float | None = 30.0,
    clock: Clock | None = None,
    on_remove: Callable[[str, HostClient, RemovalCause], object] | None = None,
) -> SyncResourcePool[str, HostClient]:
    """A pool of clients keyed by base URL (``"http://host:port"``).

    A client nobody uses is closed ``ttl`` seconds after its last request
    (``None``: when the pool closes), by the reaper thread
    ``ttlpool-reaper-http-clients``; a broken one is never handed out.
    ``clock`` is for tests (``ttlpool.testing.ManualClock``).
    """
    return SyncResourcePool(
        HostClient,
        finalizer=close_client,
        ttl=ttl,
        validate=client_is_usable,
        on_remove=on_remove,
        clock=clock,
        name="http-clients",
    )


def split_url(url: str) -> tuple[str, str]:
    """``"http://H:80/a?b"`` -> ``("http://h:80", "/a?b")``: the pool key
    (scheme, host and port, always with the port) and the rest."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"credentials in a URL are not supported: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"not a valid port in {url!r}") from None
    if port is None:
        port = 80 if parts.scheme == "http" else 443
    host = parts.hostname
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + parts.query
    return f"{parts.scheme}://{host}:{port}", rest


def fetch(pool: SyncResourcePool[str, HostClient], url: str) -> Response:
    """GET ``url`` with the client of its base URL."""
    base_url, path = split_url(url)
    with pool.get(base_url) as client:
        return client.get(path)


#: A URL and what fetching it gave: a response or an error.
Outcome: TypeAlias = tuple[str, Response | Exception]


def fetch_all(
    pool: SyncResourcePool[str, HostClient],
    urls: Sequence[str],
    *,
    workers: int,
    requests: int,
) -> list[Outcome]:
    """Fetch every URL ``requests`` times on ``workers`` threads, all at
    once; what each request gave, in the order they were submitted."""
    with ThreadPoolExecutor(workers, thread_name_prefix="http-clients") as executor:
        futures: list[tuple[str, Future[Response]]] = [
            (url, executor.submit(fetch, pool, url))
            for _ in range(requests)
            for url in urls
        ]
    outcomes: list[Outcome] = []
    for url, future in futures:
        try:
            outcomes.append((url, future.result()))
        except Exception as exc:
            outcomes.append((url, exc))
    return outcomes


@dataclass(frozen=True)
class Summary:
    """What :func:`main` did: every request's outcome and the pool's final
    statistics (taken once it closed)."""

    outcomes: list[Outcome]
    stats: PoolStats

    @property
    def failed(self) -> int:
        """How many requests got no response."""
        return sum(isinstance(result, Exception) for _, result in self.outcomes)


def describe(outcomes: Sequence[Outcome]) -> list[str]:
    """One line per base URL: requests, connections used, what came back."""
    by_host: dict[str, list[Response | Exception]] = collections.defaultdict(list)
    for url, result in outcomes:
        by_host[split_url(url)[0]].append(result)
    lines: list[str] = []
    for base_url, results in by_host.items():
        connections = {r.connection for r in results if isinstance(r, Response)}
        kinds = collections.Counter(
            f"{r.status} {r.reason}" if isinstance(r, Response) else type(r).__name__
            for r in results
        )
        what = ", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items()))
        lines.append(
            f"{base_url}: {len(results)} requests over {len(connections)} "
            f"connection{'s' if len(connections) != 1 else ''}; {what}"
        )
    return lines


def main(
    urls: Sequence[str],
    *,
    workers: int = 8,
    requests: int = 10,
    ttl: float | None = 30.0,
    clock: Clock | None = None,
) -> Summary:
    """Fetch every URL ``requests`` times on ``workers`` threads; print
    what each host answered and how many clients the pool created.

    The threads share one client per base URL. Leaving the ``with`` closes
    the pool, which closes every client. ``ttl`` and ``clock``: as for
    :func:`client_pool`.
    """
    with client_pool(ttl=ttl, clock=clock) as pool:
        outcomes = fetch_all(pool, urls, workers=workers, requests=requests)
    for line in describe(outcomes):
        print(line)
    stats = pool.stats
    print(
        f"{stats.created} clients created for {len(outcomes)} requests on "
        f"{workers} threads; {stats.finalized} closed"
    )
    return Summary(outcomes, stats)


def absolute_url(text: str) -> str:
    """An argparse ``type``: a URL :func:`split_url` accepts, else a usage error."""
    try:
        split_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer ``>= 1``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def seconds(text: str) -> float | None:
    """An argparse ``type``: seconds ``>= 0``; ``inf`` for no limit (``None``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, not {text!r}")
    return None if math.isinf(value) else value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``URL [URL ...]`` and options; ``--help`` for usage."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").partition("\n")[0].replace("``", ""),
    )
    parser.add_argument(
        "urls", metavar="URL", nargs="+", type=absolute_url, help="an http(s) URL"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=8,
        metavar="N",
        help="threads sharing the clients (default: %(default)s)",
    )
    parser.add_argument(
        "--requests",
        type=positive_int,
        default=10,
        metavar="N",
        help="how many times to fetch every URL (default: %(default)s)",
    )
    parser.add_argument(
        "--ttl",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="close a client unused this long; inf: never (default: %(default)s)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    summary = main(
        args.urls, workers=args.workers, requests=args.requests, ttl=args.ttl
    )
    sys.exit(1 if summary.failed else 0)
