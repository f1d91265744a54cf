"""A stateless client in front of a handshake-era server that asks its client in the
middle of a call (elicitation, sampling, roots): the gateway answers the client with an
``InputRequiredResult`` and a sealed ``requestState``, and on the retry answers the
server's waiting request and returns the call's result (``proxy/bridging.py``,
``proxy/input_required.py``).

Two gateway replicas on one Redis, sharing ``state_secret``, in front of the conformance
fixture kept to the handshake era: the official Python SDK client (2026-07-28) gets its
answers through either; a requestState minted by one replica is good at the other, a
tampered one, another caller's, or one for another request is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from mcp import types
from mcp.client.client import Client
from mcp.client.subscriptions import listen
from mcp.shared.subscriptions import ResourceUpdated

from testbed.redis_server import redis_server
from tests.helpers.clients import ACCEPT, sdk_session
from tests.helpers.eras import era_gateway, fixture_server

pytestmark = pytest.mark.timeout(120)

MODERN = "2026-07-28"
SECRET = "a-state-key-the-replicas-share-01"  # noqa: S105 - the test's own
ASKS_ALL: dict[str, Any] = {"sampling": {}, "elicitation": {}, "roots": {}}


class Replicas:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    with ExitStack() as stack:
        upstream = fixture_server(stack, "--handshake-only")
        redis = stack.enter_context(redis_server())
        options = ["--session-store", redis.url(), "--workers", "1"]
        options += ["--state-secret", "env:MCPFP_TEST_STATE_SECRET"]
        env = {"MCPFP_TEST_STATE_SECRET": SECRET}
        yield Replicas([f"{era_gateway(stack, upstream, *options, env=env)}/mcp" for _ in range(2)])


def _call(
    url: str,
    tool: str,
    *,
    request_id: Any = 1,
    capabilities: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
    state: str | None = None,
    authorization: str | None = None,
    meta: dict[str, Any] | None = None,
) -> httpx.Response:
    meta = {
        **(meta or {}),
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": ASKS_ALL
        if capabilities is None
        else capabilities,
    }
    params: dict[str, Any] = {"name": tool, "arguments": {}, "_meta": meta}
    if inputs is not None:
        params["inputResponses"] = inputs
    if state is not None:
        params["requestState"] = state
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN}
    headers |= {"mcp-method": "tools/call", "mcp-name": tool}
    if authorization is not None:
        headers["authorization"] = authorization
    return httpx.post(url, json=body, headers=headers, timeout=30)


def _confirm(answer: httpx.Response) -> tuple[dict[str, Any], str]:
    """The confirmation a call asks for: its input responses and its requestState."""
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["resultType"] == "input_required", result
    ((key, asked),) = result["inputRequests"].items()
    assert asked["method"] == "elicitation/create"
    assert asked["params"]["message"] == "Please confirm"
    return {key: {"action": "accept", "content": {"ok": True}}}, result["requestState"]


def _text(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["resultType"] == "complete", result
    return str(result["content"][0]["text"])


def test_a_retry_at_the_same_replica_completes_the_call_that_waited(replicas: Replicas) -> None:
    """The server's call waited for the answer: it ran once."""
    url = replicas.urls[0]
    inputs, state = _confirm(_call(url, "test_asking_runs", request_id="a"))
    first = _text(_call(url, "test_asking_runs", request_id="b", inputs=inputs, state=state))
    inputs, state = _confirm(_call(url, "test_asking_runs"))
    second = _text(_call(url, "test_asking_runs", inputs=inputs, state=state))
    before, after = int(first.split()[1]), int(second.split()[1])
    assert (first, second) == (f"run {before} of {before}", f"run {after} of {after}")
    assert after == before + 1  # one run per call: the retry did not start another


def test_a_request_state_from_one_replica_is_good_at_the_other(replicas: Replicas) -> None:
    """The other replica holds no waiting call: it sends the request again (a second
    run) and answers the server's question again from the state; the client is not asked
    twice."""
    one, other = replicas.urls
    inputs, state = _confirm(_call(one, "test_asking_runs"))
    baseline = int(_text(_call(one, "test_asking_runs", inputs=inputs, state=state)).split()[1])
    inputs, state = _confirm(_call(one, "test_asking_runs"))  # run baseline + 1 waits here
    done = _text(_call(other, "test_asking_runs", inputs=inputs, state=state))
    assert done == f"run {baseline + 2} of {baseline + 2}"


