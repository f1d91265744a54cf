"""ASGI types used by the gateway (a subset of the ASGI 3 specification), and the audit
and OTLP encoders' (both fast-path twins and their stub share them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

AuditLines = list[tuple[float, tuple[Any, ...]]]
"""Queued audit lines: when each request ended (perf_counter) and its line's parts."""
Described = dict[tuple[Any, ...], bytes]
"""What names a request (principal key, session, method, name, backend, replica) -> JSON."""
Describe = Callable[[tuple[Any, ...], Any], bytes]
"""Makes (and keeps in Described) what names a request, from its key and principal."""
AuditMore = Callable[[str | None, bytes | None], bytes]
"""The members a rule or a call's arguments add to a line."""
OtlpSpan = tuple[
    bytes, bytes, bytes, str, str, int, int, int, bytes, str | None, str | None, int, str | None
]
"""A finished span for the OTLP encoder: trace id (16 bytes), span id (8), parent span id
(8, or empty for a root), W3C tracestate, name, kind (OTLP's enum), start and end (ns
since the epoch), the attributes it shares with spans like it, already encoded
(``encode_otlp_attributes``), then its own: the session's fingerprint, the JSON-RPC
request id, the HTTP status (0: none) and the error type (None: not an error)."""
