"""One backend: sessions minted for the upstream's, routed to their replica, forgotten when
the backend forgets them or its replica is gone (in-process, raw upstreams on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from proxy.app import ProxyApp
from proxy.config import validate
from proxy.sessions import Binding, SessionRecord
from testbed.processes import free_port
from testbed.servers.http_fixtures import RawServer, Request, keep_answering, response

INITIALIZE = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}'
CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t"}}'


def upstream(seen: list[Request], *, session: bytes = b"backend-1", status: int = 200) -> Any:
    """Answers every request, noting it; an initialize gets the upstream's session id."""

    def answer(request: Request) -> bytes:
        seen.append(request)
        json = "content-type: application/json"
        if b'"initialize"' in request.body:
            return response(b"{}", headers=[json, f"mcp-session-id: {session.decode()}"])
        return response(b'{"ok":1}', status=status, headers=[json])

    return keep_answering(answer)


@asynccontextmanager
async def gateway(*urls: str) -> AsyncIterator[ProxyApp]:
    app = ProxyApp(validate({"upstream": list(urls), "probe_interval": 60}))
    await app.open()
    try:
        yield app
    finally:
        await app.close()


async def post(
    app: ProxyApp, body: bytes, method: str = "POST", **headers: str
) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[Any] = []
    pending = (
        [{"type": "http.request", "body": body, "more_body": False}] if method == "POST" else []
    )

    async def receive() -> Any:
        # As a server does: the body once, then nothing until the client goes (a receive
        # that answered at once forever would spin the gateway's disconnect watch).
        if pending:
            return pending.pop()
        await asyncio.sleep(3600)

    async def send(message: Any) -> None:
        sent.append(message)

    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "method": method,
        "path": "/mcp",
        "scheme": "http",
        "client": ("127.0.0.1", 1),
        "headers": [(b"host", b"127.0.0.1"), *raw],
    }
    await app(scope, receive, send)
    return (
        sent[0]["status"],
        dict(sent[0]["headers"]),
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


async def test_initialize_mints_a_gateway_session_for_the_upstreams() -> None:
    seen: list[Request] = []
    async with RawServer(upstream(seen)) as server, gateway(f"{server.url}/mcp") as app:
        status, headers, _ = await post(app, INITIALIZE)
        assert status == 200
        sid = headers[b"mcp-session-id"].decode()
        assert sid != "backend-1" and len(sid) == 32
        record = await app.store.resolve(sid)
        assert record == SessionRecord({"default": Binding(f"{server.url}/mcp", "backend-1")})
        status, headers, body = await post(app, CALL, mcp_session_id=sid)
        assert (status, body) == (200, b'{"ok":1}')
        assert seen[-1].header(b"mcp-session-id") == b"backend-1"  # the backend's own id
        assert b"mcp-session-id" not in headers  # the upstream named none in this answer


async def test_an_unknown_session_is_404() -> None:
    async with RawServer(upstream([])) as server, gateway(f"{server.url}/mcp") as app:
        status, _, body = await post(app, CALL, mcp_session_id="nope")
        assert status == 404
        assert orjson.loads(body)["error"]["code"] == -32001


@pytest.mark.parametrize(("verb", "status"), [("POST", 404), ("DELETE", 200)])
async def test_a_session_the_backend_ended_is_forgotten(verb: str, status: int) -> None:
    seen: list[Request] = []
    async with (
        RawServer(upstream(seen, status=status)) as server,
        gateway(f"{server.url}/mcp") as app,
    ):
        _, headers, _ = await post(app, INITIALIZE)
        sid = headers[b"mcp-session-id"].decode()
        got, _, _ = await post(app, CALL, verb, mcp_session_id=sid)
        assert got == status
        assert await app.store.resolve(sid) is None


async def test_a_session_whose_replica_refuses_is_lost() -> None:
    async with RawServer(upstream([])) as server, gateway(f"{server.url}/mcp") as app:
        _, headers, _ = await post(app, INITIALIZE)
        sid = headers[b"mcp-session-id"].decode()
        replica = app.upstreams.default.replicas[0]
    # The server is gone now: its port refuses.
    async with gateway(replica.url) as app2:
        await app2.store.create(sid, SessionRecord({"default": Binding(replica.url, "b")}))
        status, _, body = await post(app2, CALL, mcp_session_id=sid)
        assert status == 404
        assert "upstream gone" in orjson.loads(body)["error"]["message"]
        assert await app2.store.resolve(sid) is None


async def test_a_new_session_goes_to_a_replica_that_answers() -> None:
    seen: list[Request] = []
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    async with RawServer(upstream(seen)) as server, gateway(dead, f"{server.url}/mcp") as app:
        for _ in range(3):
            status, headers, _ = await post(app, INITIALIZE)
            assert status == 200
            sid = headers[b"mcp-session-id"].decode()
            record = await app.store.resolve(sid)
            assert record is not None
            assert record.bindings["default"].replica == f"{server.url}/mcp"
        assert not app.upstreams.default.replicas[0].up
