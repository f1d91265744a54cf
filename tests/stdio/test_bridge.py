"""What a stdio backend's process is given, and where the messages it writes go
(proxy.stdio.session): answers to their request's stream, progress to the request that
asked for it, the server's own requests to the newest open request, the rest to the GET
stream, or kept for it."""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest

from proxy.modern import ERROR_STATUS, discovered, refusal, rejection
from proxy.settings import StdioSettings
from proxy.stdio.process import StdioProcess, process_environment
from proxy.stdio.session import (
    DETACHED,
    END,
    PARKED,
    REPLAY_BYTES,
    REPLAY_EVENTS,
    IdInUse,
    StdioSession,
    Stream,
    event_id,
)


def test_a_process_gets_only_the_variables_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ONLY", "not for the process")
    given = process_environment(StdioSettings("x", env={"API_KEY": "given"}))
    assert given["API_KEY"] == "given"
    assert "GATEWAY_ONLY" not in given
    assert given["PATH"] == os.environ["PATH"]
    everything = process_environment(StdioSettings("x", inherit_env=True))
    assert everything["GATEWAY_ONLY"] == "not for the process"


def session() -> StdioSession:
    return StdioSession(StdioProcess("local", ["true"]))  # never started: routing only


def request(id_: object, progress: object = None) -> dict[str, Any]:
    params: dict[str, object] = {"name": "t"}
    if progress is not None:
        params["_meta"] = {"progressToken": progress}
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}


def queued(stream: Stream) -> list[Any]:
    out = []
    while not stream.queue.empty():
        line = stream.queue.get_nowait()
        out.append(END if line == END else orjson.loads(line))
    return out


def open_post(s: StdioSession, *messages: dict[str, Any]) -> Stream:
    """What post() registers, without a process to write to."""
    stream = Stream({orjson.dumps(m["id"]) for m in messages})
    for key in stream.ids:
        s.pending[key] = stream
    for m in messages:
        token = m["params"].get("_meta", {}).get("progressToken")
        if token is not None:
            key = orjson.dumps(token)
            stream.tokens.append(key)
            s.tokens[key] = stream
    s.posts.append(stream)
    return stream


def line(message: dict[str, object]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", **message})


def test_answers_progress_and_server_requests_go_to_the_request_they_belong_to() -> None:
    s = session()
    first = open_post(s, request(1, progress="p1"))
    second = open_post(s, request("1"))  # "1" is not 1
    listener = s.listen()
    s.route(line({"method": "notifications/progress", "params": {"progressToken": "p1"}}))
    s.route(line({"id": 0, "method": "sampling/createMessage", "params": {}}))
    s.route(line({"method": "notifications/message", "params": {"level": "info"}}))
    s.route(line({"method": "notifications/tools/list_changed"}))
    s.route(line({"id": "1", "result": {}}))
    s.route(line({"id": 1, "result": {}}))
    assert queued(first) == [
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "p1"}},
        {"jsonrpc": "2.0", "id": 1, "result": {}},
        END,
    ]
    assert [m if m == END else m.get("method", m.get("id")) for m in queued(second)] == [
        "sampling/createMessage",
        "notifications/message",
        "1",
        END,
    ]
    assert queued(listener) == [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}]


def test_what_finds_no_stream_waits_for_the_get_stream_and_junk_is_dropped() -> None:
    s = session()
    s.route(b"not json")
    s.route(b'{"id": 3, "result": {}}')  # not JSON-RPC 2.0
    s.route(line({"id": 99, "result": {}}))  # answers nothing open
    for n in range(PARKED + 5):
        s.route(line({"method": "notifications/resources/updated", "params": {"n": n}}))
    parked = queued(s.listen())
    assert len(parked) == PARKED
    assert parked[0]["params"] == {"n": 5}


