"""Http1Pool against real raw-bytes servers on loopback: framing, errors, cancellation, pooling."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop

from proxy.upstream.http1 import (
    HIGH_WATER,
    CancelToken,
    ClientGone,
    ConnectFailed,
    Http1Pool,
    PoolTimeout,
    ProtocolFailure,
    UpstreamResponse,
    UpstreamTimeout,
)
from testbed.processes import free_port
from testbed.servers.http_fixtures import (
    Peer,
    RawServer,
    chunked,
    keep_answering,
    request_head,
    response,
)

GET = request_head()


@asynccontextmanager
async def serving(
    handler: Callable[[Peer], Awaitable[None]], **pool_options: float
) -> AsyncIterator[tuple[RawServer, Http1Pool]]:
    async with RawServer(handler) as server:
        pool = Http1Pool("127.0.0.1", server.port, **pool_options)  # type: ignore[arg-type]  # floats only
        try:
            yield server, pool
        finally:
            await pool.close()


async def fetch(pool: Http1Pool, head: bytes = GET, body: bytes | None = None) -> bytes:
    resp = await pool.request(head, body, head_timeout=5)
    try:
        return await resp.aread()
    finally:
        resp.close()


def ok(body: bytes) -> Callable[[object], bytes]:
    return lambda _request: response(body)


async def poll_until(predicate: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- framing ---------------------------------------------------------------------------------


async def test_content_length_body_and_request_body() -> None:
    echo = keep_answering(lambda req: response(b"got " + req.body, headers=["X-Echo: Yes"]))
    async with serving(echo) as (server, pool):
        resp = await pool.request(request_head("POST", "/mcp", "content-length: 5"), b"hello")
        assert resp.status == 200
        assert resp.header(b"x-echo") == b"Yes"
        assert (b"content-length", b"9") in resp.headers
        assert await resp.aread() == b"got hello"
        assert await resp.read() == b""
        resp.close()
        assert server.peers[0].requests[0].target == b"/mcp"
        assert repr(pool) == f"<Http1Pool 127.0.0.1:{server.port} open=1 idle=1 waiting=0>"


async def test_chunked_body_with_extensions_and_trailers() -> None:
    body = (
        b"5;name=value\r\nhello\r\n"
        b'1;quoted="x;y"\r\n \r\n'
        b"6\r\nworld!\r\n"
        b"0;last\r\nx-trailer: one\r\nx-other: two\r\n\r\n"
    )
    wire = response(headers=["Transfer-Encoding: chunked"], length=False) + body
    async with serving(keep_answering(lambda _: wire)) as (server, pool):
        assert await fetch(pool) == b"hello world!"
        assert await fetch(pool) == b"hello world!"  # trailers consumed: the connection is reusable
        assert server.accepted == 1


async def test_chunked_body_split_byte_by_byte() -> None:
    wire = response(headers=["transfer-encoding: chunked"], length=False)
    wire += chunked(b"abc", b"defgh") + b"0\r\nx-t: 1\r\n\r\n"

    async def dribble(peer: Peer) -> None:
        while await peer.read_request() is not None:
            for i in range(len(wire)):
                await peer.send(wire[i : i + 1])
                await asyncio.sleep(0.001)

    async with serving(dribble) as (server, pool):
        assert await fetch(pool) == b"abcdefgh"
        assert await fetch(pool) == b"abcdefgh"
        assert server.accepted == 1


async def test_body_read_until_close() -> None:
    async def until_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(headers=["content-type: text/plain"], length=False))
        await peer.send(b"part one, ")
        await asyncio.sleep(0.02)
        await peer.send(b"part two")
        # returning closes the connection: the end of the body

    async with serving(until_close) as (_server, pool):
        resp = await pool.request(GET, None)
        assert await resp.aread() == b"part one, part two"
        resp.close()
        await poll_until(lambda: pool.open_connections == 0)
        assert pool.idle_connections == 0


@pytest.mark.parametrize("status", [204, 304])
async def test_status_without_body(status: int) -> None:
    # A 304 carries the Content-Length of the representation, not of a body.
    wire = response(status=status, headers=["content-length: 42"], length=False)
    async with serving(keep_answering(lambda _: wire)) as (server, pool):
        for _ in range(2):
            resp = await pool.request(GET, None)
            assert resp.status == status
            assert resp.body_complete()
            assert resp.read_buffered() == b""
        assert server.accepted == 1
        assert pool.idle_connections == 1


async def test_empty_content_length_body_is_complete_at_once() -> None:
    async with serving(keep_answering(ok(b""))) as (_server, pool):
        resp = await pool.request(GET, None)
        assert resp.body_complete()
        assert await resp.read() == b""
        assert pool.idle_connections == 1


async def test_small_body_buffered_with_head() -> None:
    async with serving(keep_answering(ok(b'{"jsonrpc":"2.0"}'))) as (_server, pool):
        resp = await pool.request(GET, None)
        await poll_until(resp.body_complete)
        assert resp.read_buffered() == b'{"jsonrpc":"2.0"}'
        assert pool.idle_connections == 1


@pytest.mark.parametrize(
    "headers",
    [["Connection: close"], ["connection: Keep-Alive, Close"]],
    ids=["close", "close-among-tokens"],
)
async def test_connection_close_is_not_reused(headers: list[str]) -> None:
    async with serving(keep_answering(lambda _: response(b"bye", headers=headers))) as (
        server,
        pool,
    ):
        assert await fetch(pool) == b"bye"
        assert pool.open_connections == 0
        assert await fetch(pool) == b"bye"
        assert server.accepted == 2


async def test_http10_response_is_not_reused() -> None:
    wire = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"
    async with serving(keep_answering(lambda _: wire)) as (server, pool):
        assert await fetch(pool) == b"ok"
        assert await fetch(pool) == b"ok"
        assert server.accepted == 2


async def test_interim_100_continue_before_the_response() -> None:
    async def continue_first(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await asyncio.sleep(0.02)
            await peer.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + response(b"real"))

    async with serving(continue_first) as (server, pool):
        resp = await pool.request(request_head("POST", "/", "expect: 100-continue"), None)
        assert resp.status == 200
        assert resp.header(b"link") is None
        assert await resp.aread() == b"real"
        resp.close()
        assert await fetch(pool) == b"real"
        assert server.accepted == 1


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 abc Nope\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
        b"HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 -99 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000,
    ],
    ids=[
        "http2",
        "not-http",
        "status-not-digits",
        "header-without-colon",
        "bad-content-length",
        "two-digit-status",
        "negative-status",
        "head-too-large",
    ],
)
async def test_malformed_head_is_a_protocol_failure(wire: bytes) -> None:
    async def malformed(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(wire)
        await peer.until_client_closes()

    async with serving(malformed) as (server, pool):
        with pytest.raises(ProtocolFailure):
            await pool.request(GET, None, head_timeout=1)
        await asyncio.wait_for(server.peers[0].ended.wait(), 2)  # the client hung up
        assert pool.open_connections == 0


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n"],
    ids=["bad-size", "missing-crlf", "negative-size"],
)
async def test_malformed_chunked_body_is_a_protocol_failure(body: bytes) -> None:
    wire = response(headers=["transfer-encoding: chunked"], length=False)

    async def malformed(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(wire)
        await asyncio.sleep(0.02)  # the head alone first, so request() succeeds
        await peer.send(body)
        await peer.until_client_closes()

    async with serving(malformed) as (server, pool):
        resp = await pool.request(GET, None, head_timeout=1)
        with pytest.raises(ProtocolFailure):
            await resp.aread()
        resp.close()
        await asyncio.wait_for(server.peers[0].ended.wait(), 2)
        assert pool.open_connections == 0


async def test_data_after_the_response_drops_the_connection() -> None:
    async def chatty(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(response(b"ok"))
            await asyncio.sleep(0.02)
            await peer.send(b"HTTP/1.1 200 OK\r\n\r\n")  # nobody asked

    async with serving(chatty) as (server, pool):
        assert await fetch(pool) == b"ok"
        await poll_until(lambda: pool.open_connections == 0)
        assert await fetch(pool) == b"ok"
        assert server.accepted == 2


# -- broken and slow upstreams ---------------------------------------------------------------


async def test_kept_alive_connection_closed_on_request_is_retried_once_when_safe() -> None:
    """The server takes the second request on the reused connection and closes it unanswered:
    a request the caller marks safe to repeat is sent again, once, on a fresh connection."""

    async def close_second(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(b"first"))
        if peer.index == 0:
            await peer.read_request()
            return  # close without a byte of answer
        while await peer.read_request() is not None:
            await peer.send(response(b"again"))

    async with serving(close_second) as (server, pool):
        assert await fetch(pool) == b"first"
        resp = await pool.request(GET, None, head_timeout=5, retry=True)
        assert await resp.aread() == b"first"  # the fresh connection's first answer
        assert server.accepted == 2
        assert len(server.peers[0].requests) == 2
        assert len(server.peers[1].requests) == 1
        assert pool.open_connections == 1


async def test_request_not_safe_to_repeat_is_never_sent_twice() -> None:
    """An upstream that reads a request on a kept-alive connection, acts on it and closes
    without answering: a request not marked safe to repeat fails, and ran once."""
    acted = 0

    async def act_then_close(peer: Peer) -> None:
        nonlocal acted
        await peer.read_request()
        await peer.send(response(b"first"))
        if await peer.read_request() is not None:
            acted += 1  # ... and close without a byte of answer

    async with serving(act_then_close) as (server, pool):
        assert await fetch(pool) == b"first"
        with pytest.raises(ProtocolFailure):
            await pool.request(request_head("POST", "/mcp"), None, head_timeout=5)
        assert acted == 1
        assert server.accepted == 1


async def test_late_bytes_on_an_idle_connection_discard_it() -> None:
    """An upstream that answers, then sends a second response while the connection sits in
    the pool: the connection is dropped, and the next request gets its own answer."""

    async def answers_twice(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await peer.send(response(request.target))
            await asyncio.sleep(0.2)
            await peer.send(response(b"/forged"))

    async with serving(answers_twice) as (server, pool):
        assert await fetch(pool, request_head("GET", "/one")) == b"/one"
        await asyncio.sleep(0.4)
        assert pool.idle_connections == 0
        assert await fetch(pool, request_head("GET", "/two")) == b"/two"
        assert server.accepted == 2


async def test_waiting_for_a_busy_pool_is_bounded() -> None:
    async def slow(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await asyncio.sleep(1.0)
            await peer.send(response(b"slow"))

    async with serving(slow, max_connections=1, pool_timeout=0.2) as (_server, pool):
        held = asyncio.ensure_future(fetch(pool))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout) as failure:
            await pool.request(GET, None, head_timeout=5)
        assert time.monotonic() - t0 < 0.9
        assert not failure.value.sent
        assert repr(pool).endswith("waiting=0>")
        assert await held == b"slow"
        assert await fetch(pool) == b"slow"  # the slot is still usable


async def test_idle_connection_closed_by_server_is_not_used() -> None:
    async def close_after_one(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(b"one"))

    async with serving(close_after_one) as (server, pool):
        assert await fetch(pool) == b"one"
        await poll_until(lambda: pool.open_connections == 0)  # the client noticed the close
        assert await fetch(pool) == b"one"
        assert server.accepted == 2


async def test_fresh_connection_closed_unanswered_is_not_retried() -> None:
    async def hang_up(peer: Peer) -> None:
        await peer.read_request()

    async with serving(hang_up) as (server, pool):
        with pytest.raises(ProtocolFailure):
            await pool.request(GET, None, head_timeout=1)
        assert server.accepted == 1
        assert pool.open_connections == 0


@pytest.mark.parametrize(
    "partial",
    [b"HTTP/1.1 200 OK\r\ncontent-le", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345"],
    ids=["partial-head", "partial-body"],
)
async def test_no_retry_after_a_partial_response(partial: bytes) -> None:
    async def partial_second(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(b"first"))
        await peer.read_request()
        await peer.send(partial)
        # and close

    async with serving(partial_second) as (server, pool):
        assert await fetch(pool) == b"first"
        with pytest.raises(ProtocolFailure) as failure:
            await fetch(pool)
        assert failure.value.sent
        assert server.accepted == 1  # not retried
        assert pool.open_connections == 0


async def test_server_dies_mid_body() -> None:
    async def die(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.send(response(headers=["content-length: 100"], length=False) + b"x" * 10)
            await asyncio.sleep(0.02)
            peer.writer.transport.abort()  # reset, no FIN
            return
        await keep_answering(ok(b"fine"))(peer)

    async with serving(die) as (server, pool):
        resp = await pool.request(GET, None, head_timeout=1)
        assert await resp.read() == b"x" * 10
        with pytest.raises(ProtocolFailure):
            await resp.read()
        with pytest.raises(ProtocolFailure):
            await resp.read()  # still failed, not b""
        resp.close()
        assert pool.open_connections == 0
        assert await fetch(pool) == b"fine"
        assert server.accepted == 2


async def test_head_timeout_closes_the_connection() -> None:
    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_client_closes()

    async with serving(silent) as (server, pool):
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await pool.request(GET, None, head_timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 1.0
        await asyncio.wait_for(server.peers[0].ended.wait(), 1)  # the server saw EOF
        assert pool.open_connections == 0


# -- streaming -------------------------------------------------------------------------------


async def test_sse_events_arrive_one_by_one_unbuffered() -> None:
    sent_at: list[float] = []
    events = [b'event: message\ndata: {"n": %d}\n\n' % i for i in range(4)]

    async def sse(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            response(
                headers=["content-type: text/event-stream", "transfer-encoding: chunked"],
                length=False,
            )
        )
        for event in events:
            await asyncio.sleep(0.1)
            sent_at.append(time.monotonic())
            await peer.send(chunked(event))
        await peer.send(b"0\r\n\r\n")
        await peer.until_client_closes()

    async with serving(sse) as (_server, pool):
        resp = await pool.request(GET, None, head_timeout=1)
        assert resp.header(b"content-type") == b"text/event-stream"
        received: list[tuple[float, bytes]] = []
        while chunk := await resp.read():
            received.append((time.monotonic(), chunk))
        assert [chunk for _, chunk in received] == events  # one read per event
        for (arrived, _), sent in zip(received, sent_at, strict=True):
            assert 0 <= arrived - sent < 0.05  # handed over as it arrived, not held back
        assert pool.idle_connections == 1


async def test_large_body_with_back_pressure() -> None:
    size = 16 * 1024 * 1024
    payload = os.urandom(size)

    async def large(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(response(headers=[f"content-length: {size}"], length=False))
            peer.sent = 0
            for start in range(0, size, 65536):
                await peer.send(payload[start : start + 65536])
                peer.sent = start + 65536

    async with serving(large) as (server, pool):
        resp = await pool.request(GET, None, head_timeout=1)
        await asyncio.sleep(0.3)  # not reading: the pool stops reading, the server stalls
        stalled = server.peers[0].sent
        assert stalled < size // 2
        await asyncio.sleep(0.1)
        assert server.peers[0].sent == stalled
        assert not resp.body_complete()
        parts = []
        while chunk := await resp.read():
            assert len(chunk) <= 2 * HIGH_WATER
            parts.append(chunk)
        assert b"".join(parts) == payload
        assert pool.idle_connections == 1
        resp = await pool.request(GET, None, head_timeout=1)  # the connection is reused, readable
        assert len(await resp.aread()) == size
        assert server.accepted == 1


async def test_read_buffered_after_reading_paused_resumes_the_connection() -> None:
    """A body that completes just as the buffer crosses the high-water mark pauses reading;
    read_buffered() takes it all, and the connection must read again when reused."""
    first = b"a" * (HIGH_WATER - 10)
    last = b"b" * 20

    async def two_parts(peer: Peer) -> None:
        while await peer.read_request() is not None:
            length = len(first) + len(last)
            await peer.send(response(headers=[f"content-length: {length}"], length=False) + first)
            await asyncio.sleep(0.05)
            await peer.send(last)

    async with serving(two_parts) as (server, pool):
        resp = await pool.request(GET, None, head_timeout=1)
        await poll_until(resp.body_complete)
        assert resp.read_buffered() == first + last
        assert pool.idle_connections == 1
        resp = await pool.request(GET, None, head_timeout=1)  # reuses the connection
        assert await resp.aread() == first + last
        assert server.accepted == 1


# -- cancellation ----------------------------------------------------------------------------


async def test_cancel_while_waiting_for_the_head() -> None:
    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_client_closes()

    async with serving(silent) as (server, pool):
        token = CancelToken()
        asyncio.get_running_loop().call_later(0.05, token.cancel)
        with pytest.raises(ClientGone):
            await pool.request(GET, None, head_timeout=5, cancel=token)
        await asyncio.wait_for(server.peers[0].ended.wait(), 1)  # connection closed upstream
        assert pool.open_connections == 0


async def test_cancelled_token_before_the_request() -> None:
    async with serving(keep_answering(ok(b"x"))) as (_server, pool):
        token = CancelToken()
        token.cancel()
        with pytest.raises(ClientGone):
            await pool.request(GET, None, cancel=token)
        assert pool.open_connections == 0


async def test_cancel_while_waiting_for_body_chunks() -> None:
    async def stalls(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(headers=["transfer-encoding: chunked"], length=False))
        await peer.send(chunked(b"first"))
        await peer.until_client_closes()

    async with serving(stalls) as (server, pool):
        token = CancelToken()
        resp = await pool.request(GET, None, head_timeout=1, cancel=token)
        assert await resp.read(token) == b"first"
        asyncio.get_running_loop().call_later(0.05, token.cancel)
        t0 = time.monotonic()
        with pytest.raises(ClientGone):
            await resp.read(token)
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(ClientGone):
            await resp.read(token)  # already cancelled: no wait
        resp.close()
        await asyncio.wait_for(server.peers[0].ended.wait(), 1)
        assert pool.open_connections == 0


# -- pooling ---------------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    async with serving(keep_answering(lambda req: response(req.target))) as (server, pool):
        for i in range(10):
            assert await fetch(pool, request_head("GET", f"/{i}")) == f"/{i}".encode()
        assert server.accepted == 1
        assert repr(pool) == f"<Http1Pool 127.0.0.1:{server.port} open=1 idle=1 waiting=0>"


async def test_max_connections_under_concurrency() -> None:
    async def slow(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await asyncio.sleep(0.05)
            await peer.send(response(request.target))

    async with serving(slow, max_connections=3) as (server, pool):
        targets = [f"/{i}" for i in range(6)]
        bodies = await asyncio.gather(*(fetch(pool, request_head("GET", t)) for t in targets))
        assert bodies == [t.encode() for t in targets]
        assert server.max_active == 3
        assert server.accepted == 3
        assert pool.open_connections == 3


async def test_max_connections_with_connections_closed_after_each_response() -> None:
    """Every response closes its connection, so slots are freed and reopened all the time;
    a worker that asks again at once must not take the slot a waiter was promised."""
    limit = 2
    highest = 0

    async def close_each(peer: Peer) -> None:
        await peer.read_request()
        await asyncio.sleep(0.01)
        await peer.send(response(b"ok", headers=["connection: close"]))

    async with serving(close_each, max_connections=limit) as (server, pool):

        async def worker() -> None:
            nonlocal highest
            for _ in range(5):
                assert await fetch(pool) == b"ok"
                highest = max(highest, pool.open_connections)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(2 * limit))), 5)
        assert server.accepted == 5 * 2 * limit
        assert highest <= limit
        assert server.max_active <= limit


async def test_idle_connection_past_keepalive_expiry_is_not_reused() -> None:
    async with serving(keep_answering(ok(b"x")), keepalive_expiry=0.1) as (server, pool):
        assert await fetch(pool) == b"x"
        assert await fetch(pool) == b"x"
        assert server.accepted == 1
        await asyncio.sleep(0.2)
        assert await fetch(pool) == b"x"
        assert server.accepted == 2
        await asyncio.wait_for(server.peers[0].ended.wait(), 1)  # the expired one was closed
        assert pool.open_connections == 1


async def test_connect_failed_when_nothing_listens() -> None:
    pool = Http1Pool("127.0.0.1", free_port(), max_connections=1)
    for _ in range(2):  # the slot is given back each time
        with pytest.raises(ConnectFailed) as failure:
            await pool.request(GET, None)
        assert not failure.value.sent
        assert failure.value.refused  # nothing listens: the server is gone
        assert pool.open_connections == 0
    await pool.close()


async def test_aclose_closes_idle_connections() -> None:
    async with serving(keep_answering(ok(b"x"))) as (server, pool):
        await asyncio.gather(fetch(pool), fetch(pool))
        assert pool.idle_connections == 2
        await pool.close()
        assert pool.idle_connections == 0
        assert pool.open_connections == 0
        await asyncio.wait_for(asyncio.gather(*(peer.ended.wait() for peer in server.peers)), 1)


async def test_aclose_drops_in_flight_connection_when_released() -> None:
    async with serving(keep_answering(ok(b"x"))) as (server, pool):
        resp = await pool.request(GET, None)
        await pool.close()
        assert await resp.aread() == b"x"
        assert pool.open_connections == 0
        await asyncio.wait_for(server.peers[0].ended.wait(), 1)


async def test_response_closed_unread_drops_the_connection() -> None:
    async with serving(keep_answering(ok(b"x" * 100_000))) as (server, pool):
        resp = await pool.request(GET, None)
        resp.close()
        assert pool.open_connections == 0
        assert await fetch(pool) == b"x" * 100_000
        assert server.accepted == 2
        assert isinstance(resp, UpstreamResponse)
        assert repr(resp) == "<UpstreamResponse 200>"


# -- uvloop ----------------------------------------------------------------------------------

ON_UVLOOP = [
    test_content_length_body_and_request_body,
    test_chunked_body_with_extensions_and_trailers,
    test_body_read_until_close,
    test_kept_alive_connection_closed_on_request_is_retried_once_when_safe,
    test_server_dies_mid_body,
    test_head_timeout_closes_the_connection,
    test_sse_events_arrive_one_by_one_unbuffered,
    test_large_body_with_back_pressure,
    test_read_buffered_after_reading_paused_resumes_the_connection,
    test_cancel_while_waiting_for_the_head,
    test_cancel_while_waiting_for_body_chunks,
    test_max_connections_under_concurrency,
    test_connect_failed_when_nothing_listens,
]


@pytest.mark.parametrize("scenario", ON_UVLOOP, ids=[f.__name__[5:] for f in ON_UVLOOP])
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    """The gateway runs on uvloop, whose transports are not asyncio's: the same scenarios."""

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        await scenario()

    uvloop.run(main())
