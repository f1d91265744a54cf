"""The spans' hot path (proxy.fastpath.Spans), compiled and pure-Python: the client's trace
continued or a new one started and sampled, the trace headers sent upstream, what a
finished span is queued as, the export queue's bound; both twins alike."""

from __future__ import annotations

import itertools
from collections.abc import MutableMapping
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, strategies as st

from proxy import _fastpath_py
from proxy.fastpath import OtlpSpan, scan_envelope, scan_headers
from proxy.upstream.balance import Replica

try:
    from proxy import _fastpath as _c_twin

    TWINS: tuple[ModuleType, ...] = (_c_twin, _fastpath_py)
except ImportError:  # not compiled
    TWINS = (_fastpath_py,)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CALL = b'{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"whoami"}}'
REPLICA = Replica("http://127.0.0.1:9/mcp")


class Queue:
    """What the export gives the spans: a list, a wake-up, a drop count."""

    def __init__(self, batch: int = 512, max_queue: int = 2048) -> None:
        self.waiting: list[OtlpSpan] = []
        self.woken = 0
        self.dropped = [0.0]
        self.shared: dict[tuple[Any, ...], tuple[str, bytes]] = {}
        self.batch = batch
        self.max_queue = max_queue

    def wake(self) -> None:
        self.woken += 1

    def share(self, key: tuple[Any, ...], span: Any) -> tuple[str, bytes]:
        shared = self.shared[key] = (f"{span.kind}:{key[1:3]}", repr(key).encode())
        return shared

    def spans(self, twin: ModuleType, ratio: float = 1.0) -> Any:
        return twin.Spans(
            self.waiting,
            self.batch,
            self.max_queue,
            self.wake,
            self.dropped,
            self.shared,
            self.share,
            lambda sid: f"fp:{sid.decode()}",
            ratio,
        )


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    listed = [(b"host", b"gw"), (b"mcp-session-id", b"s1"), *headers]
    return {"method": "POST", "headers": listed, "client": ("10.0.0.7", 5000)}


def traced_call(twin: ModuleType, queue: Queue, *headers: tuple[bytes, bytes]) -> Any:
    """One call through a server and a client span; the carried headers."""
    spans = queue.spans(twin)
    request = scope(*headers)
    server = spans.server_span(request)
    hdrs = scan_headers(request["headers"])
    env = scan_envelope(CALL)
    spans.named(server, env, hdrs)
    client, carried = spans.client_span(server, env, None, "default")
    spans.reached(client, REPLICA, 200)
    client.end()
    spans.ended(server, 200, None, hdrs)
    return server, client, carried


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_the_clients_trace_is_continued_and_carried_upstream(twin: ModuleType) -> None:
    queue = Queue()
    server, client, carried = traced_call(
        twin,
        queue,
        (b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
        (b"tracestate", b"a=1"),
        (b"tracestate", b"b=2"),
    )
    assert (server.trace_id.hex(), server.parent_id.hex()) == (TRACE, PARENT)
    assert server.sampled and server.trace_state == "a=1,b=2"
    assert client.parent_id == server.span_id and client.trace_id == server.trace_id
    assert carried == [
        (b"traceparent", f"00-{TRACE}-{client.span_id.hex()}-01".encode()),
        (b"tracestate", b"a=1,b=2"),
    ]
    first, second = queue.waiting  # the client span ends first
    assert first[:4] == (bytes.fromhex(TRACE), client.span_id, server.span_id, "a=1,b=2")
    assert first[4:6] == ("3:('default', 'tools/call')", 3)
    assert first[9:] == (None, "41", 200, None)
    assert second[:3] == (bytes.fromhex(TRACE), server.span_id, bytes.fromhex(PARENT))
    assert second[9:] == ("fp:s1", "41", 200, None)


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_without_a_valid_traceparent_a_new_trace_starts(twin: ModuleType) -> None:
    for header in ((), (b"traceparent", b"00-" + b"0" * 32 + b"-" + PARENT.encode() + b"-01")):
        queue = Queue()
        server, client, carried = traced_call(twin, queue, *[h for h in [header] if h])
        assert server.parent_id == b"" and len(server.trace_id) == 16
        assert (
            server.trace_id.hex() != "0" * 32 and server.trace_hex == server.trace_id.hex().encode()
        )
        assert carried == [(b"traceparent", client.traceparent())]
        assert len(queue.waiting) == 2


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_an_unsampled_client_trace_is_carried_on_and_not_exported(twin: ModuleType) -> None:
    queue = Queue()
    server, client, carried = traced_call(
        twin, queue, (b"traceparent", f"00-{TRACE}-{PARENT}-00".encode())
    )
    assert not server.sampled and not client.sampled
    assert carried[0][1].endswith(b"-00") and carried[0][1].startswith(f"00-{TRACE}-".encode())
    assert queue.waiting == [] and queue.shared == {}


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_a_server_error_is_an_error_span(twin: ModuleType) -> None:
    queue = Queue()
    spans = queue.spans(twin)
    request = scope()
    span = spans.server_span(request)
    spans.ended(span, 502, None, scan_headers(request["headers"]))
    span = spans.server_span(request)
    spans.ended(span, 404, "SessionNotFound", scan_headers(request["headers"]))
    (bad_gateway, lost) = queue.waiting
    assert bad_gateway[11:] == (502, "502")
    assert lost[11:] == (404, "SessionNotFound")
    assert bad_gateway[4] == "2:('POST', '10.0.0.7')"  # named after its HTTP method


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_new_traces_are_sampled_at_the_ratio(twin: ModuleType) -> None:
    queue = Queue(max_queue=10_000)
    spans = queue.spans(twin, ratio=0.25)
    sampled = sum(spans.server_span(scope()).sampled for _ in range(4000))
    assert 800 < sampled < 1200


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_the_queue_wakes_the_export_at_a_batch_and_drops_beyond_its_bound(
    twin: ModuleType,
) -> None:
    queue = Queue(batch=4, max_queue=6)
    for _ in range(5):
        traced_call(twin, queue)
    assert len(queue.waiting) == 6 and queue.woken == 1
    assert queue.dropped == [4.0]


@given(
    st.one_of(
        st.binary(max_size=70),
        st.builds(
            lambda v, t, p, f, rest: b"-".join([v, t, p, f]) + rest,
            st.sampled_from([b"00", b"01", b"ff", b"0g", b"0"]),
            st.sampled_from([TRACE.encode(), b"0" * 32, TRACE.upper().encode(), b"ab"]),
            st.sampled_from([PARENT.encode(), b"0" * 16, b"xyz"]),
            st.sampled_from([b"00", b"01", b"03", b"zz"]),
            st.sampled_from([b"", b"-x", b"x", b" ", b"\t-more"]),
        ),
    )
)
def test_both_twins_read_a_traceparent_alike(value: bytes) -> None:
    assert len({repr(twin.parse_traceparent(value)) for twin in TWINS}) == 1


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.__name__)
def test_a_trace_context_from_meta_is_adopted_unless_a_header_gave_one(twin: ModuleType) -> None:
    spans = Queue().spans(twin)
    other = "0af7651916cd43dd8448eb211c80319c"
    fresh = spans.server_span(scope())
    spans.adopt(fresh, f"00-{TRACE}-{PARENT}-00".encode(), b"k=v")
    assert (fresh.trace_id.hex(), fresh.parent_id.hex(), fresh.trace_hex) == (
        TRACE,
        PARENT,
        TRACE.encode(),
    )
    assert (fresh.sampled, fresh.trace_state) == (False, "k=v")
    headed = spans.server_span(scope((b"traceparent", f"00-{other}-{PARENT}-01".encode())))
    spans.adopt(headed, f"00-{TRACE}-{PARENT}-01".encode(), None)
    assert headed.trace_id.hex() == other
    invalid = spans.server_span(scope())
    before = invalid.trace_id
    spans.adopt(invalid, b"not a traceparent", None)
    assert invalid.trace_id == before and invalid.parent_id == b""


