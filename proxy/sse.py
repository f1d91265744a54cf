"""Server-sent events as the gateway reads them: whole events out of chunks, JSON out of
events. The one SSE parser of the gateway (federation's streams, its own calls, lists);
and :func:`frame`, the one way it writes a message as an event."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ("EventSplitter", "EventTooLarge", "data_of", "frame", "json_of", "messages")


class EventTooLarge(ValueError):
    """One event of a stream grew past the splitter's limit."""


class EventSplitter:
    """Feeds chunks of an event stream, yields whole events (lines, no blank line).

    Line ends are CRLF or LF (a CRLF split between two chunks included). Each byte is
    scanned once: the search for the blank line that ends an event starts where the
    previous search stopped. An event larger than ``limit`` bytes raises EventTooLarge
    (the stream is then given up).
    """

    __slots__ = ("_buffer", "_cr", "_scanned", "limit")

    def __init__(self, limit: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # the buffer's first bytes that hold no event end
        self._cr = False  # the last chunk ended with CR: its LF may come next
        self.limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr:
            chunk = b"\r" + chunk
        self._cr = chunk.endswith(b"\r")
        if self._cr:
            chunk = chunk[:-1]
        buffer = self._buffer
        buffer += chunk.replace(b"\r\n", b"\n")
        events: list[bytes] = []
        start = 0
        while (end := buffer.find(b"\n\n", max(start, self._scanned - 1))) >= 0:
            event = bytes(buffer[start:end])
            if event.strip():
                events.append(event)
            start = self._scanned = end + 2
        if start:
            del buffer[:start]
        self._scanned = len(buffer)
        if self._scanned > self.limit:
            raise EventTooLarge(f"an event of more than {self.limit} bytes")
        return events


def data_of(event: bytes) -> bytes:
    """The payload of one event: its ``data:`` lines, joined by LF."""
    return b"\n".join(
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    )


def json_of(event: bytes) -> Any:
    """The JSON payload of one event; None when it has none or it is not JSON."""
    payload = data_of(event)
    if not payload.strip():
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def messages(body: bytes) -> list[Any]:
    """The JSON payloads of a complete event stream, in order."""
    splitter = EventSplitter(limit=max(len(body), 1))
    events = splitter.feed(body + b"\n\n")
    return [m for m in map(json_of, events) if m is not None]


def frame(message: Any) -> bytes:
    """One message as an event of an event stream."""
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"
