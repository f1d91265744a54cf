"""The access log: one line per request (success, an unknown session, a body too large, an
upstream that times out, a federated call), JSON or text, never a token or a session id."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from proxy.auth.audit import session_fingerprint
from testbed.processes import free_port, running
from tests.helpers.clients import handshake_headers, raw_initialize
from tests.helpers.gateways import Upstream, start_gateway, start_upstream

TOKEN = "not-a-real-token-but-a-secret-all-the-same"  # noqa: S105 - must not be logged
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def stack(processes: ExitStack) -> ExitStack:
    """Owns the gateways these tests start (and the upstreams), until the run ends."""
    return processes


@pytest.fixture
def upstream(replica_a: Upstream) -> Upstream:
    return replica_a


def lines_of(log: Path, count: int, timeout: float = 10.0) -> list[bytes]:
    """The log's first `count` lines, once written (the writer is a tick behind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_bytes().splitlines() if log.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} lines in {log}: {log.read_bytes()!r}")


def call(name: str, arguments: dict[str, Any], id: int = 1) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}


async def test_json_lines_say_what_each_request_was_and_came_to(
    stack: ExitStack, upstream: Upstream, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    options = ("--access-log", str(log), "--max-body-size", "2048")
    gateway = start_gateway(stack, (upstream,), *options)
    async with httpx.AsyncClient(timeout=15) as http:
        session_id = await raw_initialize(http, gateway.url)  # initialize, initialized
        headers = handshake_headers(session_id) | {
            "traceparent": TRACEPARENT,
            "authorization": f"Bearer {TOKEN}",
        }
        ok = await http.post(gateway.url, headers=headers, json=call("whoami", {}))
        assert ok.status_code == 200
        gone = handshake_headers("no-such-session")
        lost = await http.post(gateway.url, headers=gone, json=call("whoami", {}, 2))
        assert lost.status_code == 404
        big = {"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"x": "y" * 4096}}
        too_large = await http.post(gateway.url, headers=headers, json=big)
        assert too_large.status_code == 413
    text = b"\n".join(lines_of(log, 5))
    assert TOKEN.encode() not in text and session_id.encode() not in text
    initialize, initialized, called, unknown, refused = (orjson.loads(x) for x in text.split(b"\n"))
    assert (initialize["mcp_method"], initialize["status"]) == ("initialize", 200)
    assert (initialized["mcp_method"], initialized["status"]) == ("notifications/initialized", 202)
    assert called == called | {
        "method": "POST",
        "mcp_method": "tools/call",
        "name": "whoami",
        "status": 200,
        "error_code": None,
        "backend": "default",
        "replica": upstream.url,
        "session": session_fingerprint(session_id.encode()),
        "client": "127.0.0.1",
        "trace_id": TRACE,
        "principal": None,
    }
    assert 0 < called["upstream_ms"] <= called["latency_ms"]
    assert called["bytes_in"] == len(orjson.dumps(call("whoami", {})))
    assert called["bytes_out"] == len(ok.content) > 0
    assert called["time"].endswith("Z") and "T" in called["time"]
    assert (unknown["status"], unknown["error_code"], unknown["trace_id"]) == (404, -32001, None)
    assert unknown["session"] == session_fingerprint(b"no-such-session")
    assert (refused["status"], refused["mcp_method"], refused["bytes_in"]) == (413, None, None)
    assert refused["error_code"] is not None


async def test_text_lines_for_an_upstream_that_times_out(stack: ExitStack, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.slow", "--port", str(port), "--delay", "10"]
    stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
    slow = Upstream("slow", f"http://127.0.0.1:{port}")
    log = tmp_path / "access.log"
    options = ("--access-log", str(log), "--access-log-format", "text", "--upstream-timeout", "0.5")
    gateway = start_gateway(stack, (slow,), *options)
    async with httpx.AsyncClient(timeout=15) as http:
        answer = await http.post(gateway.url, json=call("slow", {}, 9))
    assert answer.status_code == 504
    (line,) = lines_of(log, 1)
    fields = dict(part.split(b"=", 1) for part in line.split(b" "))
    assert fields[b"status"] == b"504" and fields[b"error_code"] == b"-32003"
    assert (fields[b"mcp_method"], fields[b"name"], fields[b"backend"]) == (
        b"tools/call",
        b"slow",
        b"default",
    )
    assert b"principal" not in fields and b"session" not in fields  # absent, not "None"


async def test_a_federated_call_names_its_backend_and_a_sample_of_none_writes_nothing(
    stack: ExitStack, upstream: Upstream, tmp_path: Path
) -> None:
    other = start_upstream(stack, "other")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "backends:\n"
        f"  - {{name: one, prefix: one_, replicas: [{upstream.url}]}}\n"
        f"  - {{name: two, prefix: two_, replicas: [{other.url}]}}\n"
    )
    log = tmp_path / "access.log"
    gateway = start_gateway(stack, (), "--config", str(config), "--access-log", str(log))
    async with httpx.AsyncClient(timeout=15) as http:
        session_id = await raw_initialize(http, gateway.url)
        answer = await http.post(
            gateway.url, headers=handshake_headers(session_id), json=call("two_whoami", {})
        )
        assert answer.status_code == 200
    called = orjson.loads(lines_of(log, 3)[2])
    assert 0 < called["upstream_ms"] <= called["latency_ms"]
    assert (called["name"], called["backend"], called["replica"]) == (
        "two_whoami",
        "two",
        other.url,
    )
