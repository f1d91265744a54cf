"""Types of the compiled fast path, proxy/_fastpath.pyx (checked by mypy.stubtest)."""

from collections.abc import Callable, Iterable
from typing import Any, final

from typing_extensions import disjoint_base

from proxy._types import AuditLines, AuditMore, Describe, Described, OtlpSpan
from proxy.headers import McpHeaders
from proxy.jsonrpc import Envelope

__all__ = (
    "Spans",
    "ToolErrors",
    "TraceSpan",
    "encode_audit_lines",
    "encode_otlp_attributes",
    "encode_otlp_spans",
    "parse_traceparent",
    "scan_envelope",
    "scan_headers",
    "scan_response",
    "write_head",
)

@disjoint_base
class TraceSpan:
    @property
    def spans(self) -> Spans: ...
    @property
    def kind(self) -> int: ...
    @property
    def trace_id(self) -> bytes: ...
    @property
    def trace_hex(self) -> bytes: ...
    @property
    def span_id(self) -> bytes: ...
    @property
    def parent_id(self) -> bytes: ...
    @property
    def trace_state(self) -> str: ...
    @property
    def sampled(self) -> bool: ...
    @property
    def start(self) -> int: ...
    env: Envelope | None
    hdrs: McpHeaders | None
    method: str
    client: str | None
    backend: str
    replica: Any
    status: int
    error: str | None
    def traceparent(self) -> bytes: ...
    def end(self) -> None: ...

@disjoint_base
class Spans:
    @property
    def waiting(self) -> list[OtlpSpan]: ...
    def __init__(
        self,
        waiting: list[OtlpSpan],
        batch: int,
        max_queue: int,
        wake: Callable[[], object],
        dropped: list[float],
        shared: dict[tuple[Any, ...], tuple[str, bytes]],
        share: Callable[[tuple[Any, ...], TraceSpan], tuple[str, bytes]],
        fingerprint: Callable[[bytes], str],
        ratio: float,
    ) -> None: ...
    def server_span(self, scope: Any) -> TraceSpan: ...
    @staticmethod
    def named(span: TraceSpan, env: Envelope, hdrs: McpHeaders) -> None: ...
    @staticmethod
    def ended(span: TraceSpan, status: int, error: str | None, hdrs: McpHeaders) -> None: ...
    @staticmethod
    def adopt(span: TraceSpan, traceparent: bytes, tracestate: bytes | None) -> None: ...
    def client_span(
        self, parent: TraceSpan, env: Envelope | None, replica: Any, backend: str
    ) -> tuple[TraceSpan, list[tuple[bytes, bytes]]]: ...
    @staticmethod
    def reached(span: TraceSpan, replica: Any, status: int) -> None: ...
    def finish(self, span: TraceSpan) -> None: ...

@final
class ToolErrors:
    @property
    def send(self) -> Callable[[Any], Any]: ...
    @property
    def span(self) -> TraceSpan: ...
    @property
    def tail(self) -> bytes: ...
    def __init__(self, send: Callable[[Any], Any], span: TraceSpan) -> None: ...
    def __call__(self, message: Any) -> Any: ...

def encode_audit_lines(
    lines: AuditLines,
    offset: float,
    described: Described,
    describe: Describe,
    json_string: Callable[[str], bytes],
    more: AuditMore,
) -> bytes: ...
def encode_otlp_attributes(attributes: dict[str, Any]) -> bytes: ...
def encode_otlp_spans(spans: list[OtlpSpan], resource: bytes, scope: bytes) -> bytes: ...
def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None: ...
def write_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes: ...
def scan_response(
    data: bytes, limit: int
) -> tuple[int, list[tuple[bytes, bytes]], bool, int] | None: ...
def scan_envelope(body: bytes) -> Envelope: ...
def scan_headers(headers: list[tuple[bytes, bytes]]) -> McpHeaders: ...
