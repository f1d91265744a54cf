"""LeanTransport behind httpx.AsyncClient, against real raw-bytes servers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import uvloop

from bench.lean_transport import LeanTransport
from testbed.processes import free_port
from testbed.servers.http_fixtures import (
    Peer,
    RawServer,
    Request,
    chunked,
    keep_answering,
    response,
)


def echo(request: Request) -> bytes:
    """Answer with what arrived, so a test can check what the transport sent."""
    lines = [request.method + b" " + request.target]
    lines += [name + b": " + value for name, value in request.headers]
    lines += [b"", request.body]
    return response(b"\n".join(lines), headers=["content-type: text/plain", "X-Multi: a"])


def client(**options: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=LeanTransport(**options), timeout=1)  # type: ignore[arg-type]  # floats only


async def test_get_and_post_reuse_one_connection() -> None:
    async with RawServer(keep_answering(echo)) as server, client() as http:
        got = await http.get(f"{server.url}/path?q=1&r=%20", headers={"X-Custom": "yes"})
        assert got.status_code == 200
        assert got.http_version == "HTTP/1.1"
        assert got.headers["content-type"] == "text/plain"
        assert got.headers["x-multi"] == "a"
        lines = got.content.split(b"\n")
        assert lines[0] == b"GET /path?q=1&r=%20"
        assert f"host: 127.0.0.1:{server.port}".encode() in lines
        assert b"x-custom: yes" in lines

        posted = await http.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1})
        assert posted.status_code == 200
        assert posted.content.split(b"\n")[0] == b"POST /mcp"
        assert posted.content.endswith(b'{"jsonrpc":"2.0","id":1}')
        assert server.accepted == 1


async def test_streaming_request_body_arrives_intact() -> None:
    """An async-iterable body makes httpx add ``Transfer-Encoding: chunked``: what goes on
    the wire must be framed the way the headers say."""

    async def parts() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    async with (
        RawServer(keep_answering(lambda req: response(req.body))) as server,
        client() as http,
    ):
        got = await http.post(f"{server.url}/", content=parts())
        assert got.content == b"hello world"
        assert (await http.get(f"{server.url}/")).content == b""  # the connection still works
        assert server.accepted == 1


async def test_streamed_response_arrives_chunk_by_chunk() -> None:
    sent_at: list[float] = []

    async def sse(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            response(
                headers=["content-type: text/event-stream", "transfer-encoding: chunked"],
                length=False,
            )
        )
        for i in range(3):
            await asyncio.sleep(0.1)
            sent_at.append(time.monotonic())
            await peer.send(chunked(b"data: %d\n\n" % i))
        await peer.send(b"0\r\n\r\n")
        await peer.until_client_closes()

    async with RawServer(sse) as server, client() as http:
        received: list[tuple[float, bytes]] = []
        async with http.stream("GET", f"{server.url}/sse") as streamed:
            assert streamed.headers["content-type"] == "text/event-stream"
            async for chunk in streamed.aiter_raw():
                received.append((time.monotonic(), chunk))
        assert [chunk for _, chunk in received] == [b"data: %d\n\n" % i for i in range(3)]
        for (arrived, _), sent in zip(received, sent_at, strict=True):
            assert 0 <= arrived - sent < 0.05


async def test_stream_closed_early_drops_the_connection() -> None:
    async def endless(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(headers=["transfer-encoding: chunked"], length=False))
        await peer.send(chunked(b"one"))
        await peer.until_client_closes()

    async with RawServer(endless) as server, client() as http:
        async with http.stream("GET", server.url) as streamed:
            async for chunk in streamed.aiter_raw():
                assert chunk == b"one"
                break
        await asyncio.wait_for(server.peers[0].ended.wait(), 1)


async def test_connect_error_when_nothing_listens() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/")


async def test_read_timeout_on_a_slow_server() -> None:
    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_client_closes()

    async with RawServer(silent) as server, client() as http:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await http.get(server.url, timeout=httpx.Timeout(2, read=0.2))
        assert time.monotonic() - t0 < 1
        await asyncio.wait_for(server.peers[0].ended.wait(), 1)


async def test_remote_protocol_error_when_the_server_dies_mid_response() -> None:
    async def die(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(headers=["content-length: 100"], length=False) + b"partial")
        await asyncio.sleep(0.02)

    async with RawServer(die) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url)
        async with http.stream("GET", server.url) as streamed:
            with pytest.raises(httpx.RemoteProtocolError):
                await streamed.aread()
        assert server.accepted == 2


async def test_remote_protocol_error_on_a_malformed_head() -> None:
    async def garbage(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"SSH-2.0-OpenSSH\r\n\r\n")
        await peer.until_client_closes()

    async with RawServer(garbage) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url)


async def test_head_request_is_refused() -> None:
    """The lean pool parses every response as if it had a body: HEAD is not offered."""
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.head("http://127.0.0.1:9/")


async def test_unsupported_scheme() -> None:
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


async def test_pools_per_origin_and_aclose() -> None:
    async with RawServer(keep_answering(echo)) as one, RawServer(keep_answering(echo)) as two:
        transport = LeanTransport()
        async with httpx.AsyncClient(transport=transport) as http:
            await http.get(one.url)
            await http.get(two.url)
            await http.get(one.url)
            assert transport.pool(httpx.URL(one.url)).idle_connections == 1
            assert transport.pool(httpx.URL(two.url)).idle_connections == 1
        # leaving the client closed the transport and its idle connections
        await asyncio.wait_for(one.peers[0].ended.wait(), 1)
        await asyncio.wait_for(two.peers[0].ended.wait(), 1)
        assert (one.accepted, two.accepted) == (1, 1)


@pytest.mark.parametrize(
    "scenario",
    [test_get_and_post_reuse_one_connection, test_streamed_response_arrives_chunk_by_chunk],
    ids=["get-post", "stream"],
)
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(scenario())  # type: ignore[arg-type]  # uvloop.run wants a Coroutine
