"""Handshake era (initialize + Mcp-Session-Id) through the gateway, with real SDK peers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import httpx
import mcp.types as types
import pytest
from mcp.client.session import ClientRequestContext

from tests.helpers.clients import (
    HANDSHAKE,
    handshake_headers,
    messages,
    raw_call,
    raw_initialize,
    sampling_answer,
    sdk_session,
    text_of,
)
from tests.helpers.gateways import Gateway, Upstream

pytestmark = pytest.mark.timeout(20)

TOOLS_LIST = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}


def _whoami(result: types.CallToolResult) -> dict[str, str]:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    identity: dict[str, str] = json.loads(block.text)
    return identity


def _text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


# --------------------------------------------------------------------------- the session


async def test_client_gets_a_gateway_session_id_not_the_upstreams(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "handshake") as (session, wire):
        assert session.protocol_version == HANDSHAKE
        upstream_sid = _whoami(await session.call_tool("whoami", {}))["session"]

    (gateway_sid,) = wire.session_ids  # one id, on every response of the session
    assert upstream_sid and gateway_sid != upstream_sid
    # Visible ASCII (spec), URL-safe base64: at least 22 characters carry >= 128 random bits.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", gateway_sid), gateway_sid


async def test_tools_list_and_call(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "handshake") as (session, _):
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert {"test_simple_text", "count_slowly", "whoami"} <= tools
        result = await session.call_tool("test_simple_text", {})
    assert _text(result) == "This is a simple text response for testing."


async def test_resources_list_and_read(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "handshake") as (session, _):
        listed = {str(resource.uri) for resource in (await session.list_resources()).resources}
        read = await session.read_resource("test://static-text")
    assert "test://static-text" in listed
    (contents,) = read.contents
    assert isinstance(contents, types.TextResourceContents)
    assert contents.text == "This is the content of the static text resource."


async def test_prompts_list_and_get(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "handshake") as (session, _):
        listed = {prompt.name for prompt in (await session.list_prompts()).prompts}
        got = await session.get_prompt("test_prompt_with_arguments", {"arg1": "x", "arg2": "y"})
    assert "test_prompt_with_arguments" in listed
    message = got.messages[0].content
    assert isinstance(message, types.TextContent)
    assert message.text == "Prompt with arguments: arg1='x', arg2='y'"


async def test_completion(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "handshake") as (session, _):
        ref = types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments")
        result = await session.complete(ref, {"name": "arg1", "value": "x"})
    assert result.completion.values == []
    assert result.completion.has_more is False


# --------------------------------------------------------------------------- server -> client


async def test_sampling_request_is_answered_by_the_clients_callback(gateway: Gateway) -> None:
    asked: list[str] = []
    sample = sampling_answer(asked, "Paris")

    async with sdk_session(gateway.url, "handshake", sampling_callback=sample) as (session, _):
        result = await session.call_tool("test_sampling", {"prompt": "Capital of France?"})

    assert asked == ["Capital of France?"]
    assert _text(result) == "LLM response: Paris"


async def test_elicitation_request_is_answered_by_the_clients_callback(gateway: Gateway) -> None:
    asked: list[str] = []

    async def elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"response": "yes please"})

    async with sdk_session(gateway.url, "handshake", elicitation_callback=elicit) as (session, _):
        result = await session.call_tool("test_elicitation", {"message": "Proceed?"})

    assert asked == ["Proceed?"]
    assert _text(result) == 'User response: action=accept, content={"response":"yes please"}'


# --------------------------------------------------------------------------- lifetime


async def test_delete_ends_the_session_at_both_ends(gateway: Gateway, replica_a: Upstream) -> None:
    async with sdk_session(gateway.url, "handshake") as (session, wire):
        upstream_sid = _whoami(await session.call_tool("whoami", {}))["session"]
    # Leaving the client sent DELETE with the gateway's id.
    (gateway_sid,) = wire.session_ids
    assert wire.statuses("DELETE") == [200]

    async with httpx.AsyncClient(timeout=10) as http:
        at_gateway = await http.post(
            gateway.url, headers=handshake_headers(gateway_sid), json=TOOLS_LIST
        )
        at_upstream = await http.post(
            replica_a.url, headers=handshake_headers(upstream_sid), json=TOOLS_LIST
        )
    assert at_gateway.status_code == 404
    assert at_gateway.json()["id"] == 9
    assert at_upstream.status_code == 404, "the upstream session outlived the DELETE"


async def test_idle_session_expires_with_404_and_a_new_one_can_start(
    short_ttl_gateway: Gateway,
) -> None:
    url = short_ttl_gateway.url
    async with httpx.AsyncClient(timeout=10) as http:
        sid = await raw_initialize(http, url)
        assert "error" not in await raw_call(http, url, sid, "whoami", {})

        await asyncio.sleep(1.5)  # idle past --session-ttl 1
        expired = await http.post(url, headers=handshake_headers(sid), json=TOOLS_LIST)
        assert expired.status_code == 404
        assert expired.json()["id"] == 9

        fresh = await raw_initialize(http, url)
        assert fresh != sid
        assert "error" not in await raw_call(http, url, fresh, "whoami", {})


async def test_activity_renews_the_idle_ttl(short_ttl_gateway: Gateway) -> None:
    url = short_ttl_gateway.url
    async with httpx.AsyncClient(timeout=10) as http:
        sid = await raw_initialize(http, url)
        for _ in range(4):  # 2 s in all, never 1 s idle
            await asyncio.sleep(0.5)
            assert "error" not in await raw_call(http, url, sid, "whoami", {})


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_calls_on_one_session(gateway: Gateway) -> None:
    values = [f"call-{i}" for i in range(6)]
    async with sdk_session(gateway.url, "handshake") as (session, _):
        started = time.monotonic()
        results = await asyncio.gather(
            *(session.call_tool("sleep_then_echo", {"value": v, "seconds": 0.5}) for v in values)
        )
        elapsed = time.monotonic() - started
    assert [_text(r) for r in results] == values
    assert elapsed < 1.5, f"calls were serialised: {elapsed:.2f}s for six 0.5 s calls"


# --------------------------------------------------------------------------- replicas


async def test_sessions_spread_over_replicas_and_stick_to_theirs(
    replicated_gateway: Gateway,
) -> None:
    url = replicated_gateway.url
    placed: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(4):
            sid = await raw_initialize(http, url)
            seen = {
                (who["replica"], who["session"])
                for who in [
                    json.loads(text_of(await raw_call(http, url, sid, "whoami", {})))
                    for _ in range(3)
                ]
            }
            assert len(seen) == 1, f"session {sid} moved: {seen}"
            ((replica, _),) = seen
            placed[replica] += 1
    assert placed == {"a": 2, "b": 2}


@pytest.mark.timeout(30)
async def test_new_sessions_avoid_the_replica_busy_with_a_streaming_call(
    replicated_gateway: Gateway,
) -> None:
    """Least in-flight: a call whose response is still streaming keeps its replica busy."""
    url = replicated_gateway.url
    async with httpx.AsyncClient(timeout=10) as http:
        busy_sid = await raw_initialize(http, url)
        busy = json.loads(text_of(await raw_call(http, url, busy_sid, "whoami", {})))["replica"]

        body = {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {
                "name": "count_slowly",
                "arguments": {"steps": 6, "interval": 0.3},
                "_meta": {"progressToken": "busy"},
            },
        }
        async with http.stream(
            "POST", url, headers=handshake_headers(busy_sid), json=body
        ) as streaming:
            stream = messages(streaming)
            first = await anext(stream)
            assert first["method"] == "notifications/progress"  # the call is in flight

            placed = []
            for _ in range(2):
                sid = await raw_initialize(http, url)
                who = json.loads(text_of(await raw_call(http, url, sid, "whoami", {})))
                placed.append(who["replica"])
            async for message in stream:  # let the busy call finish
                if "id" in message:
                    break

    idle = "b" if busy == "a" else "a"
    assert placed == [idle, idle], f"{busy} was streaming a call, yet sessions went to {placed}"
