"""The gateway's own JSON-RPC calls to a backend over Streamable HTTP (federation).

Used where the gateway, not the client, talks to a backend: its discovery session (lists,
capabilities) and the lazy opening of a client's backend session. One request, its answer
read as JSON or from an event stream (the first JSON-RPC response carrying the request's
id), over the replica's keep-alive pool.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson

from ..upstream.balance import Replica
from ..upstream.http1 import UpstreamError

ACCEPT = b"application/json, text/event-stream"
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
) -> bytes:
    lines = [
        b"%s %s HTTP/1.1" % (method, replica.target),
        b"host: " + replica.host_header,
        b"accept: " + ACCEPT,
        b"accept-encoding: identity",
    ]
    if method == b"POST":
        lines.append(b"content-type: application/json")
        lines.append(b"content-length: %d" % len(body))
    if session_id is not None:
        lines.append(b"mcp-session-id: " + session_id.encode("latin-1"))
    if protocol_version is not None:
        lines.append(b"mcp-protocol-version: " + protocol_version.encode("latin-1"))
    if last_event_id is not None:
        lines.append(b"last-event-id: " + last_event_id.encode("utf-8"))
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def sse_messages(data: bytes) -> list[Any]:
    """The JSON payloads of the ``data:`` fields of a complete event stream."""
    out = []
    for block in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        payload = b"\n".join(
            line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")
        )
        if payload:
            try:
                out.append(orjson.loads(payload))
            except orjson.JSONDecodeError:
                continue
    return out


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
) -> Answer:
    """Send one request (or notification) and return its result; raise CallFailed."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    rid = None
    if not notification:
        rid = next(_ids)
        message["id"] = rid
    if params is not None:
        message["params"] = params
    body = orjson.dumps(message)
    head = request_head(replica, body, session_id=session_id, protocol_version=protocol_version)
    if method_header:  # 2026-07-28: Mcp-Method mirrors the body
        head = head[:-2] + b"mcp-method: " + method.encode("latin-1") + b"\r\n\r\n"
    try:
        async with asyncio.timeout(limit):
            response = await replica.pool.request(head, body, head_timeout=limit)
            try:
                data = await response.aread()
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
    messages = sse_messages(data) if ctype.startswith(b"text/event-stream") else [_json(data)]
    for msg in messages:
        if isinstance(msg, dict) and msg.get("id") == rid and ("result" in msg or "error" in msg):
            if "error" in msg:
                error = msg["error"] if isinstance(msg["error"], dict) else {}
                raise CallFailed(
                    f"{method}: {error.get('message', 'error')}", code=error.get("code")
                )
            return Answer(response.status, new_sid, msg["result"])
    raise CallFailed(f"{method}: the answer holds no response to the request")


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CallFailed("the answer is not JSON") from None
