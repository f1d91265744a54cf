"""Both fast-path twins: shared vectors, differential properties, headers, the loaded build."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from proxy import _fastpath_py, fastpath
from proxy.fastpath import FastPath
from proxy.headers import (
    ACCEPT,
    CONTENT_LENGTH,
    CONTENT_TYPE,
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
from proxy.jsonrpc import (
    BATCH,
    NOTIFICATION,
    PROTOCOL_VERSION_META_KEY,
    REQUEST,
    RESPONSE,
    Envelope,
    EnvelopeError,
    InvalidEnvelope,
    ParseError,
)

if TYPE_CHECKING:
    from proxy import _fastpath
    from proxy.fastpath import FastPath

    _both: tuple[FastPath, FastPath] = (_fastpath, _fastpath_py)

VECTORS = Path(__file__).parent / "vectors" / "envelopes"
KINDS = {"REQUEST": REQUEST, "NOTIFICATION": NOTIFICATION, "RESPONSE": RESPONSE, "BATCH": BATCH}
ERRORS: dict[str, type[EnvelopeError]] = {
    "ParseError": ParseError,
    "InvalidEnvelope": InvalidEnvelope,
}
# orjson (>= 3.10, as pyproject requires) nests at most 1024 levels, like both twins.


def vectors(prefix: str) -> list[Path]:
    return sorted(
        p for p in VECTORS.glob(f"{prefix}_*.json") if not p.name.endswith(".expected.json")
    )


def expected(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_suffix(".expected.json").read_text("utf-8"))
    return data


def raw(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def outcome(impl: ModuleType, body: bytes) -> object:
    """The Envelope, or (exception type, id, message for InvalidEnvelope)."""
    try:
        return impl.scan_envelope(body)
    except ParseError as exc:
        return (ParseError, exc.id, None)
    except InvalidEnvelope as exc:
        return (InvalidEnvelope, exc.id, exc.message)


def orjson_accepts(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


# -- shared vectors ---------------------------------------------------------------------


def test_enough_vectors() -> None:
    assert len(vectors("y")) >= 20
    assert len(vectors("n")) >= 40


@pytest.mark.parametrize("path", vectors("y"), ids=lambda p: p.stem)
def test_y_vectors(fastpath_impl: ModuleType, path: Path) -> None:
    exp = expected(path)
    methods = exp["methods"]
    assert fastpath_impl.scan_envelope(path.read_bytes()) == Envelope(
        KINDS[exp["kind"]],
        id=raw(exp["id"]),
        method=exp["method"],
        name=exp["name"],
        uri=exp["uri"],
        protocol_version=exp["protocol_version"],
        methods=None if methods is None else tuple(methods),
    )


@pytest.mark.parametrize("path", vectors("n"), ids=lambda p: p.stem)
def test_n_vectors(fastpath_impl: ModuleType, path: Path) -> None:
    exp = expected(path)
    with pytest.raises(EnvelopeError) as info:
        fastpath_impl.scan_envelope(path.read_bytes())
    assert type(info.value) is ERRORS[exp["error"]]
    assert info.value.id == raw(exp["id"])
    assert info.value.code == ERRORS[exp["error"]].code


@pytest.mark.parametrize(
    "path",
    vectors("y") + vectors("n"),
    ids=lambda p: p.stem,
)
def test_vectors_parse_error_iff_orjson_rejects(path: Path) -> None:
    body = path.read_bytes()
    assert orjson_accepts(body) == (expected(path).get("error") != "ParseError")


def test_depth_limit(fastpath_impl: ModuleType) -> None:
    for depth, ok in ((1023, True), (1024, True), (1025, False), (100_000, False)):
        body = b'{"jsonrpc":"2.0","method":"m","params":' + b"[" * (depth - 1)
        body += b"]" * (depth - 1) + b"}"
        if ok:
            assert fastpath_impl.scan_envelope(body).method == "m"
        else:
            with pytest.raises(ParseError):
                fastpath_impl.scan_envelope(body)
    with pytest.raises(ParseError):
        fastpath_impl.scan_envelope(b"[" * 1_000_000)


def test_rejects_non_bytes(fastpath_impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        fastpath_impl.scan_envelope('{"jsonrpc":"2.0","method":"m"}')
    with pytest.raises(TypeError):
        fastpath_impl.scan_envelope(None)


def test_large_arguments_are_skipped(fastpath_impl: ModuleType) -> None:
    arguments = {
        "rows": [{"i": i, "s": "x\n\u00e9\U0001f600" * 5, "f": i / 7} for i in range(2000)]
    }
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": "req-1",
            "method": "tools/call",
            "params": {
                "name": "ingest",
                "arguments": arguments,
                "_meta": {PROTOCOL_VERSION_META_KEY: "2025-06-18"},
            },
        }
    )
    assert fastpath_impl.scan_envelope(body) == Envelope(
        REQUEST, b'"req-1"', "tools/call", "ingest", None, "2025-06-18"
    )
    with pytest.raises(ParseError):
        fastpath_impl.scan_envelope(body[:-1])


# Bytes that end or break a run of plain string content, placed at every offset of
# strings long enough for the 16- and 32-byte scanning loops.
RUN_BREAKERS = [
    b'\\"',
    b"\\u00e9",
    b"\\ud800",
    b"\\x",
    b"\x01",
    b"\x7f",
    b"\xc3\xa9",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf0\x9f\x98\x80",
    b"\xf4\x90\x80\x80",
    b"\xff",
]


@pytest.mark.parametrize("breaker", RUN_BREAKERS, ids=repr)
def test_long_strings_every_offset(fastpath_impl: ModuleType, breaker: bytes) -> None:
    for size in (0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100):
        for at in sorted({0, size // 2, size}):
            content = b"a" * at + breaker + b"b" * (size - at)
            for body in (
                b'{"jsonrpc":"2.0","method":"m","params":{"arguments":["' + content + b'"]}}',
                b'{"jsonrpc":"2.0","method":"m","params":{"name":"' + content + b'"}}',
            ):
                result = outcome(fastpath_impl, body)
                if orjson_accepts(body):
                    assert isinstance(result, Envelope), (body, result)
                else:
                    assert result == (ParseError, None, None), body


# -- differential properties ------------------------------------------------------------

if fastpath.IMPLEMENTATION == "c":
    from proxy import _fastpath as _c_twin

    TWINS: tuple[ModuleType, ...] = (_c_twin, _fastpath_py)
else:
    TWINS = (_fastpath_py,)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
methods = st.sampled_from(["tools/call", "resources/read", "initialize", "ping", ""]) | json_values
param_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=8) | json_scalars,
        "uri": st.text(max_size=8) | json_scalars,
        "arguments": json_values,
        "_meta": st.fixed_dictionaries(
            {}, optional={PROTOCOL_VERSION_META_KEY: st.text(max_size=10) | json_scalars}
        )
        | json_values,
    },
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0"]) | json_scalars,
        "id": ids,
        "method": methods,
        "params": param_fields | json_values,
        "result": json_values,
        "error": json_values,
    },
)


@st.composite
def encoded(draw: st.DrawFn, value: st.SearchStrategy[Any]) -> bytes:
    """``value`` as JSON text: compact or indented, escaped or raw UTF-8, keys possibly
    repeated (an earlier copy with another value, so that last-wins matters)."""
    obj = draw(value)
    ensure_ascii = draw(st.booleans())
    indent = draw(st.sampled_from([None, 1, "\t"]))
    text = json.dumps(obj, ensure_ascii=ensure_ascii, indent=indent)
    if isinstance(obj, dict) and obj and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(obj)))
        shadow = json.dumps({key: draw(json_values)}, ensure_ascii=ensure_ascii)
        text = shadow[:-1] + ("," if text != "{}" else "") + text[1:]
    return text.encode("utf-8", "surrogatepass")


envelopes = encoded(messages) | encoded(st.lists(messages, max_size=3)) | encoded(json_values)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A generated envelope with a few bytes replaced, inserted or removed."""
    data = bytearray(draw(envelopes))
    special = st.sampled_from(list(b'{}[]":,\\ue.-0\x00\x1f\x7f\x80\xc3\xed\xf4\xff'))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = draw(special | st.integers(0, 255))
        if action == "insert" or not data:
            data.insert(at, byte)
        elif action == "replace":
            data[min(at, len(data) - 1)] = byte
        elif action == "delete":
            del data[min(at, len(data) - 1)]
        else:
            del data[at:]
    return bytes(data)


