"""Several MCP servers behind one endpoint (federation), with the official SDK on both
sides: prefixed, merged lists; calls, prompts and resource reads routed to their owner;
backend sessions opened lazily; a dead backend left out within the list timeout; sessions
shared by two gateways on Redis, including a backend first used through the second."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import mcp.types as types
import orjson
import pytest
from mcp import ClientSession
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import listen
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ToolsListChanged
from mcp.types import Implementation, TextContent

from testbed.processes import black_hole, free_port, running
from testbed.redis_server import redis_server
from tests.helpers.clients import sampling_answer, sdk_session

pytestmark = [pytest.mark.scale, pytest.mark.timeout(120)]

BACKENDS = ("alpha", "beta", "gamma")
LIST_TIMEOUT = 1.5


def _config(tmp: Path, upstreams: dict[str, str], dead: str) -> Path:
    lines = ["backends:"]
    for name, url in upstreams.items():
        lines += [f"  - name: {name}", f"    prefix: {name}_", f"    replicas: [{url}]"]
        if name == "gamma":
            lines += ["    tools: {allow: [whoami, sleep_then_echo]}"]
    lines += ["  - name: dead", "    prefix: dead_", f"    replicas: [{dead}]"]
    lines += [f"list_timeout: {LIST_TIMEOUT}", "log_level: warning"]
    path = tmp / "gateway.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three SDK upstreams, a backend that never answers, Redis and two gateways on it:
    names -> base URLs (the gateways as "gw1" and "gw2")."""
    tmp = tmp_path_factory.mktemp("federation")
    with ExitStack() as stack:
        bases: dict[str, str] = {}
        for name in BACKENDS:
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "testbed.servers.streaming",
                "--port",
                str(port),
                "--name",
                name,
            ]
            bases[name] = f"http://127.0.0.1:{port}"
            stack.enter_context(running(cmd, f"{bases[name]}/healthz"))
        hung = stack.enter_context(black_hole())  # accepts, never answers
        config = _config(tmp, {n: f"{bases[n]}/mcp" for n in BACKENDS}, hung)
        redis = stack.enter_context(redis_server())
        for gateway in ("gw1", "gw2"):
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--session-store",
                redis.url(),
            ]
            bases[gateway] = f"http://127.0.0.1:{port}"
            stack.enter_context(running(cmd, f"{bases[gateway]}/healthz", timeout=60))
        yield bases


async def _initializes(base: str) -> list[str]:
    async with httpx.AsyncClient() as http:
        clients: list[str] = (await http.get(f"{base}/initializes")).json()["clients"]
        return clients


def _text(result: object) -> str:
    content = getattr(result, "content", None) or []
    return " ".join(c.text for c in content if isinstance(c, TextContent))


async def test_merged_lists_carry_prefixes_and_leave_out_the_hung_backend(
    federation: dict[str, str],
) -> None:
    url = f"{federation['gw1']}/mcp"
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as s:
        init = await s.initialize()
        assert init.server_info.name == "mcp-fastproxy"
        assert init.capabilities.tools is not None and init.capabilities.tools.list_changed
        started = time.monotonic()
        tools = {t.name for t in (await s.list_tools()).tools}
        assert time.monotonic() - started < LIST_TIMEOUT + 2.0
        for name in ("alpha", "beta"):
            assert {f"{name}_whoami", f"{name}_test_simple_text"} <= tools
        assert {t for t in tools if t.startswith("gamma_")} == {
            "gamma_whoami",
            "gamma_sleep_then_echo",
        }
        assert not any(t.startswith("dead_") for t in tools)
        prompts = {p.name for p in (await s.list_prompts()).prompts}
        assert {"alpha_test_simple_prompt", "beta_test_simple_prompt"} <= prompts
        uris = {str(r.uri) for r in (await s.list_resources()).resources}
        assert {"alpha+test://static-text", "gamma+test://static-text"} <= uris
        templates = (await s.list_resource_templates()).resource_templates
        assert all(re.match(r"^(alpha|beta|gamma)\+", t.uri_template) for t in templates)


