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