bodies = envelopes | mutated() | st.binary(max_size=64)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(body=bodies)
def test_twins_agree(body: bytes) -> None:
    results = [outcome(twin, body) for twin in TWINS]
    assert all(r == results[0] for r in results), results


@PROPERTY
@given(body=bodies)
def test_parse_error_iff_orjson_rejects(body: bytes) -> None:
    for twin in TWINS:
        result = outcome(twin, body)
        rejected = isinstance(result, tuple) and result[0] is ParseError
        assert rejected == (not orjson_accepts(body)), (twin.__name__, result)


@PROPERTY
@given(message=messages)
def test_envelope_matches_json_loads(message: dict[str, Any]) -> None:
    """On valid JSON the fields are what a full decode (last key wins) sees."""
    body = json.dumps(message).encode("utf-8", "surrogatepass")
    if not orjson_accepts(body):
        return
    decoded = json.loads(body)
    for twin in TWINS:
        result = outcome(twin, body)
        if not isinstance(result, Envelope):
            continue
        assert result.kind in (REQUEST, NOTIFICATION, RESPONSE)
        if result.kind != RESPONSE:
            assert result.method == decoded["method"]
            params = decoded.get("params")
            params = params if isinstance(params, dict) else {}
            meta = params.get("_meta")
            meta = meta if isinstance(meta, dict) else {}
            for field, value in (
                (result.name, params.get("name")),
                (result.uri, params.get("uri")),
                (result.protocol_version, meta.get(PROTOCOL_VERSION_META_KEY)),
            ):
                assert field == (value if isinstance(value, str) else None)
        if result.id is not None:
            assert result.id == json.dumps(message["id"]).encode()