async def test_calls_prompts_and_reads_reach_their_owner(federation: dict[str, str]) -> None:
    url = f"{federation['gw1']}/mcp"
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        for name in BACKENDS:
            assert f'"replica": "{name}"' in _text(await s.call_tool(f"{name}_whoami", {}))
        prompt = await s.get_prompt("beta_test_simple_prompt")
        assert prompt.messages
        content = await s.read_resource("gamma+test://static-text")
        assert str(content.contents[0].uri) == "gamma+test://static-text"
        with pytest.raises(MCPError, match="Unknown tool: 'nobody_whoami'"):
            await s.call_tool("nobody_whoami", {})


async def test_a_tool_outside_the_allow_list_cannot_be_called(
    federation: dict[str, str],
) -> None:
    url = f"{federation['gw1']}/mcp"
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        with pytest.raises(MCPError, match="Unknown tool: 'gamma_test_simple_text'") as refused:
            await s.call_tool("gamma_test_simple_text", {})
        assert refused.value.code == -32602


async def test_backends_are_initialized_lazily_and_only_when_used(
    federation: dict[str, str],
) -> None:
    client = "lazy-probe-client"
    url = f"{federation['gw1']}/mcp"
    info = Implementation(name=client, version="1")
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(read, write, client_info=info) as s,
    ):
        await s.initialize()
        await s.list_tools()  # lists come from the gateway's own sessions
        assert [client not in await _initializes(federation[n]) for n in BACKENDS] == [True] * 3
        await s.call_tool("beta_whoami", {})
        await s.call_tool("beta_whoami", {})
        seen = {n: (await _initializes(federation[n])).count(client) for n in BACKENDS}
    assert seen == {"alpha": 0, "beta": 1, "gamma": 0}
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{federation['gw1']}/metrics")).text
    assert re.search(r'proxy_backend_lazy_initializations_total\{backend="beta"\} [1-9]', metrics)
    assert re.search(
        r'proxy_backend_requests_total\{backend="beta",method="tools/call"\} [1-9]', metrics
    )
    ok = 'proxy_backend_list_refreshes_total{backend="alpha",list="tools",outcome="ok"}'
    assert ok in metrics
    assert re.search(
        r'proxy_backend_list_refreshes_total\{backend="dead",list="tools",'
        r'outcome="(late|failed)"\} [1-9]',
        metrics,
    )


async def test_a_session_continues_on_the_other_gateway_with_a_new_backend(
    federation: dict[str, str],
) -> None:
    """Opened on gateway 1 (using alpha there), used on gateway 2, where beta is first
    used: beta's session is recorded in Redis and gateway 1 then uses the same one."""
    client = "two-gateway-client"
    headers = {"accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": client, "version": "1"},
        },
    }
    one, two = f"{federation['gw1']}/mcp", f"{federation['gw2']}/mcp"

    def whoami(backend: str, n: int) -> dict[str, object]:
        return {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {"name": f"{backend}_whoami", "arguments": {}},
        }

    async with httpx.AsyncClient(timeout=20) as http:
        opened = await http.post(one, json=init, headers=headers)
        sid = opened.headers["mcp-session-id"]
        headers |= {"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(one, json=note, headers=headers)).status_code == 202
        answers = []
        for n, (gateway, backend) in enumerate(
            [(one, "alpha"), (two, "alpha"), (two, "beta"), (one, "beta")], start=2
        ):
            answer = await http.post(gateway, json=whoami(backend, n), headers=headers)
            assert answer.status_code == 200, answer.text
            answers.append(re.search(r'session\\?": \\?"(\w+)', answer.text))
        sessions = [m.group(1) if m else None for m in answers]
        assert sessions[0] == sessions[1] and sessions[2] == sessions[3]
        assert None not in sessions
        assert (await http.delete(one, headers=headers)).status_code == 200
        gone = await http.post(two, json=whoami("alpha", 9), headers=headers)
        assert gone.status_code == 404
    seen = {n: (await _initializes(federation[n])).count(client) for n in BACKENDS}
    assert seen == {"alpha": 1, "beta": 1, "gamma": 0}


# -------------------------------------------- server-to-client traffic through the gateway


async def test_sampling_and_elicitation_round_trip_to_the_backend_that_asked(
    federation: dict[str, str],
) -> None:
    asked: list[str] = []
    sample = sampling_answer(asked, "Paris")

    async def elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"response": "yes"})

    url = f"{federation['gw1']}/mcp"
    async with sdk_session(
        url, "handshake", sampling_callback=sample, elicitation_callback=elicit
    ) as (session, _):
        sampled = await session.call_tool("beta_test_sampling", {"prompt": "Capital?"})
        elicited = await session.call_tool("alpha_test_elicitation", {"message": "Proceed?"})
    assert asked == ["Capital?", "Proceed?"]
    assert _text(sampled) == "LLM response: Paris"
    assert _text(elicited) == 'User response: action=accept, content={"response":"yes"}'


