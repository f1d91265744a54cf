"""Clients of the gateway in the tests: the official SDK's, and raw HTTP with httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import httpx
import httpx2
import mcp.types as types
from mcp import ClientSession
from mcp.client.session import (
    ClientRequestContext,
    ElicitationFnT,
    MessageHandlerFnT,
    SamplingFnT,
)
from mcp.client.streamable_http import streamable_http_client

if TYPE_CHECKING:
    from tests.helpers.gateways import Upstream

HANDSHAKE: Final = "2025-11-25"
MODERN: Final = "2026-07-28"
ACCEPT: Final = "application/json, text/event-stream"
MODERN_META: Final[dict[str, Any]] = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
"""The `_meta` every 2026-07-28 request carries (raw requests add it themselves)."""

Era = Literal["handshake", "modern"]


# --------------------------------------------------------------------------- SDK clients


@dataclass
class Wire:
    """The HTTP exchanges an SDK client made, as its own HTTP client saw them."""

    responses: list[httpx2.Response] = field(default_factory=list)
    requests: list[httpx2.Request] = field(default_factory=list)

    async def on_request(self, request: httpx2.Request) -> None:
        self.requests.append(request)

    async def on_response(self, response: httpx2.Response) -> None:
        self.responses.append(response)

    @property
    def session_ids(self) -> set[str]:
        """Every Mcp-Session-Id the client was handed."""
        return {sid for r in self.responses if (sid := r.headers.get("mcp-session-id"))}

    def statuses(self, method: str) -> list[int]:
        return [r.status_code for r in self.responses if r.request.method == method]


@asynccontextmanager
async def sdk_session(
    url: str,
    era: Era,
    *,
    sampling_callback: SamplingFnT | None = None,
    elicitation_callback: ElicitationFnT | None = None,
    message_handler: MessageHandlerFnT | None = None,
    terminate_on_close: bool = True,
    auth: httpx2.Auth | None = None,
) -> AsyncIterator[tuple[ClientSession, Wire]]:
    """An official-SDK session over Streamable HTTP, negotiated in `era`.

    ``handshake`` runs ``initialize``; ``modern`` runs ``server/discover`` and adopts
    2026-07-28. `auth` is the HTTP client's (the SDK's OAuth provider, for one). Yields
    the session and the record of its HTTP traffic.
    """
    wire = Wire()
    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [wire.on_request],
        "response": [wire.on_response],
    }
    timeout = httpx2.Timeout(10.0, read=30.0)
    async with (
        httpx2.AsyncClient(event_hooks=hooks, timeout=timeout, auth=auth) as http,
        streamable_http_client(url, http_client=http, terminate_on_close=terminate_on_close) as (
            read,
            write,
        ),
        ClientSession(
            read,
            write,
            read_timeout_seconds=30.0,
            sampling_callback=sampling_callback,
            elicitation_callback=elicitation_callback,
            message_handler=message_handler,
        ) as session,
    ):
        if era == "handshake":
            await session.initialize()
        else:
            await session.discover()
        yield session, wire


# --------------------------------------------------------------------------- raw HTTP


def sampling_answer(asked: list[str], reply: str) -> SamplingFnT:
    """A client sampling callback that notes each prompt's text and answers `reply`."""

    async def sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        content = params.messages[0].content
        assert isinstance(content, types.TextContent)
        asked.append(content.text)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=reply), model="m"
        )

    return sample


def handshake_headers(session_id: str) -> dict[str, str]:
    return {"accept": ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers


async def raw_initialize(
    http: httpx.AsyncClient, url: str, capabilities: dict[str, Any] | None = None
) -> str:
    """Open a handshake-era session with plain HTTP (declaring `capabilities`); returns
    the session id handed out."""
    params = {
        "protocolVersion": HANDSHAKE,
        "capabilities": capabilities or {},
        "clientInfo": {"name": "raw-test-client", "version": "0"},
    }
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
    response = await http.post(url, headers={"accept": ACCEPT}, json=body)
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    ack = await http.post(url, headers=handshake_headers(session_id), json=initialized)
    assert ack.status_code == 202, ack.text
    return session_id


async def messages(response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON-RPC messages of a response body, JSON or SSE, as they arrive."""
    if response.headers.get("content-type", "").startswith("application/json"):
        yield json.loads(await response.aread())
        return
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif not line and data:
            text = "\n".join(data)
            data = []
            if text:  # an empty data line is a priming event
                yield json.loads(text)


async def raw_call(
    http: httpx.AsyncClient, url: str, session_id: str, name: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    """tools/call on a handshake-era session; returns the final JSON-RPC message."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    async with http.stream("POST", url, headers=handshake_headers(session_id), json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for message in messages(resp):
            if "id" in message:
                return message
    raise AssertionError(f"{name}: the response stream ended without a result")


def text_of(result: dict[str, Any]) -> str:
    """The first text block of a raw tools/call result."""
    content = result["result"]["content"]
    assert content[0]["type"] == "text", content
    text: str = content[0]["text"]
    return text


async def linger_state(http: httpx.AsyncClient, upstream: Upstream, marker: str) -> str | None:
    """What became of the `linger` call with `marker`: started, completed or cancelled."""
    response = await http.get(f"{upstream.base}/linger/{marker}")
    state: str | None = response.json()["state"]
    return state
