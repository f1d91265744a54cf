"""The requests of the load benchmark and the check that an answer is a JSON-RPC result.

A body's ``@@ID@@`` is where the load generator writes a fresh request id (the sample
requests use id 1). Every workload sends ``X-Bench-Reply``, which only the fixed-JSON
nginx reads (to pick its answer); the gateway and nginx pass it on, the SDK ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = (
    "HANDSHAKE_VERSION",
    "ID_MARK",
    "STATELESS_VERSION",
    "TOOL",
    "WORKLOADS",
    "Workload",
    "big_arguments",
    "check_answer",
    "initialize_body",
    "small_call",
)

ID_MARK = "@@ID@@"
TOOL = "test_simple_text"
HANDSHAKE_VERSION = "2025-11-25"
STATELESS_VERSION = "2026-07-28"
JSON_AND_SSE = "application/json, text/event-stream"


def _body(method: str, params: dict[str, Any] | None = None) -> bytes:
    # orjson writes the id placeholder as a string; the generator wants a bare number.
    envelope: dict[str, Any] = {"jsonrpc": "2.0", "id": ID_MARK, "method": method}
    if params is not None:
        envelope["params"] = params
    return orjson.dumps(envelope).replace(f'"{ID_MARK}"'.encode(), ID_MARK.encode())


def initialize_body() -> bytes:
    return _body(
        "initialize",
        {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcp-fastproxy-bench", "version": "1.0"},
        },
    )


def small_call() -> bytes:
    """A tools/call of about 100 bytes."""
    return _body("tools/call", {"name": TOOL, "arguments": {}})


def big_arguments(size: int = 100_000) -> dict[str, Any]:
    """Realistic structured tool arguments (records of strings, numbers, lists, nesting)
    of at least `size` bytes as JSON."""
    rows: list[dict[str, Any]] = []
    arguments: dict[str, Any] = {"table": "customers", "dry_run": False, "rows": rows}
    i = 0
    while len(orjson.dumps(arguments)) < size:
        rows.append(
            {
                "id": 100_000 + i,
                "name": f"Customer {i} \u00e9t\u00e9 \u2013 \u201cquoted\u201d",
                "email": f"customer{i}@example.com",
                "active": i % 3 != 0,
                "balance": round(i * 13.37 - 1000.5, 2),
                "tags": ["alpha", "beta", f"tier-{i % 5}"],
                "address": {"street": f"{i} Main St.", "city": "Springfield", "zip": None},
                "notes": 'Line one\nLine "two" \\ with escapes\ttab',
            }
        )
        i += 100
    return arguments


@dataclass(frozen=True)
class Workload:
    """One kind of request, sent the same way to every target."""

    name: str
    title: str
    body: bytes
    expect: str  # a key the result must hold
    session: bool = True  # sent inside an established handshake-era session
    headers: dict[str, str] = field(default_factory=dict)


def _workloads() -> dict[str, Workload]:
    stateless_meta = {
        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    items = [
        Workload(
            "call",
            "tools/call in an established session",
            small_call(),
            "content",
            headers={"X-Bench-Reply": "call"},
        ),
        Workload(
            "list",
            "tools/list in an established session",
            _body("tools/list"),
            "tools",
            headers={"X-Bench-Reply": "list"},
        ),
        Workload(
            "stateless",
            "2026-07-28 stateless tools/call (routing headers, _meta)",
            _body("tools/call", {"name": TOOL, "arguments": {}, "_meta": stateless_meta}),
            "content",
            session=False,
            headers={
                "MCP-Protocol-Version": STATELESS_VERSION,
                "Mcp-Method": "tools/call",
                "Mcp-Name": TOOL,
                "X-Bench-Reply": "call",
            },
        ),
        Workload(
            "sse",
            "tools/call answered as an SSE stream",
            small_call(),
            "content",
            headers={"X-Bench-Reply": "sse"},
        ),
        Workload(
            "big",
            "tools/call with 100 KB of structured arguments",
            _body("tools/call", {"name": TOOL, "arguments": big_arguments()}),
            "content",
            headers={"X-Bench-Reply": "call"},
        ),
        Workload(
            "init",
            "initialize churn (a new session per request)",
            initialize_body(),
            "protocolVersion",
            session=False,
            headers={"X-Bench-Reply": "init"},
        ),
    ]
    return {w.name: w for w in items}


WORKLOADS = _workloads()


def request_headers(workload: Workload, session_id: str | None) -> dict[str, str]:
    """Every header of one request of `workload`."""
    headers = {"Content-Type": "application/json", "Accept": JSON_AND_SSE}
    if workload.session and session_id is not None:
        headers["Mcp-Session-Id"] = session_id
        headers["MCP-Protocol-Version"] = HANDSHAKE_VERSION
    headers.update(workload.headers)
    return headers


def _messages(content_type: str, body: bytes) -> list[Any]:
    if content_type.startswith("text/event-stream"):
        found = []
        for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
            data = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line[:5] == b"data:"]
            if data and any(data):
                found.append(orjson.loads(b"\n".join(data)))
        return found
    return [orjson.loads(body)]


def check_answer(status: int, content_type: str, body: bytes, workload: Workload) -> str | None:
    """None when the answer is a JSON-RPC result for id 1 holding `workload.expect`
    (and, for a tool call, not a tool error); else why not."""
    if status != 200:
        return f"HTTP {status}"
    try:
        messages = _messages(content_type, body)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    answers = [m for m in messages if isinstance(m, dict) and m.get("id") == 1]
    if len(answers) != 1:
        return f"{len(answers)} answers with id 1 in {content_type or 'no content type'}"
    answer = answers[0]
    if answer.get("jsonrpc") != "2.0":
        return "no jsonrpc 2.0 member"
    if "error" in answer:
        return f"JSON-RPC error {answer['error']}"
    result = answer.get("result")
    if not isinstance(result, dict) or workload.expect not in result:
        return f"result without {workload.expect!r}"
    if result.get("isError") is True:
        return "tool error"
    return None