async def test_a_list_change_in_one_backend_reaches_other_clients(
    federation: dict[str, str],
) -> None:
    """Alpha announces a tool list change to client A's session (on its GET stream, merged
    into A's); client B, whose merged stream is open on the same gateway, is told too."""
    url = f"{federation['gw1']}/mcp"
    told = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            told.set()

    async with (
        sdk_session(url, "handshake", message_handler=on_message) as (_, b_wire),
        sdk_session(url, "handshake") as (a, _),
    ):
        for _ in range(50):  # B's GET stream is open once the gateway answered it
            if 200 in b_wire.statuses("GET"):
                break
            await asyncio.sleep(0.1)
        await a.call_tool("alpha_announce_tools_changed", {"delay": 1.0})
        await asyncio.wait_for(told.wait(), 10)


async def _events_until(
    lines: AsyncIterator[str], wanted: str, limit: float
) -> list[tuple[str, str]]:
    """(id, data) of the events read from `lines` until one whose data holds `wanted`."""
    seen: list[tuple[str, str]] = []

    async def read() -> None:
        event_id, data = "", []
        async for line in lines:
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line:
                seen.append((event_id, "\n".join(data)))
                if wanted in seen[-1][1]:
                    return
                event_id, data = "", []

    await asyncio.wait_for(read(), limit)
    return seen


def _uri(data: str) -> str:
    return str(orjson.loads(data)["params"]["uri"])


