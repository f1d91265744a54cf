"""Pure-Python twin of proxy._fastpath: same names, same results, same exceptions.

Over 400 lines on purpose: it follows the compiled scanner step by step, and one file
each keeps the two readable side by side (the tests hold them to the same answers)."""

from __future__ import annotations

import math
import random
import re
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._types import AuditLines, AuditMore, Describe, Described, OtlpSpan
from .headers import (
    AUTHORIZATION,
    CONTENT_LENGTH,
    HOST,
    LAST_EVENT_ID,
    MCP_METHOD,
    MCP_NAME,
    MCP_PROTOCOL_VERSION,
    MCP_SESSION_ID,
    ORIGIN,
    ROUTING_HEADERS,
    McpHeaders,
)
from .jsonrpc import (
    BATCH,
    JSONRPC_VERSION,
    NOTIFICATION,
    PROTOCOL_VERSION_META_KEY,
    REQUEST,
    RESPONSE,
    Envelope,
    InvalidEnvelope,
    ParseError,
)
from .upstream.errors import HeadInjection

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

# Header name -> McpHeaders attribute.
_HEADER_FIELDS = {
    MCP_SESSION_ID: "session_id",
    MCP_PROTOCOL_VERSION: "protocol_version",
    MCP_METHOD: "method",
    MCP_NAME: "name",
    LAST_EVENT_ID: "last_event_id",
    ORIGIN: "origin",
    HOST: "host",
    CONTENT_LENGTH: "content_length",
    AUTHORIZATION: "authorization",
}

# Deepest accepted nesting of arrays/objects (the top-level container counts as 1).
MAX_DEPTH = 1024
# A number whose leading digit sits at 10**308 may or may not round to infinity.
_MAX_EXP10 = 308
_EXP_DIGITS = 15  # exponents with more digits saturate at 10**15

# Value types as seen from the first character of a JSON value.
_T_STRING = 1
_T_NUMBER = 2
_T_OTHER = 3  # null, true, false, object, array

_WS = re.compile(r"[ \t\n\r]*+")
_HEX = "[0-9a-fA-F]"
_ESCAPE = (
    r"\\(?:[\"\\/bfnrt]"
    rf"|u(?:[dD][89abAB]{_HEX}{{2}}\\u[dD][c-fC-F]{_HEX}{{2}}"
    rf"|(?![dD][89a-fA-F]){_HEX}{{4}}))"
)
# A whole string token; lone UTF-16 surrogate escapes are rejected, as orjson does.
_STRING = re.compile(rf'"(?:[^"\\\x00-\x1f]++|{_ESCAPE})*+"')
_NUMBER = re.compile(r"-?+(0|[1-9][0-9]*+)(?:\.([0-9]++))?+(?:[eE]([+-]?+[0-9]++))?+")
_UNESCAPE = re.compile(
    r"\\(?:u([dD][89abAB]" + _HEX + r"{2})\\u(" + _HEX + r"{4})|u(" + _HEX + r"{4})|(.))"
)
_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_LITERALS = ("true", "false", "null")


def _unescape_one(m: re.Match[str]) -> str:
    high, low, single, simple = m.groups()
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
    if single is not None:
        return chr(int(single, 16))
    return _SIMPLE_ESCAPES[simple]


def _decode(token: str) -> str:
    """The value of a validated string token (quotes included)."""
    inner = token[1:-1]
    if "\\" not in inner:
        return inner
    return _UNESCAPE.sub(_unescape_one, inner)


