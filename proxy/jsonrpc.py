"""JSON-RPC envelope, error codes and errors shared by both fast-path twins."""

from __future__ import annotations

from typing import Final

import orjson

JSONRPC_VERSION: Final = "2.0"

# JSON-RPC 2.0 and MCP error codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
RESOURCE_NOT_FOUND: Final = -32002  # MCP's; in-band (HTTP 200), unlike the gateway's -32002
HEADER_MISMATCH: Final = -32020  # 2026-07-28: Mcp-Method / Mcp-Name disagree with the body
# Gateway-side failures (implementation-defined server error range -32000..-32099).
SESSION_NOT_FOUND: Final = -32001
UPSTREAM_UNAVAILABLE: Final = -32002  # HTTP 502/503; shares MCP's resource-not-found number
UPSTREAM_TIMEOUT: Final = -32003
STORE_UNAVAILABLE: Final = -32004
REQUEST_TOO_LARGE: Final = -32005
FORBIDDEN: Final = -32006
UNAUTHORIZED: Final = -32007  # no valid access token (HTTP 401)
RATE_LIMITED: Final = -32008  # over the principal's rate limit (HTTP 429)

LIST_KEYS: Final = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
"""Each list method, and the key of its result that holds the entries."""

# Envelope kinds.
REQUEST: Final = 1
NOTIFICATION: Final = 2
RESPONSE: Final = 3
BATCH: Final = 4

PROTOCOL_VERSION_META_KEY: Final = "io.modelcontextprotocol/protocolVersion"

NULL_ID: Final = b"null"


class Envelope:
    """What routing needs from one JSON-RPC message, read without decoding all of it.

    ``id`` is the exact JSON text of the id (``b'7'``, ``b'"abc"'``) so that errors
    echo it unchanged; ``None`` when the message has no id. ``name`` is
    ``params.name``, ``uri`` is ``params.uri``, ``protocol_version`` is
    ``params._meta["io.modelcontextprotocol/protocolVersion"]`` — each only when it
    is a JSON string, else ``None``. A batch has ``kind == BATCH`` and
    ``methods`` lists its members' methods (``None`` for a response member).

    The compiled scanner builds instances without calling ``__init__``: it fills every
    slot directly. Keep ``__init__`` a plain assignment of all the slots.
    """

    __slots__ = ("id", "kind", "method", "methods", "name", "protocol_version", "uri")

    def __init__(
        self,
        kind: int,
        id: bytes | None = None,
        method: str | None = None,
        name: str | None = None,
        uri: str | None = None,
        protocol_version: str | None = None,
        methods: tuple[str | None, ...] | None = None,
    ) -> None:
        self.kind = kind
        self.id = id
        self.method = method
        self.name = name
        self.uri = uri
        self.protocol_version = protocol_version
        self.methods = methods

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable value object

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"Envelope({fields})"


class EnvelopeError(ValueError):
    """The body is not a JSON-RPC message the gateway can route."""

    code: int = INVALID_REQUEST

    def __init__(self, message: str, id: bytes | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.id = id


class ParseError(EnvelopeError):
    """The body is not valid JSON (or not UTF-8)."""

    code = PARSE_ERROR


class InvalidEnvelope(EnvelopeError):
    """Valid JSON, but not a JSON-RPC 2.0 request, notification, response or batch."""

    code = INVALID_REQUEST


def error_body(code: int, message: str, id: bytes | None = None, data: object = None) -> bytes:
    """A JSON-RPC error response; ``id`` is raw JSON text echoed byte for byte."""
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return b'{"jsonrpc":"2.0","id":%s,"error":%s}' % (id or NULL_ID, orjson.dumps(error))


# Protocol versions negotiated with `initialize` (Mcp-Session-Id era); any other
# MCP-Protocol-Version value is the stateless per-request era (2026-07-28 onwards).
HANDSHAKE_VERSIONS: Final = frozenset({b"2024-11-05", b"2025-03-26", b"2025-06-18", b"2025-11-25"})
# Methods whose Mcp-Name header mirrors a body parameter (2026-07-28).
NAME_BEARING_METHODS: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
