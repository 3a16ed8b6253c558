"""Run code in a forked child and bring its report back: one helper for the
fork tests of every module.

The child runs ``asyncio.run(child())``, writes the JSON of the dict it
returns (or its traceback) to a pipe and leaves with ``os._exit``, running
no ``atexit`` hook and no ``finally`` of the parent's frames. The parent
reads the pipe for at most ``timeout`` seconds (then kills the child),
reaps it, and fails the test unless the child exited cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

__all__ = ["report_from_child"]


def report_from_child(
    child: Callable[[], Coroutine[Any, Any, dict[str, Any]]], *, timeout: float
) -> dict[str, Any]:
    """Fork; return what ``asyncio.run(child())`` returned in the child."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running atexit
        code = 1
        try:
            os.close(read_fd)
            report = asyncio.run(child())
            os.write(write_fd, json.dumps(report).encode())
            code = 0
        except BaseException:
            os.write(write_fd, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    output, exit_code = _read_child(pid, read_fd, timeout)
    if exit_code != 0:
        pytest.fail(f"the forked child failed:\n{output.decode(errors='replace')}")
    report: dict[str, Any] = json.loads(output)
    return report


def _read_child(pid: int, read_fd: int, timeout: float) -> tuple[bytes, int]:
    """The child's output and exit code; the child is killed after ``timeout``."""
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 0.1)
            if ready:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks), os.waitstatus_to_exitcode(status)
