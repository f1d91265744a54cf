"""OpenTelemetry traces: a server span per request to the MCP endpoint and a client span
per upstream exchange, exported over OTLP/HTTP by the SDK's batch processor (never on a
request's path). Off by default; on with ``--trace-endpoint`` and the optional extra
``pip install 'mcp-fastproxy[otel]'`` (without a trace endpoint OpenTelemetry is not even
imported: off costs nothing).

Names and attributes follow the OpenTelemetry semantic conventions for MCP: a span is
named ``{mcp.method.name} {target}`` (the tool, prompt or resource, when there is one);
it carries ``mcp.method.name``, ``jsonrpc.request.id``, ``mcp.protocol.version``,
``gen_ai.tool.name`` (tools/call), ``gen_ai.prompt.name`` (prompts/get),
``mcp.resource.uri`` (resources), ``client.address`` or ``server.address`` and
``server.port``, ``http.response.status_code`` and, for an answer the gateway gave
itself, ``error.type``. ``mcp.session.id`` holds the session's fingerprint (as the audit
and access logs do), never the id: the id is a credential.

The client's W3C ``traceparent`` / ``tracestate`` make the server span a child of the
client's; the upstream gets the gateway's client span in their place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import __version__, jsonrpc as rpc
from .auth.audit import session_fingerprint

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ._types import Headers, Scope
    from .errors import GatewayError
    from .headers import McpHeaders
    from .jsonrpc import Envelope
    from .settings import Settings
    from .upstream.balance import Replica

__all__ = ("TRACE_HEADERS", "Tracing")

TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
"""The client's trace headers: the upstream gets the gateway's instead."""


def _target(env: Envelope | None) -> str | None:
    return None if env is None else (env.name or env.uri)


class Tracing:
    """The tracer provider, its exporter and the spans of one request."""

    def __init__(self, settings: Settings) -> None:
        # Imported here: only a gateway with a trace endpoint needs OpenTelemetry.
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.sampling import (  # noqa: PLC0415
            ParentBased,
            TraceIdRatioBased,
        )
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )

        resource = Resource.create({"service.name": settings.trace_service_name})
        sampler = ParentBased(TraceIdRatioBased(settings.trace_sample))
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        exporter = OTLPSpanExporter(endpoint=settings.trace_endpoint, timeout=10)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("mcp-fastproxy", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.trace = trace

    def close(self) -> None:
        """Export what is left and stop."""
        self.provider.shutdown()

    def server_span(self, scope: Scope) -> Span:
        """The request's span, a child of the client's trace when it sent one."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in TRACE_HEADERS
        }
        context = self.propagator.extract(carrier) if carrier else None
        client = scope.get("client")
        attributes: dict[str, Any] = {"network.protocol.name": "http"}
        if client:
            attributes["client.address"] = client[0]
        return self.tracer.start_span(
            scope["method"],
            context=context,
            kind=self.trace.SpanKind.SERVER,
            attributes=attributes,
        )

    def named(self, span: Span, env: Envelope, hdrs: McpHeaders) -> None:
        """Name the span after the request once its envelope is read."""
        method = "batch" if env.kind == rpc.BATCH else (env.method or "response")
        target = _target(env)
        span.update_name(f"{method} {target}" if target else method)
        span.set_attributes(_mcp_attributes(env, hdrs))

    def ended(self, span: Span, status: int, error: GatewayError | None, hdrs: McpHeaders) -> None:
        if hdrs.session_id is not None:
            span.set_attribute("mcp.session.id", session_fingerprint(hdrs.session_id))
        span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(self.trace.StatusCode.ERROR)
        elif status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(self.trace.StatusCode.ERROR)
        span.end()

    def client_span(
        self, parent: Span, env: Envelope | None, replica: Replica | None, backend: str
    ) -> tuple[Span, Headers]:
        """A span for one upstream exchange under `parent`, and the trace headers that
        carry it to the upstream."""
        context = self.trace.set_span_in_context(parent)
        method = "GET" if env is None else (env.method or "response")
        target = _target(env)
        attributes: dict[str, Any] = {"mcp.backend": backend}
        if env is not None:
            attributes["mcp.method.name"] = method
            if env.id is not None:
                attributes["jsonrpc.request.id"] = env.id.decode("latin-1")
        if replica is not None:
            attributes["server.address"], attributes["server.port"] = replica.netloc
        span = self.tracer.start_span(
            f"{method} {target}" if target else method,
            context=context,
            kind=self.trace.SpanKind.CLIENT,
            attributes=attributes,
        )
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=self.trace.set_span_in_context(span))
        return span, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()]

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
        host, port = replica.netloc
        span.set_attributes(
            {"server.address": host, "server.port": port, "http.response.status_code": status}
        )


def _mcp_attributes(env: Envelope, hdrs: McpHeaders) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if env.kind != rpc.BATCH and env.method:
        attributes["mcp.method.name"] = env.method
    if env.id is not None:
        attributes["jsonrpc.request.id"] = env.id.decode("latin-1")
    version = env.protocol_version or hdrs.protocol_version
    if version:
        attributes["mcp.protocol.version"] = (
            version if isinstance(version, str) else version.decode("latin-1")
        )
    if env.method == "tools/call" and env.name:
        attributes["gen_ai.tool.name"] = env.name
    elif env.method == "prompts/get" and env.name:
        attributes["gen_ai.prompt.name"] = env.name
    elif env.uri:
        attributes["mcp.resource.uri"] = env.uri
    return attributes
