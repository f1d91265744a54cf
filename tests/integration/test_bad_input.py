"""Every bad input gets its exact HTTP status, JSON-RPC code and id, and harms nothing after.

Gateways (``python -m proxy serve``) run in front of the SDK everything server, a slow
upstream (``testbed.servers.slow``) and a port where nothing listens. After each bad input the
same gateway must still serve a normal request.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from testbed.processes import free_port, running
from tests.helpers.clients import ACCEPT, raw_initialize

pytestmark = pytest.mark.timeout(60)

MAX_BODY = 4096
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


@dataclass(frozen=True)
class Gw:
    base: str
    upstream_port: int

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"


def _gateway(stack: ExitStack, upstream_port: int, *options: str) -> Gw:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--upstream",
        f"http://127.0.0.1:{upstream_port}/mcp",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *options,
    ]
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(running(cmd, f"{base}/healthz"))
    return Gw(base, upstream_port)


def _everything(stack: ExitStack, port: int | None = None) -> int:
    port = port or free_port()
    cmd = [sys.executable, "-m", "testbed.servers.everything", "--host", "127.0.0.1"]
    stack.enter_context(running([*cmd, "--port", str(port)], f"http://127.0.0.1:{port}/healthz"))
    return port


@pytest.fixture(scope="module")
def stack() -> Iterator[ExitStack]:
    with ExitStack() as processes:
        yield processes


@pytest.fixture(scope="module")
def gateway(stack: ExitStack) -> Gw:
    return _gateway(stack, _everything(stack), "--max-body-size", str(MAX_BODY))


@pytest.fixture(scope="module")
def slow_gateway(stack: ExitStack) -> Gw:
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.slow", "--port", str(port), "--delay", "10"]
    stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
    return _gateway(stack, port, "--upstream-timeout", "0.5")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


async def post(
    http: httpx.AsyncClient, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST `body` (bytes as is, else JSON); the status and the decoded JSON answer."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"content-type": "application/json", "accept": ACCEPT, **(headers or {})}
    response = await http.post(url, content=content, headers=hdrs)
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("application/json"), (response.status_code, response.text)
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


def error_of(answer: dict[str, Any]) -> tuple[int, Any]:
    assert answer["jsonrpc"] == "2.0"
    assert set(answer) == {"jsonrpc", "id", "error"}
    return answer["error"]["code"], answer["id"]


async def still_serves(http: httpx.AsyncClient, gw: Gw) -> None:
    """A normal exchange works on the same gateway (a fresh handshake session)."""
    session_id = await raw_initialize(http, gw.url)
    assert session_id


# -- the body ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"{bad json", b'{"jsonrpc":"2.0","id":1,', b"\xff\xfe{}", b""], ids=repr
)
async def test_malformed_json_is_400_parse_error(
    http: httpx.AsyncClient, gateway: Gw, body: bytes
) -> None:
    status, answer = await post(http, gateway.url, body)
    assert (status, *error_of(answer)) == (400, -32700, None)
    await still_serves(http, gateway)


@pytest.mark.parametrize(
    "body",
    [{"hello": "world"}, [], 42, "initialize", {"jsonrpc": "2.0"}],
    ids=["object", "empty-batch", "number", "string", "no-method"],
)
async def test_json_that_is_not_a_jsonrpc_envelope_is_400_invalid_request(
    http: httpx.AsyncClient, gateway: Gw, body: Any
) -> None:
    status, answer = await post(http, gateway.url, body)
    assert (status, *error_of(answer)) == (400, -32600, None)
    await still_serves(http, gateway)


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "1.0", "id": 7, "method": "ping"},
        {"jsonrpc": "2.0", "id": 7},
        {"jsonrpc": "2.0", "id": 7, "method": 12},
    ],
    ids=["wrong-version", "neither-method-nor-result", "method-not-a-string"],
)
async def test_invalid_envelope_with_an_id_echoes_that_id(
    http: httpx.AsyncClient, gateway: Gw, body: Any
) -> None:
    status, answer = await post(http, gateway.url, body)
    assert (status, *error_of(answer)) == (400, -32600, 7)
    await still_serves(http, gateway)


async def test_body_over_the_limit_is_413(http: httpx.AsyncClient, gateway: Gw) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * MAX_BODY}}
    status, answer = await post(http, gateway.url, body)
    assert (status, *error_of(answer)) == (413, -32005, None)
    await still_serves(http, gateway)


async def test_body_exactly_at_the_limit_is_accepted(http: httpx.AsyncClient, gateway: Gw) -> None:
    session_id = await raw_initialize(http, gateway.url)
    head = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"'
    body = head + b"x" * (MAX_BODY - len(head) - 3) + b'"}}'
    assert len(body) == MAX_BODY
    headers = {"mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"}
    headers |= {"accept": ACCEPT, "content-type": "application/json"}
    response = await http.post(gateway.url, content=body, headers=headers)
    assert response.status_code == 200, response.text


async def test_chunked_body_over_the_limit_is_413(http: httpx.AsyncClient, gateway: Gw) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"'
        for _ in range(16):  # 256 KiB in all, far past the limit: the tail is never read
            yield b"x" * 16384
        yield b'"}}'

    response = await http.post(
        gateway.url, content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert error_of(response.json()) == (-32005, None)
    await still_serves(http, gateway)


async def test_declared_length_over_the_limit_is_refused_without_reading_the_body(
    http: httpx.AsyncClient, gateway: Gw
) -> None:
    host, port = gateway.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /mcp HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n" % (host.encode(), port.encode())
        )
        await writer.drain()  # not one byte of the announced 100 MB follows
        async with asyncio.timeout(2.0):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert error_of(orjson.loads(body)) == (-32005, None)
    await still_serves(http, gateway)


# -- who is asking ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "http://localhost.evil.example:8787"},
        {"origin": "http://[::1"},
        {"host": "evil.example"},
    ],
    ids=["foreign-origin", "lookalike-origin", "unparsable-origin", "foreign-host"],
)
async def test_disallowed_origin_or_host_is_403(
    http: httpx.AsyncClient, gateway: Gw, headers: dict[str, str]
) -> None:
    status, answer = await post(http, gateway.url, PING, headers)
    # Refused before the body is read, so no id can be echoed.
    assert (status, *error_of(answer)) == (403, -32006, None)
    await still_serves(http, gateway)


async def test_unknown_session_is_404_with_the_request_id(
    http: httpx.AsyncClient, gateway: Gw
) -> None:
    body = {"jsonrpc": "2.0", "id": "req-404", "method": "tools/list"}
    headers = {"mcp-session-id": "no-such-session", "mcp-protocol-version": "2025-11-25"}
    status, answer = await post(http, gateway.url, body, headers)
    assert (status, *error_of(answer)) == (404, -32001, "req-404")
    await still_serves(http, gateway)


# -- the upstream -------------------------------------------------------------------------------


async def test_unreachable_upstream_is_502_and_the_gateway_recovers_when_it_comes(
    http: httpx.AsyncClient, stack: ExitStack
) -> None:
    dead_port = free_port()  # nothing listens here yet
    gw = _gateway(stack, dead_port, "--probe-interval", "0.2")
    body = {"jsonrpc": "2.0", "id": 502, "method": "ping"}
    status, answer = await post(http, gw.url, body)
    assert (status, *error_of(answer)) == (502, -32002, 502)

    _everything(stack, dead_port)  # the upstream appears on that port
    deadline = time.monotonic() + 5.0
    while (await http.get(f"{gw.base}/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "the probe did not mark the upstream up again"
        await asyncio.sleep(0.1)
    await still_serves(http, gw)


async def test_upstream_timeout_is_504_with_the_request_id(
    http: httpx.AsyncClient, slow_gateway: Gw
) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": "slow-1",
        "method": "tools/call",
        "params": {"name": "slow", "arguments": {}},
    }
    started = time.monotonic()
    status, answer = await post(http, slow_gateway.url, body)
    elapsed = time.monotonic() - started
    assert (status, *error_of(answer)) == (504, -32003, "slow-1")
    assert 0.4 < elapsed < 3.0
    # The same gateway still relays an upstream that answers in time.
    fast = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "fast", "arguments": {}},
    }
    status, answer = await post(http, slow_gateway.url, fast)
    assert (status, answer) == (200, {"jsonrpc": "2.0", "id": 2, "result": {}})
