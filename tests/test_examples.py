"""The examples in ``examples/``, run against real peers on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp import web

from ttlpool import PoolClosedError
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
