"""The examples in ``examples/``, run against real peers on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
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
