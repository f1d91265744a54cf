"""Traces: a server span per request to the MCP endpoint and a client span per upstream
exchange, exported over OTLP/HTTP (protobuf) in batches by a thread (:mod:`proxy.otlp`),
never on a request's path. Off by default, on with ``--trace-endpoint``; off, nothing of
this runs (no span, no thread).

The spans are the gateway's own, small records made by the compiled
:class:`proxy.fastpath.Spans` (with its pure-Python twin): a request pays for its ids,
its clock readings and references to what it has anyway, not for the OpenTelemetry SDK's
span objects (which cost several times the gateway's own work per request; see the
README). Name and attributes are made when a sampled span ends, and what spans of one
kind share is made and encoded once (:meth:`Tracing.share`). What is exported is what the
SDK would export: OTLP, W3C trace context, a parent-based ratio sampler.

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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from . import __version__, jsonrpc as rpc
from .auth.audit import session_fingerprint
from .fastpath import Spans, ToolErrors, TraceSpan, encode_otlp_attributes
from .otlp import SpanExport, resource_message, scope_message

if TYPE_CHECKING:
    from ._types import Headers, Scope
    from .headers import McpHeaders
    from .jsonrpc import Envelope
    from .metrics import Metrics
    from .settings import Settings

__all__ = (
    "META_TRACEPARENT",
    "TRACE_HEADERS",
    "Span",
    "ToolErrors",
    "Tracing",
    "meta_context",
    "with_meta_context",
)

Span = TraceSpan
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
"""The client's trace headers: the upstream gets the gateway's instead."""
SERVER = 2  # OTLP's SpanKind
_SHARED = 4096  # kinds of span whose shared part is kept


class Tracing:
    """The spans of this process and their export."""

    server_span: Callable[[Scope], Span]
    """A request's span, a child of the client's trace when it sent one."""
    named: Callable[[Span, Envelope, McpHeaders], None]
    """The request's envelope, once read (the span is named after it)."""
    ended: Callable[[Span, int, str | None, McpHeaders], None]
    """The request was answered with a status (and an error.type, if any)."""
    client_span: Callable[[Span, Envelope | None, Any, str], tuple[Span, Headers]]
    """A span for one upstream exchange under a request's, and the trace headers that
    carry it to the upstream (the replica: where it goes, when already known)."""
    reached: Callable[[Span, Any, int], None]
    """The replica an exchange went to, and the status it answered with."""
    adopt: Callable[[Span, bytes, bytes | None], None]
    """A client's trace context from the request's ``params._meta`` (no header named one)."""

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
        self.exporter = exporter = SpanExport(settings.trace_endpoint, resource, scope, metrics)
        self.shared: dict[tuple[Any, ...], tuple[str, bytes]] = {}
        self.spans = spans = Spans(
            exporter.waiting,
            exporter.batch,
            exporter.max_queue,
            exporter.wake,
            exporter.dropped,
            self.shared,
            self.share,
            session_fingerprint,
            settings.trace_sample,
        )
        self.server_span = spans.server_span
        self.named = spans.named
        self.ended = spans.ended
        self.client_span = spans.client_span
        self.reached = spans.reached
        self.adopt = spans.adopt

    def close(self) -> None:
        """Export what is left and stop (blocking: call it from a thread)."""
        self.exporter.close()

    def share(self, key: tuple[Any, ...], span: Span) -> tuple[str, bytes]:
        """The name and the encoded shared attributes of spans like `span` (kept under
        `key`: what makes them alike)."""
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
        if len(self.shared) >= _SHARED:
            self.shared.clear()  # names come from clients: never an unbounded memory
        shared = self.shared[key] = (name, encode_otlp_attributes(attributes))
        return shared

    @staticmethod
    def instead(
        carried: Headers, withhold: frozenset[bytes], extra: Headers | None
    ) -> tuple[frozenset[bytes], Headers]:
        """What an upstream request withholds and adds so that the gateway's trace
        headers (`carried`) go up in place of the client's."""
        if not withhold and not extra:
            return TRACE_HEADERS, carried
        return withhold | TRACE_HEADERS, [*(extra or ()), *carried]


META_TRACEPARENT = b'"traceparent"'
"""Bytes every request with a trace context in its ``params._meta`` holds."""


def meta_context(body: bytes) -> tuple[bytes, bytes | None] | None:
    """The W3C trace context (traceparent, tracestate) a client put in the request's
    ``params._meta``, as the MCP specification allows; None when there is none."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    parent = meta.get("traceparent") if isinstance(meta, dict) else None
    if not isinstance(parent, str) or not parent.isascii():
        return None
    state = meta.get("tracestate")  # type: ignore[union-attr]  # a dict: parent is found
    kept = state.encode() if isinstance(state, str) and state.isascii() else None
    return parent.encode(), kept


def with_meta_context(body: bytes, span: Span) -> bytes:
    """`body` (whose ``params._meta`` holds the client's trace context) with `span`'s
    context in its place: the upstream continues the gateway's span, as with headers."""
    message = orjson.loads(body)
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return body  # a body rewritten for its backend without the client's _meta
    meta["traceparent"] = span.traceparent().decode()
    if span.trace_state:
        meta["tracestate"] = span.trace_state
    else:
        meta.pop("tracestate", None)
    return orjson.dumps(message)


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
