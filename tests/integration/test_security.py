"""Attacks on the gateway's edges, each reproduced against running gateways with real parts:
official-SDK upstreams, a hostile raw-HTTP upstream (``testbed.servers.hostile``), Redis.

A client that smuggles requests into a backend, a backend that smuggles answers to
clients or forges another backend's, clients and backends that hold resources open or
send without end, and headers that must not pass as they came.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from testbed.processes import cpu_seconds, free_port, rss_bytes, running
from testbed.redis_server import redis_server
from tests.helpers.clients import ACCEPT, HANDSHAKE, handshake_headers, raw_initialize

pytestmark = [pytest.mark.scale, pytest.mark.timeout(180)]

MiB = 1 << 20
TOKEN = "Bearer secret-token-1234"  # noqa: S105 - a test credential
COOKIE = "sid=cookie-secret-5678"


@dataclass(frozen=True)
class Gw:
    base: str
    pid: int

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"


def _hostile(stack: ExitStack, *options: str) -> str:
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.hostile", "--port", str(port), *options]
    stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
    return f"http://127.0.0.1:{port}"


def _sdk(stack: ExitStack, name: str) -> str:
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.streaming", "--port", str(port), "--name", name]
    stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
    return f"http://127.0.0.1:{port}"


def _gateway(
    stack: ExitStack,
    *options: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Gw:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "info",
        *options,
    ]
    base = f"http://127.0.0.1:{port}"
    proc = stack.enter_context(running(cmd, f"{base}/healthz", env, timeout=60, log=log))
    return Gw(base, proc.pid)


def _federation(tmp: Path, backends: list[str]) -> str:
    path = tmp / "gateway.yaml"
    path.write_text("backends:\n" + "".join(backends) + "list_timeout: 3\n")
    return str(path)


@dataclass(frozen=True)
class Parts:
    alpha: str  # SDK upstream (base URL): behind `single`, and `a_` in the federation
    beta: str  # SDK upstream: `b_` in the federation
    hostile: str  # hostile upstream: behind `hostile`, and `h_` in the federation
    single: Gw  # one SDK backend, default settings
    hostile_gw: Gw  # one hostile backend, default settings
    federated: Gw  # a_ (whoami only, takes credentials), b_, h_


@pytest.fixture(scope="module")
def processes() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="module")
def parts(processes: ExitStack, tmp_path_factory: pytest.TempPathFactory) -> Parts:
    alpha, beta = _sdk(processes, "alpha"), _sdk(processes, "beta")
    hostile = _hostile(processes)
    config = _federation(
        tmp_path_factory.mktemp("federation"),
        [
            f"  - {{name: alpha, prefix: a_, replicas: ['{alpha}/mcp'], "
            "tools: {allow: [whoami]}, forward_credentials: true}\n",
            f"  - {{name: beta, prefix: b_, replicas: ['{beta}/mcp']}}\n",
            f"  - {{name: hostile, prefix: h_, replicas: ['{hostile}/mcp']}}\n",
        ],
    )
    return Parts(
        alpha,
        beta,
        hostile,
        _gateway(processes, "--upstream", f"{alpha}/mcp"),
        _gateway(processes, "--upstream", f"{hostile}/mcp"),
        _gateway(processes, "--config", config, "--max-answer-size", str(40 * MiB)),
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


def call_body(name: str, rid: int = 7, **arguments: Any) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


async def call(
    http: httpx.AsyncClient, url: str, sid: str, name: str, rid: int = 7, **arguments: Any
) -> httpx.Response:
    body = call_body(name, rid, **arguments)
    return await http.post(url, headers=handshake_headers(sid), json=body)


def result_text(response: httpx.Response) -> str:
    """The text of a tools/call answer, JSON or event stream."""
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [ln[5:].strip() for ln in text.splitlines() if ln.startswith("data:")]
        messages = [json.loads(d) for d in data if d]
        answer = next(m for m in messages if "id" in m)
    else:
        answer = json.loads(text)
    return str(answer["result"]["content"][0]["text"])


def assert_rpc_error(response: httpx.Response, status: int, rid: int = 7) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["id"] == rid and "error" in body, body


async def seen_headers(http: httpx.AsyncClient, upstream: str) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = (await http.get(f"{upstream}/seen-headers")).json()["requests"]
    return requests


# -- 1. request smuggling through Last-Event-ID ---------------------------------------------


async def test_last_event_id_cannot_inject_headers_or_requests_into_a_backend(
    parts: Parts, http: httpx.AsyncClient
) -> None:
    gw = parts.federated
    sid = await raw_initialize(http, gw.url)
    assert "alpha" in result_text(await call(http, gw.url, sid, "a_whoami"))  # opens alpha
    denied = await call(http, gw.url, sid, "a_linger", marker="smuggled", seconds=0)
    assert "Unknown tool" in denied.text  # the allow list refuses it through the gateway

    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": "linger", "arguments": {"marker": "smuggled", "seconds": 0}, "_meta": meta}
    smuggled_body = json.dumps(
        {"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": params}
    )
    smuggled = (
        "x\r\n\r\nPOST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"accept: {ACCEPT}\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\n"
        f"mcp-name: linger\r\ncontent-length: {len(smuggled_body)}\r\n\r\n{smuggled_body}"
    )
    for event_id in ("x\r\nX-Injected: yes", smuggled, "x\x00y"):
        headers = handshake_headers(sid) | {"last-event-id": "alpha=" + quote(event_id, safe="")}
        response = await http.get(gw.url, headers=headers)
        assert response.status_code == 400, response.text
        assert "Last-Event-ID" in response.json()["error"]["message"]
    await asyncio.sleep(0.5)
    assert (await http.get(f"{parts.alpha}/linger/smuggled")).status_code == 404  # never ran
    assert not any("x-injected" in r["headers"] for r in await seen_headers(http, parts.alpha))


# -- 2. pool exhaustion -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pools(processes: ExitStack, parts: Parts) -> Gw:
    return _gateway(
        processes,
        "--upstream",
        f"{parts.alpha}/mcp",
        "--max-connections",
        "2",
        "--max-streams",
        "2",
        "--pool-timeout",
        "1",
    )


async def test_open_streams_do_not_starve_other_sessions(
    small_pools: Gw, http: httpx.AsyncClient
) -> None:
    async with AsyncExitStack() as streams:
        for _ in range(2):
            sid = await raw_initialize(http, small_pools.url)
            response = await streams.enter_async_context(
                http.stream("GET", small_pools.url, headers=handshake_headers(sid))
            )
            assert response.status_code == 200
        sid = await asyncio.wait_for(raw_initialize(http, small_pools.url), 5)
        ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
        answer = await asyncio.wait_for(
            http.post(small_pools.url, headers=handshake_headers(sid), json=ping), 5
        )
        assert answer.status_code == 200
        # Every stream connection is held: a third stream waits at most --pool-timeout.
        started = time.monotonic()
        third = await http.get(small_pools.url, headers=handshake_headers(sid))
        assert third.status_code == 503, third.text
        assert time.monotonic() - started < 4


@pytest.fixture(scope="module")
def one_connection(processes: ExitStack, parts: Parts) -> Gw:
    return _gateway(
        processes,
        "--upstream",
        f"{parts.hostile}/mcp",
        "--max-connections",
        "1",
        "--pool-timeout",
        "0.5",
        "--max-streams-per-session",
        "2",
        "--max-streams-per-client",
        "3",
    )


async def test_waiting_for_a_busy_upstream_connection_is_bounded(
    one_connection: Gw, http: httpx.AsyncClient
) -> None:
    sid = await raw_initialize(http, one_connection.url)
    slow = asyncio.ensure_future(call(http, one_connection.url, sid, "slow"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    ping = {"jsonrpc": "2.0", "id": 5, "method": "ping"}
    busy = await http.post(one_connection.url, headers=handshake_headers(sid), json=ping)
    assert_rpc_error(busy, 503, rid=5)
    assert busy.headers["retry-after"] == "1"
    assert time.monotonic() - started < 2.5
    assert result_text(await slow) == "ok"


async def test_streams_per_session_and_per_client_are_bounded(
    one_connection: Gw, http: httpx.AsyncClient
) -> None:
    first = await raw_initialize(http, one_connection.url)
    second = await raw_initialize(http, one_connection.url)
    async with AsyncExitStack() as streams:

        async def open_stream(sid: str) -> int:
            response = await streams.enter_async_context(
                http.stream("GET", one_connection.url, headers=handshake_headers(sid))
            )
            return response.status_code

        assert [await open_stream(first) for _ in range(3)] == [200, 200, 429]
        assert [await open_stream(second) for _ in range(2)] == [200, 429]  # 3 per client


# -- 3. memory through federated initialize ---------------------------------------------------


async def test_a_federated_session_keeps_only_what_it_needs(
    parts: Parts, http: httpx.AsyncClient
) -> None:
    gw = parts.federated
    await raw_initialize(http, gw.url)
    before = rss_bytes(gw.pid)
    padding = "x" * (4 * MiB - 4096)
    for i in range(25):
        params = {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "junk": padding,
            "clientInfo": {"name": f"big-{i}", "version": "1", "icons": [padding[:1000]]},
        }
        body = {"jsonrpc": "2.0", "id": i, "method": "initialize", "params": params}
        response = await http.post(gw.url, headers={"accept": ACCEPT}, json=body)
        assert response.status_code == 200, response.text
    grown = rss_bytes(gw.pid) - before
    assert grown < 40 * MiB, f"25 sessions took {grown / MiB:.0f} MiB"

    params = {
        "protocolVersion": HANDSHAKE,
        "capabilities": {"experimental": {"x": padding}},
        "clientInfo": {"name": "huge-capabilities", "version": "1"},
    }
    body = {"jsonrpc": "2.0", "id": 9, "method": "initialize", "params": params}
    too_big = await http.post(gw.url, headers={"accept": ACCEPT}, json=body)
    assert_rpc_error(too_big, 400, rid=9)
    assert too_big.json()["error"]["code"] == -32602


@pytest.fixture(scope="module")
def few_sessions(processes: ExitStack, parts: Parts) -> Gw:
    return _gateway(processes, "--upstream", f"{parts.hostile}/mcp", "--max-sessions", "3")


async def test_sessions_are_bounded_in_number(few_sessions: Gw, http: httpx.AsyncClient) -> None:
    sids = [await raw_initialize(http, few_sessions.url) for _ in range(3)]
    body = {
        "jsonrpc": "2.0",
        "id": 4,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "one-too-many", "version": "0"},
        },
    }
    refused = await http.post(few_sessions.url, headers={"accept": ACCEPT}, json=body)
    assert_rpc_error(refused, 503, rid=4)
    await http.delete(few_sessions.url, headers=handshake_headers(sids[0]))
    await raw_initialize(http, few_sessions.url)  # room again


# -- 4. slow clients --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(processes: ExitStack, parts: Parts) -> Gw:
    return _gateway(
        processes,
        "--upstream",
        f"{parts.hostile}/mcp",
        "--backlog",
        "128",
        "--body-timeout",
        "1",
        "--header-timeout",
        "1",
    )


async def test_clients_that_send_slowly_are_cut_off(impatient: Gw, http: httpx.AsyncClient) -> None:
    port = int(impatient.base.rsplit(":", 1)[1])
    head = (
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"accept: {ACCEPT}\r\ncontent-length: 100\r\n\r\n{{"
    ).encode()
    loop = asyncio.get_running_loop()
    held: list[socket.socket] = []
    try:
        for _ in range(130):  # more than Granian admits at once (backlog / workers)
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(head)  # ... and the other 99 bytes never
            held.append(sock)
        started = time.monotonic()
        await asyncio.wait_for(raw_initialize(http, impatient.url), 8)
        assert time.monotonic() - started < 8
        held[0].settimeout(5)
        answer = await loop.run_in_executor(None, held[0].recv, 65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"id":null' in answer and b"-32600" in answer
    finally:
        for sock in held:
            sock.close()


async def test_a_slow_request_head_is_cut_off(impatient: Gw) -> None:
    port = int(impatient.base.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        sock.settimeout(6)
        started = time.monotonic()
        try:
            data = await loop.run_in_executor(None, sock.recv, 65536)
        except ConnectionResetError:
            data = b""
        assert time.monotonic() - started < 5  # closed (or answered) after --header-timeout
        assert data == b"" or data.startswith(b"HTTP/1.1 408")
    finally:
        sock.close()


# -- 5, 6, 13. a hostile upstream's framing -------------------------------------------------

MALFORMED = (
    "double_length",
    "chunked_and_length",
    "signed_length",
    "negative_length",
    "not_chunked",
    "hex_chunk",
    "space_before_colon",
    "folded_header",
    "bare_lf",
    "huge_head",
    "bad_header_value",
)


@pytest.mark.parametrize("tool", MALFORMED)
async def test_a_malformed_upstream_answer_is_a_502_and_nothing_else(
    parts: Parts, tool: str
) -> None:
    gw = parts.hostile_gw
    async with httpx.AsyncClient(timeout=10.0) as http:  # one connection, reused
        sid = await raw_initialize(http, gw.url)
        response = await call(http, gw.url, sid, tool, rid=11)
        assert_rpc_error(response, 502, rid=11)
        for _ in range(2):  # the next answers on the same client connection are genuine
            assert result_text(await call(http, gw.url, sid, "ok")) == "ok"


async def test_a_hostile_backend_cannot_forge_a_trusted_backends_answer(
    parts: Parts,
) -> None:
    gw = parts.federated
    async with httpx.AsyncClient(timeout=10.0) as http:
        sid = await raw_initialize(http, gw.url)
        for tool in ("h_double_length", "h_chunked_and_length", "h_signed_length"):
            assert_rpc_error(await call(http, gw.url, sid, tool, rid=12), 502, rid=12)
            trusted = await call(http, gw.url, sid, "a_whoami")
            assert '"replica": "alpha"' in result_text(trusted)


# -- 7, 8. bytes out of turn, and calls sent twice ---------------------------------------------


@pytest.mark.parametrize("tool", ["late_second_response", "no_content_with_body"])
async def test_bytes_the_upstream_sends_out_of_turn_reach_no_request(
    parts: Parts, http: httpx.AsyncClient, tool: str
) -> None:
    gw = parts.hostile_gw
    sid = await raw_initialize(http, gw.url)
    first = await call(http, gw.url, sid, tool)
    assert first.status_code in (200, 204)
    await asyncio.sleep(0.5)  # the forged answer arrives while the connection is idle
    others = await asyncio.gather(*(call(http, gw.url, sid, "ok", rid=20 + i) for i in range(4)))
    assert [result_text(r) for r in others] == ["ok"] * 4


async def test_a_connection_header_the_gateway_does_not_understand_ends_keep_alive(
    parts: Parts, http: httpx.AsyncClient
) -> None:
    gw = parts.hostile_gw
    sid = await raw_initialize(http, gw.url)
    for _ in range(3):
        assert result_text(await call(http, gw.url, sid, "odd_connection")) == "ok"
        assert result_text(await call(http, gw.url, sid, "ok")) == "ok"
    seen = (await http.get(f"{parts.hostile}/seen")).json()["calls"]
    assert seen.get("after_odd_connection", 0) == 0  # never reused


async def test_a_call_the_upstream_dropped_is_not_sent_again(
    parts: Parts, http: httpx.AsyncClient
) -> None:
    gw = parts.hostile_gw
    before = (await http.get(f"{parts.hostile}/seen")).json()["calls"].get("act_and_close", 0)
    sid = await raw_initialize(http, gw.url)
    assert result_text(await call(http, gw.url, sid, "ok")) == "ok"  # a kept-alive connection
    assert_rpc_error(await call(http, gw.url, sid, "act_and_close"), 502)
    after = (await http.get(f"{parts.hostile}/seen")).json()["calls"]["act_and_close"]
    assert after - before == 1


# -- 9. unbounded buffers and quadratic scans --------------------------------------------------


async def test_an_endless_trailer_is_cut_off(parts: Parts, http: httpx.AsyncClient) -> None:
    gw = parts.hostile_gw
    sid = await raw_initialize(http, gw.url)
    rss, cpu = rss_bytes(gw.pid), cpu_seconds(gw.pid)
    started = time.monotonic()
    with pytest.raises(httpx.HTTPError):  # the answer breaks off: no complete body
        response = await call(http, gw.url, sid, "endless_trailer")
        if response.status_code != 200:
            raise httpx.HTTPError("refused")  # a 502 is fine too
    assert time.monotonic() - started < 5
    assert cpu_seconds(gw.pid) - cpu < 2.0
    assert rss_bytes(gw.pid) - rss < 20 * MiB
    health = await http.get(f"{gw.base}/healthz")
    assert health.status_code == 200


async def test_one_huge_event_is_scanned_once(parts: Parts, http: httpx.AsyncClient) -> None:
    """A 32 MiB event through federation's event rewriting costs linear time."""
    gw = parts.federated
    sid = await raw_initialize(http, gw.url)
    cpu = cpu_seconds(gw.pid)
    response = await call(http, gw.url, sid, "h_big_event")
    assert response.status_code == 200
    assert result_text(response) == "after the big one"
    used = cpu_seconds(gw.pid) - cpu
    assert used < 1.5, f"{used:.1f} s of CPU for one 32 MiB event"  # 3.6 s when quadratic


