"""Events through the federating gateway: server-to-client request ids namespaced by
backend (and back), composite event ids for per-backend resumption, event splitting."""

from __future__ import annotations

import orjson
import pytest

from proxy.federation.streams import (
    BadEventId,
    compose_ids,
    parse_ids,
    rewrite_event,
    unwrap_id,
    wrap_id,
)
from proxy.sse import EventSplitter, EventTooLarge


def test_request_ids_round_trip_with_their_json_type() -> None:
    for original in (7, "abc", "x~y", 0, "", "b~1"):
        wrapped = wrap_id("beta", original)
        assert isinstance(wrapped, str)
        assert unwrap_id(wrapped) == ("beta", original)
    assert unwrap_id(12) is None  # a client's own numeric id
    assert unwrap_id("plain") is None
    assert unwrap_id("beta~not json") is None


def test_composite_event_ids_resume_each_backend() -> None:
    last = {"alpha": "17", "we;ird=name": "a;b=c"}
    assert parse_ids(compose_ids(last)) == last
    assert parse_ids(None) == {}
    assert parse_ids("garbage") == {}


@pytest.mark.parametrize("decoded", ["x\r\nX-Injected: yes", "x\ny", "x\ry", "x\x00y", "x\x7fy"])
def test_a_last_event_id_part_that_cannot_be_an_event_id_is_refused(decoded: str) -> None:
    from urllib.parse import quote  # noqa: PLC0415 - this test only

    with pytest.raises(BadEventId):
        parse_ids("beta=1;alpha=" + quote(decoded, safe=""))


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
    """Feeding one large event in small pieces costs time linear in its size: the splitter
    never looks at what it has already scanned (here: it finds the end at the right place
    after 4,000 pieces, with the buffer never rescanned from its start)."""
    splitter = EventSplitter()
    piece = b"y" * 4096
    for _ in range(4000):
        assert splitter.feed(piece) == []
        assert splitter._scanned == len(splitter._buffer)  # the next search starts at the end
    assert splitter.feed(b"\n\n") == [b"y" * 4096 * 4000]


def test_events_are_split_across_chunks_and_line_endings() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"id: 1\r\ndata: {\"a\"") == []
    assert splitter.feed(b":1}\r\n\r\nid: 2\n") == [b'id: 1\ndata: {"a":1}']
    assert splitter.feed(b"data: x\n\n\n\n") == [b"id: 2\ndata: x"]


def test_a_backend_request_gets_a_gateway_id_and_notifications_are_heard() -> None:
    heard: list[str] = []
    request = (
        b'event: message\nid: 5\ndata: {"jsonrpc":"2.0","id":3,"method":"sampling/createMessage"}'
    )
    out = rewrite_event(request, "beta", None, heard.append)
    lines = out.decode().splitlines()
    assert lines[:2] == ["event: message", "id: 5"]
    message = orjson.loads(lines[2].removeprefix("data: "))
    assert message["id"] == "beta~3"
    assert out.endswith(b"\n\n")
    note = b'data: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"}'
    assert rewrite_event(note, "beta", None, heard.append) == note + b"\n\n"
    assert heard == ["notifications/tools/list_changed"]


def test_on_a_merged_stream_event_ids_become_composite() -> None:
    last: dict[str, str] = {"alpha": "9"}
    out = rewrite_event(b"id: 40\ndata: ", "beta", last)
    assert last == {"alpha": "9", "beta": "40"}
    assert b"id: alpha=9;beta=40\n" in out
    assert parse_ids("alpha=9;beta=40") == last


def test_a_backend_cancelling_its_request_names_it_by_the_gateway_id() -> None:
    cancel = b'data: {"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}'
    out = rewrite_event(cancel, "beta")
    message = orjson.loads(out.decode().splitlines()[0].removeprefix("data: "))
    assert message["params"]["requestId"] == "beta~3"
    assert unwrap_id(message["params"]["requestId"]) == ("beta", 3)
