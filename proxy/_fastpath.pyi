"""Types of the compiled fast path, proxy/_fastpath.pyx (checked by mypy.stubtest)."""

from collections.abc import Callable
from typing import Any

from proxy._types import AuditLines, AuditMore, Describe, Described, OtlpSpan
from proxy.headers import McpHeaders
from proxy.jsonrpc import Envelope

__all__ = (
    "encode_audit_lines",
    "encode_otlp_attributes",
    "encode_otlp_spans",
    "scan_envelope",
    "scan_headers",
)

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
def scan_envelope(body: bytes) -> Envelope: ...
def scan_headers(headers: list[tuple[bytes, bytes]]) -> McpHeaders: ...
