"""Both fast-path twins on HTTP/1.1 bytes: whole upstream responses taken in one call
(and only where llhttp reads them the same way), and upstream request heads written."""

from __future__ import annotations

from types import ModuleType
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from proxy import _fastpath_py, fastpath
from proxy._types import Headers
from proxy.upstream import parser as parser_module
from proxy.upstream.errors import HeadInjection, ProtocolFailure
from proxy.upstream.parser import MAX_HEAD, ResponseParser
from tests.upstream.test_parser import Sink

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def llhttp_reads(data: bytes) -> tuple[int, Headers, bool, bytes] | None:
    """What the parser makes of `data` with no fast path (llhttp alone): the complete
    response as (status, headers, keep-alive, body), or None when refused or unfinished."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    try:
        with patch.object(parser_module, "scan_response", lambda data, limit: None):
            parser.feed(data)
    except ProtocolFailure:
        return None
    if sink.ends != 1 or len(sink.heads) != 1:
        return None
    status, headers, keep_alive, _ = sink.heads[0]
    return status, headers, keep_alive, b"".join(sink.body)


def taken(twin: ModuleType, data: bytes) -> tuple[int, Headers, bool, bytes] | None:
    whole = twin.scan_response(data, MAX_HEAD)
    if whole is None:
        return None
    status, headers, keep_alive, start = whole
    return status, headers, keep_alive, data[start:]


def test_a_plain_json_answer_is_taken_whole(fastpath_impl: ModuleType) -> None:
    assert taken(fastpath_impl, OK) == (
        200,
        [(b"content-type", b"application/json"), (b"content-length", b"2")],
        True,
        b"{}",
    )


def test_names_lower_cased_values_trimmed_and_connection_read(fastpath_impl: ModuleType) -> None:
    data = (
        b"HTTP/1.1 404 Not Found\r\nX-Thing: \t a b \t\r\nConnection: Close\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert taken(fastpath_impl, data) == (
        404,
        [(b"x-thing", b"a b"), (b"connection", b"Close"), (b"content-length", b"0")],
        False,
        b"",
    )
    kept = data.replace(b"Close", b"Keep-Alive")
    assert taken(fastpath_impl, kept) is not None
    assert taken(fastpath_impl, kept)[2] is True  # type: ignore[index]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(OK[:-1], id="body-still-arriving"),
        pytest.param(OK + b"H", id="bytes-after-the-body"),
        pytest.param(OK[:30], id="head-still-arriving"),
        pytest.param(OK.replace(b"HTTP/1.1", b"HTTP/1.0"), id="http-1.0"),
        pytest.param(OK.replace(b"200 OK", b"100 Continue"), id="informational"),
        pytest.param(OK.replace(b"200 OK", b"204 No Content"), id="204"),
        pytest.param(OK.replace(b"200 OK", b"304 Not Modified"), id="304"),
        pytest.param(OK.replace(b"200 OK", b"600 Odd"), id="status-600"),
        pytest.param(OK.replace(b"200 OK", b"2x0 OK"), id="status-not-digits"),
        pytest.param(OK.replace(b"200 OK", b"200"), id="no-space-after-status"),
        pytest.param(OK.replace(b"Length: 2", b"Length: +2"), id="length-signed"),
        pytest.param(OK.replace(b"Length: 2", b"Length: 0x2"), id="length-hex"),
        pytest.param(OK.replace(b"Length: 2", b"Length: 1_1"), id="length-underscore"),
        pytest.param(OK.replace(b"Length: 2", b"Length: -1"), id="length-negative"),
        pytest.param(OK.replace(b"Length: 2", b"Length: 2 2"), id="length-two-numbers"),
        pytest.param(OK.replace(b"Length: 2", b"Length: "), id="length-empty"),
        pytest.param(OK.replace(b"Length: 2", b"Length: 0000000000000002"), id="length-16-digits"),
        pytest.param(
            OK.replace(b"Content-Length: 2", b"Content-Length: 2\r\nContent-Length: 2"),
            id="length-twice",
        ),
        pytest.param(
            OK.replace(b"Content-Length: 2", b"Content-Length: 2\r\nTransfer-Encoding: chunked"),
            id="length-and-chunked",
        ),
        pytest.param(OK.replace(b"Content-Length: 2\r\n", b"") + b"", id="no-length"),
        pytest.param(OK.replace(b"Content-Type:", b"Content-Type :"), id="space-before-colon"),
        pytest.param(OK.replace(b"Content-Type:", b"Con(tent-Type:"), id="name-not-a-token"),
        pytest.param(OK.replace(b"application", b"appli\x01cation"), id="control-in-value"),
        pytest.param(OK.replace(b"application", b"appli\xffcation"), id="obs-text-in-value"),
        pytest.param(
            OK.replace(b"\r\nContent-Length", b"\r\n folded\r\nContent-Length"), id="obs-fold"
        ),
        pytest.param(OK.replace(b"OK\r\n", b"OK\n"), id="bare-lf"),
        pytest.param(OK.replace(b"OK\r\n", b"O\rK\r\n"), id="bare-cr"),
        pytest.param(
            OK.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n"),
            id="head-too-large",
        ),
    ],
)
def test_anything_else_is_left_to_llhttp(fastpath_impl: ModuleType, data: bytes) -> None:
    assert fastpath_impl.scan_response(data, MAX_HEAD) is None


def test_the_parser_delivers_a_taken_answer_as_llhttp_does() -> None:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    parser.feed(OK)
    expected = llhttp_reads(OK)
    assert expected is not None
    assert sink.heads == [(*expected[:3], False)]
    assert b"".join(sink.body) == expected[3]
    assert sink.ends == 1
    with pytest.raises(ProtocolFailure, match="no request was outstanding"):
        parser.feed(b"HTTP/1.1 200 OK\r\n")  # taken whole: what follows is out of turn


def test_a_second_answer_after_a_taken_one_goes_through_llhttp_intact() -> None:
    """A connection's responses may alternate between the two ways of reading them."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    parser.feed(OK)  # taken whole
    parser.expect()
    parser.feed(OK[:20])  # a partial read: llhttp from the first byte
    parser.feed(OK[20:])
    parser.expect()
    parser.feed(OK)  # taken whole again
    assert sink.ends == 3
    assert [h[0] for h in sink.heads] == [200, 200, 200]
    assert sink.body == [b"{}", b"{}", b"{}"]