class _Scanner:
    """Validates a whole JSON text while reading only the members routing needs."""

    __slots__ = ("n", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)

    def fail(self, i: int) -> ParseError:
        return ParseError(f"Parse error: invalid JSON at character {i}")

    def ws(self, i: int) -> int:
        return _WS.match(self.text, i).end()  # type: ignore[union-attr]  # always matches

    def expect(self, i: int, char: str) -> int:
        """Skip whitespace, then ``char``, then whitespace."""
        i = self.ws(i)
        if self.text.startswith(char, i):
            return self.ws(i + 1)
        raise self.fail(i)

    def string(self, i: int) -> int:
        m = _STRING.match(self.text, i)
        if m is None:
            raise self.fail(i)
        return m.end()

    def number(self, i: int) -> int:
        m = _NUMBER.match(self.text, i)
        if m is None:
            raise self.fail(i)
        whole, frac, exp = m.groups()
        # decimal exponent of the leading significant digit
        if whole != "0":
            lead = len(whole) - 1
        elif frac is not None and frac.strip("0"):
            lead = -1 - (len(frac) - len(frac.lstrip("0")))
        else:
            return m.end()  # zero never overflows
        if exp is not None:  # saturate: only the sign of a huge exponent matters
            digits = exp.lstrip("+-").lstrip("0")
            e = int(digits or "0") if len(digits) <= _EXP_DIGITS else 10**_EXP_DIGITS
            lead += -e if exp.startswith("-") else e
        if lead > _MAX_EXP10 or (lead == _MAX_EXP10 and math.isinf(float(m.group()))):
            raise ParseError(f"Parse error: number out of range at character {i}")
        return m.end()

    def value(self, i: int, depth: int) -> int:
        """Validate and skip one value starting at ``i`` (no whitespace before it)."""
        text = self.text
        stack: list[bool] = []  # True for an object
        while True:
            c = text[i : i + 1]
            if c == '"':
                i = self.string(i)
            elif c == "{" or c == "[":
                if depth + len(stack) >= MAX_DEPTH:
                    raise ParseError(f"Parse error: nesting deeper than {MAX_DEPTH}")
                i = self.ws(i + 1)
                close = "}" if c == "{" else "]"
                if text.startswith(close, i):
                    i += 1
                else:
                    stack.append(c == "{")
                    if c == "{":
                        i = self.expect(self.string(i), ":")
                    continue
            elif c == "-" or "0" <= c <= "9":
                i = self.number(i)
            else:
                for lit in _LITERALS:
                    if text.startswith(lit, i):
                        i += len(lit)
                        break
                else:
                    raise self.fail(i)
            # after a value: close containers or move to the next member
            while stack:
                i = self.ws(i)
                c = text[i : i + 1]
                if c == ",":
                    i = self.ws(i + 1)
                    if stack[-1]:
                        i = self.expect(self.string(i), ":")
                    break
                if c == ("}" if stack[-1] else "]"):
                    stack.pop()
                    i += 1
                else:
                    raise self.fail(i)
            else:
                return i

    def kind(self, i: int) -> int:
        c = self.text[i : i + 1]
        if c == '"':
            return _T_STRING
        if c == "-" or "0" <= c <= "9":
            return _T_NUMBER
        return _T_OTHER


def _object(sc: _Scanner, i: int, depth: int, visit: dict[str, Callable[[int], int]]) -> int:
    """Scan the object at ``i`` (at ``depth``); call ``visit[key](i)`` for wanted keys.

    A visitor returns the offset after the value it read; other values are skipped.
    """
    text = sc.text
    i = sc.ws(i + 1)
    if text.startswith("}", i):
        return i + 1
    while True:
        end = sc.string(i)
        key = _decode(text[i:end])
        i = sc.expect(end, ":")
        reader = visit.get(key)
        i = reader(i) if reader is not None else sc.value(i, depth)
        i = sc.ws(i)
        c = text[i : i + 1]
        if c == "}":
            return i + 1
        if c != ",":
            raise sc.fail(i)
        i = sc.ws(i + 1)


class _Fields:
    """Last-wins values of the members read so far."""

    __slots__ = (
        "has_result",
        "id",
        "id_kind",
        "jsonrpc",
        "method",
        "method_kind",
        "name",
        "protocol_version",
        "uri",
    )

    def __init__(self) -> None:
        self.jsonrpc: str | None = None
        self.method: str | None = None
        self.method_kind = 0
        self.id: bytes | None = None
        self.id_kind = 0
        self.has_result = False
        self.name: str | None = None
        self.uri: str | None = None
        self.protocol_version: str | None = None