async def test_whole_answers_read_from_a_backend_are_capped(
    parts: Parts, http: httpx.AsyncClient
) -> None:
    gw = parts.federated
    sid = await raw_initialize(http, gw.url)
    read = {
        "jsonrpc": "2.0",
        "id": 13,
        "method": "resources/read",
        "params": {"uri": "hostile+big://48"},
    }
    response = await http.post(gw.url, headers=handshake_headers(sid), json=read)
    assert_rpc_error(response, 502, rid=13)
    read["params"] = {"uri": "hostile+big://1"}
    assert (await http.post(gw.url, headers=handshake_headers(sid), json=read)).status_code == 200


@pytest.fixture(scope="module")
def flooding(processes: ExitStack, tmp_path_factory: pytest.TempPathFactory) -> Gw:
    hostile = _hostile(processes, "--flood-mb", "64")
    config = _federation(
        tmp_path_factory.mktemp("flood"),
        [f"  - {{name: flood, prefix: f_, replicas: ['{hostile}/mcp']}}\n"],
    )
    return _gateway(processes, "--config", config)


async def test_a_merged_stream_holds_back_a_client_that_does_not_read(
    flooding: Gw, http: httpx.AsyncClient
) -> None:
    sid = await raw_initialize(http, flooding.url)
    assert result_text(await call(http, flooding.url, sid, "f_ok")) == "ok"  # opens the backend
    await asyncio.sleep(1.0)  # the catalog's own stream took its 64 MiB at start-up
    before = rss_bytes(flooding.pid)
    async with http.stream("GET", flooding.url, headers=handshake_headers(sid)) as stream:
        assert stream.status_code == 200
        await asyncio.sleep(3.0)  # the backend pushes 64 MiB; the client reads nothing
        grown = rss_bytes(flooding.pid) - before
    assert grown < 24 * MiB, f"an unread stream took {grown / MiB:.0f} MiB"


