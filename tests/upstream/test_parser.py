"""The strict response parser, fed bytes with no socket: what RFC 9112 and the gateway refuse."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from proxy._types import Headers
from proxy.upstream.errors import ProtocolFailure
from proxy.upstream.parser import MAX_HEAD, Phase, ResponseParser

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"


@dataclass
class Sink:
    """Records what the parser delivers."""

    heads: list[tuple[int, Headers, bool, bool]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    ends: int = 0

    def on_head(self, status: int, headers: Headers, keep_alive: bool, until_close: bool) -> None:
        self.heads.append((status, headers, keep_alive, until_close))

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_end(self) -> None:
        self.ends += 1

    def on_response(self, status: int, headers: Headers, keep_alive: bool, body: bytes) -> None:
        self.on_head(status, headers, keep_alive, False)
        if body:
            self.on_body(body)
        self.on_end()


def parse(*pieces: bytes) -> tuple[ResponseParser, Sink]:
    """A parser expecting one response, fed `pieces` in order."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    for piece in pieces:
        parser.feed(piece)
    return parser, sink


def test_a_well_formed_response() -> None:
    parser, sink = parse(OK)
    assert sink.heads == [(200, [(b"content-length", b"5")], True, False)]
    assert b"".join(sink.body) == b"hello"
    assert sink.ends == 1
    assert parser.phase == Phase.IDLE


def test_header_names_lower_cased_and_values_trimmed() -> None:
    _, sink = parse(b"HTTP/1.1 200 OK\r\nX-Thing:  a b \t\r\nContent-Length: 0\r\n\r\n")
    assert sink.heads[0][1] == [(b"x-thing", b"a b"), (b"content-length", b"0")]


def test_content_length_with_surrounding_whitespace_is_allowed() -> None:
    """Optional whitespace around a field value is not part of it (RFC 9110 §5.5)."""
    _, sink = parse(b"HTTP/1.1 200 OK\r\nContent-Length:  5 \r\n\r\nhello")
    assert b"".join(sink.body) == b"hello"


def test_chunked_body_with_extensions_and_trailers_dropped() -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;a=b\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    _, sink = parse(wire)
    assert sink.heads[0][1] == [(b"transfer-encoding", b"chunked")]
    assert b"".join(sink.body) == b"hello"
    assert sink.ends == 1


def test_byte_by_byte() -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    _, sink = parse(*(wire[i : i + 1] for i in range(len(wire))))
    assert b"".join(sink.body) == b"abc"
    assert sink.ends == 1


REFUSED = {
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 46\r\n\r\n",
    "same-content-length-twice": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
    ),
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "signed-length": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
    "underscored-length": b"HTTP/1.1 200 OK\r\nContent-Length: +0_3_6\r\n\r\n",
    "spaced-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n",
    "hex-length": b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
    "not-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: notchunked\r\n\r\n",
    "other-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "chunked-twice": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "chunked-and-length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    ),
    "hex-prefixed-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x24\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
    "obsolete-folding": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "bare-lf-status-line": b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    "bare-lf-header": b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 0\r\n\r\n",
    "bare-cr-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"ICY 200 OK\r\n\r\n",
    "http2": b"HTTP/2 200 OK\r\n\r\n",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "head-over-64k-in-one-read": (
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * MAX_HEAD + b"\r\nContent-Length: 0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("wire", REFUSED.values(), ids=REFUSED.keys())
def test_refused(wire: bytes) -> None:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    with pytest.raises(ProtocolFailure):
        parser.feed(wire)
    assert parser.phase == Phase.FAILED
    assert sink.ends == 0
    with pytest.raises(ProtocolFailure):
        parser.feed(b"HTTP/1.1 200 OK\r\n")  # and stays failed


def test_head_over_64k_in_many_reads() -> None:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    parser.feed(b"HTTP/1.1 200 OK\r\nx-big: ")
    with pytest.raises(ProtocolFailure, match="head larger"):
        for _ in range(100):
            parser.feed(b"a" * 1024)
    assert not sink.heads


@pytest.mark.parametrize("piece", [1024, 1024 * 1024], ids=["many-reads", "one-read"])
def test_endless_trailer_is_cut_off(piece: int) -> None:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: ")
    fed = 0
    with pytest.raises(ProtocolFailure, match="larger than"):
        while fed < 4 * 1024 * 1024:
            parser.feed(b"t" * piece)
            fed += piece
        parser.feed(b"\r\n\r\n")
    assert fed <= MAX_HEAD + piece
    assert sink.ends == 0


def test_many_small_trailer_fields_are_cut_off() -> None:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
    with pytest.raises(ProtocolFailure):
        for i in range(10_000):
            parser.feed(b"x-%d: %s\r\n" % (i, b"v" * 50))
    assert sink.ends == 0


def test_bytes_while_no_request_is_outstanding() -> None:
    parser = ResponseParser(Sink())
    with pytest.raises(ProtocolFailure, match="no request was outstanding"):
        parser.feed(OK)


def test_bytes_after_a_complete_response() -> None:
    """The response is delivered whole; what follows it is refused (the connection ends)."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    with pytest.raises(ProtocolFailure, match="second response"):
        parser.feed(OK + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert sink.ends == 1
    assert b"".join(sink.body) == b"hello"


@pytest.mark.parametrize("status", [204, 304])
def test_body_after_a_no_content_status_is_refused(status: int) -> None:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect()
    with pytest.raises(ProtocolFailure):
        parser.feed(b"HTTP/1.1 %d X\r\n\r\nhidden" % status)
    assert sink.heads[0][0] == status
    assert sink.ends == 1
    assert not sink.body


def test_a_second_exchange_on_the_same_parser() -> None:
    parser, sink = parse(OK)
    parser.expect()
    parser.feed(OK)
    assert sink.ends == 2


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: x-unknown\r\n", False),
        (b"HTTP/1.0 200 OK\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n", False),
    ],
)
def test_keep_alive_only_when_plainly_asked(head: bytes, keep_alive: bool) -> None:
    _, sink = parse(head + b"Content-Length: 0\r\n\r\n")
    assert sink.heads[0][2] is keep_alive


def test_body_until_close_ends_keep_alive() -> None:
    parser, sink = parse(b"HTTP/1.1 200 OK\r\n\r\npart")
    assert sink.heads[0][2:] == (False, True)
    assert sink.body == [b"part"]
    assert parser.phase == Phase.BODY  # the close ends it


def test_informational_responses_are_skipped() -> None:
    _, sink = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nlink: </a>\r\n\r\n" + OK)
    assert [h[0] for h in sink.heads] == [200]
    assert sink.heads[0][1] == [(b"content-length", b"5")]
