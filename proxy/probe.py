"""Does an MCP server answer at a replica's URL? And which protocol eras does it speak?

:func:`answers_mcp` is the readiness probe: a ``ping`` POSTed without a session, which
every MCP server answers with a JSON-RPC message (a result, or an error such as "missing
session id") and no other kind of server does; an HTML page, a 404 from a web framework
or a legacy SSE endpoint are not MCP. :func:`probe_eras` (``mcp-fastproxy check
--probe``) also asks ``server/discover`` and ``initialize``, ending the session it opened.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import sse
from .jsonrpc import HANDSHAKE_VERSIONS
from .upstream.balance import Replica
from .upstream.errors import UpstreamError
from .upstream.head import request_head

__all__ = ("Probe", "answers_mcp", "probe_eras")

MODERN = "2026-07-28"
_ACCEPT = b"application/json, text/event-stream"
_PING = b'{"jsonrpc":"2.0","id":"mcp-fastproxy-probe","method":"ping"}'


def json_rpc_messages(content_type: bytes, body: bytes) -> list[Any]:
    """The JSON-RPC messages of an answer, JSON or an event stream; [] when it holds none
    (it is not MCP)."""
    if content_type.startswith(b"text/event-stream"):
        found = sse.messages(body)
    elif content_type.startswith(b"application/json"):
        try:
            found = [orjson.loads(body)]
        except orjson.JSONDecodeError:
            return []
    else:
        return []
    return [m for m in found if isinstance(m, dict) and m.get("jsonrpc") == "2.0"]


async def _post(
    replica: Replica, body: bytes, headers: list[tuple[bytes, bytes]], limit: float
) -> tuple[int, bytes, bytes, bytes | None]:
    """POST `body` to the replica: status, content type, body, Mcp-Session-Id."""
    head = request_head(
        b"POST",
        replica.target,
        [
            (b"host", replica.host_header),
            (b"accept", _ACCEPT),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            *headers,
            *replica.peer_headers,
        ],
    )
    async with asyncio.timeout(limit):
        response = await replica.pool.request(head, body, head_timeout=limit, retry=True)
        try:
            data = await response.aread(1 << 20)
        finally:
            response.close()
    ctype = response.header(b"content-type") or b""
    return response.status, ctype, data, response.header(b"mcp-session-id")


async def answers_mcp(replica: Replica, limit: float) -> str | None:
    """None when an MCP server answers at the replica, else what answers instead."""
    try:
        status, ctype, body, _ = await _post(replica, _PING, [], limit)
    except (UpstreamError, TimeoutError) as exc:
        return f"no answer: {exc}"
    if json_rpc_messages(ctype, body):
        return None
    kind = ctype.split(b";")[0].decode("latin-1") or "no content type"
    return f"not an MCP endpoint (HTTP {status}, {kind})"


@dataclass
class Probe:
    """What ``check --probe`` found at one replica."""

    url: str
    problem: str | None = None
    eras: list[str] = field(default_factory=list)
    server: str = ""


async def probe_eras(replica: Replica, limit: float) -> Probe:
    """Which eras the server at `replica` speaks: ``server/discover`` (2026-07-28), then
    ``initialize`` (the handshake era, whose session is ended again)."""
    found = Probe(replica.url)
    found.problem = await answers_mcp(replica, limit)
    if found.problem is not None:
        return found
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    discover = orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}
    )
    modern = [(b"mcp-protocol-version", MODERN.encode()), (b"mcp-method", b"server/discover")]
    result = await _result(replica, discover, modern, limit)
    if result is not None:
        versions = result.get("supportedVersions")
        found.eras += (
            [v for v in versions if isinstance(v, str)] if isinstance(versions, list) else []
        )
        info = (result.get("_meta") or {}).get("io.modelcontextprotocol/serverInfo") or {}
        found.server = str(info.get("name", "")) if isinstance(info, dict) else ""
    newest = max(v.decode() for v in HANDSHAKE_VERSIONS)
    params = {
        "protocolVersion": newest,
        "capabilities": {},
        "clientInfo": {"name": "mcp-fastproxy check", "version": "0"},
    }
    initialize = orjson.dumps({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": params})
    sid: list[bytes] = []
    result = await _result(replica, initialize, [], limit, sid)
    if result is not None:
        agreed = result.get("protocolVersion")
        if isinstance(agreed, str) and agreed not in found.eras:
            found.eras.append(agreed)
        info = result.get("serverInfo") or {}
        found.server = found.server or (str(info.get("name", "")) if isinstance(info, dict) else "")
    if sid:
        await _end(replica, sid[0], limit)
    if not found.eras:
        found.problem = "answers, but neither server/discover nor initialize succeeded"
    return found


async def _result(
    replica: Replica,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    limit: float,
    session: list[bytes] | None = None,
) -> dict[str, Any] | None:
    try:
        status, ctype, data, sid = await _post(replica, body, headers, limit)
    except (UpstreamError, TimeoutError):
        return None
    if sid is not None and session is not None:
        session.append(sid)
    for message in json_rpc_messages(ctype, data):
        if isinstance(message.get("result"), dict) and status < 300:
            result: dict[str, Any] = message["result"]
            return result
    return None


async def _end(replica: Replica, session_id: bytes, limit: float) -> None:
    head = request_head(
        b"DELETE",
        replica.target,
        [(b"host", replica.host_header), (b"mcp-session-id", session_id), *replica.peer_headers],
    )
    try:
        async with asyncio.timeout(limit):
            response = await replica.pool.request(head, None, head_timeout=limit, retry=True)
            response.close()
    except (UpstreamError, TimeoutError):
        pass