def _message(sc: _Scanner, i: int, depth: int, f: _Fields, top: bool) -> int:
    """Scan one JSON-RPC message object at ``depth`` (top level or batch member) into ``f``."""
    text = sc.text

    def string_or_none(j: int, parent: int) -> tuple[int, str | None]:
        if text.startswith('"', j):
            end = sc.string(j)
            return end, _decode(text[j:end])
        return sc.value(j, parent), None

    def read_jsonrpc(j: int) -> int:
        j, f.jsonrpc = string_or_none(j, depth)
        return j

    def read_method(j: int) -> int:
        f.method_kind = sc.kind(j)
        j, f.method = string_or_none(j, depth)
        return j

    def read_id(j: int) -> int:
        f.id_kind = sc.kind(j)
        end = sc.value(j, depth)
        f.id = text[j:end].encode()
        return end

    def read_result(j: int) -> int:
        f.has_result = True
        return sc.value(j, depth)

    def read_name(j: int) -> int:
        j, f.name = string_or_none(j, depth + 1)
        return j

    def read_uri(j: int) -> int:
        j, f.uri = string_or_none(j, depth + 1)
        return j

    def read_version(j: int) -> int:
        j, f.protocol_version = string_or_none(j, depth + 2)
        return j

    def read_meta(j: int) -> int:
        f.protocol_version = None
        if text.startswith("{", j):
            return _object(sc, j, depth + 2, {PROTOCOL_VERSION_META_KEY: read_version})
        return sc.value(j, depth + 1)

    def read_params(j: int) -> int:
        f.name = f.uri = f.protocol_version = None
        if text.startswith("{", j):
            return _object(
                sc, j, depth + 1, {"name": read_name, "uri": read_uri, "_meta": read_meta}
            )
        return sc.value(j, depth)

    visit: dict[str, Callable[[int], int]] = {"method": read_method}
    if top:
        visit.update(
            jsonrpc=read_jsonrpc,
            id=read_id,
            result=read_result,
            error=read_result,
            params=read_params,
        )
    return _object(sc, i, depth, visit)


def _decode_body(body: bytes) -> str:
    if not isinstance(body, bytes):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("Parse error: body is not valid UTF-8") from None


def scan_envelope(body: bytes) -> Envelope:
    """Validate ``body`` as JSON and read the JSON-RPC envelope routing needs.

    Raises ``ParseError`` for anything that is not strict JSON and
    ``InvalidEnvelope`` for JSON that is not a JSON-RPC 2.0 message or batch.
    """
    sc = _Scanner(_decode_body(body))
    text = sc.text
    i = sc.ws(0)
    c = text[i : i + 1]
    envelope: Envelope | None = None
    invalid: InvalidEnvelope | None = None
    if c == "{":
        f = _Fields()
        i = _message(sc, i, 1, f, top=True)
        envelope, invalid = _classify(f)
    elif c == "[":
        methods: list[str | None] = []
        i = sc.ws(i + 1)
        if text.startswith("]", i):
            i += 1
            invalid = InvalidEnvelope("Invalid Request: empty batch")
        else:
            while True:
                if text.startswith("{", i):
                    m = _Fields()
                    i = _message(sc, i, 2, m, top=False)
                    if m.method_kind not in (0, _T_STRING) and invalid is None:
                        invalid = InvalidEnvelope("Invalid Request: method must be a string")
                    methods.append(m.method)
                else:
                    i = sc.value(i, 1)
                    if invalid is None:
                        invalid = InvalidEnvelope("Invalid Request: batch member is not an object")
                i = sc.ws(i)
                c = text[i : i + 1]
                if c == "]":
                    i += 1
                    break
                if c != ",":
                    raise sc.fail(i)
                i = sc.ws(i + 1)
            envelope = Envelope(BATCH, methods=tuple(methods))
    elif c:
        i = sc.value(i, 0)
        invalid = InvalidEnvelope("Invalid Request: not a JSON-RPC message")
    else:
        raise ParseError("Parse error: empty body")
    i = sc.ws(i)
    if i != sc.n:
        raise sc.fail(i)
    if invalid is not None:
        raise invalid
    assert envelope is not None  # noqa: S101 - one of the two is always set
    return envelope


def _classify(f: _Fields) -> tuple[Envelope | None, InvalidEnvelope | None]:
    """Decide the kind of one top-level message from its last-wins fields."""
    echo = f.id if f.id_kind in (_T_STRING, _T_NUMBER) else None
    if f.jsonrpc != JSONRPC_VERSION:
        return None, InvalidEnvelope('Invalid Request: "jsonrpc" must be "2.0"', echo)
    if f.method_kind:
        if f.method_kind != _T_STRING:
            return None, InvalidEnvelope("Invalid Request: method must be a string", echo)
        if not f.id_kind:
            return Envelope(NOTIFICATION, None, f.method, f.name, f.uri, f.protocol_version), None
        if echo is None:
            return None, InvalidEnvelope("Invalid Request: id must be a string or a number")
        return Envelope(REQUEST, echo, f.method, f.name, f.uri, f.protocol_version), None
    if f.id_kind and f.has_result:
        if echo is None and f.id != b"null":
            return None, InvalidEnvelope("Invalid Request: id must be a string, number or null")
        return Envelope(RESPONSE, f.id), None
    return None, InvalidEnvelope("Invalid Request: not a request, notification or response", echo)