def test_a_stream_keeps_what_it_relayed_for_a_resumption_within_a_bound() -> None:
    stream = Stream(number=4)
    assert stream.priming_id == b"4-0"
    ids = [stream.relayed(b"x" * 1024) for _ in range(3)]
    assert ids == [b"4-1", b"4-2", b"4-3"]
    assert [i for i, _ in stream.after(1)] == [b"4-2", b"4-3"]
    assert stream.after(3) == []
    big = b"y" * (REPLAY_BYTES + 1)
    assert stream.relayed(big) == b"4-4"
    assert stream.after(0) == [(b"4-4", big)]  # the newest is kept even alone over the bound
    nxt = stream.successor()
    assert (nxt.number, nxt.priming_id, nxt.after(3)) == (4, b"4-4", [(b"4-4", big)])
    assert nxt.relayed(b"z") == b"4-5"
    for _ in range(REPLAY_EVENTS + 10):
        nxt.relayed(b"small")
    assert len(nxt.after(0)) == REPLAY_EVENTS  # a bound on their number too


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (b"3-14", (3, 14)),
        (b"0-0", (0, 0)),
        (b"3", None),
        (b"a-1", None),
        (b"-1-2", None),
        (b"1-2-3", None),
        (b"1-" + b"9" * 19, None),
        (b"backend/3-1", None),
    ],
)
def test_only_event_ids_of_the_bridge_own_are_read(
    value: bytes, parsed: tuple[int, int] | None
) -> None:
    assert event_id(value) == parsed


def test_a_post_left_before_its_answer_is_kept_for_a_get_to_take_over() -> None:
    s = session()
    stream = open_post(s, request(1))
    stream.number = 9
    s.detach(stream)
    assert s.posts == []  # the server's next requests go elsewhere...
    s.route(line({"id": 1, "result": {}}))  # ...while its answer still gathers in it
    assert s.resume(9) is stream and s.resume(9) is None
    assert queued(stream) == [{"jsonrpc": "2.0", "id": 1, "result": {}}, END]
    kept = []
    for n in range(DETACHED + 2):
        left = open_post(s, request(100 + n))
        left.number = 100 + n
        s.detach(left)
        kept.append(left)
    assert sorted(s.detached) == [102 + n for n in range(DETACHED)]  # the oldest forgotten
    assert orjson.dumps(100) not in s.pending
    done = open_post(s, request(5))
    done.finished = True
    s.detach(done)  # a stream that ended is not kept
    assert done not in s.detached.values() and orjson.dumps(5) not in s.pending


def test_a_process_that_ends_answers_every_open_request_with_an_error() -> None:
    s = session()
    stream = open_post(s, request(4), request(5))
    listener = s.listen()
    s._end()
    answers = queued(stream)
    assert {a["id"] for a in answers[:2]} == {4, 5}
    assert all(a["error"]["code"] == -32603 for a in answers[:2])
    assert answers[2] == END
    assert queued(listener) == [END]
    assert s.ended


_VERSION = "io.modelcontextprotocol/protocolVersion"
ENVELOPE = {
    _VERSION: "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.mark.parametrize(
    ("meta", "method", "header", "code"),
    [
        (ENVELOPE, "tools/list", b"2026-07-28", None),
        (None, "tools/list", b"2026-07-28", -32602),
        ({"io.modelcontextprotocol/protocolVersion": "2026-07-28"}, "tools/list", None, -32602),
        (ENVELOPE, "tools/list", b"2027-01-01", -32020),
        (ENVELOPE, "tools/list", None, -32020),
        ({**ENVELOPE, _VERSION: "v9"}, "tools/list", b"v9", -32022),
        (ENVELOPE, "ping", b"2026-07-28", -32601),
        (ENVELOPE, "logging/setLevel", b"2026-07-28", -32601),
    ],
)
def test_a_stateless_request_is_checked_as_a_2026_server_checks_it(
    meta: dict[str, Any] | None, method: str, header: bytes | None, code: int | None
) -> None:
    params: dict[str, Any] = {} if meta is None else {"_meta": meta}
    headers = {b"mcp-method": method.encode()}
    if header is not None:
        headers[b"mcp-protocol-version"] = header
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    refused = rejection(message, headers)
    assert (None if refused is None else refused["code"]) == code
    if code == -32022:
        assert refused is not None
        assert refused["data"] == {"supported": ["2026-07-28"], "requested": "v9"}
        assert ERROR_STATUS[code] == 400


