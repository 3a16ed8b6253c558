"""The examples in ``examples/``, run against real peers on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import importlib.util
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp import web

from ttlpool import PoolClosedError, RemovalCause
from ttlpool.testing import ManualClock

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path (the examples are scripts)."""
    spec = importlib.util.spec_from_file_location(
        f"ttlpool_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sessions = load_example("aiohttp_sessions")
worker_loops = load_example("worker_loops")
http_clients = load_example("http_clients")


# -- a real HTTP server on loopback -------------------------------------------


async def peer_port(request: web.Request) -> web.Response:
    """Answer with the client's TCP port: equal ports mean one kept-alive connection."""
    transport = request.transport
    assert transport is not None
    return web.Response(text=str(transport.get_extra_info("peername")[1]))


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Start aiohttp servers on 127.0.0.1 with a free port; stop them at teardown."""
    runners: list[web.AppRunner] = []

    async def start() -> str:
        app = web.Application()
        app.router.add_get("/peer", peer_port)
        app.router.add_get("/hello", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def base_urls(start_server: Callable[[], Awaitable[str]]) -> tuple[str, str]:
    """Two servers, so two base URLs."""
    first = await start_server()
    second = await start_server()
    return first, second


# -- the aiohttp sessions example ---------------------------------------------


async def test_one_session_per_base_url_reused_across_requests(
    base_urls: tuple[str, str],
) -> None:
    a, b = base_urls
    pool = sessions.session_pool(ttl=30, clock=ManualClock())
    try:
        ports = {await sessions.fetch(pool, f"{a}/peer") for _ in range(3)}
        assert len(ports) == 1, "requests to one base URL share a kept-alive connection"
        assert pool.stats.created == 1
        assert await sessions.fetch(pool, f"{a}/hello") == "hello"
        assert pool.stats.created == 1

        async with pool.get(a) as first, pool.get(a) as second:
            assert first is second
            assert isinstance(first, aiohttp.ClientSession)
            async with pool.get(b) as other:
                assert other is not first
        assert await sessions.fetch(pool, f"{b}/hello") == "hello"
        assert pool.stats.created == 2
        assert a in pool and b in pool
    finally:
        await pool.aclose()


async def test_idle_session_is_closed_by_the_finalizer_after_ttl(
    base_urls: tuple[str, str],
) -> None:
    a, _ = base_urls
    clock = ManualClock()
    pool = sessions.session_pool(ttl=30, clock=clock)
    try:
        await sessions.fetch(pool, f"{a}/hello")
        async with pool.get(a) as session:
            pass

        await clock.advance(29.5)
        assert not session.closed
        assert a in pool
        assert await sessions.fetch(pool, f"{a}/hello") == "hello"  # warm: a hit

        await clock.advance(29.5)  # 29.5 s since that last request: still warm
        assert not session.closed
        await clock.advance(0.5)
        assert session.closed
        assert a not in pool
        assert pool.stats.expired == 1
        assert pool.stats.finalized == 1

        # The next request opens a new session.
        assert await sessions.fetch(pool, f"{a}/hello") == "hello"
        async with pool.get(a) as fresh:
            assert fresh is not session
            assert not fresh.closed
        assert pool.stats.created == 2
    finally:
        await pool.aclose()
    assert fresh.closed


async def test_aclose_closes_every_session_idle_or_in_use(
    base_urls: tuple[str, str],
) -> None:
    a, b = base_urls
    pool = sessions.session_pool(ttl=None)
    await sessions.fetch(pool, f"{a}/hello")
    async with pool.get(a) as idle:
        pass
    async with pool.get(b) as in_use:
        await pool.aclose()
        assert in_use.closed
    assert idle.closed
    assert len(pool) == 0
    assert pool.stats.finalized == 2
    with pytest.raises(PoolClosedError):
        await sessions.fetch(pool, f"{a}/hello")


async def test_main_fetches_every_url_through_one_session_per_base_url(
    base_urls: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = base_urls
    urls = [f"{a}/hello", f"{b}/hello", f"{a}/peer"]
    stats = await sessions.main(urls, rounds=2)
    assert stats.created == 2  # one session per base URL, for six requests
    assert stats.finalized == 2  # both closed when main's pool closed
    assert stats.total_entries == 0
    out = capsys.readouterr().out
    assert f"round 2: {a}/hello: 5 characters" in out
    assert "2 sessions opened for 6 requests" in out


def removals(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """What the example's ``on_remove`` logged: (level, message) pairs."""
    return [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if record.name == sessions.log.name
    ]


async def test_a_session_closed_behind_the_pools_back_is_replaced(
    base_urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = base_urls
    caplog.set_level(logging.INFO, logger=sessions.log.name)
    pool = sessions.session_pool(ttl=30, clock=ManualClock())
    try:
        # The mistake the module doc warns of: one ``s`` too many.
        async with pool.get(a) as stale, stale:
            assert await sessions.fetch(pool, f"{a}/hello") == "hello"
        assert stale.closed
        assert a in pool  # idle, and the pool has not looked at it yet
        assert removals(caplog) == []

        assert await sessions.fetch(pool, f"{a}/hello") == "hello"
        async with pool.get(a) as fresh:
            assert fresh is not stale
            assert not fresh.closed
        assert pool.stats.created == 2
        assert pool.stats.removed.invalid == 1
        assert pool.stats.removed[RemovalCause.INVALID] == 1
        assert pool.stats.finalized == 1  # the finalizer ran on it all the same
        assert removals(caplog) == [
            (logging.WARNING, f"session for {a} left the pool: INVALID")
        ]
    finally:
        await pool.aclose()
    assert fresh.closed


async def test_an_idle_session_past_max_lifetime_is_not_reused(
    base_urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = base_urls
    caplog.set_level(logging.INFO, logger=sessions.log.name)
    clock = ManualClock()
    pool = sessions.session_pool(ttl=3600, max_lifetime=300, clock=clock)
    try:
        assert await sessions.fetch(pool, f"{a}/hello") == "hello"
        async with pool.get(a) as old:
            pass

        # Every lifetime is drawn from the last tenth: 270 s to 300 s.
        await clock.advance(269)
        async with pool.get(a) as same:
            assert same is old
        assert pool.stats.removed.lifetime == 0

        await clock.advance(32)  # 301 s: older than any lifetime drawn
        assert await sessions.fetch(pool, f"{a}/hello") == "hello"
        async with pool.get(a) as new:
            assert new is not old
            assert not new.closed
        assert old.closed
        assert pool.stats.created == 2
        assert pool.stats.removed.lifetime == 1
        assert pool.stats.removed[RemovalCause.LIFETIME] == 1
        assert pool.stats.finalized == 1
        assert removals(caplog) == [
            (logging.INFO, f"session for {a} left the pool: LIFETIME")
        ]
    finally:
        await pool.aclose()
    assert new.closed


async def test_a_session_in_use_past_max_lifetime_is_closed_at_its_last_release(
    base_urls: tuple[str, str],
) -> None:
    a, _ = base_urls
    clock = ManualClock()
    pool = sessions.session_pool(ttl=3600, max_lifetime=300, clock=clock)
    try:
        async with pool.get(a) as old:
            await clock.advance(301)
            async with pool.get(a) as new:
                assert new is not old  # too old to be handed out again...
                assert not old.closed  # ...but not taken from its holder
                async with old.get("/hello") as response:
                    assert await response.text() == "hello"
            assert pool.stats.removed.lifetime == 0
            assert not old.closed
        # The last release of the old session closes it; the new one stays.
        assert old.closed
        assert pool.stats.removed.lifetime == 1
        assert pool.stats.finalized == 1
        assert not new.closed
        async with pool.get(a) as again:
            assert again is new
        assert pool.stats.created == 2
    finally:
        await pool.aclose()


async def test_main_logs_every_session_leaving_the_pool(
    base_urls: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = base_urls
    caplog.set_level(logging.INFO, logger=sessions.log.name)
    stats = await sessions.main(
        [f"{a}/hello", f"{b}/hello"], ttl=30, max_lifetime=60, clock=ManualClock()
    )
    assert stats.created == 2
    assert stats.removed.cleared == 2  # closing the pool closed both
    assert sorted(removals(caplog)) == sorted(
        (logging.INFO, f"session for {url} left the pool: CLEARED") for url in (a, b)
    )
    assert "2 sessions opened for 4 requests" in capsys.readouterr().out


def test_split_url_keys_by_scheme_host_and_port() -> None:
    assert sessions.split_url("http://127.0.0.1:8/a/b?c=1") == (
        "http://127.0.0.1:8",
        "/a/b?c=1",
    )
    assert sessions.split_url("https://example.org") == ("https://example.org", "/")
    with pytest.raises(ValueError, match="absolute"):
        sessions.split_url("/relative")


# -- the worker-loop example ----------------------------------------------------


async def test_worker_loop_example_offloads_blocking_loop_work(
    start_server: Callable[[], Awaitable[str]],
) -> None:
    """``examples/worker_loops.py`` against a real server on loopback.

    The server runs on the test's own loop, so the blocking fetch can only
    complete if it runs elsewhere: on the warm worker loop, the same
    thread for every call, gone after ``stop()``.
    """
    base = await start_server()
    urls = [f"{base}/hello"] * 3
    async with worker_loops.WorkerLoopPool(ttl=30, name="example-worker") as loops:
        results = await asyncio.wait_for(worker_loops.fetch_all(loops, urls), 30)
    assert [body for body, _ in results] == ["hello"] * 3
    assert len({thread for _, thread in results}) == 1
    assert results[0][1].startswith("example-worker-")
    assert not [t for t in threading.enumerate() if t.name.startswith("example-worker")]


# -- the command lines ------------------------------------------------------------

SCRIPTS = ["aiohttp_sessions", "worker_loops"]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>.py`` as a script, as a user would."""
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def summary_of(module: ModuleType) -> str:
    """The first line of a module's doc, as ``--help`` shows it."""
    assert module.__doc__
    return module.__doc__.partition("\n")[0].replace("``", "")


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_prints_the_usage_and_the_summary_and_exits_0(name: str) -> None:
    result = run_script(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    assert "URL [URL ...]" in result.stdout
    summary = summary_of(sessions if name == "aiohttp_sessions" else worker_loops)
    assert summary in " ".join(result.stdout.split())  # argparse rewraps it
    assert result.stderr == ""


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_url_is_a_usage_error(name: str) -> None:
    result = run_script(name)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: ")
    assert "the following arguments are required: URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_relative_url_is_a_usage_error_not_a_traceback() -> None:
    result = run_script("aiohttp_sessions", "http://127.0.0.1:1/", "/relative")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ")
    assert "not an absolute http(s) URL: '/relative'" in result.stderr
    assert "Traceback" not in result.stderr


def test_rounds_must_be_positive() -> None:
    with pytest.raises(SystemExit) as exited:
        sessions.parse_args(["--rounds", "0", "http://127.0.0.1:1/"])
    assert exited.value.code == 2
    assert sessions.parse_args(["--rounds", "3", "http://h:1/a"]).rounds == 3


def test_ttl_and_max_lifetime_options() -> None:
    url = "http://127.0.0.1:1/"
    args = sessions.parse_args([url])
    assert (args.ttl, args.max_lifetime) == (60.0, 300.0)
    args = sessions.parse_args(["--ttl", "0", "--max-lifetime", "inf", url])
    assert (args.ttl, args.max_lifetime) == (0.0, None)
    for bad in (
        ["--ttl", "-1"],
        ["--ttl", "nan"],
        ["--max-lifetime", "soon"],
        ["--max-lifetime", "0"],
    ):
        with pytest.raises(SystemExit) as exited:
            sessions.parse_args([*bad, url])
        assert exited.value.code == 2


async def run_script_async(name: str, *args: str) -> tuple[int, str, str]:
    """:func:`run_script`, awaited: for a child that talks to this test's
    loop (a server on it), which must keep running meanwhile."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / f"{name}.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), 60)
    finally:
        if child.returncode is None:  # only if it hung: do not leave it behind
            child.kill()
            await child.wait()
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("name", SCRIPTS)
async def test_script_fetches_from_a_real_server(
    name: str, start_server: Callable[[], Awaitable[str]]
) -> None:
    """The whole script, command line to exit status, against a real server."""
    base = await start_server()
    url = f"{base}/hello"
    returncode, out, err = await run_script_async(name, url)
    assert returncode == 0, err
    lines = out.splitlines()
    if name == "aiohttp_sessions":
        assert lines == [
            f"round 1: {url}: 5 characters",
            f"round 2: {url}: 5 characters",
            "1 sessions opened for 2 requests",
        ]
        assert err.splitlines() == [f"INFO: session for {base} left the pool: CLEARED"]
    else:
        assert len(lines) == 1
        assert lines[0].startswith("example-worker-")
        assert lines[0].endswith(": 'hello'")


async def test_sessions_script_passes_its_ttl_to_the_pool(
    start_server: Callable[[], Awaitable[str]],
) -> None:
    """``--ttl 0``: a session is closed as its request ends, so each of the
    two rounds opens its own."""
    base = await start_server()
    url = f"{base}/hello"
    returncode, out, err = await run_script_async(
        "aiohttp_sessions", "--ttl", "0", "--max-lifetime", "inf", url
    )
    assert returncode == 0, err
    assert out.splitlines()[-1] == "2 sessions opened for 2 requests"
    assert err.splitlines() == [f"INFO: session for {base} left the pool: RELEASED"] * 2


# -- the thread-pool HTTP clients example ---------------------------------------


class CountingHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: answers ``GET path`` with ``"<server> <path>"``.

    ``/bye`` is answered, then the connection is closed without saying so
    (no ``Connection: close``), as a server's keep-alive timeout would.
    """

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without TCP_NODELAY the body
    # waits for a delayed ACK, 40 ms per request on Linux.
    disable_nagle_algorithm = True
    server: CountingServer

    def do_GET(self) -> None:
        server = self.server
        with server.changed:
            server.requests += 1
        body = f"{server.name} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/bye":
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log on stderr


class CountingServer(http.server.ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 (a free port), served by a thread of
    its own (a thread per connection), that counts the TCP connections it
    accepted and the ones it has closed."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), CountingHandler)
        self.name = name
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self.changed = threading.Condition()
        self.opened = self.closed = self.requests = 0
        self.live: set[socket.socket] = set()
        self.thread = threading.Thread(
            target=self.serve_forever, args=(0.01,), name=f"server-{name}"
        )
        self.thread.start()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self.changed:
            self.opened += 1
            self.live.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        super().shutdown_request(request)  # closes it (after its handler ended)
        with self.changed:
            self.live.discard(request)
            self.closed += 1
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` (of the counters) is true; whether it is."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def stop(self) -> None:
        """Stop serving, cut the connections still open, join every thread."""
        self.shutdown()
        self.thread.join()
        with self.changed:
            live = list(self.live)
        for request in live:  # a handler blocked on a kept-alive connection
            with contextlib.suppress(OSError):  # closed meanwhile
                request.shutdown(socket.SHUT_RDWR)
        assert self.wait_for(lambda: not self.live), "handlers did not end"
        self.server_close()


@pytest.fixture
def http_server() -> Iterator[Callable[[str], CountingServer]]:
    """Start named :class:`CountingServer`\\ s; stop them at teardown."""
    servers: list[CountingServer] = []

    def start(name: str) -> CountingServer:
        server = CountingServer(name)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


REAPER = "ttlpool-reaper-http-clients"


def reaper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == REAPER]


def test_http_clients_main_shares_one_client_per_host_across_threads(
    http_server: Callable[[str], CountingServer], capsys: pytest.CaptureFixture[str]
) -> None:
    alpha, beta, gamma = (http_server(name) for name in ("alpha", "beta", "gamma"))
    a, b, c = alpha.base_url, beta.base_url, gamma.base_url
    expected = {
        f"{a}/one": b"alpha /one",
        f"{b}/two": b"beta /two",
        f"{c}/three?x=1": b"gamma /three?x=1",
        f"{a}/four": b"alpha /four",
    }
    summary = http_clients.main(list(expected), workers=8, requests=24)

    assert len(summary.outcomes) == 96
    assert sorted(url for url, _ in summary.outcomes) == sorted(list(expected) * 24)
    for url, response in summary.outcomes:
        assert isinstance(response, http_clients.Response), (url, response)
        assert (response.status, response.body) == (200, expected[url])
        assert response.connection == 1  # every request on the first connection
    assert summary.failed == 0

    stats = summary.stats
    assert stats.created == 3  # one client per base URL, for 96 requests
    assert stats.hits + stats.misses == 96
    assert stats.finalized == stats.removed.cleared == 3  # closed with the pool
    assert stats.total_entries == 0
    assert not reaper_threads()  # closing the pool joined it

    # The servers' side: one kept-alive connection each, closed at the end.
    assert (alpha.requests, beta.requests, gamma.requests) == (48, 24, 24)
    for server in (alpha, beta, gamma):
        assert server.opened == 1
        assert server.wait_for(lambda s=server: s.closed == 1)  # type: ignore[misc]

    assert capsys.readouterr().out.splitlines() == [
        f"{a}: 48 requests over 1 connection; 200 OK: 48",
        f"{b}: 24 requests over 1 connection; 200 OK: 24",
        f"{c}: 24 requests over 1 connection; 200 OK: 24",
        "3 clients created for 96 requests on 8 threads; 3 closed",
    ]


def test_threads_holding_one_client_at_once_take_turns(
    http_server: Callable[[str], CountingServer],
) -> None:
    """Eight threads hold the same client at the same time (a barrier inside
    the lease) and all send at once: its lock serializes them on one
    connection."""
    server = http_server("alpha")
    pool = http_clients.client_pool(ttl=30, clock=ManualClock())
    all_inside = threading.Barrier(8, timeout=5)
    results: dict[int, tuple[object, object]] = {}

    def work(n: int) -> None:
        with pool.get(server.base_url) as client:
            all_inside.wait()
            results[n] = (client, client.get(f"/{n}"))

    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(client) for client, _ in results.values()}) == 1
        for n, (_, response) in results.items():
            assert isinstance(response, http_clients.Response)
            assert (response.body, response.connection) == (f"alpha /{n}".encode(), 1)
        assert len(results) == 8
        assert pool.stats.created == 1
        assert server.opened == 1
    finally:
        pool.close()


def test_idle_client_is_closed_after_ttl_by_the_clock(
    http_server: Callable[[str], CountingServer],
) -> None:
    server = http_server("alpha")
    a = server.base_url
    clock = ManualClock()
    pool = http_clients.client_pool(ttl=30, clock=clock)
    try:
        assert http_clients.fetch(pool, f"{a}/x").body == b"alpha /x"
        with pool.get(a) as client:
            pass

        clock.advance(29.5)
        assert not client.closed
        assert http_clients.fetch(pool, f"{a}/y").connection == 1  # warm: a hit
        clock.advance(29.5)  # 29.5 s since that last request: still warm
        assert not client.closed
        assert a in pool
        assert server.closed == 0

        clock.advance(0.5)  # reaped in this thread, before advance returns
        assert client.closed
        assert a not in pool
        assert pool.stats.removed.idle == pool.stats.expired == 1
        assert server.wait_for(lambda: server.closed == 1)

        assert http_clients.fetch(pool, f"{a}/z").body == b"alpha /z"
        with pool.get(a) as fresh:
            assert fresh is not client
        assert pool.stats.created == 2
        assert server.opened == 2
    finally:
        pool.close()
    assert fresh.closed
    assert server.wait_for(lambda: server.closed == 2)


def test_reaper_thread_closes_an_idle_client_once_its_ttl_passed(
    http_server: Callable[[str], CountingServer],
) -> None:
    """The real clock: a reaper thread starts when the client goes idle,
    closes it no earlier than ``ttl`` after the release, and ends."""
    server = http_server("alpha")
    a = server.base_url
    ttl = 0.05
    removed: list[tuple[object, RemovalCause, float]] = []
    pool = http_clients.client_pool(
        ttl=ttl,
        on_remove=lambda _, c, cause: removed.append((c, cause, time.monotonic())),
    )
    try:
        with pool.get(a) as client:
            assert client.get("/x").body == b"alpha /x"
            released = time.monotonic()  # a lower bound of the release time
        assert server.wait_for(lambda: server.closed == 1)  # the finalizer ran
        for reaper in reaper_threads():
            reaper.join(5)  # nothing is idle any more: it ends
        assert not reaper_threads()
        assert client.closed
        assert a not in pool
        assert [(c, cause) for c, cause, _ in removed] == [(client, RemovalCause.IDLE)]
        assert removed[0][2] >= released + ttl
        assert pool.stats.finalized == pool.stats.expired == 1
    finally:
        pool.close()


def test_a_client_whose_connection_the_server_closed_is_replaced(
    http_server: Callable[[str], CountingServer],
) -> None:
    server = http_server("alpha")
    a = server.base_url
    causes: list[RemovalCause] = []
    pool = http_clients.client_pool(
        ttl=30,
        clock=ManualClock(),
        on_remove=lambda _k, _c, cause: causes.append(cause),
    )
    try:
        with pool.get(a) as client:
            assert client.get("/bye").body == b"alpha /bye"
        assert server.wait_for(lambda: server.closed == 1)
        assert client.connection_broken(timeout=5)  # its end of file has arrived
        assert a in pool  # idle: nobody has looked at it yet

        response = http_clients.fetch(pool, f"{a}/hello")
        assert (response.body, response.connection) == (b"alpha /hello", 1)
        assert client.closed
        with pool.get(a) as fresh:
            assert fresh is not client
        assert causes == [RemovalCause.INVALID]
        assert pool.stats.removed.invalid == 1
        assert pool.stats.created == 2
        assert server.opened == 2
    finally:
        pool.close()


def test_a_client_closed_behind_the_pools_back_is_replaced(
    http_server: Callable[[str], CountingServer],
) -> None:
    a = http_server("alpha").base_url
    pool = http_clients.client_pool(ttl=30, clock=ManualClock())
    try:
        with pool.get(a) as client:
            client.close()  # not the lease holder's to close
            with pytest.raises(RuntimeError, match="is closed"):
                client.get("/x")
        assert http_clients.fetch(pool, f"{a}/x").body == b"alpha /x"
        assert pool.stats.removed.invalid == 1
        assert pool.stats.created == 2
    finally:
        pool.close()


def test_a_busy_client_sends_a_get_again_on_a_new_connection(
    http_server: Callable[[str], CountingServer],
) -> None:
    """Held all along, so never validated: the client itself finds its
    kept-alive connection closed by the server and reconnects, once."""
    server = http_server("alpha")
    pool = http_clients.client_pool(ttl=30, clock=ManualClock())
    try:
        with pool.get(server.base_url) as client:
            assert client.get("/bye").connection == 1
            assert server.wait_for(lambda: server.closed == 1)
            response = client.get("/again")
            assert (response.body, response.connection) == (b"alpha /again", 2)
            assert client.connections_opened == 2
        assert (server.opened, server.requests) == (2, 2)
        assert pool.stats.created == 1
    finally:
        pool.close()


def test_main_reports_a_host_that_refuses_and_goes_on(
    http_server: Callable[[str], CountingServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """A new connection that fails is not retried: each request says why."""
    a = http_server("alpha").base_url
    with socket.socket() as unused:  # bound, never listening: refuses
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
        summary = http_clients.main([f"{a}/ok", f"{dead}/x"], workers=4, requests=5)
    assert summary.failed == 5
    for url, result in summary.outcomes:
        if url.startswith(dead):
            assert isinstance(result, ConnectionRefusedError)
        else:
            assert isinstance(result, http_clients.Response)
    assert summary.stats.created == 2  # a client for the dead host too, once
    assert capsys.readouterr().out.splitlines() == [
        f"{a}: 5 requests over 1 connection; 200 OK: 5",
        f"{dead}: 5 requests over 0 connections; ConnectionRefusedError: 5",
        "2 clients created for 10 requests on 4 threads; 2 closed",
    ]


def test_http_clients_key_by_scheme_host_and_port() -> None:
    split = http_clients.split_url
    assert split("http://127.0.0.1:8/a/b?c=1") == ("http://127.0.0.1:8", "/a/b?c=1")
    assert split("http://Example.ORG") == ("http://example.org:80", "/")
    assert split("https://example.org/x") == ("https://example.org:443", "/x")
    assert split("http://[::1]:8080/") == ("http://[::1]:8080", "/")
    for bad in ("/relative", "ftp://h/x", "http://h:99999/", "http://u:p@h/"):
        with pytest.raises(ValueError):
            split(bad)
    assert repr(http_clients.HostClient("https://example.org:443")) == (
        "<HostClient https://example.org:443 open>"
    )


def test_http_clients_help_and_usage_errors() -> None:
    result = run_script("http_clients", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    for text in ("URL [URL ...]", "--workers N", "--requests N", "--ttl SECONDS"):
        assert text in result.stdout
    assert summary_of(http_clients) in " ".join(result.stdout.split())
    assert result.stderr == ""

    for args, message in (
        ([], "the following arguments are required: URL"),
        (["ftp://h/x"], "not an absolute http(s) URL: 'ftp://h/x'"),
    ):
        result = run_script("http_clients", *args)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.startswith("usage: ")
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_http_clients_options() -> None:
    url = "http://127.0.0.1:1/"
    args = http_clients.parse_args([url])
    assert (args.urls, args.workers, args.requests, args.ttl) == ([url], 8, 10, 30.0)
    args = http_clients.parse_args(
        ["--workers", "3", "--requests", "2", "--ttl", "inf", url, url]
    )
    assert (args.urls, args.workers, args.requests, args.ttl) == (
        [url, url],
        3,
        2,
        None,
    )
    for bad in (
        ["--workers", "x"],
        ["--requests", "0"],
        ["--requests", "-3"],
        ["--ttl", "-1"],
        ["--ttl", "nan"],
        ["http://h:port/"],
    ):
        with pytest.raises(SystemExit) as exited:
            http_clients.parse_args([*bad, url])
        assert exited.value.code == 2


def test_http_clients_script_against_real_servers(
    http_server: Callable[[str], CountingServer],
) -> None:
    """The whole script, command line to exit status, against two servers."""
    alpha, beta = http_server("alpha"), http_server("beta")
    result = run_script(
        "http_clients",
        "--workers",
        "8",
        "--requests",
        "12",
        f"{alpha.base_url}/a",
        f"{beta.base_url}/b",
        f"{alpha.base_url}/c",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{alpha.base_url}: 24 requests over 1 connection; 200 OK: 24",
        f"{beta.base_url}: 12 requests over 1 connection; 200 OK: 12",
        "2 clients created for 36 requests on 8 threads; 2 closed",
    ]
    assert result.stderr == ""
    assert (alpha.opened, beta.opened) == (1, 1)
    assert (alpha.requests, beta.requests) == (24, 12)