def scan_headers(headers: list[tuple[bytes, bytes]]) -> McpHeaders:
    """Pull the headers routing needs out of an ASGI header list in one pass.

    The first copy of each header wins; ``duplicate`` names the first routing
    header (``ROUTING_HEADERS``) that was sent more than once.
    """
    h = McpHeaders()
    for name, value in headers:
        field = _HEADER_FIELDS.get(name)
        if field is None:
            continue
        if getattr(h, field) is None:
            setattr(h, field, value)
        elif h.duplicate is None and name in ROUTING_HEADERS:
            h.duplicate = name
    return h


_AUDIT_LINE = (
    b'{"time":"%s.%03dZ",%s,"outcome":"%s","status":%d,"latency_ms":%d.%03d,"request_id":%s%s}\n'
)


def encode_audit_lines(
    lines: AuditLines,
    offset: float,
    described: Described,
    describe: Describe,
    json_string: Callable[[str], bytes],
    more: AuditMore,
) -> bytes:
    """The audit lines of `lines` as JSON lines, one bytes object (see proxy.auth.audit).

    Each item: when the request ended (a ``time.perf_counter`` reading; `offset` makes it
    seconds since the epoch) and its line's parts (``proxy.auth.audit.Line``). What names
    the request is looked up in `described` by (principal key, session, method, name,
    backend, replica), and made by `describe` when missing; a request id that is not all
    digits is made a JSON string by `json_string`; a rule or an arguments body adds what
    `more` makes of them.
    """
    out = []
    last = -1
    stamp = b""
    for ended, line in lines:
        at = offset + ended
        second = int(at)
        if second != last:  # formatted once a second, not once a line
            last = second
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        principal, session, method, name, backend, replica = line[:6]
        outcome, status, seconds, request_id, rule, body = line[6:]
        key = (
            None if principal is None else principal.key,
            session,
            method,
            name,
            backend,
            replica,
        )
        who = described.get(key)
        if who is None:
            who = describe(key, principal)
        if request_id is None:
            ident = b"null"
        elif request_id.isdigit():  # the usual id: nothing in it to escape
            ident = b'"%s"' % request_id
        else:
            ident = json_string(request_id.decode("latin-1"))
        extra = b"" if rule is None and body is None else more(rule, body)
        out.append(
            _AUDIT_LINE
            % (
                stamp,
                int((at - second) * 1000),
                who,
                outcome.encode(),
                status,
                *divmod(max(0, round(seconds * 1e6)), 1000),  # to the µs, half to even
                ident,
                extra,
            )
        )
    return b"".join(out)


# -- OTLP spans (proxy.tracing) ---------------------------------------------------------


def _varint(out: bytearray, value: int) -> None:
    value &= 0xFFFFFFFFFFFFFFFF  # a negative int64 is its two's complement
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _length_delimited(out: bytearray, tag: int, data: bytes | bytearray) -> None:
    out.append(tag)
    _varint(out, len(data))
    out += data


def _any_value(value: str | int | float | bool) -> bytearray:
    out = bytearray()
    if isinstance(value, str):
        _length_delimited(out, 0x0A, value.encode("utf-8", "replace"))
    elif isinstance(value, bool):
        out += b"\x10\x01" if value else b"\x10\x00"
    elif isinstance(value, int):
        out.append(0x18)
        _varint(out, value)
    else:
        out += b"\x21" + struct.pack("<d", value)
    return out


