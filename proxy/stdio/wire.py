"""The HTTP/1.1 a stdio backend's bridge speaks (:mod:`proxy.stdio.bridge`): the request
callbacks for httptools, and answers written whole (JSON, errors, 202) or as a chunked
event stream."""

from __future__ import annotations

from typing import Any

import orjson

from ..modern import http_status

__all__ = (
    "SSE_HEAD",
    "Incoming",
    "error",
    "error_status",
    "event",
    "json_answer",
    "priming",
    "response",
)

_REASONS = {
    200: b"OK",
    202: b"Accepted",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    413: b"Content Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class Incoming:
    """httptools callbacks: one request at a time."""

    __slots__ = ("body", "complete", "duplicated", "head_complete", "headers", "url")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        """By lower-case name, without surrounding whitespace (the last of repeated ones)."""
        self.duplicated: set[bytes] = set()
        """The names that came more than once."""
        self.body = bytearray()
        self.head_complete = False
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in self.headers:
            self.duplicated.add(name)
        self.headers[name] = value.strip(b" \t")

    def on_headers_complete(self) -> None:
        self.head_complete = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def response(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error"))]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def error(
    status: int, code: int, message: str, request_id: Any = None, *, retry_after: int = 0
) -> bytes:
    body = orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    )
    headers = [(b"content-type", b"application/json")]
    if retry_after:
        headers.append((b"retry-after", b"%d" % retry_after))
    return response(status, headers, body)


def json_answer(status: int, message: dict[str, Any]) -> bytes:
    return response(status, [(b"content-type", b"application/json")], orjson.dumps(message))


def error_status(line: bytes) -> int:
    """The HTTP status of a 2026-07-28 answer: 200, or the one of its error's code."""
    return 200 if line.find(b'"error"') < 0 else http_status(orjson.loads(line))


def event(line: bytes, event_id: bytes = b"") -> bytes:
    """One SSE event holding `line` (with its id, if any), as one chunk of a chunked body."""
    data = b"event: message\ndata: " + line + b"\n\n"
    if event_id:
        data = b"id: " + event_id + b"\n" + data
    return b"%x\r\n%s\r\n" % (len(data), data)


RETRY_MS = 1000
"""What a resumable stream tells the client to wait before it reconnects (SSE ``retry``)."""


def priming(event_id: bytes) -> bytes:
    """The event that starts a resumable stream: its id and the reconnection delay, no
    data (a client that loses the stream resumes from here)."""
    data = b"id: %s\nretry: %d\ndata: \n\n" % (event_id, RETRY_MS)
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
)
