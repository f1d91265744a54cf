"""An official-SDK server kept to one protocol era, for the era-bridging tests.

The SDK (2.x) serves both eras on one endpoint. :func:`handshake_only` wraps its ASGI app
so that it answers as a server of the handshake era alone (the SDK 1.x, say) answers a
request of the stateless era: ``MCP-Protocol-Version`` naming a version it does not know
gets 400 and a JSON-RPC error, before the SDK sees it. :func:`stateless_only` is the
reverse, a server of 2026-07-28 alone: ``initialize`` is a method it does not have (404,
-32601), a handshake-era version is one it does not support (400, -32022), and there is
no session to GET or DELETE (405).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

__all__ = ("HANDSHAKE_VERSIONS", "add_era_flags", "handshake_only", "stateless_only")

HANDSHAKE_VERSIONS = tuple(HANDSHAKE_PROTOCOL_VERSIONS)


def add_era_flags(parser: argparse.ArgumentParser) -> None:
    """``--handshake-only`` and ``--stateless-only``, for a test server's command line."""
    parser.add_argument(
        "--handshake-only",
        action="store_true",
        help="refuse stateless-era requests, as a server of the handshake era alone does",
    )
    parser.add_argument(
        "--stateless-only",
        action="store_true",
        help="refuse handshake-era requests, as a server of the 2026-07-28 era alone does",
    )


def handshake_only(app: Any) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.lower(): v for k, v in scope.get("headers", ())}
            version = headers.get(b"mcp-protocol-version", b"").decode("latin-1").strip()
            if version and version not in HANDSHAKE_VERSIONS:
                message = (
                    f"Bad Request: Unsupported protocol version: {version}. "
                    f"Supported versions: {', '.join(HANDSHAKE_VERSIONS)}"
                )
                body = json.dumps(
                    {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return wrapped


def _send_error(status: int, request_id: Any, code: int, message: str) -> list[dict[str, Any]]:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    ).encode()
    start = {"type": "http.response.start", "status": status}
    return [
        {**start, "headers": [(b"content-type", b"application/json")]},
        {"type": "http.response.body", "body": body},
    ]


def stateless_only(app: Any) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/mcp":
            await app(scope, receive, send)
            return
        if scope["method"] in ("GET", "DELETE"):
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        version = headers.get(b"mcp-protocol-version", b"").decode("latin-1").strip()
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        request_id = parsed.get("id") if isinstance(parsed, dict) else None
        replies = None
        if isinstance(parsed, dict) and parsed.get("method") == "initialize":
            replies = _send_error(404, request_id, -32601, "Method not found: initialize")
        elif version in HANDSHAKE_VERSIONS:
            replies = _send_error(
                400, request_id, -32022, f"Unsupported protocol version: {version}"
            )
        if replies is not None:
            for reply in replies:
                await send(reply)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            given: dict[str, Any] = await receive()
            return given

        await app(scope, replay, send)

    return wrapped