async def test_merged_streams_per_session_are_bounded(
    parts: Parts, http: httpx.AsyncClient
) -> None:
    gw = parts.federated
    sid = await raw_initialize(http, gw.url)
    async with AsyncExitStack() as streams:
        codes = []
        for _ in range(3):
            response = await streams.enter_async_context(
                http.stream("GET", gw.url, headers=handshake_headers(sid))
            )
            codes.append(response.status_code)
        assert codes == [200, 200, 429]


# -- 10, 11. credentials and forwarding headers -----------------------------------------------


async def test_credentials_reach_only_the_backends_that_take_them(
    parts: Parts, http: httpx.AsyncClient
) -> None:
    gw = parts.federated
    secret = {"authorization": TOKEN, "cookie": COOKIE}
    alpha_before = len(await seen_headers(http, parts.alpha))
    beta_before = len(await seen_headers(http, parts.beta))
    sid = await raw_initialize(http, gw.url)
    headers = handshake_headers(sid) | secret
    for tool in ("a_whoami", "b_whoami"):
        answer = await http.post(gw.url, headers=headers, json=call_body(tool))
        assert answer.status_code == 200
    async with http.stream("GET", gw.url, headers=headers) as stream:
        assert stream.status_code == 200
        await asyncio.sleep(0.5)  # the merged stream opens the backends' GET streams
    await http.delete(gw.url, headers=headers)
    await asyncio.sleep(0.3)
    alpha = (await seen_headers(http, parts.alpha))[alpha_before:]
    beta = (await seen_headers(http, parts.beta))[beta_before:]
    with_token = [r["verb"] for r in alpha if r["headers"].get("authorization") == [TOKEN]]
    assert with_token.count("POST") >= 3  # initialize, initialized, tools/call
    assert "GET" in with_token and "DELETE" in with_token
    assert all(
        r["headers"].get("cookie") == [COOKIE]
        for r in alpha
        if r["verb"] != "POST" or r["headers"].get("authorization")
    )
    assert beta and not any(
        "authorization" in r["headers"] or "cookie" in r["headers"] for r in beta
    )


