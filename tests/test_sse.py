"""The one SSE parser: whole events out of chunks, JSON out of events."""

from __future__ import annotations

import pytest

from proxy.sse import EventSplitter, EventTooLarge, data_of, json_of, messages


def test_events_are_split_across_chunks_and_line_endings() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b'id: 1\r\ndata: {"a"') == []
    assert splitter.feed(b":1}\r\n\r\nid: 2\n") == [b'id: 1\ndata: {"a":1}']
    assert splitter.feed(b"data: x\n\n\n\n") == [b"id: 2\ndata: x"]


def test_a_crlf_split_between_chunks_still_ends_an_event() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\n\r") == []
    assert splitter.feed(b"\ndata: b\r") == [b"data: a"]
    assert splitter.feed(b"\n\r\n") == [b"data: b"]


def test_an_event_past_the_limit_is_refused() -> None:
    splitter = EventSplitter(limit=1000)
    splitter.feed(b"data: " + b"x" * 900)
    with pytest.raises(EventTooLarge):
        splitter.feed(b"x" * 200)


def test_each_byte_is_scanned_once() -> None:
    """Feeding one large event in small pieces costs time linear in its size: each search
    for the event's end starts where the last one stopped, never at the buffer's start."""
    splitter = EventSplitter()
    piece = b"y" * 4096
    for _ in range(4000):
        assert splitter.feed(piece) == []
        assert splitter._scanned == len(splitter._buffer)
    assert splitter.feed(b"\n\n") == [b"y" * 4096 * 4000]


def test_payloads() -> None:
    event = b'event: message\nid: 3\ndata: {"a":\ndata:  1}'
    assert data_of(event) == b'{"a":\n 1}'
    assert json_of(event) == {"a": 1}
    assert json_of(b"id: 4\ndata:") is None  # a priming event
    assert json_of(b"data: not json") is None


def test_messages_of_a_whole_stream() -> None:
    body = b'data: {"n":1}\n\n: comment\n\ndata: {"n":2}\r\n\r\ndata: {"n":3}'
    assert messages(body) == [{"n": 1}, {"n": 2}, {"n": 3}]
