"""A 2026-07-28 (stateless) client in front of a backend of the handshake era only: the
conformance fixture server kept to that era (``--handshake-only``: it refuses stateless
requests as an SDK 1.x server does), the gateway answering as a 2026-07-28 server and
carrying each request over a backend session of its own (``proxy/bridging.py``).

The official conformance suite (``--spec-version 2026-07-28``) passes through it except
the scenarios in ``NOT_BRIDGED``; the official Python SDK client in the stateless era
lists, calls and gets progress on time."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from testbed.processes import free_port, running
from tests.conformance.runner import ensure_installed, run_suite_detailed
from tests.helpers.clients import ACCEPT, sdk_session
from tests.helpers.eras import era_gateway, fixture_server

pytestmark = pytest.mark.timeout(300)

NOT_BRIDGED = frozenset({"input-required-result-basic-elicitation"})
"""The scenario wants the input request under the key its fixture chose (``user_name``); a
handshake-era server's question has no name, so the gateway names it (``elicitation-1``).
The retry with the answer completes (that check of the scenario passes)."""

MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


class Setup:
    def __init__(self, gateway: str, server: str, base: str) -> None:
        self.gateway = gateway
        self.server = server
        self.base = base


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    ensure_installed()
    with ExitStack() as stack:
        upstream = fixture_server(stack, "--handshake-only")
        base = era_gateway(stack, upstream)
        yield Setup(f"{base}/mcp", upstream, base)


def test_the_backend_is_known_to_speak_the_handshake_era_only(setup: Setup) -> None:
    backend = httpx.get(f"{setup.base}/status", timeout=10).json()["backends"][0]
    assert (backend["eras"], backend["era_source"]) == (["handshake"], "probed")
    # It refuses what a stateless client sends, when it is sent to it directly.
    direct = _discover(setup.server)
    assert direct.status_code == 400


def _discover(url: str, request_id: Any = 1) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "server/discover"}
    body["params"] = {"_meta": ENVELOPE}
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "server/discover"}
    return httpx.post(url, json=body, headers=headers, timeout=10)


def test_discover_is_answered_from_the_backends_initialize(setup: Setup) -> None:
    answer = _discover(setup.gateway, "d1")
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["id"] == "d1"
    result = found["result"]
    assert result["supportedVersions"] == [MODERN]
    assert "tools" in result["capabilities"]
    assert (result["cacheScope"], result["ttlMs"]) == ("private", 0)


async def test_the_sdk_client_lists_calls_and_hears_progress_on_time(setup: Setup) -> None:
    async with sdk_session(setup.gateway, "modern") as (session, _):
        names = {t.name for t in (await session.list_tools()).tools}
        assert {"test_simple_text", "test_tool_with_progress"} <= names
        simple = await session.call_tool("test_simple_text", {})
        assert simple.content[0].text == "This is a simple text response for testing."  # type: ignore[union-attr]
        heard: list[tuple[float, float]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            heard.append((progress, time.monotonic()))

        done = await session.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
        finished = time.monotonic()
        assert not done.is_error
        assert [p for p, _ in heard] == [0.0, 50.0, 100.0]
        assert heard[0][1] < finished - 0.05  # the first came before the answer, not with it


async def test_two_clients_with_the_same_ids_get_their_own_answers(setup: Setup) -> None:
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "tools/call"}

    tool = "test_x_mcp_header"

    async def call(region: str) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        body["params"] = {"name": tool, "arguments": {"region": region}, "_meta": ENVELOPE}
        sent = {**headers, "mcp-name": tool, "mcp-param-region": region}
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(setup.gateway, json=body, headers=sent)
        assert answer.status_code == 200, answer.text
        return answer.json()

    answers = await asyncio.gather(*(call(f"region-{n}") for n in range(8)))
    for n, answer in enumerate(answers):
        assert answer["id"] == 1
        assert answer["result"]["resultType"] == "complete"
        assert answer["result"]["content"][0]["text"] == f"region=region-{n}"


def test_a_call_whose_param_header_disagrees_is_refused_before_the_backend(
    setup: Setup,
) -> None:
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call"}
    body["params"] = {"name": "test_x_mcp_header", "arguments": {"region": "eu"}, "_meta": ENVELOPE}
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "tools/call"}
    headers |= {"mcp-name": "test_x_mcp_header", "mcp-param-region": "us"}
    answer = httpx.post(setup.gateway, json=body, headers=headers, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32020


def test_the_conformance_suite_in_the_stateless_era_passes_but_one_input_key(
    setup: Setup,
) -> None:
    run = run_suite_detailed(setup.gateway, MODERN, timeout_s=280)
    assert {"server-stateless", "caching", "tools-call-with-progress"} <= set(run.scenarios)
    not_passed = {name for name, result in run.scenarios.items() if result.status != "passed"}
    assert not_passed == NOT_BRIDGED, {n: run.scenarios[n] for n in not_passed ^ NOT_BRIDGED}
    (failure,) = run.scenarios["input-required-result-basic-elicitation"].failures
    assert 'inputRequests missing expected key "user_name"' in failure


def test_a_stateless_client_that_leaves_cancels_the_bridged_call() -> None:
    """In the stateless era a client that closes its response stream cancels its request:
    the bridge tells the backend session (``notifications/cancelled``), and the server's
    call ends as cancelled, not completed."""
    with ExitStack() as stack:
        port = free_port()
        server = [sys.executable, "-m", "testbed.servers.streaming", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        stack.enter_context(running([*server, "--handshake-only"], f"{base}/healthz"))
        gateway = era_gateway(stack, f"{base}/mcp")
        meta = {**ENVELOPE, "progressToken": "p1"}
        params = {"name": "linger", "arguments": {"marker": "m1", "seconds": 10}, "_meta": meta}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN}
        headers |= {"mcp-method": "tools/call", "mcp-name": "linger"}
        with httpx.stream(
            "POST", f"{gateway}/mcp", json=body, headers=headers, timeout=10
        ) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if line.startswith("data:") and "notifications/progress" in line:
                    break  # the call is running: leave
        deadline = time.monotonic() + 5
        while (state := httpx.get(f"{base}/linger/m1", timeout=5).json()["state"]) != "cancelled":
            assert state == "started", state
            assert time.monotonic() < deadline, "the call was not cancelled"
            time.sleep(0.1)
