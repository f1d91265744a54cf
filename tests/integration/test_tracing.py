"""OpenTelemetry traces through a real OTLP/HTTP receiver (protobuf decoded with the
official messages): a server span per request, a client span per upstream exchange, the
client's trace continued and carried to the upstream; off, nothing of it runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import orjson
import pytest

from proxy.app import create_app
from proxy.auth.audit import session_fingerprint
from proxy.config import load
from testbed.servers.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from testbed.servers.streaming import HEADERS_PATH
from tests.helpers.clients import MODERN_META, handshake_headers, modern_headers, raw_initialize
from tests.helpers.gateways import Upstream, start_gateway, start_upstream

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"  # the client's own span
FANNED = "0af7651916cd43dd8448eb211c80319c"  # a second trace


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


def spans_of(receiver: OtlpReceiver, count: int, timeout: float = 15.0) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout
    while len(receiver.spans) < count:
        assert time.monotonic() < deadline, receiver.spans
        time.sleep(0.05)
    return list(receiver.spans)


async def test_a_call_makes_a_server_and_a_client_span_in_the_clients_trace(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 0.1 s
    with ExitStack() as stack:
        upstream: Upstream = start_upstream(stack, "traced")
        gateway = start_gateway(stack, (upstream,), "--trace-endpoint", receiver.url)
        async with httpx.AsyncClient(timeout=15) as http:
            session_id = await raw_initialize(http, gateway.url)
            headers = handshake_headers(session_id) | {
                "traceparent": f"00-{TRACE}-{CALLER}-01",
                "tracestate": "vendor=1",
            }
            body = {
                "jsonrpc": "2.0",
                "id": 41,
                "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}},
            }
            answer = await http.post(gateway.url, headers=headers, json=body)
            assert answer.status_code == 200
            seen = (await http.get(f"{upstream.base}{HEADERS_PATH}")).json()["requests"]
        spans = spans_of(receiver, 6)  # initialize, initialized, the call: 2 spans each
    (server,) = [s for s in spans if s.name == "tools/call whoami" and s.kind == "SERVER"]
    (client,) = [s for s in spans if s.name == "tools/call whoami" and s.kind == "CLIENT"]
    assert (server.trace_id, server.parent_span_id) == (TRACE, CALLER)
    assert server.service == "mcp-fastproxy"
    assert server.attributes == server.attributes | {
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "whoami",
        "jsonrpc.request.id": "41",
        "mcp.protocol.version": "2025-11-25",
        "mcp.session.id": session_fingerprint(session_id.encode()),
        "http.response.status_code": 200,
        "client.address": "127.0.0.1",
    }
    assert session_id not in str(server.attributes)
    assert (client.trace_id, client.parent_span_id) == (TRACE, server.span_id)
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["http.response.status_code"] == 200
    # The upstream got the gateway's span in the client's trace, not the client's own.
    called = seen[-1]["headers"]
    assert called["traceparent"] == [f"00-{TRACE}-{client.span_id}-01"]
    assert called["tracestate"] == ["vendor=1"]
    untraced = [s for s in spans if s.kind == "SERVER" and s.name == "initialize"]
    assert untraced and untraced[0].parent_span_id == ""  # no traceparent: a new trace


async def test_an_answer_the_gateway_gives_itself_is_an_error_span(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    with ExitStack() as stack:
        upstream = start_upstream(stack, "traced")
        gateway = start_gateway(stack, (upstream,), "--trace-endpoint", receiver.url)
        async with httpx.AsyncClient(timeout=15) as http:
            lost = await http.post(
                gateway.url,
                headers=handshake_headers("no-such-session"),
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            )
            assert lost.status_code == 404
        (span,) = spans_of(receiver, 1)
    assert (span.name, span.kind, span.error) == ("ping", "SERVER", True)
    assert span.attributes["error.type"] == "SessionNotFound"


async def test_a_tool_that_fails_is_a_tool_error_span(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result with isError (streamed as SSE by the SDK server) makes the call's span an
    error of type tool_error; a tool that succeeds does not."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    with ExitStack() as stack:
        upstream = start_upstream(stack, "traced")
        gateway = start_gateway(stack, (upstream,), "--trace-endpoint", receiver.url)
        async with httpx.AsyncClient(timeout=15) as http:
            session_id = await raw_initialize(http, gateway.url)
            for ident, tool in ((1, "test_error_handling"), (2, "whoami")):
                body = {
                    "jsonrpc": "2.0",
                    "id": ident,
                    "method": "tools/call",
                    "params": {"name": tool, "arguments": {}},
                }
                answer = await http.post(
                    gateway.url, headers=handshake_headers(session_id), json=body
                )
                assert answer.status_code == 200
                assert ('"isError":true' in answer.text) == (tool == "test_error_handling")
        deadline = time.monotonic() + 15
        while len([s for s in receiver.spans if s.name.startswith("tools/call ")]) < 4:
            assert time.monotonic() < deadline, receiver.spans
            await asyncio.sleep(0.05)
    servers = {s.name: s for s in receiver.spans if s.kind == "SERVER"}
    failed, fine = servers["tools/call test_error_handling"], servers["tools/call whoami"]
    assert failed.error and failed.attributes["error.type"] == "tool_error"
    assert not fine.error and "error.type" not in fine.attributes


async def test_a_trace_context_in_meta_is_continued_and_carried_there(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that puts its trace context in params._meta (no header): the server span
    joins that trace, and the upstream finds the gateway's client span in _meta."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    with ExitStack() as stack:
        upstream = start_upstream(stack, "traced")
        gateway = start_gateway(stack, (upstream,), "--trace-endpoint", receiver.url)
        async with httpx.AsyncClient(timeout=15) as http:
            session_id = await raw_initialize(http, gateway.url)
            meta = {"traceparent": f"00-{TRACE}-{CALLER}-01", "tracestate": "vendor=2"}
            body = {
                "jsonrpc": "2.0",
                "id": 9,
                "method": "tools/call",
                "params": {"name": "echo_meta", "arguments": {}, "_meta": meta},
            }
            answer = await http.post(gateway.url, headers=handshake_headers(session_id), json=body)
            assert answer.status_code == 200
        deadline = time.monotonic() + 15
        while not any(s.kind == "CLIENT" and s.trace_id == TRACE for s in receiver.spans):
            assert time.monotonic() < deadline, receiver.spans
            await asyncio.sleep(0.05)
    (server,) = [s for s in receiver.spans if s.kind == "SERVER" and s.trace_id == TRACE]
    (client,) = [s for s in receiver.spans if s.kind == "CLIENT" and s.trace_id == TRACE]
    assert server.parent_span_id == CALLER and client.parent_span_id == server.span_id
    seen = orjson.loads(_event_data(answer.text))["result"]["content"][0]["text"]
    assert orjson.loads(seen) == orjson.loads(seen) | {
        "traceparent": f"00-{TRACE}-{client.span_id}-01",
        "tracestate": "vendor=2",
    }


def _event_data(text: str) -> str:
    """The JSON of an answer: the body, or the data of its (one) SSE event."""
    lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return lines[-1] if lines else text


async def test_off_no_span_is_made_and_no_export_thread_runs() -> None:
    app = create_app(load(None, {"upstream": ("flag", "http://127.0.0.1:9/mcp")}))
    await app.open()
    try:
        assert app.tracing is None and app.endpoint.tracing is None
        assert not [t for t in threading.enumerate() if t.name == "proxy-otlp"]
    finally:
        await app.close()


async def test_on_the_export_thread_stops_with_the_app(receiver: OtlpReceiver) -> None:
    settings = load(
        None,
        {
            "upstream": ("flag", "http://127.0.0.1:9/mcp"),
            "trace_endpoint": ("flag", receiver.url),
        },
    )
    app = create_app(settings)
    await app.open()
    assert [t for t in threading.enumerate() if t.name == "proxy-otlp"]
    await app.close()
    assert not [t for t in threading.enumerate() if t.name == "proxy-otlp"]


async def test_a_federated_call_has_a_client_span_for_its_backend(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    with ExitStack() as stack:
        one, two = start_upstream(stack, "one"), start_upstream(stack, "two")
        config = tmp_path / "gateway.yaml"
        config.write_text(
            "backends:\n"
            f"  - {{name: one, prefix: one_, replicas: [{one.url}]}}\n"
            f"  - {{name: two, prefix: two_, replicas: [{two.url}]}}\n"
        )
        options = ("--config", str(config), "--trace-endpoint", receiver.url)
        gateway = start_gateway(stack, (), *options)
        async with httpx.AsyncClient(timeout=15) as http:
            session_id = await raw_initialize(http, gateway.url)
            headers = handshake_headers(session_id) | {"traceparent": f"00-{TRACE}-{CALLER}-01"}
            body = {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "two_whoami", "arguments": {}},
            }
            assert (await http.post(gateway.url, headers=headers, json=body)).status_code == 200
            seen = (await http.get(f"{two.base}{HEADERS_PATH}")).json()["requests"]
            # A stateless list fans out: a client span per backend, each carried there.
            listing = {"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": {}}
            listing["params"] = {"_meta": MODERN_META}
            headers = modern_headers("tools/list") | {"traceparent": f"00-{FANNED}-{CALLER}-01"}
            assert (await http.post(gateway.url, headers=headers, json=listing)).status_code == 200
            carried = {
                name: (await http.get(f"{upstream.base}{HEADERS_PATH}")).json()["requests"][-1]
                for name, upstream in (("one", one), ("two", two))
            }
        deadline = time.monotonic() + 15
        while len([s for s in receiver.spans if s.trace_id in (TRACE, FANNED)]) < 5:
            assert time.monotonic() < deadline, receiver.spans
            await asyncio.sleep(0.05)
        spans = list(receiver.spans)
    (lister,) = [s for s in spans if s.kind == "SERVER" and s.trace_id == FANNED]
    fanned = {
        s.attributes["mcp.backend"]: s for s in spans if s.kind == "CLIENT" and s.trace_id == FANNED
    }
    assert set(fanned) == {"one", "two"} and lister.name == "tools/list"
    for name, span in fanned.items():
        assert (span.name, span.parent_span_id) == ("tools/list", lister.span_id)
        assert span.attributes["http.response.status_code"] == 200
        assert carried[name]["headers"]["traceparent"] == [f"00-{FANNED}-{span.span_id}-01"]
    (server,) = [s for s in spans if s.kind == "SERVER" and s.trace_id == TRACE]
    (client,) = [s for s in spans if s.kind == "CLIENT" and s.trace_id == TRACE]
    assert server.name == "tools/call two_whoami"
    assert client.parent_span_id == server.span_id
    assert client.attributes == client.attributes | {
        "mcp.backend": "two",
        "server.address": "127.0.0.1",
        "server.port": int(two.base.rsplit(":", 1)[1]),
        "http.response.status_code": 200,
    }
    assert seen[-1]["headers"]["traceparent"] == [f"00-{TRACE}-{client.span_id}-01"]