def _attributes(out: bytearray, attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        pair = bytearray()
        _length_delimited(pair, 0x0A, key.encode("utf-8", "replace"))
        _length_delimited(pair, 0x12, _any_value(value))
        _length_delimited(out, 0x4A, pair)


def encode_otlp_attributes(attributes: dict[str, Any]) -> bytes:
    """`attributes` as a span's attribute fields (what a span record's `fixed` holds)."""
    out = bytearray()
    _attributes(out, attributes)
    return bytes(out)


def encode_otlp_spans(spans: list[OtlpSpan], resource: bytes, scope: bytes) -> bytes:
    """An OTLP ``ExportTraceServiceRequest`` (protobuf) of `spans`, all of one resource
    and one instrumentation scope (`resource` and `scope`: those messages, encoded)."""
    scope_spans = bytearray()
    _length_delimited(scope_spans, 0x0A, scope)
    for (
        trace_id,
        span_id,
        parent_id,
        state,
        name,
        kind,
        start,
        end,
        fixed,
        session,
        request_id,
        status,
        error,
    ) in spans:
        span = bytearray()
        _length_delimited(span, 0x0A, trace_id)
        _length_delimited(span, 0x12, span_id)
        if state:
            _length_delimited(span, 0x1A, state.encode("utf-8", "replace"))
        if parent_id:
            _length_delimited(span, 0x22, parent_id)
        _length_delimited(span, 0x2A, name.encode("utf-8", "replace"))
        span.append(0x30)
        _varint(span, kind)
        span += b"\x39" + struct.pack("<Q", start) + b"\x41" + struct.pack("<Q", end)
        span += fixed
        own: dict[str, Any] = {}
        if session is not None:
            own["mcp.session.id"] = session
        if request_id is not None:
            own["jsonrpc.request.id"] = request_id
        if status:
            own["http.response.status_code"] = status
        if error is not None:
            own["error.type"] = error
        _attributes(span, own)
        if error is not None:
            span += b"\x7a\x02\x18\x02"  # status: {code: STATUS_CODE_ERROR}
        _length_delimited(scope_spans, 0x12, span)
    resource_spans = bytearray()
    _length_delimited(resource_spans, 0x0A, resource)
    _length_delimited(resource_spans, 0x12, scope_spans)
    out = bytearray()
    _length_delimited(out, 0x0A, resource_spans)
    return bytes(out)


# -- spans (proxy.tracing) -----------------------------------------------------------------

SERVER = 2  # OTLP's SpanKind
CLIENT = 3
_TRACEPARENT = re.compile(
    rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL
)
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id in hex, parent span id, sampled) of a W3C ``traceparent``; None when it
    is not a valid one. Version 00 has exactly four fields; a later version may add more
    after a dash; ``ff`` is never valid."""
    found = _TRACEPARENT.fullmatch(value.strip(b" \t"))
    if found is None:
        return None
    version, trace, parent, flags, rest = found.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    if trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace, bytes.fromhex(parent.decode()), bool(int(flags, 16) & 1)


class TraceSpan:
    """One span of the gateway's (see :class:`Spans`). Unsampled, it only carries the
    trace context on."""

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
        "spans",
        "start",
        "status",
        "trace_hex",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        spans: Spans,
        kind: int,
        trace_id: bytes,
        trace_hex: bytes,
        span_id: bytes,
        parent_id: bytes,
        trace_state: str,
        sampled: bool,
    ) -> None:
        self.spans = spans
        self.kind = kind
        self.trace_id = trace_id
        self.trace_hex = trace_hex
        self.span_id = span_id
        self.parent_id = parent_id
        self.trace_state = trace_state
        self.sampled = sampled
        self.env: Envelope | None = None
        self.hdrs: McpHeaders | None = None
        self.method = ""  # a server span's HTTP method (its name without an envelope)
        self.client: str | None = None
        self.backend = ""
        self.replica: Any = None
        self.status = 0
        self.error: str | None = None  # error.type
        self.start = time.time_ns()

    def traceparent(self) -> bytes:
        """This span as the W3C ``traceparent`` of a request it makes."""
        flags = b"-01" if self.sampled else b"-00"
        return b"00-" + self.trace_hex + b"-" + self.span_id.hex().encode() + flags

    def end(self) -> None:
        """Done: a sampled span is queued for export."""
        if self.sampled:
            self.spans.finish(self)


_IS_ERROR = re.compile(rb'"isError"[ \t\r\n]*:[ \t\r\n]*true')
"""A result that says the tool failed. Inside a JSON string every quote is escaped, so a
match is always a key of the answer, never text a tool returned."""
_OVERLAP = 32  # bytes of a body kept to find the words across two chunks


def _is_error(data: bytes) -> bool:
    # The first "isError" key decides (a result has one); what follows it may be spaced.
    at = data.find(b'"isError"')
    return at >= 0 and _IS_ERROR.match(data, at) is not None


class ToolErrors:
    """An ASGI send for a sampled ``tools/call``: an answer whose result says
    ``"isError": true`` makes the request's span an error of type ``tool_error`` (the
    OpenTelemetry MCP conventions). The answer passes on untouched, chunk by chunk."""

    __slots__ = ("send", "span", "tail")

    def __init__(self, send: Callable[[Any], Any], span: TraceSpan) -> None:
        self.send = send
        self.span = span
        self.tail = b""

    def __call__(self, message: Any) -> Any:
        # A plain call returning the send's awaitable: no coroutine of its own per message.
        if self.span.error is None and message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body and (_is_error(body) or (self.tail and _is_error(self.tail + body[:_OVERLAP]))):
                self.span.error = "tool_error"
            self.tail = body[-_OVERLAP:]
        return self.send(message)


class Spans:
    """The spans of one process: made, ended and queued for export (the hot path of
    :mod:`proxy.tracing`, which says what a span holds).

    `waiting`: the export queue (at most `max_queue`; one more is counted in
    `dropped[0]`); `wake` is called when it holds `batch`. What spans of one kind share
    (name, encoded attributes) is looked up in `shared` by a key of what makes them
    alike, and made by `share(key, span)` when missing; `fingerprint` gives a session's
    fingerprint. A new trace is sampled when the low 64 bits of its id fall under
    `ratio` * 2**64, as the OpenTelemetry SDK's TraceIdRatioBased sampler decides.
    """

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
    ) -> None:
        self.waiting = waiting
        self.batch = batch
        self.max_queue = max_queue
        self.wake = wake
        self.dropped = dropped
        self.shared = shared
        self.share = share
        self.fingerprint = fingerprint
        self.sample_all = ratio >= 1.0
        self.bound = min(round(ratio * (1 << 64)), (1 << 64) - 1)

    def server_span(self, scope: Any) -> TraceSpan:
        """A request's span, a child of the client's trace when it sent one."""
        parent = state = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = value
            elif name == b"tracestate":
                state = value if state is None else state + b"," + value
        ids = random.getrandbits(192).to_bytes(24, "big")
        parsed = None if parent is None else parse_traceparent(parent)
        if parsed is not None:
            trace_hex, parent_id, sampled = parsed
            trace_id = bytes.fromhex(trace_hex.decode())
            trace_state = "" if state is None else state.decode("latin-1")
        else:
            trace_id = ids[8:]
            trace_hex = trace_id.hex().encode()
            parent_id, trace_state = b"", ""
            sampled = self.sample_all or int.from_bytes(ids[16:], "big") < self.bound
        span = TraceSpan(
            self, SERVER, trace_id, trace_hex, ids[:8], parent_id, trace_state, sampled
        )
        span.method = scope["method"]
        client = scope.get("client")
        if client:
            span.client = client[0]
        return span

    @staticmethod
    def named(span: TraceSpan, env: Envelope, hdrs: McpHeaders) -> None:
        """The request's envelope, once read (the span is named after it)."""
        span.env = env
        span.hdrs = hdrs

    @staticmethod
    def ended(span: TraceSpan, status: int, error: str | None, hdrs: McpHeaders) -> None:
        """The request was answered with `status` (`error`: the error.type of an answer
        the gateway gave itself; a 5xx is one too, and one noted already stays)."""
        span.status = status
        span.hdrs = hdrs
        if error is not None:
            span.error = error
        elif status >= 500:
            span.error = str(status)
        span.end()

    @staticmethod
    def adopt(span: TraceSpan, traceparent: bytes, tracestate: bytes | None) -> None:
        """The trace context a client put in the request's ``params._meta``: the span
        joins that trace, unless its headers named one already (they win)."""
        if span.parent_id:
            return
        parsed = parse_traceparent(traceparent)
        if parsed is None:
            return
        span.trace_hex, span.parent_id, span.sampled = parsed
        span.trace_id = bytes.fromhex(span.trace_hex.decode())
        span.trace_state = "" if tracestate is None else tracestate.decode("latin-1")

    def client_span(
        self, parent: TraceSpan, env: Envelope | None, replica: Any, backend: str
    ) -> tuple[TraceSpan, list[tuple[bytes, bytes]]]:
        """A span for one upstream exchange under `parent`, and the trace headers that
        carry it to the upstream (`replica`: where it goes, when already known)."""
        span = TraceSpan(
            self,
            CLIENT,
            parent.trace_id,
            parent.trace_hex,
            random.getrandbits(64).to_bytes(8, "big"),
            parent.span_id,
            parent.trace_state,
            parent.sampled,
        )
        span.env = env
        span.backend = backend
        span.replica = replica
        carried = [(b"traceparent", span.traceparent())]
        if span.trace_state:
            carried.append((b"tracestate", span.trace_state.encode("latin-1")))
        return span, carried

    @staticmethod
    def reached(span: TraceSpan, replica: Any, status: int) -> None:
        """The replica an exchange went to, and the status it answered with."""
        span.replica = replica
        span.status = status

    def finish(self, span: TraceSpan) -> None:
        """Queue an ended, sampled span for export: what spans like it share, and its
        own request id, session, status and error."""
        env = span.env
        hdrs = span.hdrs
        session = request_id = None
        key: tuple[Any, ...]
        if span.kind == SERVER:
            if env is None:
                key = (SERVER, span.method, span.client)
            else:
                version = env.protocol_version or (None if hdrs is None else hdrs.protocol_version)
                key = (SERVER, env.kind, env.method, env.name, env.uri, version, span.client)
            if hdrs is not None and hdrs.session_id is not None:
                session = self.fingerprint(hdrs.session_id)
        elif env is None:
            key = (CLIENT, span.backend, None, span.replica)
        else:
            key = (CLIENT, span.backend, env.method, env.name or env.uri, span.replica)
        if env is not None and env.id is not None:
            request_id = env.id.decode("latin-1")
        shared = self.shared.get(key)
        if shared is None:
            shared = self.share(key, span)
        waiting = self.waiting
        if len(waiting) >= self.max_queue:
            self.dropped[0] += 1
            return
        waiting.append(
            (
                span.trace_id,
                span.span_id,
                span.parent_id,
                span.trace_state,
                shared[0],
                span.kind,
                span.start,
                time.time_ns(),
                shared[1],
                session,
                request_id,
                span.status,
                span.error,
            )
        )
        if len(waiting) == self.batch:
            self.wake()