# -- headers ----------------------------------------------------------------------------


def test_scan_headers(fastpath_impl: ModuleType) -> None:
    headers = [
        (HOST, b"gw.example"),
        (CONTENT_TYPE, b"application/json"),
        (ACCEPT, b"application/json, text/event-stream"),
        (MCP_SESSION_ID, b"s-1"),
        (MCP_PROTOCOL_VERSION, b"2025-06-18"),
        (MCP_METHOD, b"tools/call"),
        (MCP_NAME, b"get_weather"),
        (LAST_EVENT_ID, b"42"),
        (ORIGIN, b"https://app.example"),
        (CONTENT_LENGTH, b"123"),
        (ACCEPT, b"text/html"),
        (b"x-other", b"1"),
    ]
    h = fastpath_impl.scan_headers(headers)
    assert isinstance(h, McpHeaders)
    assert (h.session_id, h.protocol_version, h.method, h.name) == (
        b"s-1",
        b"2025-06-18",
        b"tools/call",
        b"get_weather",
    )
    assert (h.last_event_id, h.origin, h.host, h.content_length) == (
        b"42",
        b"https://app.example",
        b"gw.example",
        b"123",
    )
    assert h.duplicate is None  # Accept, sent twice, is neither read nor a routing header
    assert fastpath_impl.scan_headers([]) == McpHeaders()


FIELDS = {
    MCP_SESSION_ID: "session_id",
    MCP_PROTOCOL_VERSION: "protocol_version",
    MCP_METHOD: "method",
    MCP_NAME: "name",
}


@pytest.mark.parametrize("name", sorted(ROUTING_HEADERS))
def test_scan_headers_duplicate(fastpath_impl: ModuleType, name: bytes) -> None:
    other = next(n for n in sorted(ROUTING_HEADERS) if n != name)
    headers = [(name, b"first"), (other, b"o1"), (name, b"second"), (other, b"o2")]
    h = fastpath_impl.scan_headers(headers)
    assert h.duplicate == name  # the first routing header seen twice
    assert getattr(h, FIELDS[name]) == b"first"
    assert getattr(h, FIELDS[other]) == b"o1"


def test_routing_headers_are_read() -> None:
    assert set(FIELDS) == ROUTING_HEADERS


header_names = st.sampled_from(
    [
        MCP_SESSION_ID,
        MCP_PROTOCOL_VERSION,
        MCP_METHOD,
        MCP_NAME,
        LAST_EVENT_ID,
        ORIGIN,
        HOST,
        ACCEPT,
        CONTENT_LENGTH,
        CONTENT_TYPE,
        b"x-y",
        b"",
    ]
)


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(header_names, st.binary(max_size=4)), max_size=12))
def test_scan_headers_twins_agree(headers: list[tuple[bytes, bytes]]) -> None:
    results = [twin.scan_headers(headers) for twin in TWINS]
    assert all(r == results[0] for r in results)


# -- the build that was loaded ----------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("PROXY_REQUIRE_EXTENSIONS"), reason="PROXY_REQUIRE_EXTENSIONS not set"
)
def test_extension_loaded() -> None:
    assert fastpath.IMPLEMENTATION == "c"


def test_selector_exports_a_twin() -> None:
    impl = TWINS[0] if fastpath.IMPLEMENTATION == "c" else _fastpath_py
    assert fastpath.scan_envelope is impl.scan_envelope
    assert fastpath.scan_headers is impl.scan_headers
    assert fastpath.encode_audit_lines is impl.encode_audit_lines


# -- audit lines ---------------------------------------------------------------------------


class _Who:
    """What the audit encoder reads of a principal: its key."""

    def __init__(self, key: str) -> None:
        self.key = key


