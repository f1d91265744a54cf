"""Sessions in a real Redis: recorded under the prefix, shared by two gateways, outage-safe.

One Redis (our own, on a free port), one SDK everything upstream and two gateway processes
(A and B) on that Redis with the same key prefix.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from proxy.sessions.cache import LIVENESS_WINDOW
from testbed.processes import free_port, running
from testbed.redis_server import RedisServer, redis_server
from tests.helpers.clients import ACCEPT, handshake_headers, messages, sdk_session

pytestmark = pytest.mark.timeout(60)

PREFIX = "itest:"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.everything", "--host", "127.0.0.1"]
    with running([*cmd, "--port", str(port)], f"http://127.0.0.1:{port}/healthz"):
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def gateways(redis: RedisServer, upstream_url: str) -> Iterator[tuple[str, str]]:
    """The base URLs of gateways A and B, both on the same Redis."""
    with ExitStack() as stack:
        bases = []
        for _ in range(2):
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--upstream",
                upstream_url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--session-store",
                redis.url(),
                "--redis-key-prefix",
                PREFIX,
            ]
            base = f"http://127.0.0.1:{port}"
            stack.enter_context(running(cmd, f"{base}/healthz"))
            bases.append(base)
        yield bases[0], bases[1]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


async def call_simple_text(
    http: httpx.AsyncClient, url: str, session_id: str, rid: int
) -> tuple[int, dict[str, Any]]:
    """Raw tools/call `test_simple_text`; the status and the final JSON-RPC message."""
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "test_simple_text", "arguments": {}},
    }
    async with http.stream("POST", url, headers=handshake_headers(session_id), json=body) as resp:
        async for message in messages(resp):
            if "id" in message:
                return resp.status_code, message
    raise AssertionError("no JSON-RPC answer")


async def test_initialize_records_the_session_in_redis_under_the_prefix(
    gateways: tuple[str, str], redis: RedisServer, upstream_url: str
) -> None:
    a, _ = gateways
    async with sdk_session(f"{a}/mcp", "handshake") as (session, wire):
        (session_id,) = wire.session_ids
        key = f"{PREFIX}s:{{{session_id}}}"
        with redis.client() as client:
            record = client.hgetall(key)
            ttl_ms = client.pttl(key)
        replica, _, upstream_sid = record["default"].partition("\n")
        assert replica == upstream_url
        assert upstream_sid
        assert upstream_sid != session_id  # the client only ever sees the gateway's id
        assert 0 < ttl_ms <= 3600 * 1000
        result = await session.call_tool("test_simple_text", {})
        assert result.content[0].type == "text"


async def test_session_opened_on_gateway_a_is_served_by_gateway_b(
    gateways: tuple[str, str], http: httpx.AsyncClient
) -> None:
    a, b = gateways
    async with sdk_session(f"{a}/mcp", "handshake", terminate_on_close=False) as (session, wire):
        (session_id,) = wire.session_ids
        status, answer = await call_simple_text(http, f"{b}/mcp", session_id, 11)
        assert status == 200
        assert answer["id"] == 11
        assert answer["result"]["content"][0]["type"] == "text"
        assert answer["result"]["content"][0]["text"]
        # ...and the SDK client on A keeps working on the same session.
        result = await session.call_tool("test_simple_text", {})
        assert result.content[0].type == "text"

    # Ending the session on B ends it for A too.
    ended = await http.delete(f"{b}/mcp", headers=handshake_headers(session_id))
    assert ended.status_code in (200, 204)
    status, answer = await call_simple_text(http, f"{a}/mcp", session_id, 12)
    assert status == 404
    assert answer["error"]["code"] == -32001
    assert answer["id"] == 12


async def test_a_frozen_redis_is_a_503_within_two_seconds_too(
    gateways: tuple[str, str], redis: RedisServer, http: httpx.AsyncClient
) -> None:
    """Redis accepts connections but never answers (SIGSTOP): the socket timeout bounds it.

    A session that B has cached is answered from B's cache only until B's invalidation
    feed misses its heartbeat (``LIVENESS_WINDOW``); nothing can end it meanwhile, since
    ending a session needs Redis too. Runs before the restart tests below, so that B's
    pooled connections are live.
    """
    a, b = gateways
    async with sdk_session(f"{a}/mcp", "handshake", terminate_on_close=False) as (_, wire):
        (not_on_b,) = wire.session_ids
    async with sdk_session(f"{b}/mcp", "handshake", terminate_on_close=False) as (_, wire):
        (cached_on_b,) = wire.session_ids
    redis.pause()
    try:
        frozen = time.monotonic()
        body = {"jsonrpc": "2.0", "id": 21, "method": "tools/list"}
        response = await http.post(f"{b}/mcp", headers=handshake_headers(not_on_b), json=body)
        assert time.monotonic() - frozen < 2.0
        assert response.status_code == 503
        assert (response.json()["id"], response.json()["error"]["code"]) == (21, -32004)

        while True:
            started = time.monotonic()
            response = await http.post(
                f"{b}/mcp", headers=handshake_headers(cached_on_b), json=body
            )
            assert time.monotonic() - started < 2.0
            if response.status_code == 503:
                break
            assert response.status_code == 200
            assert time.monotonic() - frozen < LIVENESS_WINDOW + 0.5, "cache still answering"
            await asyncio.sleep(0.05)
        assert (response.json()["id"], response.json()["error"]["code"]) == (21, -32004)
    finally:
        redis.resume()
    for session_id in (not_on_b, cached_on_b):
        status, answer = await call_simple_text(http, f"{b}/mcp", session_id, 22)
        assert status == 200, answer
        assert answer["id"] == 22


async def test_redis_outage_is_a_quick_503_and_the_gateway_recovers_by_itself(
    gateways: tuple[str, str], redis: RedisServer, http: httpx.AsyncClient
) -> None:
    a, _ = gateways
    async with sdk_session(f"{a}/mcp", "handshake", terminate_on_close=False) as (_, wire):
        (session_id,) = wire.session_ids
    assert (await http.get(f"{a}/readyz")).status_code == 200

    redis.stop()
    try:
        started = time.monotonic()
        body = {"jsonrpc": "2.0", "id": "during-outage", "method": "tools/list"}
        response = await http.post(f"{a}/mcp", headers=handshake_headers(session_id), json=body)
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json() == {
            "jsonrpc": "2.0",
            "id": "during-outage",
            "error": {"code": -32004, "message": "Session store unavailable"},
        }
        assert elapsed < 2.0

        started = time.monotonic()
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        response = await http.post(f"{a}/mcp", headers={"accept": ACCEPT}, json=init)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == -32004
        assert response.json()["id"] == 1
        assert time.monotonic() - started < 2.0

        readyz = await http.get(f"{a}/readyz")
        assert readyz.status_code == 503
        assert "session store" in readyz.text
    finally:
        redis.start()  # same port; nothing was persisted

    deadline = time.monotonic() + 5.0
    while (await http.get(f"{a}/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "gateway did not become ready after Redis returned"
        await asyncio.sleep(0.1)
    async with sdk_session(f"{a}/mcp", "handshake") as (session, _):
        result = await session.call_tool("test_simple_text", {})
        assert result.content[0].type == "text"
    # The old session died with the unpersisted Redis: the client is told to re-initialise.
    status, answer = await call_simple_text(http, f"{a}/mcp", session_id, 13)
    assert (status, answer["error"]["code"]) == (404, -32001)


async def test_a_gateway_idle_during_a_redis_restart_serves_its_next_request(
    gateways: tuple[str, str], redis: RedisServer, http: httpx.AsyncClient
) -> None:
    """Gateway B holds pooled Redis connections, sees no traffic while Redis restarts, and
    must not fail its next request on a dead pooled connection."""
    _, b = gateways
    async with sdk_session(f"{b}/mcp", "handshake") as (session, _):
        await session.call_tool("test_simple_text", {})
    redis.restart()
    async with sdk_session(f"{b}/mcp", "handshake") as (session, _):
        result = await session.call_tool("test_simple_text", {})
        assert result.content[0].type == "text"
