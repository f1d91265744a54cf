"""The relay: request heads for the upstream, the connect policy over replicas, the answer
relayed with the gateway's own framing, and the in-flight slot given back once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.config import Settings, validate
from proxy.errors import BadGateway, UpstreamUnreachable
from proxy.metrics import Metrics
from proxy.relay import CREDENTIALS, Relay, ReplicaLost
from proxy.upstream.balance import Replica
from proxy.upstream.errors import ConnectFailed
from proxy.upstream.http1 import CancelToken
from proxy.upstream.registry import Upstreams
from testbed.processes import free_port
from testbed.servers.http_fixtures import Peer, RawServer, keep_answering, response

UP = "http://127.0.0.1:9/mcp"


def relay_for(*urls: str, **options: Any) -> tuple[Relay, Upstreams]:
    settings = validate({"upstream": list(urls), **options})
    upstreams = Upstreams(settings)
    return Relay(settings, upstreams, Metrics()), upstreams


def scope(*headers: tuple[bytes, bytes], method: str = "POST") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "scheme": "http",
        "path": "/mcp",
        "headers": list(headers),
        "client": ("10.1.2.3", 5000),
    }


def lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[:-2]


def test_the_head_replaces_what_the_gateway_owns() -> None:
    relay, upstreams = relay_for("http://u.example:8000/mcp?x=1")
    replica = upstreams.default.replicas[0]
    request = scope(
        (b"host", b"gateway:8787"),
        (b"content-type", b"application/json"),
        (b"connection", b"keep-alive, x-secret"),
        (b"x-secret", b"hop"),
        (b"keep-alive", b"timeout=5"),
        (b"mcp-session-id", b"gateway-id"),
        (b"accept-encoding", b"gzip"),
        (b"origin", b"http://localhost"),
        (b"content-length", b"999"),
        (b"authorization", b"Bearer t"),
        (b"mcp-name", b"prefixed_tool"),
    )
    extra = [(b"x-api-key", b"backend-own")]
    head = relay.head(request, replica, b"{}", b"backend-id", extra=extra, name=b"tool")
    assert lines(head) == [
        b"POST /mcp?x=1 HTTP/1.1",
        b"content-type: application/json",
        b"authorization: Bearer t",
        b"host: u.example:8000",
        b"accept-encoding: identity",
        b"content-length: 2",
        b"mcp-session-id: backend-id",
        b"mcp-name: tool",
        b"x-api-key: backend-own",
        b"x-forwarded-for: 10.1.2.3",
        b"x-forwarded-proto: http",
        b"x-forwarded-host: gateway:8787",
    ]
    without = relay.head(request, replica, b"{}", None, withhold=CREDENTIALS)
    assert b"authorization" not in without
    assert b"mcp-name: prefixed_tool" in without


@pytest.mark.parametrize(
    ("upstream", "client"),
    [
        (
            [(b"content-type", b"application/json"), (b"content-length", b"5")],
            [(b"content-type", b"application/json")],
        ),
        (
            [(b"content-type", b"text/event-stream"), (b"mcp-session-id", b"backend")],
            [(b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"no")],
        ),
        ([(b"connection", b"x-hop"), (b"x-hop", b"1"), (b"x-kept", b"2")], [(b"x-kept", b"2")]),
    ],
    ids=["framing-dropped", "sse-unbuffered-and-session-swapped", "connection-named"],
)
def test_response_headers(upstream: list[tuple[bytes, bytes]], client: list[Any]) -> None:
    relay, _ = relay_for(UP)
    assert relay.response_headers(upstream, None) == client
    relay.drain()
    with_sid = relay.response_headers(upstream, b"gw")
    assert sorted(with_sid) == sorted(
        [*client, (b"mcp-session-id", b"gw"), (b"connection", b"close")]
    )


class Client:
    """What an ASGI server would have sent the client."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        self.messages.append(message)

    async def receive(self) -> Any:
        await asyncio.sleep(3600)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def test_a_complete_answer_gets_the_gateways_own_length() -> None:
    wire = response(b'{"ok":1}', headers=["content-type: application/json", "x-up: 1"])
    async with RawServer(keep_answering(lambda _: wire)) as server:
        relay, upstreams = relay_for(f"{server.url}/mcp")
        replica = upstreams.default.replicas[0]
        client = Client()
        watch = relay.watch(client.receive)
        exchange = await relay.open(scope(), replica, b"{}", watch.token)
        assert replica.inflight == 1
        assert await relay.relay(client.send, exchange, watch, session_id=b"gw") == 200
        watch.close()
        start = client.messages[0]
        assert start["headers"] == [
            (b"content-type", b"application/json"),
            (b"x-up", b"1"),
            (b"mcp-session-id", b"gw"),
            (b"content-length", b"8"),
        ]
        assert client.body == b'{"ok":1}'
        assert replica.inflight == 0
        exchange.close()  # a second close gives nothing back twice
        assert replica.inflight == 0
        await upstreams.close()


