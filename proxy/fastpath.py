"""Selects the compiled fast path or its pure-Python twin; IMPLEMENTATION says which."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._types import AuditLines, AuditMore, Describe, Described, OtlpSpan
from .headers import McpHeaders
from .jsonrpc import Envelope

__all__ = (
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
    "FastPath",
    "OtlpSpan",
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

NO_EXTENSIONS = bool(os.environ.get("PROXY_NO_EXTENSIONS")) or sys.implementation.name != "cpython"


class FastPath(Protocol):
    """What both twins provide (checked by mypy against each module)."""

    def scan_envelope(self, body: bytes, /) -> Envelope: ...

    def scan_headers(self, headers: list[tuple[bytes, bytes]], /) -> McpHeaders: ...

    @property
    def encode_audit_lines(
        self,
    ) -> Callable[
        [AuditLines, float, Described, Describe, Callable[[str], bytes], AuditMore], bytes
    ]:
        """(lines, offset, described, describe, json_string, more) -> the lines' JSON."""

    def encode_otlp_attributes(self, attributes: dict[str, Any], /) -> bytes:
        """Attributes as a span's attribute fields (OTLP protobuf)."""

    def encode_otlp_spans(self, spans: list[OtlpSpan], resource: bytes, scope: bytes, /) -> bytes:
        """The spans as one OTLP ExportTraceServiceRequest (protobuf)."""


IMPLEMENTATION: str
if TYPE_CHECKING or NO_EXTENSIONS:
    from ._fastpath_py import (
        Spans,
        ToolErrors,
        TraceSpan,
        encode_audit_lines,
        encode_otlp_attributes,
        encode_otlp_spans,
        parse_traceparent,
        scan_envelope,
        scan_headers,
        scan_response,
        write_head,
    )

    IMPLEMENTATION = "py"
else:
    try:
        from ._fastpath import (
            Spans,
            ToolErrors,
            TraceSpan,
            encode_audit_lines,
            encode_otlp_attributes,
            encode_otlp_spans,
            parse_traceparent,
            scan_envelope,
            scan_headers,
            scan_response,
            write_head,
        )

        IMPLEMENTATION = "c"
    except ModuleNotFoundError as exc:  # not compiled: fall back to the twin
        if exc.name != "proxy._fastpath":  # anything else is a bug: fail loudly
            raise
        from ._fastpath_py import (
            Spans,
            ToolErrors,
            TraceSpan,
            encode_audit_lines,
            encode_otlp_attributes,
            encode_otlp_spans,
            parse_traceparent,
            scan_envelope,
            scan_headers,
            scan_response,
            write_head,
        )

        IMPLEMENTATION = "py"