async def test_a_merged_stream_resumes_each_backend_from_the_composite_event_id(
    federation: dict[str, str],
) -> None:
    url = f"{federation['gw1']}/mcp"
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "resume", "version": "1"},
        },
    }
    headers = {"accept": "application/json, text/event-stream"}

    def call(n: int, name: str, arguments: dict[str, object]) -> dict[str, object]:
        return {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        }

    async with httpx.AsyncClient(timeout=httpx.Timeout(20, read=None)) as http:
        opened = await http.post(url, json=init, headers=headers)
        headers |= {
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        await http.post(
            url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        for n, backend in enumerate(("alpha", "beta"), start=2):
            assert (
                await http.post(url, json=call(n, f"{backend}_whoami", {}), headers=headers)
            ).status_code == 200
        events: list[tuple[str, str]] = []
        async with http.stream("GET", url, headers=headers) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            await asyncio.sleep(0.5)  # both backends' streams are open
            announcements = [
                ("alpha", "test://one"),
                ("beta", "test://two"),
                ("alpha", "test://three"),
            ]
            for n, (backend, uri) in enumerate(announcements, start=5):
                announce = {"uri": uri, "delay": 0.1}
                await http.post(
                    url, json=call(n, f"{backend}_announce_later", announce), headers=headers
                )
                events += await _events_until(lines, uri, 10)
        ids = {_uri(data): event_id for event_id, data in events if "test://" in data}
        # The URIs are the gateway's (backend+uri), as in the lists and reads.
        assert set(ids) == {"alpha+test://one", "beta+test://two", "alpha+test://three"}
        # Every event id names the last event seen from each backend.
        one, two = ids["alpha+test://one"], ids["beta+test://two"]
        assert one.startswith("alpha=") and "beta=" not in one
        assert "alpha=" in two and "beta=" in two
        # Resuming from test://two's id asks alpha for what followed test://one (that is
        # test://three) and beta for what followed test://two (nothing).
        resume = headers | {"last-event-id": two}
        async with http.stream("GET", url, headers=resume) as again:
            assert again.status_code == 200
            replayed = await _events_until(again.aiter_lines(), "test://three", 10)
        assert [_uri(d) for _, d in replayed if "test://" in d] == ["alpha+test://three"]


# ---------------------------------------------------------------- the stateless era


async def test_the_stateless_era_discovers_lists_and_routes_without_sessions(
    federation: dict[str, str],
) -> None:
    url = f"{federation['gw1']}/mcp"
    async with sdk_session(url, "modern") as (session, wire):
        discovered = session.discover_result
        tools = {t.name for t in (await session.list_tools()).tools}
        answered = await session.call_tool("gamma_whoami", {})
        prompt = await session.get_prompt("alpha_test_simple_prompt")
        content = await session.read_resource("beta+test://static-text")
    assert discovered is not None and "2026-07-28" in discovered.supported_versions
    assert session.protocol_version == "2026-07-28"
    assert {"alpha_whoami", "beta_whoami", "gamma_whoami"} <= tools
    assert not any(t.startswith("dead_") for t in tools)
    assert '"replica": "gamma"' in _text(answered)
    assert prompt.messages
    assert str(content.contents[0].uri) == "beta+test://static-text"
    assert wire.session_ids == set()
    # Mcp-Name went out as the client wrote it; the backend got its own name (else it
    # would have refused the request for a header that disagrees with the body).
    sent = [r.headers.get("mcp-name") for r in wire.requests]
    assert "gamma_whoami" in sent and "beta+test://static-text" in sent


async def test_stateless_input_required_retries_reach_the_same_backend(
    federation: dict[str, str],
) -> None:
    url = f"{federation['gw1']}/mcp"
    tool = "beta_test_input_required_result_elicitation"
    async with sdk_session(url, "modern") as (session, _):
        first = await session.call_tool(tool, {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult), first  # passed through as is
        assert first.input_requests is not None
        (key,) = first.input_requests
        final = await session.call_tool(
            tool,
            {},
            input_responses={key: types.ElicitResult(action="accept", content={"name": "Ada"})},
            request_state=first.request_state,
            allow_input_required=True,
        )
    assert _text(final) == "Hello, Ada!"


async def test_subscriptions_listen_fans_out_with_one_acknowledgement(
    federation: dict[str, str],
) -> None:
    """One listen stream through the gateway: one acknowledgement merging every
    backend's, then a backend's tool list change arrives on it."""
    url = f"{federation['gw1']}/mcp"
    async with (
        sdk_session(url, "modern") as (listener, _),
        sdk_session(url, "modern") as (actor, _),
        listen(
            listener,
            tools_list_changed=True,
            resource_subscriptions=["beta+test://watched-resource"],
        ) as subscription,
    ):
        assert subscription.honored.tools_list_changed is True
        assert subscription.honored.resource_subscriptions == ["beta+test://watched-resource"]
        await actor.call_tool("alpha_test_trigger_tool_change", {})
        event = await asyncio.wait_for(anext(aiter(subscription)), 10)
    assert isinstance(event, ToolsListChanged)


async def test_a_list_change_seen_on_one_gateway_reaches_clients_of_the_other(
    federation: dict[str, str],
) -> None:
    """Alpha tells only client A's session (whose stream is on gateway 1) that its tools
    changed; client B's stream is on gateway 2: the change travels through Redis."""
    told = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            told.set()

    async with (
        sdk_session(f"{federation['gw2']}/mcp", "handshake", message_handler=on_message) as (
            _,
            b_wire,
        ),
        sdk_session(f"{federation['gw1']}/mcp", "handshake") as (a, _),
    ):
        for _ in range(50):
            if 200 in b_wire.statuses("GET"):
                break
            await asyncio.sleep(0.1)
        await a.call_tool("alpha_announce_tools_changed", {"delay": 1.0})
        await asyncio.wait_for(told.wait(), 10)
