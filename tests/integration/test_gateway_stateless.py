"""Stateless era (2026-07-28) through the gateway: per-request routing headers, no session."""

from __future__ import annotations

import json
from typing import Any

import httpx
import mcp.types as types
import pytest

from tests.helpers.clients import MODERN, MODERN_META, modern_headers, sdk_session
from tests.helpers.gateways import Gateway

pytestmark = pytest.mark.timeout(20)

HEADER_MISMATCH = -32020


def _text(result: types.CallToolResult | types.InputRequiredResult) -> str:
    assert isinstance(result, types.CallToolResult), result
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


def _form(name: str, value: str) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={name: value})


async def test_discover_negotiates_2026_07_28_and_no_session_is_minted(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "modern") as (session, wire):
        discovered = session.discover_result
        tools = {tool.name for tool in (await session.list_tools()).tools}
        result = await session.call_tool("test_simple_text", {})

    assert discovered is not None and MODERN in discovered.supported_versions
    assert session.protocol_version == MODERN
    assert [r.headers["mcp-method"] for r in wire.requests] == [
        "server/discover",
        "tools/list",
        "tools/call",
    ]
    assert {"test_simple_text", "echo_mcp_headers"} <= tools
    assert _text(result) == "This is a simple text response for testing."
    assert wire.session_ids == set()
    assert all(r.request.method == "POST" for r in wire.responses)  # no GET stream, no DELETE


async def test_input_required_round_trip(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "modern") as (session, wire):
        first = await session.call_tool(
            "test_input_required_result_elicitation", {}, allow_input_required=True
        )
        assert isinstance(first, types.InputRequiredResult)
        assert first.input_requests is not None
        (key,) = first.input_requests
        assert isinstance(first.input_requests[key], types.ElicitRequest)

        final = await session.call_tool(
            "test_input_required_result_elicitation",
            {},
            input_responses={key: _form("name", "Ada")},
            request_state=first.request_state,
            allow_input_required=True,
        )

    assert _text(final) == "Hello, Ada!"
    calls = [r for r in wire.responses if r.request.headers.get("mcp-method") == "tools/call"]
    assert [r.status_code for r in calls] == [200, 200]  # one independent POST per round


async def test_multi_round_request_state_survives_spreading_over_replicas(
    replicated_gateway: Gateway,
) -> None:
    """Each round is an independent request: any replica may take it, state rides along."""
    tool = "test_input_required_result_multi_round"
    answers = {"step1": _form("name", "Ada"), "step2": _form("color", "teal")}
    replicas = set()
    async with sdk_session(replicated_gateway.url, "modern") as (session, _):
        result = await session.call_tool(tool, {}, allow_input_required=True)
        rounds = 0
        while isinstance(result, types.InputRequiredResult):
            rounds += 1
            assert result.input_requests is not None
            responses: types.InputResponses = {k: answers[k] for k in result.input_requests}
            result = await session.call_tool(
                tool,
                {},
                input_responses=responses,
                request_state=result.request_state,
                allow_input_required=True,
            )
        for _ in range(4):
            who = json.loads(_text(await session.call_tool("whoami", {})))
            assert who["session"] is None
            replicas.add(who["replica"])

    assert rounds == 2
    assert _text(result) == "Ada likes teal."
    assert replicas == {"a", "b"}, "stateless requests should use every replica"


# --------------------------------------------------------------------------- routing headers


def _tools_call(request_id: Any, name: str) -> dict[str, Any]:
    params = {"name": name, "arguments": {}, "_meta": MODERN_META}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@pytest.mark.parametrize(
    ("headers", "request_id"),
    [
        pytest.param(modern_headers("tools/list"), 41, id="mcp-method"),
        pytest.param(modern_headers("tools/call", "test_error_handling"), "req-42", id="mcp-name"),
    ],
)
async def test_routing_header_that_contradicts_the_body_is_refused(
    gateway: Gateway, headers: dict[str, str], request_id: Any
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            gateway.url, headers=headers, json=_tools_call(request_id, "test_simple_text")
        )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert error["error"]["code"] == HEADER_MISMATCH
    assert error["id"] == request_id


async def test_routing_headers_that_agree_with_the_body_pass(gateway: Gateway) -> None:
    headers = modern_headers("tools/call", "test_simple_text")
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            gateway.url, headers=headers, json=_tools_call(43, "test_simple_text")
        )
    assert response.status_code == 200
    assert "mcp-session-id" not in response.headers


@pytest.mark.parametrize("region", ["eu-west-1", "Zürich"])
async def test_mcp_param_headers_reach_the_upstream_untouched(
    gateway: Gateway, region: str
) -> None:
    async with sdk_session(gateway.url, "modern") as (session, wire):
        await session.list_tools()  # the client learns the x-mcp-header declaration here
        result = await session.call_tool("echo_mcp_headers", {"region": region})
    sent = {
        k.lower(): v for k, v in wire.requests[-1].headers.items() if k.lower().startswith("mcp-")
    }
    echoed = json.loads(_text(result))

    assert echoed["region"] == region
    assert "mcp-param-region" in sent  # the SDK mirrored the argument (base64 form if not ASCII)
    assert echoed["headers"] == sent


async def test_raw_mcp_param_header_reaches_the_upstream_byte_for_byte(gateway: Gateway) -> None:
    value = "=?base64?WsO8cmljaA==?="  # "Zürich", as the spec encodes non-ASCII values
    headers = {**modern_headers("tools/call", "echo_mcp_headers"), "mcp-param-region": value}
    body = _tools_call(44, "echo_mcp_headers")
    body["params"]["arguments"] = {"region": "Zürich"}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(gateway.url, headers=headers, json=body)
    assert response.status_code == 200, response.text
    echoed = json.loads(_raw_result_text(response))
    assert echoed["headers"]["mcp-param-region"] == value
    assert echoed["region"] == "Zürich"


def _raw_result_text(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        datas = [
            line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")
        ]
        message = json.loads([d for d in datas if d][-1])
    else:
        message = response.json()
    text: str = message["result"]["content"][0]["text"]
    return text
