"""An official-SDK server kept to one protocol era, for the era-bridging tests.

The SDK (2.x) serves both eras on one endpoint. :func:`handshake_only` wraps its ASGI app
so that it answers as a server of the handshake era alone (the SDK 1.x, say) answers a
request of the stateless era: ``MCP-Protocol-Version`` naming a version it does not know
gets 400 and a JSON-RPC error, before the SDK sees it.
"""

from __future__ import annotations

import json
from typing import Any

from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

__all__ = ("HANDSHAKE_VERSIONS", "handshake_only")

HANDSHAKE_VERSIONS = tuple(HANDSHAKE_PROTOCOL_VERSIONS)


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
