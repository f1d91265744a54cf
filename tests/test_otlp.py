"""The OTLP span encoder (proxy.fastpath.encode_otlp_spans): what it writes decodes with
the official ``opentelemetry-proto`` messages to the spans it was given, and the compiled
module and its pure-Python twin write the same bytes."""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from proxy import _fastpath_py
from proxy.fastpath import OtlpSpan
from proxy.otlp import resource_message, scope_message

try:
    from proxy import _fastpath as _c_twin

    TWINS: tuple[ModuleType, ...] = (_c_twin, _fastpath_py)
except ImportError:  # not compiled (PROXY_NO_EXTENSIONS runs say so elsewhere)
    TWINS = (_fastpath_py,)

RESOURCE = resource_message({"service.name": "gw", "service.version": "1"})
SCOPE = scope_message("mcp-fastproxy", "0.1.0")


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def decoded(payload: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    return request


def span(**changes: Any) -> OtlpSpan:
    fields: dict[str, Any] = {
        "trace_id": bytes(range(1, 17)),
        "span_id": bytes(range(20, 28)),
        "parent_id": b"",
        "state": "",
        "name": "tools/call whoami",
        "kind": 2,
        "start": 1_764_400_000_123_456_789,
        "end": 1_764_400_000_223_456_789,
        "fixed": b"",
        "session": None,
        "request_id": None,
        "status": 0,
        "error": None,
    } | changes
    return tuple(fields.values())


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_spans_decode_with_the_official_messages(twin: ModuleType) -> None:
    attributes = {
        "mcp.method.name": "tools/call",
        "server.port": 8080,
        "negative": -3,
        "sampled": True,
        "off": False,
        "ratio": 0.25,
        "café": "naïve ☕",
    }
    own = {
        "mcp.session.id": "f00d",
        "jsonrpc.request.id": "41",
        "http.response.status_code": 502,
        "error.type": "502",
    }
    fixed = twin.encode_otlp_attributes(attributes)
    spans = [
        span(
            fixed=fixed,
            session="f00d",
            request_id="41",
            status=502,
            error="502",
            state="vendor=1",
            parent_id=bytes(8 * [7]),
        ),
        span(kind=3, name=""),
    ]
    request = decoded(twin.encode_otlp_spans(spans, RESOURCE, SCOPE))
    (resource_spans,) = request.resource_spans
    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
    assert resource == {"service.name": "gw", "service.version": "1"}
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("mcp-fastproxy", "0.1.0")
    first, second = scope_spans.spans
    assert first.trace_id == bytes(range(1, 17)) and first.span_id == bytes(range(20, 28))
    assert first.parent_span_id == bytes(8 * [7]) and first.trace_state == "vendor=1"
    assert (first.name, first.kind) == ("tools/call whoami", 2)
    assert first.start_time_unix_nano == 1_764_400_000_123_456_789
    assert first.end_time_unix_nano == 1_764_400_000_223_456_789
    assert [(a.key, _value(a.value)) for a in first.attributes] == [
        *attributes.items(),
        *own.items(),
    ]
    assert first.status.code == first.status.STATUS_CODE_ERROR
    assert (second.kind, second.name, second.parent_span_id) == (3, "", b"")
    assert second.status.code == second.status.STATUS_CODE_UNSET


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_shared_attributes_come_first_then_the_spans_own(twin: ModuleType) -> None:
    fixed = twin.encode_otlp_attributes({"mcp.backend": "one", "server.port": 80})
    assert fixed == _fastpath_py.encode_otlp_attributes({"mcp.backend": "one", "server.port": 80})
    payload = twin.encode_otlp_spans([span(fixed=fixed, status=200)], RESOURCE, SCOPE)
    (got,) = decoded(payload).resource_spans[0].scope_spans[0].spans
    assert [(a.key, _value(a.value)) for a in got.attributes] == [
        ("mcp.backend", "one"),
        ("server.port", 80),
        ("http.response.status_code", 200),
    ]
    assert got.status.code == got.status.STATUS_CODE_UNSET


_values = (
    st.text(alphabet=st.characters(exclude_categories=["Cs"]))
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
)


@pytest.mark.skipif(len(TWINS) < 2, reason="the compiled module is not built")
@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(alphabet=st.characters(exclude_categories=["Cs"])), _values))
def test_both_twins_encode_attributes_alike(attributes: dict[str, Any]) -> None:
    compiled, twin = (t.encode_otlp_attributes(attributes) for t in TWINS)
    assert compiled == twin
    payload = _fastpath_py.encode_otlp_spans([span(fixed=compiled)], RESOURCE, SCOPE)
    (got,) = decoded(payload).resource_spans[0].scope_spans[0].spans
    assert [a.key for a in got.attributes] == list(attributes)
    for attribute, value in zip(got.attributes, attributes.values(), strict=True):
        if isinstance(value, float):
            assert struct.pack("<d", _value(attribute.value)) == struct.pack("<d", value)
        else:
            assert _value(attribute.value) == value


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_no_spans_is_still_a_request(twin: ModuleType) -> None:
    request = decoded(twin.encode_otlp_spans([], RESOURCE, SCOPE))
    assert [list(s.spans) for s in request.resource_spans[0].scope_spans] == [[]]


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_a_lone_surrogate_is_replaced_not_a_failure(twin: ModuleType) -> None:
    payload = twin.encode_otlp_spans([span(name="a\udc80b")], RESOURCE, SCOPE)
    (decoded_span,) = decoded(payload).resource_spans[0].scope_spans[0].spans
    assert decoded_span.name == "a?b"


_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))  # no lone surrogates
_spans = st.lists(
    st.tuples(
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=8, max_size=8),
        st.sampled_from([b"", bytes(8 * [9])]),
        _text,
        _text,
        st.sampled_from([1, 2, 3]),
        st.integers(min_value=0, max_value=2**64 - 1),
        st.integers(min_value=0, max_value=2**64 - 1),
        st.sampled_from(
            [
                b"",
                _fastpath_py.encode_otlp_attributes({"shared": "one", "n": 2}),
                _fastpath_py.encode_otlp_attributes({"one": 1.5, "two": True}),
            ]
        ),
        st.none() | _text,
        st.none() | _text,
        st.integers(min_value=0, max_value=599),
        st.none() | _text,
    ),
    max_size=12,
)


@pytest.mark.skipif(len(TWINS) < 2, reason="the compiled module is not built")
@settings(max_examples=300, deadline=None)
@given(_spans)
def test_both_twins_write_the_same_bytes(spans: list[OtlpSpan]) -> None:
    compiled, twin = (t.encode_otlp_spans(spans, RESOURCE, SCOPE) for t in TWINS)
    assert compiled == twin
    request = decoded(compiled)
    got = request.resource_spans[0].scope_spans[0].spans
    assert len(got) == len(spans)
    for sent, received in zip(spans, got, strict=True):
        assert received.end_time_unix_nano == sent[7]
        own = {
            "mcp.session.id": sent[9],
            "jsonrpc.request.id": sent[10],
            "http.response.status_code": sent[11] or None,
            "error.type": sent[12],
        }
        expected = [(k, v) for k, v in own.items() if v is not None]
        assert [(a.key, _value(a.value)) for a in received.attributes][-len(expected) or 99 :] == (
            expected
        )
        assert (received.status.code == received.status.STATUS_CODE_ERROR) == (sent[12] is not None)