async def _tool_errors(twin: ModuleType, chunks: list[bytes]) -> tuple[Any, list[bytes]]:
    """A sampled span after a tools/call answer of `chunks` went through ToolErrors."""
    span = Queue().spans(twin).server_span(scope())
    sent: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message.get("body", b""))

    errors = twin.ToolErrors(send, span)
    await errors({"type": "http.response.start", "status": 200, "headers": []})
    for chunk in chunks:
        await errors({"type": "http.response.body", "body": chunk, "more_body": True})
    return span, sent


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(
    ("chunks", "failed"),
    [
        ([b'data: {"result":{"content":[],"isError":true}}\n\n'], True),
        ([b'data: {"result":{"isError" : true}}\n\n'], True),
        ([b'data: {"result":{"isError"\r\n:\ttrue}}\n\n'], True),
        ([b'data: {"result":{"content":[],"isError":false}}\n\n'], False),
        ([b'data: {"result":{"content":[],"isEr', b'ror":true}}\n\n'], True),
        ([b'{"result":{"isError":', b"true}}"], True),
        ([b'{"result":{"isError":tr'], False),
        ([b'data: {"result":{"content":[{"type":"text","text":"\\"isError\\":true"}]}}'], False),
        ([b"data: {}\n\n", b""], False),
    ],
)
async def test_a_tool_result_that_says_isError_marks_the_span(
    twin: ModuleType, chunks: list[bytes], failed: bool
) -> None:
    span, sent = await _tool_errors(twin, chunks)
    assert (span.error == "tool_error") is failed
    assert sent == [b"", *chunks]


@given(
    body=st.builds(
        lambda before, space, word, after: (
            before + b'"isError"' + space + b":" + space + word + after
        ),
        st.binary(max_size=40),
        st.sampled_from([b"", b" ", b"\t\r\n "]),
        st.sampled_from([b"true", b"false", b"tru", b"null"]),
        st.binary(max_size=40),
    )
    | st.binary(max_size=120),
    cuts=st.lists(st.integers(min_value=0, max_value=160), max_size=4),
)
async def test_both_twins_find_a_tool_error_alike(body: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(min(cut, len(body)) for cut in cuts), len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    found = [(await _tool_errors(twin, chunks))[0].error for twin in TWINS]
    assert len(set(found)) == 1, (chunks, found)
