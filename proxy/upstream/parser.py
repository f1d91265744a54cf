"""Strict parsing of upstream HTTP/1.1 responses (RFC 9112), apart from any I/O.

llhttp (through ``httptools``, the parser uvicorn uses) does the byte-level work and
refuses what RFC 9112 calls unrecoverable: duplicate or differing ``Content-Length``,
signs, underscores, spaces or hex prefixes in numbers, ``Transfer-Encoding`` together with
``Content-Length``, whitespace before a header's colon, obsolete line folding, bare CR or
LF, control characters in values. On top of it this module adds the gateway's own rules:

- ``Transfer-Encoding`` must be exactly ``chunked`` (the gateway asks for identity
  content and decodes no other coding);
- a response head, and the trailer section after a chunked body, hold at most
  ``MAX_HEAD`` bytes, however they arrive (one read or many);
- bytes that arrive while no request is outstanding, or after a response is complete
  and before the next request, are an error: a server that talks out of turn could
  otherwise answer one client's request with what it hid in another's;
- keep-alive only for HTTP/1.1 answers whose ``Connection`` header is absent or says
  exactly ``keep-alive``: ``close``, any other token, a 204/304 followed by bytes, or
  any framing doubt ends the connection after this response.

Most answers arrive whole in one read: an ``HTTP/1.1`` head of plain token names and visible
ASCII values, one ``Content-Length``, and exactly that many bytes after it. The compiled
:func:`~proxy.fastpath.scan_response` takes those in one call and llhttp never sees them;
anything it does not take plainly (a partial or longer read, chunked, 1xx, any doubt) goes
to llhttp from its first byte, so every refusal above stays llhttp's or this module's.

A :class:`ResponseParser` is fed bytes and calls its :class:`ResponseSink` back; it
raises :class:`ProtocolFailure` for anything it refuses, after which the connection is
unusable.
"""

from __future__ import annotations

import enum
from typing import Final, Protocol

import httptools

from .._types import Headers
from ..fastpath import scan_response
from .errors import ProtocolFailure

__all__ = ("MAX_HEAD", "ResponseParser", "ResponseSink")

MAX_HEAD: Final = 64 * 1024
"""Largest response head (status line and headers), and largest trailer section."""

_CHUNKED: Final = b"chunked"
_KEEP_ALIVE: Final = b"keep-alive"
_NO_BODY_STATUS: Final = frozenset({204, 304})


class ResponseSink(Protocol):
    """Where a :class:`ResponseParser` delivers one response at a time."""

    def on_head(self, status: int, headers: Headers, keep_alive: bool, until_close: bool) -> None:
        """The head of the (final, non-1xx) response; ``until_close``: its body ends when
        the server closes the connection (no length, not chunked)."""

    def on_body(self, chunk: bytes) -> None:
        """A piece of the body, as it arrived."""

    def on_end(self) -> None:
        """The body ended (framed by length or by the last chunk); trailers are dropped."""

    def on_response(self, status: int, headers: Headers, keep_alive: bool, body: bytes) -> None:
        """A whole response that arrived in one read: :meth:`on_head`, :meth:`on_body`
        (when there is a body) and :meth:`on_end` at once."""


class Phase(enum.IntEnum):
    """Where the parser stands in the current exchange."""

    IDLE = 0  # no request outstanding: any byte is out of turn
    HEAD = 1  # the response head (or an informational 1xx response) is arriving
    BODY = 2  # the head went to the sink; the body (and trailers) are arriving
    FAILED = 3  # refused: nothing more is parsed


class ResponseParser:
    """One connection's responses, strictly parsed; see the module docstring."""

    __slots__ = (
        "_headers",
        "_informational",
        "_parser",
        "_sink",
        "_stalled",
        "_trailer_bytes",
        "phase",
    )

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self._parser = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        self._informational = False
        self._stalled = 0  # bytes fed since the last body byte or head (head, trailers)
        self._trailer_bytes = 0
        self.phase = Phase.IDLE

    def expect(self) -> None:
        """A request was sent: its response may arrive now."""
        self.phase = Phase.HEAD
        self._headers = []
        self._stalled = 0
        self._trailer_bytes = 0

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises ProtocolFailure for anything refused (then every later
        call raises too)."""
        if self.phase == Phase.HEAD and not self._stalled:  # a response's first bytes
            whole = scan_response(data, MAX_HEAD)
            if whole is not None:
                status, headers, keep_alive, start = whole
                self.phase = Phase.IDLE
                self._sink.on_response(status, headers, keep_alive, data[start:])
                return
        if self.phase == Phase.IDLE:
            self.phase = Phase.FAILED
            raise ProtocolFailure("upstream sent data while no request was outstanding")
        if self.phase == Phase.FAILED:
            raise ProtocolFailure("the connection already failed")
        self._stalled += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.phase = Phase.FAILED
            cause = exc.__context__
            if isinstance(cause, ProtocolFailure):
                raise cause from None
            raise ProtocolFailure(f"bad response: {cause or exc}") from None
        except httptools.HttpParserError as exc:
            self.phase = Phase.FAILED
            raise ProtocolFailure(f"bad response: {exc}") from None
        if self._stalled > MAX_HEAD and self._outstanding():
            what = "head" if self._in_head() else "trailer section or chunk line"
            self.phase = Phase.FAILED
            raise ProtocolFailure(f"response {what} larger than {MAX_HEAD} bytes")

    def _outstanding(self) -> bool:
        return self.phase in (Phase.HEAD, Phase.BODY)  # the callbacks move it during feed

    def _in_head(self) -> bool:
        return self.phase == Phase.HEAD

    # -- llhttp callbacks (through httptools) ---------------------------------------------------

    def on_message_begin(self) -> None:
        if self.phase != Phase.HEAD:
            raise ProtocolFailure("upstream sent a second response to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase == Phase.BODY:  # a trailer field: dropped, but counted
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_bytes > MAX_HEAD:
                raise ProtocolFailure(f"response trailers larger than {MAX_HEAD} bytes")
            return
        if len(name) + len(value) > MAX_HEAD:
            raise ProtocolFailure(f"response head larger than {MAX_HEAD} bytes")
        self._headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        headers = self._headers
        self._headers = []
        if status < 200:
            if status == 101:
                raise ProtocolFailure("upstream switched protocols unasked")
            self._informational = True  # 100 Continue, 103 Early Hints: wait for the final
            return
        length = chunked = False
        keep_alive = parser.get_http_version() == "1.1"
        for name, value in headers:
            if name == b"content-length":
                length = True  # llhttp checked the digits and refused duplicates
            elif name == b"transfer-encoding":
                if chunked or value.lower() != _CHUNKED:
                    raise ProtocolFailure(f"unsupported Transfer-Encoding {value[:40]!r}")
                chunked = True
            elif name == b"connection" and value.lower() != _KEEP_ALIVE:
                keep_alive = False  # close, or a token this parser does not act on
        until_close = not (length or chunked or status in _NO_BODY_STATUS)
        self.phase = Phase.BODY
        self._stalled = 0
        self._sink.on_head(status, headers, keep_alive and not until_close, until_close)

    def on_body(self, body: bytes) -> None:
        self._stalled = 0
        self._sink.on_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return  # the final response follows
        self.phase = Phase.IDLE
        self._sink.on_end()
