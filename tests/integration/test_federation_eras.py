"""A federated endpoint over backends of both eras: ``alpha`` speaks both (the SDK's
server as it comes), ``beta`` the 2026-07-28 era alone (``--stateless-only``), ``gamma``
the handshake era alone (``--handshake-only``). Clients of either era see and use all
three: for a handshake-era client beta's lists come from ``server/discover`` and
self-contained requests, and each of its calls goes up as a request of that era
(``proxy/federation/backends.py``, ``as_stateless``); for a stateless client gamma's
lists come from the gateway's discovery session with it and its calls go through the era
bridge (``proxy/bridging.py``), elicitation included."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.client import Client

from testbed.processes import free_port, running
from tests.helpers.clients import sdk_session
from tests.helpers.eras import fixture_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("eras")
    with ExitStack() as stack:
        alpha = fixture_server(stack)
        beta = fixture_server(stack, "--stateless-only")
        gamma = fixture_server(stack, "--handshake-only")
        lines = ["backends:"]
        for name, url in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            lines += [f"  - name: {name}", f"    prefix: {name}_", f"    replicas: [{url}]"]
        lines += ["probe_interval: 0.2", "log_level: warning"]
        config = Path(tmp) / "gateway.yaml"
        config.write_text("\n".join(lines) + "\n")
        port = free_port()
        cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
        cmd += ["--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        stack.enter_context(running(cmd, f"{base}/healthz"))
        for _ in range(150):
            backends = httpx.get(f"{base}/status", timeout=10).json()["backends"]
            if all(b["eras"] is not None for b in backends):
                break
            time.sleep(0.1)
        eras = {
            b["name"]: b["eras"] for b in httpx.get(f"{base}/status", timeout=10).json()["backends"]
        }
        assert eras == {
            "alpha": ["handshake", "stateless"],
            "beta": ["stateless"],
            "gamma": ["handshake"],
        }
        yield f"{base}/mcp"


async def test_a_handshake_client_sees_and_calls_a_stateless_only_backend(gateway: str) -> None:
    async with sdk_session(gateway, "handshake") as (session, _):
        await _both_backends_listed_and_called(session)
        heard: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            heard.append(progress)

        done = await session.call_tool(
            "beta_test_tool_with_progress", {}, progress_callback=on_progress
        )
        assert not done.is_error
        assert heard == [0.0, 50.0, 100.0]
        prompts = {p.name for p in (await session.list_prompts()).prompts}
        assert "beta_test_simple_prompt" in prompts
        got = await session.get_prompt("beta_test_simple_prompt")
        assert got.messages[0].content.text == "This is a simple prompt for testing."  # type: ignore[union-attr]


async def test_a_stateless_client_sees_and_calls_both(gateway: str) -> None:
    async with sdk_session(gateway, "modern") as (session, _):
        await _both_backends_listed_and_called(session)


async def _both_backends_listed_and_called(session: ClientSession) -> None:
    names = {t.name for t in (await session.list_tools()).tools}
    every = {f"{b}_test_simple_text" for b in ("alpha", "beta", "gamma")}
    assert every <= names
    for name in sorted(every):
        done = await session.call_tool(name, {})
        text = done.content[0].text  # type: ignore[union-attr]
        assert text == "This is a simple text response for testing.", name


async def test_a_stateless_client_answers_a_handshake_only_backends_question(
    gateway: str,
) -> None:
    """gamma asks in the call; the stateless client gets an InputRequiredResult and its
    retry completes the call (the SDK's Client drives the rounds)."""

    async def elicited(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async with Client(gateway, mode="2026-07-28", elicitation_callback=elicited) as client:
        done = await client.call_tool("gamma_test_input_required_result_elicitation", {})
        assert done.content[0].text == "Hello, Ada!"  # type: ignore[union-attr]


async def test_a_handshake_client_answers_a_stateless_only_backends_question(
    gateway: str,
) -> None:
    """beta answers an InputRequiredResult; the gateway asks the handshake-era client on
    the call's stream and sends beta the call again with the answer."""

    async def elicited(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"response": "yes"})

    async with sdk_session(gateway, "handshake", elicitation_callback=elicited) as (session, _):
        done = await session.call_tool("beta_test_elicitation", {"message": "Go on?"})
        text = done.content[0].text  # type: ignore[union-attr]
        assert text == 'User response: action=accept, content={"response":"yes"}'


async def test_a_handshake_client_hears_a_stateless_only_backends_list_changes(
    gateway: str,
) -> None:
    """beta keeps no session to stream from: the client's GET stream merges in a
    ``subscriptions/listen`` of beta's, and beta's list change reaches it, renamed."""
    heard: list[Any] = []

    async def on_message(message: Any) -> None:
        heard.append(getattr(message, "root", message))

    async with sdk_session(gateway, "handshake", message_handler=on_message) as (session, _):
        await session.list_tools()
        await asyncio.sleep(0.5)  # the GET stream and beta's listen are open
        await session.call_tool("beta_test_trigger_tool_change", {})
        for _ in range(100):
            if any(isinstance(m, types.ToolListChangedNotification) for m in heard):
                break
            await asyncio.sleep(0.05)
        assert any(isinstance(m, types.ToolListChangedNotification) for m in heard), heard