async def test_a_body_that_breaks_off_is_not_ended_cleanly() -> None:
    async def breaks(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            response(
                headers=["content-type: text/event-stream", "transfer-encoding: chunked"],
                length=False,
            )
        )
        await peer.send(b"5\r\nhello\r\n")
        await asyncio.sleep(0.05)
        await peer.send(b"zz\r\n")  # not a chunk size

    async with RawServer(breaks) as server:
        relay, upstreams = relay_for(f"{server.url}/mcp")
        client = Client()
        watch = relay.watch(client.receive)
        exchange = await relay.open(scope(), upstreams.default.replicas[0], b"{}", watch.token)
        await relay.relay(client.send, exchange, watch)
        watch.close()
        assert client.body == b"hello"
        assert client.messages[-1].get("more_body") is True  # no final, empty chunk
        await upstreams.close()


async def test_a_failure_known_before_the_head_is_a_502() -> None:
    wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\n"
    async with RawServer(keep_answering(lambda _: wire)) as server:
        relay, upstreams = relay_for(f"{server.url}/mcp")
        replica = upstreams.default.replicas[0]
        client = Client()
        watch = relay.watch(client.receive)
        exchange = await relay.open(scope(), replica, b"{}", watch.token)
        await asyncio.sleep(0.05)
        with pytest.raises(BadGateway):
            await relay.relay(client.send, exchange, watch)
        watch.close()
        assert client.messages == []  # nothing reached the client
        assert replica.inflight == 0
        await upstreams.close()


async def test_open_any_skips_a_replica_that_refuses() -> None:
    answer = response(b"{}", headers=["content-type: application/json"])
    async with RawServer(keep_answering(lambda _: answer)) as server:
        dead = f"http://127.0.0.1:{free_port()}/mcp"
        relay, upstreams = relay_for(dead, f"{server.url}/mcp")
        exchange = await relay.open_any(scope(), upstreams.default, b"{}", CancelToken())
        assert exchange.replica.url == f"{server.url}/mcp"
        exchange.close()
        first: Replica = upstreams.default.replicas[0]
        assert not first.up and first.gone
        await upstreams.close()


async def test_open_any_with_no_replica_left_is_a_502() -> None:
    relay, upstreams = relay_for(f"http://127.0.0.1:{free_port()}/mcp")
    with pytest.raises(BadGateway, match="No upstream replica is reachable"):
        await relay.open_any(scope(), upstreams.default, b"{}", CancelToken())
    await upstreams.close()


async def test_a_sessions_replica_that_refuses_is_lost() -> None:
    relay, upstreams = relay_for(f"http://127.0.0.1:{free_port()}/mcp")
    replica = upstreams.default.replicas[0]
    with pytest.raises(ReplicaLost):
        await relay.open_on(scope(), replica, b"{}", CancelToken(), upstream_sid=b"s")
    await upstreams.close()


async def test_a_sessions_replica_that_times_out_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that only timed out keeps its sessions for the grace period: 503, retry."""
    relay, upstreams = relay_for(UP)
    replica = upstreams.default.replicas[0]

    async def times_out(*_args: object, **_kwargs: object) -> None:
        raise ConnectFailed("connect to 127.0.0.1:9 timed out")

    monkeypatch.setattr(replica.pool, "request", times_out)
    with pytest.raises(UpstreamUnreachable):
        await relay.open_on(scope(), replica, b"{}", CancelToken(), upstream_sid=b"s")
    assert not replica.up and not replica.gone
    assert replica.inflight == 0
    await upstreams.close()


def test_settings_reach_the_relay() -> None:
    relay, _ = relay_for(UP, upstream_timeout=7, trusted_proxies=["10.0.0.0/8"])
    assert relay.timeout == 7
    assert relay.client(scope((b"x-forwarded-for", b"203.0.113.5"))) == "203.0.113.5"
    assert isinstance(validate({"upstream": [UP]}), Settings)