SPOOFED = {
    "x-forwarded-for": "6.6.6.6",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "evil.example",
    "x-real-ip": "6.6.6.6",
    "forwarded": "for=6.6.6.6;proto=https",
}


@pytest.fixture(scope="module")
def behind_a_proxy(processes: ExitStack, parts: Parts) -> Gw:
    return _gateway(processes, "--upstream", f"{parts.alpha}/mcp", "--trusted-proxy", "127.0.0.1")


async def test_forwarding_headers_from_a_client_are_replaced(
    parts: Parts, http: httpx.AsyncClient
) -> None:
    gw = parts.single
    before = len(await seen_headers(http, parts.alpha))
    ping = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "spoofer", "version": "0"},
        },
    }
    response = await http.post(gw.url, headers={"accept": ACCEPT} | SPOOFED, json=ping)
    assert response.status_code == 200
    seen = (await seen_headers(http, parts.alpha))[before]["headers"]
    port = gw.base.rsplit(":", 1)[1]
    assert seen == {
        "x-forwarded-for": ["127.0.0.1"],
        "x-forwarded-proto": ["http"],
        "x-forwarded-host": [f"127.0.0.1:{port}"],
    }


async def test_forwarding_headers_from_a_trusted_proxy_are_kept(
    behind_a_proxy: Gw, parts: Parts
) -> None:
    before = None
    async with httpx.AsyncClient(timeout=10) as http:
        before = len(await seen_headers(http, parts.alpha))
        ping = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE,
                "capabilities": {},
                "clientInfo": {"name": "proxied", "version": "0"},
            },
        }
        headers = [
            ("accept", ACCEPT),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
        ]
        response = await http.post(behind_a_proxy.url, headers=headers, json=ping)
        assert response.status_code == 200
        seen = (await seen_headers(http, parts.alpha))[before]["headers"]
    assert seen["x-forwarded-for"] == ["10.0.0.1, 10.0.0.2, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]


# -- 12, 14. the gateway's own endpoints ------------------------------------------------------


async def test_metrics_and_readiness_check_the_host(parts: Parts, http: httpx.AsyncClient) -> None:
    for path in ("/metrics", "/readyz"):
        rebound = await http.get(parts.single.base + path, headers={"host": "evil.example"})
        assert rebound.status_code == 403
        assert (await http.get(parts.single.base + path)).status_code == 200


async def test_readiness_keeps_store_errors_for_the_log(
    tmp_path: Path, http: httpx.AsyncClient, parts: Parts
) -> None:
    log = tmp_path / "gateway.log"
    with redis_server() as redis, ExitStack() as stack:
        gw = _gateway(
            stack, "--upstream", f"{parts.alpha}/mcp", "--session-store", redis.url(), log=log
        )
        redis.stop()
        response = await http.get(f"{gw.base}/readyz")
        assert response.status_code == 503
        assert response.json()["problems"] == ["session store unreachable"]
        assert str(redis.port) not in response.text
        await asyncio.sleep(0.2)
        assert str(redis.port) in log.read_text()  # the details are in the log


async def test_the_pure_python_fallback_is_announced(tmp_path: Path, parts: Parts) -> None:
    log = tmp_path / "gateway.log"
    with ExitStack() as stack:
        gw = _gateway(
            stack, "--upstream", f"{parts.alpha}/mcp", env={"PROXY_NO_EXTENSIONS": "1"}, log=log
        )
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{gw.base}/metrics")).text
        assert 'proxy_fastpath_info{implementation="py"} 1' in metrics
        assert "pure-Python envelope scanner" in log.read_text()