@pytest.mark.parametrize(
    "change",
    ["tampered", "another caller", "another request", "unanswered keys only"],
)
def test_a_request_state_that_does_not_fit_is_refused(replicas: Replicas, change: str) -> None:
    one, other = replicas.urls
    inputs, state = _confirm(
        _call(one, "test_input_required_result_request_state", authorization="Bearer a")
    )
    kwargs: dict[str, Any] = {"inputs": inputs, "state": state, "authorization": "Bearer a"}
    tool = "test_input_required_result_request_state"
    if change == "tampered":
        kwargs["state"] = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
    elif change == "another caller":
        kwargs["authorization"] = "Bearer b"
    elif change == "another request":
        tool = "test_input_required_result_tampered_state"
    else:
        kwargs["inputs"] = {"elicitation-99": {"action": "accept", "content": {"ok": True}}}
    answer = _call(other, tool, **kwargs)
    if change == "unanswered keys only":  # a fitting state with no answer: asked again
        again, _ = _confirm(answer)
        assert again.keys() == inputs.keys()
        return
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == -32602
    assert state not in error["message"]


def test_a_call_asks_only_what_its_client_declared(replicas: Replicas) -> None:
    answer = _call(
        replicas.urls[0], "test_input_required_result_capabilities", capabilities={"sampling": {}}
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert [r["method"] for r in result["inputRequests"].values()] == ["sampling/createMessage"]
    none = _call(replicas.urls[0], "test_input_required_result_capabilities", capabilities={})
    assert _text(none) == "Asked for 0 input(s)."


async def _sampled(
    context: Any, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    text = params.messages[0].content.text  # type: ignore[union-attr]
    reply = types.TextContent(type="text", text=f"answer to {text}")
    return types.CreateMessageResult(role="assistant", content=reply, model="test-model")


async def _elicited(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    field = next(iter(params.requested_schema["properties"]))  # type: ignore[union-attr]
    return types.ElicitResult(action="accept", content={field: f"my {field}"})


async def _roots(context: Any) -> types.ListRootsResult:
    root = types.Root(uri="file:///work", name="work")  # type: ignore[arg-type]
    return types.ListRootsResult(roots=[root])


@pytest.mark.parametrize("replica", [0, 1])
async def test_the_sdk_client_gets_elicitation_sampling_and_roots_answered(
    replicas: Replicas, replica: int
) -> None:
    client = Client(
        replicas.urls[replica],
        mode=MODERN,
        sampling_callback=_sampled,
        elicitation_callback=_elicited,
        list_roots_callback=_roots,
    )
    async with client:
        assert client.session.protocol_version == MODERN
        rounds = await client.call_tool("test_input_required_result_multi_round", {})
        assert rounds.content[0].text == "my name likes my color."  # type: ignore[union-attr]
        sampled = await client.call_tool("test_input_required_result_sampling", {})
        text = "Model said: answer to What is the capital of France?"
        assert sampled.content[0].text == text  # type: ignore[union-attr]
        roots = await client.call_tool("test_input_required_result_list_roots", {})
        assert roots.content[0].text == "Client exposed 1 root(s)."  # type: ignore[union-attr]
        everything = await client.call_tool("test_input_required_result_multiple_inputs", {})
        assert everything.content[0].text == "All inputs received."  # type: ignore[union-attr]
        prompt = await client.get_prompt("test_input_required_result_prompt")
        said = prompt.messages[0].content.text  # type: ignore[union-attr]
        assert said == "Use the following context: my context"


def test_the_log_level_a_request_asks_for_is_its_backend_sessions(replicas: Replicas) -> None:
    url = replicas.urls[0]
    for level in ("error", "debug", "error"):
        meta = {"io.modelcontextprotocol/logLevel": level}
        answer = _call(url, "test_session_log_level", meta=meta)
        assert _text(answer) == level
    assert _text(_call(url, "test_session_log_level")) == "unset"


async def test_a_stateless_listener_hears_the_backends_changes(replicas: Replicas) -> None:
    """``subscriptions/listen`` relays the caller's backend session's GET stream:
    acknowledged with what the backend offers (it does not announce list changes; it lets
    resources be subscribed), then an update of a resource subscribed, tagged with the
    listen request's id, and none of another."""
    watched = "test://watched-resource"
    async with (
        sdk_session(replicas.urls[1], "modern") as (client, _),
        listen(client, tools_list_changed=True, resource_subscriptions=[watched]) as subscription,
    ):
        assert subscription.honored.tools_list_changed is None  # it never said it would
        assert subscription.honored.resource_subscriptions == [watched]
        for uri in ("test://static-text", watched):
            arguments = {"uri": uri, "delay": 0.1}
            await client.call_tool("test_announce_resource_updated", arguments)
        event = await asyncio.wait_for(anext(aiter(subscription)), 10)
        assert event == ResourceUpdated(watched)