@pytest.mark.parametrize(
    ("method", "params", "headers", "refused"),
    [
        ("tools/list", {}, {}, False),
        ("tools/list", {}, {b"mcp-method": None}, True),  # missing
        ("tools/list", {}, {b"mcp-method": b"TOOLS/LIST"}, True),  # values are exact
        ("tools/call", {"name": "echo"}, {b"mcp-name": b"echo"}, False),
        ("tools/call", {"name": "echo"}, {b"mcp-name": b"=?base64?ZWNobw==?="}, False),
        ("tools/call", {"name": "echo"}, {}, True),  # Mcp-Name missing
        ("tools/call", {"name": "echo"}, {b"mcp-name": b"other"}, True),
        ("resources/read", {"uri": "file:///a"}, {b"mcp-name": b"file:///a"}, False),
        ("resources/read", {"uri": "file:///a"}, {b"mcp-name": b"file:///b"}, True),
        ("prompts/get", {"name": "p"}, {}, True),
    ],
)
def test_routing_headers_must_be_there_and_agree_with_the_body(
    method: str, params: dict[str, Any], headers: dict[bytes, bytes | None], refused: bool
) -> None:
    sent = {b"mcp-protocol-version": b"2026-07-28", b"mcp-method": method.encode()}
    sent |= {k: v for k, v in headers.items() if v is not None}
    for name in [k for k, v in headers.items() if v is None]:
        del sent[name]
    message = {"jsonrpc": "2.0", "id": 1, "method": method}
    message["params"] = {**params, "_meta": ENVELOPE}
    answer = rejection(message, sent)
    assert (answer is not None and answer["code"] == -32020) is refused, answer
    assert answer is None or ERROR_STATUS[answer["code"]] == 400


def test_discover_comes_from_initialize_without_what_a_stateless_client_cannot_hear() -> None:
    found = discovered(
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {"listChanged": True}, "resources": {"subscribe": True}},
            "serverInfo": {"name": "local", "version": "1"},
            "instructions": "be nice",
        }
    )
    assert found["supportedVersions"] == ["2026-07-28"]
    assert found["capabilities"] == {"tools": {}, "resources": {}}
    assert found["_meta"] == {
        "io.modelcontextprotocol/serverInfo": {"name": "local", "version": "1"}
    }
    assert found["instructions"] == "be nice"
    assert (found["cacheScope"], found["ttlMs"]) == ("private", 0)


def test_the_servers_own_requests_are_refused_naming_the_capability_they_need() -> None:
    assert refusal("sampling/createMessage")["data"] == {"requiredCapabilities": {"sampling": {}}}
    assert refusal("roots/list")["code"] == -32021
    assert refusal("other/thing")["code"] == -32601


async def test_a_request_reusing_an_open_requests_id_is_refused() -> None:
    s = session()
    open_post(s, request(1))
    with pytest.raises(IdInUse):
        await s.post(b"{}", [request(1)])
    with pytest.raises(IdInUse):  # twice in one batch
        await s.post(b"[]", [request(2), request(2)])


def test_a_shared_process_saying_its_tools_changed_is_asked_for_them_again() -> None:
    s = StdioSession(StdioProcess("local", ["true"]), shared=True)
    told: list[bool] = []
    s.tools_changed = lambda: told.append(True)
    s.route(line({"method": "notifications/prompts/list_changed"}))
    assert told == []
    s.route(line({"method": "notifications/tools/list_changed"}))
    assert told == [True]