def _describe(described: dict[tuple[Any, ...], bytes]) -> Callable[[tuple[Any, ...], Any], bytes]:
    def describe(key: tuple[Any, ...], principal: Any) -> bytes:
        who = orjson.dumps({"who": key[0], "session": (key[1] or b"").hex(), "what": key[2:]})
        described[key] = who[1:-1]
        return described[key]

    return describe


def _more(rule: str | None, body: bytes | None) -> bytes:
    return orjson.dumps({"rule": rule, "body": None if body is None else body.hex()})[:-1].replace(
        b"{", b",", 1
    )


def _audit_lines(impl: ModuleType, lines: list[tuple[float, tuple[Any, ...]]]) -> bytes:
    described: dict[tuple[Any, ...], bytes] = {}
    encode: FastPath = impl
    return encode.encode_audit_lines(
        lines, 1_780_000_000.0, described, _describe(described), orjson.dumps, _more
    )


def _line(**given: Any) -> tuple[Any, ...]:
    parts = {
        "principal": _Who("iss\nalice\ncli"),
        "session": b"sid",
        "method": "tools/call",
        "name": "echo",
        "backend": "files",
        "replica": "http://f/mcp",
        "outcome": "ok",
        "status": 200,
        "seconds": 0.0012,
        "request_id": b"7",
        "rule": None,
        "body": None,
    } | given
    return tuple(parts.values())


def test_audit_lines_are_json_with_the_time_of_day(fastpath_impl: ModuleType) -> None:
    data = _audit_lines(
        fastpath_impl, [(0.25, _line()), (1.9996, _line(outcome="denied", status=403, rule="r"))]
    )
    first, second = (orjson.loads(text) for text in data.splitlines())
    assert data.endswith(b"}\n") and data.count(b"\n") == 2
    assert first == {
        "time": "2026-05-28T20:26:40.250Z",
        "who": "iss\nalice\ncli",
        "session": b"sid".hex(),
        "what": ["tools/call", "echo", "files", "http://f/mcp"],
        "outcome": "ok",
        "status": 200,
        "latency_ms": 1.2,
        "request_id": "7",
    }
    assert second["time"] == "2026-05-28T20:26:41.999Z"  # truncated to the millisecond
    assert (second["outcome"], second["status"], second["rule"]) == ("denied", 403, "r")


def test_audit_ids_other_than_digits_are_escaped(fastpath_impl: ModuleType) -> None:
    ids = [b"7", b"-1", b'"a\\"b"', b"", b"1.5", None]
    data = _audit_lines(fastpath_impl, [(0.0, _line(request_id=i)) for i in ids])
    written = [orjson.loads(text)["request_id"] for text in data.splitlines()]
    assert written == ["7", "-1", '"a\\"b"', "", "1.5", None]


def test_audit_lines_describe_a_request_once(fastpath_impl: ModuleType) -> None:
    described: dict[tuple[Any, ...], bytes] = {}
    calls: list[tuple[Any, ...]] = []
    describe = _describe(described)

    def counted(key: tuple[Any, ...], principal: Any) -> bytes:
        calls.append(key)
        return describe(key, principal)

    lines = [
        (0.0, _line()),
        (0.1, _line()),
        (0.2, _line(session=b"other")),
        (0.3, _line(principal=None)),
    ]
    fastpath_impl.encode_audit_lines(lines, 0.0, described, counted, orjson.dumps, _more)
    assert [key[:2] for key in calls] == [
        ("iss\nalice\ncli", b"sid"),
        ("iss\nalice\ncli", b"other"),
        (None, b"sid"),
    ]


audit_lines = st.lists(
    st.tuples(
        st.floats(0, 4e9, allow_nan=False),
        st.builds(
            _line,
            principal=st.none() | st.builds(_Who, st.text(max_size=8)),
            session=st.none() | st.binary(max_size=8),
            name=st.none() | st.text(max_size=8),
            outcome=st.sampled_from(["ok", "error", "denied", "rate_limited"]),
            status=st.integers(100, 599),
            seconds=st.floats(0, 1e6, allow_nan=False),
            request_id=st.none()
            | st.binary(max_size=8)
            | st.integers(0, 10**30).map(lambda n: b"%d" % n),
            rule=st.none() | st.text(max_size=8),
            body=st.none() | st.binary(max_size=8),
        ),
    ),
    max_size=20,
)


@PROPERTY
@given(lines=audit_lines)
def test_audit_line_twins_agree(lines: list[tuple[float, tuple[Any, ...]]]) -> None:
    results = [_audit_lines(twin, lines) for twin in TWINS]
    assert all(r == results[0] for r in results)
    for text in results[0].splitlines():
        assert isinstance(orjson.loads(text), dict)
