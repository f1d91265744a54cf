"""Header names as ASGI delivers them (lower-case bytes), hop-by-hop filters, McpHeaders."""

from __future__ import annotations

import base64
import binascii

MCP_SESSION_ID = b"mcp-session-id"
MCP_PROTOCOL_VERSION = b"mcp-protocol-version"
MCP_METHOD = b"mcp-method"
MCP_NAME = b"mcp-name"
PEER = b"mcp-fastproxy-peer"
"""Another gateway replica's key to a local server's bridge (:mod:`proxy.stdio.peers`); never
taken from a client."""
LAST_EVENT_ID = b"last-event-id"
ORIGIN = b"origin"
HOST = b"host"
AUTHORIZATION = b"authorization"
ACCEPT = b"accept"
CONTENT_TYPE = b"content-type"
CONTENT_LENGTH = b"content-length"
CONNECTION = b"connection"
ACCEPT_ENCODING = b"accept-encoding"
X_ACCEL_BUFFERING = b"x-accel-buffering"

# Headers that may appear at most once: a first-copy reader and a last-copy reader
# would route differently (the SDK rejects duplicates of these too).
ROUTING_HEADERS = frozenset({MCP_SESSION_ID, MCP_PROTOCOL_VERSION, MCP_METHOD, MCP_NAME})

# RFC 9110 §7.6.1 plus the de-facto ones Go's reverse proxy drops (`hopHeaders`).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class McpHeaders:
    """What routing needs from one request's headers, pulled out in one pass.

    Values are the raw header bytes; ``duplicate`` names the first routing header
    that was sent more than once (the request must then be refused).

    The compiled scanner builds instances without calling ``__init__``: it fills every
    slot directly. Keep ``__init__`` a plain assignment of all the slots.
    """

    __slots__ = (
        "authorization",
        "content_length",
        "duplicate",
        "host",
        "last_event_id",
        "method",
        "name",
        "origin",
        "protocol_version",
        "session_id",
    )

    def __init__(self) -> None:
        self.session_id: bytes | None = None
        self.protocol_version: bytes | None = None
        self.method: bytes | None = None
        self.name: bytes | None = None
        self.last_event_id: bytes | None = None
        self.origin: bytes | None = None
        self.host: bytes | None = None
        self.content_length: bytes | None = None
        self.authorization: bytes | None = None
        self.duplicate: bytes | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, McpHeaders):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable value object

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__ if getattr(self, f))
        return f"McpHeaders({fields})"


_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})
_NO_TOKENS: frozenset[bytes] = frozenset()


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in a ``Connection`` value: hop-by-hop for this message too."""
    if value in _PLAIN_CONNECTION:  # the usual value names no other header
        return _NO_TOKENS
    return frozenset(t.strip().lower() for t in value.split(b","))


def encode_header_value(text: str) -> bytes:
    """`text` as a routing-header value: plain when it is visible ASCII (inner spaces
    allowed) without surrounding whitespace, else the ``=?base64?<payload>?=`` form."""
    plain = text == text.strip() and all(" " <= c <= "~" for c in text)
    if text and plain and not text.startswith("=?base64?"):
        return text.encode("ascii")
    return b"=?base64?" + base64.b64encode(text.encode("utf-8")) + b"?="


def decode_header_value(value: bytes) -> str | None:
    """A routing-header value as text: plain visible ASCII, or the spec's
    ``=?base64?<payload>?=`` form for values that do not fit in a header.

    None when the sentinel form is malformed (bad or non-canonical base64, bad UTF-8),
    so a corrupt header never matches a body value by accident.
    """
    if value.startswith(b"=?base64?") and value.endswith(b"?=") and len(value) >= 11:
        payload = value[9:-2]
        try:
            decoded = base64.b64decode(payload, validate=True)
        except binascii.Error:
            return None
        if base64.b64encode(decoded) != payload:
            return None
        try:
            return decoded.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value.decode("latin-1")