# -- differential: both twins alike, and never taking what llhttp reads otherwise -------------

_names = st.sampled_from(
    [
        b"Content-Type",
        b"content-length",
        b"Content-Length",
        b"Connection",
        b"X-A",
        b"Mcp-Session-Id",
        b"Transfer-Encoding",
        b"Date",
        b"x_y",
        b"A b",
        b"",
        b"Con\x00nection",
    ]
)
_values = st.one_of(
    st.sampled_from(
        [
            b"2",
            b"0",
            b" 2 ",
            b"+2",
            b"02",
            b"keep-alive",
            b"close",
            b"Keep-Alive",
            b"chunked",
            b"application/json",
            b"a\tb",
            b"\xe9",
            b"x\ry",
            b"",
        ]
    ),
    st.binary(max_size=8),
)
_field = st.tuples(
    _names,
    st.sampled_from([b":", b": ", b":\t", b" :", b"::"]),
    _values,
    st.sampled_from([b"\r\n", b"\r\n", b"\n", b" \r\n"]),
)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    version = draw(
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"])
    )
    status = draw(
        st.sampled_from([b"200", b"201", b"204", b"304", b"404", b"502", b"100", b"999", b"20"])
    )
    reason = draw(st.sampled_from([b" OK", b" ", b"", b" Not\tFound", b" \x7f", b" \xc3\xa9"]))
    fields = draw(st.lists(_field, max_size=draw(st.sampled_from([0, 0, 2, 5]))))
    body = draw(st.sampled_from([b"", b"{}", b"hello", b"{}x"]))
    length = draw(
        st.sampled_from([None, len(body), len(body), len(body) + 1, max(len(body) - 1, 0)])
    )
    written = draw(
        st.sampled_from([b"%d", b"%d", b"+%d", b"0%d", b" %d\t", b"%d.0", b"-%d", b"0x%d", b"%d_"])
    )
    head = version + b" " + status + reason + b"\r\n"
    for name, colon, value, end in fields:
        head += name + colon + value + end
    if length is not None:
        head += b"Content-Length:" + written % length + b"\r\n"
    return head + b"\r\n" + body


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_what_is_taken_is_what_llhttp_reads(data: bytes) -> None:
    mine = taken(_fastpath_py, data)
    if fastpath.IMPLEMENTATION == "c":
        from proxy import _fastpath  # noqa: PLC0415 - built only with the extension

        assert taken(_fastpath, data) == mine
    if mine is not None:
        assert llhttp_reads(data) == mine


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_the_twins_agree_on_any_bytes(data: bytes) -> None:
    if fastpath.IMPLEMENTATION != "c":
        pytest.skip("extension not built")
    from proxy import _fastpath  # noqa: PLC0415

    for prefix in (b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"):
        assert _fastpath.scan_response(prefix + data, MAX_HEAD) == _fastpath_py.scan_response(
            prefix + data, MAX_HEAD
        )


# -- request heads --------------------------------------------------------------------------


def test_a_request_head(fastpath_impl: ModuleType) -> None:
    head = fastpath_impl.write_head(b"POST", b"/mcp", [(b"host", b"up:1"), (b"x-a", b"")])
    assert head == b"POST /mcp HTTP/1.1\r\nhost: up:1\r\nx-a: \r\n\r\n"
    assert fastpath_impl.write_head(b"GET", b"/", ()) == b"GET / HTTP/1.1\r\n\r\n"
    assert (
        fastpath_impl.write_head(b"GET", b"/", iter([(b"a", b"b")]))
        == b"GET / HTTP/1.1\r\na: b\r\n\r\n"
    )


@pytest.mark.parametrize("bad", [b"\r", b"\n", b"\0", b"a\r\nx-smuggled: 1"])
@pytest.mark.parametrize("where", ["method", "target", "name", "value"])
def test_cr_lf_or_nul_anywhere_is_refused(
    fastpath_impl: ModuleType, bad: bytes, where: str
) -> None:
    parts = {"method": b"POST", "target": b"/mcp", "name": b"x-a", "value": b"v"}
    parts[where] += bad
    with pytest.raises(HeadInjection):
        fastpath_impl.write_head(
            parts["method"], parts["target"], [(parts["name"], parts["value"])]
        )


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=8),
    st.binary(max_size=8),
    st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=10)), max_size=6),
)
def test_the_head_writers_agree(method: bytes, target: bytes, headers: Headers) -> None:
    if fastpath.IMPLEMENTATION != "c":
        pytest.skip("extension not built")
    from proxy import _fastpath  # noqa: PLC0415

    def write(twin: ModuleType) -> bytes | str:
        try:
            return bytes(twin.write_head(method, target, headers))
        except HeadInjection as exc:
            return str(exc)

    assert write(_fastpath) == write(_fastpath_py)