# An upstream response the compiled scan takes whole (the rest go to llhttp): HTTP/1.1, a
# final status, header fields of token names and visible ASCII values, one Content-Length.
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) [\t\x20-\x7e]*\r\n")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e]*)\r\n")
_LENGTH = re.compile(rb"[0-9]{1,15}")
_KEEP_ALIVE = b"keep-alive"


def scan_response(
    data: bytes, limit: int
) -> tuple[int, list[tuple[bytes, bytes]], bool, int] | None:
    """A whole, plainly framed upstream response in `data`: its status, its header fields
    (names lower-cased, values trimmed), whether the connection stays open, and where the
    body starts; None for anything else (for llhttp to parse or refuse).

    Taken: ``HTTP/1.1``, a status 200-599 but 204 and 304, a reason phrase and field
    values of visible ASCII, space and tab, token field names with the colon right after
    them, exactly one ``Content-Length`` of 1-15 digits and no ``Transfer-Encoding``, a
    head of at most `limit` bytes, and exactly the body the length announces after it.
    ``Connection`` other than ``keep-alive`` ends the connection after this response.
    """
    match = _STATUS_LINE.match(data)
    if match is None:
        return None
    status = int(match.group(1))
    if status < 200 or status > 599 or status == 204 or status == 304:
        return None
    pos = match.end()
    headers: list[tuple[bytes, bytes]] = []
    length = -1
    keep_alive = True
    while not data.startswith(b"\r\n", pos):
        match = _FIELD.match(data, pos)
        if match is None:
            return None
        pos = match.end()
        name = match.group(1).lower()
        value = match.group(2).rstrip(b" \t")
        if name == b"content-length":
            if length >= 0 or _LENGTH.fullmatch(value) is None:
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            return None
        elif name == b"connection" and value.lower() != _KEEP_ALIVE:
            keep_alive = False
        headers.append((name, value))
    pos += 2
    if pos > limit or length < 0 or len(data) - pos != length:
        return None
    return status, headers, keep_alive, pos


def write_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``METHOD target HTTP/1.1``, one ``name: value`` line per header, and the blank
    line; raises HeadInjection when any part holds CR, LF or NUL."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines.extend([name + b": " + value for name, value in headers])
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    # The only CR and LF are the line ends written here (one pair per element of lines).
    # (find, not `in`: a bytes `in` first tries its operand as an int, and formats the
    # TypeError that fails: some 2,000 instructions per request.)
    crlf = len(lines)
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf or head.find(b"\0") >= 0:
        raise HeadInjection("a request header holds CR, LF or NUL")
    return head
