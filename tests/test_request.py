"""The front half of a request: checks, body, envelope, and errors answered with the id."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from proxy.config import validate
from proxy.errors import UnknownName
from proxy.metrics import Metrics
from proxy.request import Endpoint, Request

UP = "http://127.0.0.1:9/mcp"
CALL = b'{"jsonrpc":"2.0","id":"c-1","method":"tools/call","params":{"name":"echo"}}'


class Recorder:
    """A handler that notes each request and answers 200 (or raises what it is given)."""

    def __init__(self, raises: Exception | None = None) -> None:
        self.requests: list[Request] = []
        self.raises = raises

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def retire(self) -> None: ...

    def drain(self) -> None: ...

    def catalog_changed(self) -> None: ...

    async def handle(self, request: Request) -> int:
        self.requests.append(request)
        if self.raises is not None:
            raise self.raises
        await request.send({"type": "http.response.start", "status": 200, "headers": []})
        await request.send({"type": "http.response.body", "body": b""})
        return 200


class Call:
    """One request through an Endpoint, and what went back."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.sent: list[dict[str, Any]] = []

    async def __call__(
        self, method: str = "POST", body: bytes | list[bytes] = CALL, **headers: str
    ) -> tuple[int, Any]:
        pieces = [body] if isinstance(body, bytes) else list(body)
        messages = [
            {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
            for i, p in enumerate(pieces)
        ]

        async def receive() -> Any:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)

        async def send(message: Any) -> None:
            self.sent.append(message)

        raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
        scope = {
            "type": "http",
            "method": method,
            "path": "/mcp",
            "headers": [(b"host", b"127.0.0.1:8787"), *raw],
        }
        await self.endpoint(scope, receive, send)
        status = self.sent[0]["status"]
        body_out = b"".join(m.get("body", b"") for m in self.sent[1:])
        return status, orjson.loads(body_out) if body_out else None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = self.sent[0]["headers"]
        return headers


def endpoint(handler: Recorder, **settings: Any) -> tuple[Endpoint, Metrics]:
    metrics = Metrics()
    return Endpoint(validate({"upstream": [UP], **settings}), handler, metrics), metrics


async def test_a_request_reaches_the_handler_with_its_envelope() -> None:
    handler = Recorder()
    call = Call(endpoint(handler)[0])
    assert (await call(body=[CALL[:10], CALL[10:]]))[0] == 200
    (request,) = handler.requests
    assert request.body == CALL
    assert request.env is not None and request.env.id == b'"c-1"'
    assert request.method == "tools/call"
    assert request.verb == "POST"


@pytest.mark.parametrize(
    ("call_args", "status", "code", "rid"),
    [
        ({"mcp_session_id": "a", "Mcp-Session-Id": "b"}, 400, -32600, None),
        ({"origin": "https://evil.example"}, 403, -32006, None),
        ({"body": b'{"jsonrpc":"2.0","id":3,'}, 400, -32700, None),
        ({"body": b'{"jsonrpc":"2.0","id":3}'}, 400, -32600, 3),
        ({"mcp_protocol_version": "2026-07-28", "mcp_method": "tools/list"}, 400, -32020, "c-1"),
        ({"content_length": "99999999"}, 413, -32005, None),
    ],
    ids=[
        "duplicate-header",
        "origin",
        "parse-error",
        "not-an-envelope",
        "header-mismatch",
        "declared-too-large",
    ],
)
async def test_bad_requests_are_answered_before_the_handler(
    call_args: dict[str, Any], status: int, code: int, rid: Any
) -> None:
    handler = Recorder()
    call = Call(endpoint(handler)[0])
    got_status, body = await call(**call_args)
    assert (got_status, body["error"]["code"], body["id"]) == (status, code, rid)
    assert handler.requests == []


async def test_another_method_is_405_with_allow() -> None:
    call = Call(endpoint(Recorder())[0])
    assert (await call("PUT"))[0] == 405
    assert (b"allow", b"GET, POST, DELETE") in call.headers


async def test_a_body_over_the_limit_while_reading_is_413() -> None:
    call = Call(endpoint(Recorder(), max_body_size=1024)[0])
    status, body = await call(body=[b"x" * 1000, b"x" * 1000])
    assert (status, body["error"]["code"]) == (413, -32005)


async def test_a_body_that_does_not_come_is_408_and_counted() -> None:
    ep, metrics = endpoint(Recorder(), body_timeout=0.05)
    sent: list[Any] = []

    async def never() -> Any:
        await asyncio.sleep(3600)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [(b"host", b"127.0.0.1")]}
    await asyncio.wait_for(ep(scope, never, send), 5)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert metrics.refused.values == {("body_timeout",): 1}
    ep.close()


async def test_an_error_the_handler_raises_is_answered_with_the_requests_id() -> None:
    ep, metrics = endpoint(Recorder(raises=UnknownName("Unknown tool: 'x'")))
    status, body = await Call(ep)()
    assert status == 200
    assert body == {
        "jsonrpc": "2.0",
        "id": "c-1",
        "error": {"code": -32602, "message": "Unknown tool: 'x'"},
    }
    assert metrics.requests.values == {("tools/call", "2xx"): 1}
