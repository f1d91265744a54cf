"""CORS for browser-based MCP clients: preflights answered, answers readable.

Only for an Origin the gateway allows (``allowed_origins``, or a loopback origin when it
listens on loopback: :class:`~proxy.guard.OriginGuard`): a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) gets 204 with the methods, the headers it asked for
and how long to keep the answer; every other answer to that origin carries
``Access-Control-Allow-Origin`` and exposes ``Mcp-Session-Id`` (a browser script could
not read it otherwise). Any other origin gets none of it. The gateway alone speaks for
CORS: an upstream's own ``Access-Control-*`` headers are not relayed.
"""

from __future__ import annotations

from typing import Final

from ._types import Headers, Message, Send

__all__ = ("CORS_HEADERS", "answer_headers", "preflight_headers", "with_cors")

CORS_HEADERS: Final = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)
"""Response headers only the gateway writes (an upstream's are dropped)."""

_METHODS: Final = b"GET, POST, DELETE, OPTIONS"
_ALLOWED_HEADERS: Final = (
    b"accept, authorization, content-type, last-event-id, mcp-method, mcp-name, "
    b"mcp-protocol-version, mcp-session-id"
)
_EXPOSED: Final = b"mcp-session-id, mcp-protocol-version, www-authenticate"
MAX_AGE: Final = b"7200"


def answer_headers(origin: bytes) -> Headers:
    """What every answer to an allowed `origin` carries."""
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-expose-headers", _EXPOSED),
        (b"vary", b"Origin"),
    ]


def preflight_headers(origin: bytes, asked: bytes | None) -> Headers:
    """A preflight's answer for an allowed `origin`: the MCP methods, the headers the
    browser `asked` for (the MCP ones when it named none: ``Mcp-Param-*`` headers are
    named per tool, so they are allowed as asked), and a cache lifetime."""
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", _METHODS),
        (b"access-control-allow-headers", asked or _ALLOWED_HEADERS),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-max-age", MAX_AGE),
        (b"vary", b"Origin"),
    ]


def with_cors(send: Send, origin: bytes) -> Send:
    """`send`, with the CORS headers of an allowed `origin` added to the response head."""
    extra = answer_headers(origin)

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], *extra]}
        await send(message)

    return send_with_cors
