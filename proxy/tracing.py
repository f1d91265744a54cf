"""Traces: a server span per request to the MCP endpoint and a client span per upstream
exchange, exported over OTLP/HTTP (protobuf) in batches by a thread (:mod:`proxy.otlp`),
never on a request's path. Off by default, on with ``--trace-endpoint``; off, nothing of
this runs (no span, no thread).

The spans are the gateway's own, small records: a request pays for two ids, two clock
readings and a few attributes, not for the OpenTelemetry SDK's span objects (which cost
several times the gateway's own work per request; see the README). What is exported is
what the SDK would export: OTLP, W3C trace context, a parent-based ratio sampler.

Names and attributes follow the OpenTelemetry semantic conventions for MCP: a span is
named ``{mcp.method.name} {target}`` (the tool, prompt or resource, when there is one);
it carries ``mcp.method.name``, ``jsonrpc.request.id``, ``mcp.protocol.version``,
``gen_ai.tool.name`` (tools/call), ``gen_ai.prompt.name`` (prompts/get),
``mcp.resource.uri`` (resources), ``client.address`` or ``server.address`` and
``server.port``, ``http.response.status_code`` and, for an answer the gateway gave
itself, ``error.type``. ``mcp.session.id`` holds the session's fingerprint (as the audit
and access logs do), never the id: the id is a credential.

The client's W3C ``traceparent`` / ``tracestate`` make the server span a child of the
client's (and decide whether it is sampled); the upstream gets the gateway's client span
in their place.
"""

from __future__ import annotations

import re
from random import getrandbits
from time import time_ns
from typing import TYPE_CHECKING, Any

from . import __version__, jsonrpc as rpc
from .auth.audit import session_fingerprint
from .fastpath import encode_otlp_attributes
from .otlp import SpanExport, resource_message, scope_message

if TYPE_CHECKING:
    from ._types import Headers, Scope
    from .errors import GatewayError
    from .headers import McpHeaders
    from .jsonrpc import Envelope
    from .metrics import Metrics
    from .settings import Settings
    from .upstream.balance import Replica

__all__ = ("TRACE_HEADERS", "Span", "Tracing", "parse_traceparent")

TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
"""The client's trace headers: the upstream gets the gateway's instead."""
TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
SERVER = 2  # OTLP's SpanKind
CLIENT = 3

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_SHARED = 4096  # kinds of span whose shared part is kept


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id in hex, parent span id, sampled) of a W3C ``traceparent``; None when it is not
    a valid one (then the request starts a trace of its own). Version 00 has exactly
    four fields; a later version may add more after a dash; ``ff`` is never valid."""
    found = _TRACEPARENT.fullmatch(value.strip(b" \t"))
    if found is None:
        return None
    version, trace, parent, flags, rest = found.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    if trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace, bytes.fromhex(parent.decode()), bool(int(flags, 16) & 1)


class Span:
    """One span of the gateway's. Unsampled, it only carries the trace context on.

    A request pays for as little as it can: its ids, its clock readings and references
    to what it already has (the envelope, the headers, the replica); its name and
    attributes are made when it ends, and only when it is sampled (:meth:`Tracing.finish`).
    """

    __slots__ = (
        "backend",
        "client",
        "env",
        "error",
        "hdrs",
        "kind",
        "method",
        "parent_id",
        "replica",
        "sampled",
        "span_id",
        "start",
        "status",
        "trace_hex",
        "trace_id",
        "trace_state",
        "tracing",
    )

    def __init__(
        self,
        trace_id: bytes,
        trace_hex: bytes,
        span_id: bytes,
        parent_id: bytes,
        trace_state: str,
        sampled: bool,
        kind: int,
        tracing: Tracing,
    ) -> None:
        self.trace_id = trace_id
        self.trace_hex = trace_hex
        self.span_id = span_id
        self.parent_id = parent_id
        self.trace_state = trace_state
        self.sampled = sampled
        self.kind = kind
        self.tracing = tracing
        self.env: Envelope | None = None
        self.hdrs: McpHeaders | None = None
        self.method = ""  # the HTTP method (a server span's name until it has an envelope)
        self.client: str | None = None
        self.backend = ""
        self.replica: Replica | None = None
        self.status = 0
        self.error: str | None = None  # error.type
        self.start = time_ns()

    def __repr__(self) -> str:
        return f"<Span {self.trace_hex.decode()}/{self.span_id.hex()}>"

    def traceparent(self) -> bytes:
        """This span as the W3C ``traceparent`` of a request it makes."""
        flags = b"-01" if self.sampled else b"-00"
        return b"00-" + self.trace_hex + b"-" + self.span_id.hex().encode() + flags

    def end(self) -> None:
        """Done: a sampled span is queued for export."""
        if self.sampled:
            self.tracing.finish(self)


class Tracing:
    """The sampler, the export, and the spans of one request."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        resource = resource_message(
            {
                "service.name": settings.trace_service_name,
                "service.version": __version__,
                "telemetry.sdk.name": "mcp-fastproxy",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.version": __version__,
            }
        )
        scope = scope_message("mcp-fastproxy", __version__)
        self.exporter = SpanExport(settings.trace_endpoint, resource, scope, metrics)
        self.export = self.exporter.add
        self._shared: dict[tuple[Any, ...], tuple[str, bytes]] = {}
        self.ratio = settings.trace_sample
        # A new trace is sampled when its id's low 64 bits fall under this bound: the
        # decision the OpenTelemetry SDK's TraceIdRatioBased sampler makes.
        self.bound = round(settings.trace_sample * (1 << 64))

    def close(self) -> None:
        """Export what is left and stop (blocking: call it from a thread)."""
        self.exporter.close()

    def finish(self, span: Span) -> None:
        """Queue an ended, sampled span for export. What it shares with spans like it
        (its name, and the attributes that follow from its method, target, client or
        replica) is made and encoded once per kind of span and kept; a span adds only
        its request id, session, status and error."""
        env = span.env
        hdrs = span.hdrs
        dynamic: dict[str, Any] = {}
        key: tuple[Any, ...]
        if span.kind == SERVER:
            if env is None:
                key = (SERVER, span.method, span.client)
            else:
                version = env.protocol_version or (None if hdrs is None else hdrs.protocol_version)
                key = (SERVER, env.kind, env.method, env.name, env.uri, version, span.client)
            if hdrs is not None and hdrs.session_id is not None:
                dynamic["mcp.session.id"] = session_fingerprint(hdrs.session_id)
        elif env is None:
            key = (CLIENT, span.backend, None, span.replica)
        else:
            key = (CLIENT, span.backend, env.method, env.name or env.uri, span.replica)
        if env is not None and env.id is not None:
            dynamic["jsonrpc.request.id"] = env.id.decode("latin-1")
        if span.status:
            dynamic["http.response.status_code"] = span.status
        if span.error is not None:
            dynamic["error.type"] = span.error
        shared = self._shared.get(key)
        if shared is None:
            shared = self._share(key, span)
        self.export(
            (
                span.trace_id,
                span.span_id,
                span.parent_id,
                span.trace_state,
                shared[0],
                span.kind,
                span.start,
                time_ns(),
                shared[1],
                dynamic,
                span.error is not None,
            )
        )

    def _share(self, key: tuple[Any, ...], span: Span) -> tuple[str, bytes]:
        """The name and the encoded shared attributes of spans like `span` (kept)."""
        env = span.env
        attributes: dict[str, Any]
        if span.kind == SERVER:
            attributes = {"network.protocol.name": "http"}
            if span.client is not None:
                attributes["client.address"] = span.client
            name = span.method if env is None else _mcp_attributes(env, span.hdrs, attributes)
        else:
            attributes = {"mcp.backend": span.backend}
            if env is None:
                name = "GET"
            else:
                name = env.method or "response"
                attributes["mcp.method.name"] = name
                target = env.name or env.uri
                if target:
                    name = f"{name} {target}"
            if span.replica is not None:
                attributes["server.address"], attributes["server.port"] = span.replica.netloc
        if len(self._shared) >= _SHARED:
            self._shared.clear()  # names come from clients: never an unbounded memory
        shared = self._shared[key] = (name, encode_otlp_attributes(attributes))
        return shared

    def server_span(self, scope: Scope) -> Span:
        """The request's span, a child of the client's trace when it sent one."""
        parent = state = None
        for name, value in scope["headers"]:
            if name == TRACEPARENT:
                parent = value
            elif name == TRACESTATE:
                state = value if state is None else state + b"," + value
        ids = (getrandbits(192) or 1).to_bytes(24, "big")
        parsed = None if parent is None else parse_traceparent(parent)
        if parsed is not None:
            trace_hex, parent_id, sampled = parsed
            trace_id = bytes.fromhex(trace_hex.decode())
            trace_state = "" if state is None else state.decode("latin-1")
        else:
            trace_id = ids[8:]
            trace_hex = trace_id.hex().encode()
            parent_id, trace_state = b"", ""
            sampled = self.ratio >= 1.0 or int.from_bytes(ids[16:], "big") < self.bound
        span = Span(trace_id, trace_hex, ids[:8], parent_id, trace_state, sampled, SERVER, self)
        span.method = scope["method"]
        client = scope.get("client")
        if client:
            span.client = client[0]
        return span

    @staticmethod
    def named(span: Span, env: Envelope, hdrs: McpHeaders) -> None:
        """The request's envelope, once read (the span is named after it)."""
        span.env = env
        span.hdrs = hdrs

    @staticmethod
    def ended(span: Span, status: int, error: GatewayError | None, hdrs: McpHeaders) -> None:
        span.status = status
        span.hdrs = hdrs
        if error is not None:
            span.error = type(error).__name__
        elif status >= 500:
            span.error = str(status)
        span.end()

    def client_span(
        self, parent: Span, env: Envelope | None, replica: Replica | None, backend: str
    ) -> tuple[Span, Headers]:
        """A span for one upstream exchange under `parent`, and the trace headers that
        carry it to the upstream (`replica`: where it goes, when already known)."""
        span = Span(
            parent.trace_id,
            parent.trace_hex,
            (getrandbits(64) or 1).to_bytes(8, "big"),
            parent.span_id,
            parent.trace_state,
            parent.sampled,
            CLIENT,
            self,
        )
        span.env = env
        span.backend = backend
        span.replica = replica
        carried = [(TRACEPARENT, span.traceparent())]
        if span.trace_state:
            carried.append((TRACESTATE, span.trace_state.encode("latin-1")))
        return span, carried

    @staticmethod
    def instead(
        carried: Headers, withhold: frozenset[bytes], extra: Headers | None
    ) -> tuple[frozenset[bytes], Headers]:
        """What an upstream request withholds and adds so that the gateway's trace
        headers (`carried`) go up in place of the client's."""
        return withhold | TRACE_HEADERS, [*(extra or ()), *carried]

    @staticmethod
    def reached(span: Span, replica: Replica, status: int) -> None:
        """The replica an exchange went to, and the status it answered with."""
        span.replica = replica
        span.status = status


def _mcp_attributes(env: Envelope, hdrs: McpHeaders | None, attributes: dict[str, Any]) -> str:
    """A server span's MCP attributes, added to `attributes`; its name."""
    method = "batch" if env.kind == rpc.BATCH else (env.method or "response")
    if env.kind != rpc.BATCH and env.method:
        attributes["mcp.method.name"] = env.method
    version = env.protocol_version or (None if hdrs is None else hdrs.protocol_version)
    if version:
        attributes["mcp.protocol.version"] = (
            version if isinstance(version, str) else version.decode("latin-1")
        )
    target = env.name or env.uri
    if env.method == "tools/call" and env.name:
        attributes["gen_ai.tool.name"] = env.name
    elif env.method == "prompts/get" and env.name:
        attributes["gen_ai.prompt.name"] = env.name
    elif env.uri:
        attributes["mcp.resource.uri"] = env.uri
    return f"{method} {target}" if target else method
