"""The gateway's own JSON-RPC calls to a backend over Streamable HTTP (federation).

Used where the gateway, not the client, talks to a backend: its discovery session (lists,
capabilities) and the lazy opening of a client's backend session. One request, its answer
read as JSON or from an event stream (the first JSON-RPC response carrying the request's
id), over the replica's keep-alive pool.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import orjson

from .. import sse
from .._types import Headers
from ..jsonrpc import PROTOCOL_VERSION_META_KEY
from ..modern import CAPABILITIES_KEY, MODERN_VERSION
from ..upstream.balance import Replica
from ..upstream.connection import UpstreamResponse
from ..upstream.errors import UpstreamError
from ..upstream.head import HeadInjection, request_head as write_head

ACCEPT = b"application/json, text/event-stream"
MAX_ANSWER = 64 * 1024 * 1024
"""Largest answer the gateway reads whole from a backend (its own calls, resource reads)."""
_ids = itertools.count(1)


class CallFailed(Exception):
    """The backend could not be reached, answered an HTTP error, or a JSON-RPC error."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def request_head(
    replica: Replica,
    body: bytes,
    *,
    session_id: str | None,
    protocol_version: str | None,
    method: bytes = b"POST",
    last_event_id: str | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """The head of a request the gateway itself sends a backend (through the one head
    writer: HeadInjection for CR, LF or NUL in any value)."""
    headers: Headers = [
        (b"host", replica.host_header),
        (b"accept", ACCEPT),
        (b"accept-encoding", b"identity"),
    ]
    if method == b"POST":
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", b"%d" % len(body)))
    if session_id is not None:
        headers.append((b"mcp-session-id", session_id.encode("latin-1")))
    if protocol_version is not None:
        headers.append((b"mcp-protocol-version", protocol_version.encode("latin-1")))
    if last_event_id is not None:
        headers.append((b"last-event-id", last_event_id.encode("utf-8")))
    headers.extend(extra)
    headers.extend(replica.peer_headers)
    return write_head(method, replica.target, headers)


class Answer:
    """A backend's answer: HTTP status, its session id header, the JSON-RPC result."""

    __slots__ = ("result", "session_id", "status")

    def __init__(self, status: int, session_id: str | None, result: Any) -> None:
        self.status = status
        self.session_id = session_id
        self.result = result


async def call(
    replica: Replica,
    method: str,
    params: dict[str, Any] | None,
    *,
    session_id: str | None,
    protocol_version: str | None,
    limit: float,
    notification: bool = False,
    method_header: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
    max_answer: int = MAX_ANSWER,
) -> Answer:
    """Send one request (or notification) and return its result; raise CallFailed.
    `extra`: more request headers (the client's credentials, where the backend takes
    them)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    rid = None
    if not notification:
        rid = next(_ids)
        message["id"] = rid
    if params is not None:
        message["params"] = params
    body = orjson.dumps(message)
    if method_header:  # 2026-07-28: Mcp-Method mirrors the body
        extra = [*extra, (b"mcp-method", method.encode("latin-1"))]
    try:
        head = request_head(
            replica, body, session_id=session_id, protocol_version=protocol_version, extra=extra
        )
    except HeadInjection as exc:
        raise CallFailed(f"{method}: {exc}") from None
    try:
        async with asyncio.timeout(limit):
            response = await replica.pool.request(head, body, head_timeout=limit)
            try:
                data = await response.aread(max_answer)
            finally:
                response.close()
    except TimeoutError:
        raise CallFailed(f"{method}: no answer within {limit:g}s") from None
    except UpstreamError as exc:
        raise CallFailed(f"{method}: {exc}") from None
    sid = response.header(b"mcp-session-id")
    new_sid = None if sid is None else sid.decode("latin-1")
    if response.status >= 300:
        raise CallFailed(f"{method}: HTTP {response.status}", status=response.status)
    if notification:
        return Answer(response.status, new_sid, None)
    ctype = response.header(b"content-type") or b""
    found = sse.messages(data) if ctype.startswith(b"text/event-stream") else [_json(data)]
    for msg in found:
        if isinstance(msg, dict) and msg.get("id") == rid and ("result" in msg or "error" in msg):
            if "error" in msg:
                error = msg["error"] if isinstance(msg["error"], dict) else {}
                raise CallFailed(
                    f"{method}: {error.get('message', 'error')}", code=error.get("code")
                )
            return Answer(response.status, new_sid, msg["result"])
    raise CallFailed(f"{method}: the answer holds no response to the request")


async def stateless_call(
    replica: Replica,
    method: str,
    params: dict[str, Any] | None,
    *,
    limit: float,
    capabilities: dict[str, Any] | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
    max_answer: int = MAX_ANSWER,
) -> Answer:
    """:func:`call` as a request of the stateless era: the envelope in ``params._meta``
    (the version, and `capabilities` as the client's), ``Mcp-Method``, no session."""
    meta = {
        PROTOCOL_VERSION_META_KEY: MODERN_VERSION,
        CAPABILITIES_KEY: capabilities or {},
    }
    return await call(
        replica,
        method,
        {**(params or {}), "_meta": meta},
        session_id=None,
        protocol_version=MODERN_VERSION,
        limit=limit,
        method_header=True,
        extra=extra,
        max_answer=max_answer,
    )


async def handshake(
    replica: Replica,
    params: dict[str, Any],
    *,
    limit: float,
    version: str | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
    max_answer: int = MAX_ANSWER,
) -> Answer:
    """Open a session of the gateway's own: ``initialize`` with `params`, then
    ``notifications/initialized`` under the version the server agreed on (`version` when
    it names none). Its answer: the session's id, the server's result (an object)."""
    answer = await call(
        replica,
        "initialize",
        params,
        session_id=None,
        protocol_version=None,
        limit=limit,
        extra=extra,
        max_answer=max_answer,
    )
    if not isinstance(answer.result, dict):
        raise CallFailed("initialize: the result is not an object")
    agreed = answer.result.get("protocolVersion")
    await call(
        replica,
        "notifications/initialized",
        None,
        session_id=answer.session_id,
        protocol_version=agreed if isinstance(agreed, str) else version,
        limit=limit,
        notification=True,
        extra=extra,
    )
    return answer


def session_forgotten(response: UpstreamResponse) -> bool:
    """Whether a backend's answer says it does not know the session: 404 (the spec's
    answer), or the 400s SDK servers send for it ("No valid session ID provided",
    "Server not initialized") once they have restarted. The request was not acted on."""
    if response.status == 404:
        return True
    if response.status != 400 or not response.body_complete():
        return False
    try:
        answer = orjson.loads(response.peek())
    except orjson.JSONDecodeError:
        return False
    error = answer.get("error") if isinstance(answer, dict) else None
    message = str(error.get("message", "")).lower() if isinstance(error, dict) else ""
    return "session" in message or "not initialized" in message


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CallFailed("the answer is not JSON") from None
