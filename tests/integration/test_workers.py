"""Several Granian workers in one gateway share their sessions through Redis: a session
opened by one worker works from any other, and ends for all of them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from testbed.processes import free_port, running
from testbed.redis_server import redis_server
from tests.helpers.clients import handshake_headers, raw_initialize
from tests.helpers.gateways import Upstream, start_upstream

pytestmark = [pytest.mark.scale, pytest.mark.timeout(90)]

SESSIONS = 24
CALLS = 6


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with ExitStack() as stack:
        yield start_upstream(stack, "workers-upstream")


@pytest.fixture(scope="module")
def gateway(upstream: Upstream) -> Iterator[tuple[str, int]]:
    """A two-worker gateway on Redis: its MCP URL and its main process id."""
    with redis_server() as redis, ExitStack() as stack:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--upstream",
            upstream.url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--session-store",
            redis.url(),
            "--workers",
            "2",
        ]
        proc = stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
        yield f"http://127.0.0.1:{port}/mcp", proc.pid


def _workers(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def _fresh(method: str, url: str, **kwargs: object) -> httpx.Response:
    """One request on a connection of its own, so that any worker may accept it."""
    async with httpx.AsyncClient(timeout=20) as http:
        return await http.request(method, url, **kwargs)  # type: ignore[arg-type]


async def test_sessions_opened_by_one_worker_work_from_the_others(
    gateway: tuple[str, int],
) -> None:
    url, pid = gateway
    workers = _workers(pid)
    assert len(workers) == 2
    before = {w: _cpu_ticks(w) for w in workers}

    async def one_session(n: int) -> list[int]:
        async with httpx.AsyncClient(timeout=20) as http:
            sid = await raw_initialize(http, url)
        statuses = []
        call = {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}},
        }
        for _ in range(CALLS):
            answer = await _fresh("POST", url, json=call, headers=handshake_headers(sid))
            statuses.append(answer.status_code)
            assert '"result"' in answer.text, answer.text
        ended = await _fresh("DELETE", url, headers=handshake_headers(sid))
        statuses.append(ended.status_code)
        gone = await _fresh("POST", url, json=call, headers=handshake_headers(sid))
        statuses.append(gone.status_code)
        return statuses

    results = await asyncio.gather(*(one_session(n) for n in range(SESSIONS)))
    assert all(r == [200] * CALLS + [200, 404] for r in results), results
    # Both workers answered some of them (fresh connections spread over the workers).
    used = {w: _cpu_ticks(w) - before[w] for w in workers}
    assert all(ticks > 0 for ticks in used.values()), used
