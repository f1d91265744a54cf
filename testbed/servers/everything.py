"""Upstream MCP server exposing every fixture the conformance server scenarios expect.

Built on the official ``mcp`` SDK (``MCPServer``) and served over Streamable HTTP in
stateful mode, so one process answers both protocol eras on ``/mcp``:

* handshake era (``2025-11-25`` and older): ``initialize`` + ``Mcp-Session-Id``;
* stateless era (``2026-07-28``): the SDK's session manager routes requests whose
  ``MCP-Protocol-Version`` header names the new revision to its modern, sessionless path.

DNS-rebinding protection stays on. Loopback names on any port are allowed (``127.0.0.1``,
``localhost``, ``[::1]``), so the suite passes against this server directly and through a
gateway on another loopback port, while a foreign ``Host``/``Origin`` is still refused.

Run: ``python -m testbed.servers.everything --host 127.0.0.1 --port 3001`` (MCP on ``/mcp``,
readiness on ``/healthz``); with ``--stdio``, the same server on stdin and stdout (the
handshake era only: that transport has no stateless mode).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import uvicorn
from mcp.server import ServerRequestContext
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.elicitation import render_elicitation_schema
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from testbed.servers.eras import add_era_flags, handshake_only, stateless_only

__all__ = (
    "LOOPBACK_HOSTS",
    "MemoryEventStore",
    "build_app",
    "build_server",
    "main",
    "resumable_http_app",
)

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
# A tool argument mirrored in the Mcp-Param-Region request header (SEP-2243).
Region = Annotated[
    str,
    Field(
        description="Mirrored in the Mcp-Param-Region request header (SEP-2243)",
        json_schema_extra={"x-mcp-header": "Region"},
    ),
]

HEALTH_PATH = "/healthz"
SERVER_NAME = "mcp-fastproxy-everything"

# 1x1 PNG and a tiny WAV header: the suite checks type, data and mimeType, not pixels.
PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
    "AAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
WAV_EMPTY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

# Any port on a loopback name: direct runs and runs through a gateway on another port.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

# RequestStateSecurity needs >= 32 bytes; a fixed key keeps sealed state valid across
# restarts of this fixture (a real deployment loads a shared secret).
REQUEST_STATE_KEY = b"mcp-fastproxy-conformance-request-state-key!"


class MemoryEventStore(EventStore):
    """Append-only in-memory event log, enough for SSE resumption (SEP-1699); one per
    session (see :func:`resumable_http_app`)."""

    def __init__(self) -> None:
        self._log: list[tuple[str, int, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = len(self._log) + 1
        self._log.append((stream_id, event_id, message))
        return str(event_id)

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        if not 1 <= after <= len(self._log):
            return None
        stream_id = self._log[after - 1][0]
        for sid, event_id, message in self._log[after:]:
            if sid == stream_id and message is not None:  # None marks a priming event
                await send_callback(EventMessage(message, str(event_id)))
        return stream_id


# --------------------------------------------------------------------------- schemas


class UserReply(BaseModel):
    response: str = Field(description="The user's reply")


class DefaultsForm(BaseModel):
    """Every primitive type with a default (SEP-1034)."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active",
        description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


class EnumForm(BaseModel):
    """The five enum shapes of SEP-1330 (field names are fixed by the suite)."""

    untitledSingle: str = Field(
        description="Single select, plain enum",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    titledSingle: str = Field(
        description="Single select with titles",
        json_schema_extra={
            "oneOf": [
                {"const": "low", "title": "Low Priority"},
                {"const": "medium", "title": "Medium Priority"},
                {"const": "high", "title": "High Priority"},
            ]
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi select, plain enum",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi select with titles",
        json_schema_extra={
            "items": {
                "anyOf": [
                    {"const": "feature", "title": "New Feature"},
                    {"const": "bug", "title": "Bug Fix"},
                    {"const": "docs", "title": "Documentation"},
                ]
            }
        },
    )
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    )


# Every JSON Schema 2020-12 keyword the json-schema-2020-12 scenario looks for in tools/list.
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def _form(message: str, field: str, kind: str = "string") -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(text: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(
        params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    )


def _elicited(answer: object, field: str) -> Any:
    if isinstance(answer, ElicitResult) and answer.content:
        return answer.content.get(field)
    return None


# --------------------------------------------------------------------------- server


def build_server(
    asking: bool = False, cache: CacheHint | None = None, modern: bool = False
) -> MCPServer[Any]:
    """Create the MCPServer with every conformance fixture registered; `asking`: the
    multi-round fixtures ask the client in the call, as a handshake-era server does;
    `cache`: the caching terms of every cacheable result (and a resource that counts its
    reads, ``test://reads``); `modern`: the tools that ask the client mid-call ask with an
    InputRequiredResult instead, as a server of the stateless era alone does."""
    hints = None if cache is None else dict.fromkeys(CACHEABLE_METHODS, cache)
    mcp: MCPServer[Any] = MCPServer(
        name=SERVER_NAME,
        version="1.0.0",
        request_state_security=RequestStateSecurity(keys=[REQUEST_STATE_KEY]),
        cache_hints=hints,  # type: ignore[arg-type]
    )
    if cache is not None:
        reads = 0

        @mcp.resource("test://reads", mime_type="text/plain")
        def counted() -> str:
            """Says how many times it was read: a read the gateway answers is not counted."""
            nonlocal reads
            reads += 1
            return f"read {reads}"

        @mcp.resource("test://large", mime_type="text/plain")
        def large() -> str:
            """Two million characters, and how many times it was read."""
            nonlocal reads
            reads += 1
            return f"read {reads} " + "x" * 2_000_000

    subscribed: set[str] = set()
    _register_content_tools(mcp)
    _register_interactive_tools(mcp, modern)
    if asking:
        _register_asking_tools(mcp)
    else:
        _register_input_required_tools(mcp)
    _register_resources(mcp)
    _register_prompts(mcp, asking)
    _register_lowlevel_handlers(mcp, subscribed)

    async def healthz(request: Request) -> Response:
        """Readiness probe for test fixtures (plain HTTP, not MCP)."""
        return PlainTextResponse("ok")

    mcp.custom_route(HEALTH_PATH, methods=["GET"])(healthz)
    return mcp


_F = TypeVar("_F", bound=Callable[..., Any])


def _unless(skip: bool, register: Callable[[_F], _F]) -> Callable[[_F], _F]:
    """`register` (a decorator), or one that registers nothing when `skip`."""
    return (lambda fn: fn) if skip else register


def _register_modern_asking(mcp: MCPServer[Any]) -> None:
    """The tools that ask the client, as a server of the stateless era writes them."""

    def _elicited_form(message: str, schema: type[BaseModel]) -> ElicitRequest:
        form = render_elicitation_schema(schema)
        return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=form))

    def _outcome(answer: object, schema: type[BaseModel]) -> tuple[str, str] | None:
        if not isinstance(answer, ElicitResult):
            return None
        if answer.action == "accept":
            return "accept", schema.model_validate(answer.content or {}).model_dump_json()
        return answer.action, "{}"

    @mcp.tool(name="test_sampling")
    async def sampling(prompt: str, ctx: Context) -> str | InputRequiredResult:
        """Asks the client's LLM to complete `prompt` (an InputRequiredResult)."""
        answer = (ctx.input_responses or {}).get("completion")
        if isinstance(answer, CreateMessageResult):
            text = answer.content.text if answer.content.type == "text" else "No response"
            return f"LLM response: {text}"
        return InputRequiredResult(input_requests={"completion": _sample(prompt, 100)})

    @mcp.tool(name="test_elicitation")
    async def elicitation(message: str, ctx: Context) -> str | InputRequiredResult:
        """Asks the user a question (an InputRequiredResult)."""
        found = _outcome((ctx.input_responses or {}).get("reply"), UserReply)
        if found is not None:
            return f"User response: action={found[0]}, content={found[1]}"
        return InputRequiredResult(input_requests={"reply": _elicited_form(message, UserReply)})

    @mcp.tool(name="test_elicitation_sep1034_defaults")
    async def defaults(ctx: Context) -> str | InputRequiredResult:
        """Elicits a form whose fields all carry defaults (SEP-1034)."""
        found = _outcome((ctx.input_responses or {}).get("form"), DefaultsForm)
        if found is not None:
            return f"Elicitation result: action={found[0]}, content={found[1]}"
        ask = _elicited_form("Please provide user information", DefaultsForm)
        return InputRequiredResult(input_requests={"form": ask})

    @mcp.tool(name="test_elicitation_sep1330_enums")
    async def enums(ctx: Context) -> str | InputRequiredResult:
        """Elicits a form with every enum variant (SEP-1330)."""
        found = _outcome((ctx.input_responses or {}).get("form"), EnumForm)
        if found is not None:
            return f"Elicitation completed: action={found[0]}, content={found[1]}"
        return InputRequiredResult(
            input_requests={"form": _elicited_form("Please select values", EnumForm)}
        )


def _register_content_tools(mcp: MCPServer[Any]) -> None:
    @mcp.tool()
    def test_simple_text() -> str:
        """Returns one text block."""
        return "This is a simple text response for testing."

    @mcp.tool()
    def test_image_content() -> list[ImageContent]:
        """Returns one PNG image block."""
        return [ImageContent(type="image", data=PNG_1X1, mime_type="image/png")]

    @mcp.tool()
    def test_audio_content() -> list[AudioContent]:
        """Returns one WAV audio block."""
        return [AudioContent(type="audio", data=WAV_EMPTY, mime_type="audio/wav")]

    @mcp.tool()
    def test_embedded_resource() -> list[EmbeddedResource]:
        """Returns one embedded text resource."""
        contents = TextResourceContents(
            uri="test://embedded-resource",
            mime_type="text/plain",
            text="This is an embedded resource content.",
        )
        return [EmbeddedResource(type="resource", resource=contents)]

    @mcp.tool()
    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        """Returns text, image and embedded resource blocks together."""
        contents = TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text='{"test": "data", "value": 123}',
        )
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
            EmbeddedResource(type="resource", resource=contents),
        ]

    @mcp.tool()
    def test_error_handling() -> str:
        """Always fails, so the result carries isError=true."""
        raise RuntimeError("This tool intentionally returns an error for testing")

    @mcp.tool()
    def test_x_mcp_header(
        region: Region = "<none>",
    ) -> str:
        """Arms the Mcp-Param-* header validation scenario (SEP-2243)."""
        return f"region={region}"

    def json_schema_2020_12_tool() -> str:
        """Publishes a JSON Schema 2020-12 inputSchema (SEP-1613)."""
        return "json_schema_2020_12_tool"

    mcp.add_tool(json_schema_2020_12_tool)
    # MCPServer derives inputSchema from the signature and has no public override yet;
    # replace the published schema, which is all the scenario inspects.
    tool = mcp._tool_manager.get_tool("json_schema_2020_12_tool")
    assert tool is not None
    tool.parameters = SCHEMA_2020_12


def _register_interactive_tools(mcp: MCPServer[Any], modern: bool = False) -> None:
    """Tools that talk back to the client mid-call (handshake era; `modern`: the ones
    that ask it, with an InputRequiredResult)."""
    if modern:
        _register_modern_asking(mcp)

    @mcp.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Emits three log notifications while running."""
        for step in ("Tool execution started", "Tool processing data"):
            await ctx.info(step)
            await asyncio.sleep(0.05)
        await ctx.info("Tool execution completed")
        return "Tool with logging executed successfully"

    @mcp.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Reports progress 0, 50 and 100 of 100."""
        for done in (0, 50, 100):
            await ctx.report_progress(progress=done, total=100, message=f"step {done} of 100")
            if done < 100:
                await asyncio.sleep(0.05)
        meta = ctx.request_context.meta
        return str(meta.get("progress_token", 0) if meta else 0)

    @_unless(modern, mcp.tool())
    async def test_sampling(prompt: str, ctx: Context) -> str:
        """Asks the client's LLM to complete `prompt` (sampling/createMessage)."""
        message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
        # related_request_id routes the request onto this call's SSE stream.
        result = await ctx.session.create_message(
            messages=[message], max_tokens=100, related_request_id=ctx.request_id
        )
        text = result.content.text if result.content.type == "text" else "No response"
        return f"LLM response: {text}"

    @_unless(modern, mcp.tool())
    async def test_elicitation(message: str, ctx: Context) -> str:
        """Asks the user a question (elicitation/create)."""
        result = await ctx.elicit(message=message, schema=UserReply)
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"User response: action={result.action}, content={content}"

    @_unless(modern, mcp.tool())
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        """Elicits a form whose fields all carry defaults (SEP-1034)."""
        result = await ctx.elicit(message="Please provide user information", schema=DefaultsForm)
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"Elicitation result: action={result.action}, content={content}"

    @_unless(modern, mcp.tool())
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        """Elicits a form with every enum variant (SEP-1330)."""
        result = await ctx.elicit(message="Please select values", schema=EnumForm)
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"Elicitation completed: action={result.action}, content={content}"

    @mcp.tool()
    async def test_reconnection(ctx: Context) -> str:
        """Closes its SSE stream mid-call; the client resumes with Last-Event-ID (SEP-1699)."""
        await ctx.info("Before disconnect")
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)
        await ctx.info("After reconnect")
        return "Reconnection test completed"

    @mcp.tool()
    async def test_missing_capability(ctx: Context) -> str:
        """Fails with -32021 unless the client declared `sampling` (SEP-2133)."""
        caps = ctx.session.client_capabilities
        if caps is None or caps.sampling is None:
            raise MCPError(
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="This tool requires the client 'sampling' capability",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return "Client declared sampling capability; proceeding."

    def dynamic() -> str:
        """Registered and removed again by the list-change triggers."""
        return "dynamic"

    @mcp.tool()
    async def test_trigger_tool_change(ctx: Context) -> str:
        """Changes the tool list and announces it (SEP-2575)."""
        mcp.add_tool(dynamic, name="test_dynamic_tool")
        mcp.remove_tool("test_dynamic_tool")
        await ctx.notify_tools_changed()
        return "tool list changed"

    @mcp.tool()
    async def test_trigger_prompt_change(ctx: Context) -> str:
        """Changes the prompt list and announces it (SEP-2575)."""
        mcp.add_prompt(Prompt.from_function(dynamic, name="test_dynamic_prompt"))
        mcp.remove_prompt("test_dynamic_prompt")
        await ctx.notify_prompts_changed()
        return "prompt list changed"


def _register_input_required_tools(mcp: MCPServer[Any]) -> None:
    """InputRequiredResult fixtures: multi-round-trip requests of 2026-07-28 (SEP-2322)."""

    @mcp.tool()
    async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
        """One elicitation round, then a greeting."""
        answers = ctx.input_responses or {}
        if "user_name" in answers:
            return f"Hello, {_elicited(answers['user_name'], 'name') or 'stranger'}!"
        ask = _form("What is your name?", "name")
        return InputRequiredResult(input_requests={"user_name": ask})

    @mcp.tool()
    async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
        """One sampling round, then echoes the model's answer."""
        answers = ctx.input_responses or {}
        if "capital_question" in answers:
            answer = answers["capital_question"]
            ok = isinstance(answer, CreateMessageResult) and answer.content.type == "text"
            return f"Model said: {answer.content.text if ok else '?'}"  # type: ignore[union-attr]
        question = _sample("What is the capital of France?", 100)
        return InputRequiredResult(input_requests={"capital_question": question})

    @mcp.tool()
    async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
        """One roots/list round, then counts the roots."""
        answers = ctx.input_responses or {}
        if "client_roots" in answers:
            answer = answers["client_roots"]
            count = len(answer.roots) if isinstance(answer, ListRootsResult) else 0
            return f"Client exposed {count} root(s)."
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})

    @mcp.tool()
    async def test_input_required_result_request_state(
        ctx: Context,
    ) -> str | InputRequiredResult:
        """Completes only when the retry echoes the requestState it was given."""
        answers = ctx.input_responses or {}
        if "confirm" in answers and ctx.request_state == "request-state-nonce":
            return "state-ok: confirmation received"
        confirm = _form("Please confirm", "ok", "boolean")
        return InputRequiredResult(
            input_requests={"confirm": confirm}, request_state="request-state-nonce"
        )

    @mcp.tool()
    async def test_input_required_result_multiple_inputs(
        ctx: Context,
    ) -> str | InputRequiredResult:
        """Asks for elicitation, sampling and roots in one round."""
        answers = ctx.input_responses or {}
        if {"user_name", "greeting", "client_roots"} <= answers.keys():
            return "All inputs received."
        requests: dict[str, InputRequest] = {
            "user_name": _form("What is your name?", "name"),
            "greeting": _sample("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        }
        return InputRequiredResult(input_requests=requests, request_state="multiple-inputs")

    @mcp.tool()
    async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
        """Three rounds; requestState carries what earlier rounds learnt."""
        state: dict[str, Any] = json.loads(ctx.request_state) if ctx.request_state else {}
        answers = ctx.input_responses or {}
        stage = state.get("round", 0)
        if stage == 1 and "step1" in answers:
            name = _elicited(answers["step1"], "name")
            return InputRequiredResult(
                input_requests={"step2": _form("Step 2: What is your favorite color?", "color")},
                request_state=json.dumps({"round": 2, "name": name}),
            )
        if stage == 2 and "step2" in answers:
            return f"{state.get('name')} likes {_elicited(answers['step2'], 'color')}."
        # First round, or an answer that does not fit the state: start over.
        return InputRequiredResult(
            input_requests={"step1": _form("Step 1: What is your name?", "name")},
            request_state=json.dumps({"round": 1}),
        )

    @mcp.tool()
    async def test_input_required_result_tampered_state(
        ctx: Context,
    ) -> str | InputRequiredResult:
        """Issues sealed state; the SDK's request-state boundary rejects a tampered echo."""
        if ctx.request_state is None:
            confirm = _form("Please confirm", "ok", "boolean")
            return InputRequiredResult(input_requests={"confirm": confirm}, request_state="round-1")
        return f"state-ok: {ctx.request_state}"

    @mcp.tool()
    async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
        """Asks only for the kinds of input the client declared it supports."""
        caps = ctx.client_capabilities
        requests: dict[str, InputRequest] = {}
        if caps is None or caps.sampling is not None:
            requests["sample"] = _sample("Say hello", 50)
        if caps is None or caps.elicitation is not None:
            requests["ask"] = _form("What is your name?", "name")
        return InputRequiredResult(input_requests=requests, request_state="capability-gated")


async def _ask(ctx: Context, message: str, field: str, kind: str = "string") -> Any:
    """One elicitation/create on the call's stream: the value of `field`, or None."""
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return (answer.content or {}).get(field) if answer.action == "accept" else None


async def _sampled(ctx: Context, text: str, max_tokens: int) -> str:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    result = await ctx.session.create_message(
        messages=[message], max_tokens=max_tokens, related_request_id=ctx.request_id
    )
    return result.content.text if result.content.type == "text" else "?"


async def _roots(ctx: Context) -> int:
    metadata = ServerMessageMetadata(related_request_id=ctx.request_id)
    result = await ctx.session.send_request(ListRootsRequest(), ListRootsResult, metadata=metadata)
    return len(result.roots)


LOG_LEVELS: dict[str, str] = {}
"""The log level each session set, by its Mcp-Session-Id."""
_BACKGROUND: set[asyncio.Task[None]] = set()
"""Announcements sent after a call's answer (kept until they are done)."""


def _register_asking_tools(mcp: MCPServer[Any]) -> None:
    """The multi-round fixtures as a server of the handshake era writes them: each asks
    the client in the call (elicitation, sampling, roots) and waits for the answer. In
    front of them the gateway gives a stateless client InputRequiredResults."""

    @mcp.tool()
    async def test_input_required_result_elicitation(ctx: Context) -> str:
        """One question, then a greeting."""
        return f"Hello, {await _ask(ctx, 'What is your name?', 'name') or 'stranger'}!"

    @mcp.tool()
    async def test_input_required_result_sampling(ctx: Context) -> str:
        """One sampling request, then the model's answer."""
        return f"Model said: {await _sampled(ctx, 'What is the capital of France?', 100)}"

    @mcp.tool()
    async def test_input_required_result_list_roots(ctx: Context) -> str:
        """One roots/list request, then the count."""
        return f"Client exposed {await _roots(ctx)} root(s)."

    @mcp.tool()
    async def test_input_required_result_request_state(ctx: Context) -> str:
        """A confirmation, then done."""
        confirmed = await _ask(ctx, "Please confirm", "ok", "boolean")
        return f"state-ok: confirmation {'received' if confirmed else 'declined'}"

    @mcp.tool()
    async def test_input_required_result_multiple_inputs(ctx: Context) -> str:
        """Asks for elicitation, sampling and roots at once."""
        await asyncio.gather(
            _ask(ctx, "What is your name?", "name"),
            _sampled(ctx, "Generate a greeting", 50),
            _roots(ctx),
        )
        return "All inputs received."

    @mcp.tool()
    async def test_input_required_result_multi_round(ctx: Context) -> str:
        """Two questions, one after the other."""
        name = await _ask(ctx, "Step 1: What is your name?", "name")
        color = await _ask(ctx, "Step 2: What is your favorite color?", "color")
        return f"{name} likes {color}."

    @mcp.tool()
    async def test_input_required_result_tampered_state(ctx: Context) -> str:
        """A confirmation, then done (the gateway refuses a tampered requestState)."""
        await _ask(ctx, "Please confirm", "ok", "boolean")
        return "state-ok: confirmed"

    @mcp.tool()
    async def test_announce_resource_updated(uri: str, delay: float, ctx: Context) -> str:
        """Sends resources/updated for `uri` `delay` s after returning: on the session's
        GET stream, as it comes after the call's answer."""
        session = ctx.session

        async def announce() -> None:
            await asyncio.sleep(delay)
            await session.send_resource_updated(uri)

        task = asyncio.get_running_loop().create_task(announce())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        return "scheduled"

    @mcp.tool()
    def test_session_log_level(ctx: Context) -> str:
        """The log level the client set on this session (``logging/setLevel``)."""
        return LOG_LEVELS.get(str((ctx.headers or {}).get("mcp-session-id")), "unset")

    runs = 0

    @mcp.tool()
    async def test_asking_runs(ctx: Context) -> str:
        """Counts its runs, asks for a confirmation, then says which run it was."""
        nonlocal runs
        runs += 1
        run = runs
        await _ask(ctx, "Please confirm", "ok", "boolean")
        return f"run {run} of {runs}"

    @mcp.tool()
    async def test_input_required_result_capabilities(ctx: Context) -> str:
        """Asks only for what the session's client declared it can answer."""
        caps = ctx.client_capabilities
        asked: list[Any] = []
        if caps is not None and caps.sampling is not None:
            asked.append(_sampled(ctx, "Say hello", 50))
        if caps is not None and caps.elicitation is not None:
            asked.append(_ask(ctx, "What is your name?", "name"))
        await asyncio.gather(*asked)
        return f"Asked for {len(asked)} input(s)."


def _register_resources(mcp: MCPServer[Any]) -> None:
    @mcp.resource("test://static-text", mime_type="text/plain")
    def static_text() -> str:
        """A static text resource."""
        return "This is the content of the static text resource."

    @mcp.resource("test://static-binary", mime_type="image/png")
    def static_binary() -> bytes:
        """A static binary resource (a PNG image)."""
        return base64.b64decode(PNG_1X1)

    @mcp.resource("test://template/{id}/data", mime_type="application/json")
    def template_data(id: str) -> str:
        """A templated resource; `id` is substituted from the URI."""
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @mcp.resource("test://watched-resource", mime_type="text/plain")
    def watched() -> str:
        """A resource clients may subscribe to."""
        return "Watched resource content"


def _register_prompts(mcp: MCPServer[Any], asking: bool = False) -> None:
    @mcp.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A prompt without arguments."""
        text = TextContent(type="text", text="This is a simple prompt for testing.")
        return [UserMessage(role="user", content=text)]

    @mcp.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt with two required arguments."""
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [UserMessage(role="user", content=TextContent(type="text", text=text))]

    @mcp.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        """A prompt that embeds the resource named by `resourceUri`."""
        contents = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        text = TextContent(type="text", text="Please process the embedded resource above.")
        return [
            UserMessage(role="user", content=EmbeddedResource(type="resource", resource=contents)),
            UserMessage(role="user", content=text),
        ]

    @mcp.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt that carries an image."""
        image = ImageContent(type="image", data=PNG_1X1, mime_type="image/png")
        text = TextContent(type="text", text="Please analyze the image above.")
        return [UserMessage(role="user", content=image), UserMessage(role="user", content=text)]

    if asking:

        @mcp.prompt(name="test_input_required_result_prompt")
        async def asking_prompt(ctx: Context) -> list[UserMessage]:
            """prompts/get that asks the client for context in the call."""
            context = await _ask(ctx, "What context should the prompt use?", "context")
            text = f"Use the following context: {context}"
            return [UserMessage(role="user", content=TextContent(type="text", text=text))]

        return

    @mcp.prompt()
    async def test_input_required_result_prompt(
        ctx: Context,
    ) -> list[UserMessage] | InputRequiredResult:
        """prompts/get answered with an InputRequiredResult first (SEP-2322)."""
        answers = ctx.input_responses or {}
        if "user_context" in answers:
            text = f"Use the following context: {_elicited(answers['user_context'], 'context')}"
            return [UserMessage(role="user", content=TextContent(type="text", text=text))]
        ask = _form("What context should the prompt use?", "context")
        return InputRequiredResult(input_requests={"user_context": ask})


def _register_lowlevel_handlers(mcp: MCPServer[Any], subscribed: set[str]) -> None:
    """Methods registered on the low-level server: completions (MCPServer's decorator is
    untyped), and the handshake-era logging level and subscriptions, which it lacks."""

    async def complete(ctx: ServerRequestContext, params: CompleteRequestParams) -> CompleteResult:
        """No suggestions: the scenario checks the result's shape only."""
        return CompleteResult(completion=Completion(values=[], total=0, has_more=False))

    async def set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
        log.info("log level set to %s", params.level)
        headers = getattr(ctx.request, "headers", None) or {}
        LOG_LEVELS[str(headers.get("mcp-session-id"))] = params.level
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
        subscribed.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext, params: UnsubscribeRequestParams
    ) -> EmptyResult:
        subscribed.discard(str(params.uri))
        return EmptyResult()

    # MCPServer has no public way to register these; its low-level server does.
    lowlevel = mcp._lowlevel_server
    lowlevel.add_request_handler("completion/complete", CompleteRequestParams, complete)
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


def transport_security() -> TransportSecuritySettings:
    """DNS-rebinding protection that admits loopback names on every port, nothing else."""
    hosts = [f"{name}:*" for name in LOOPBACK_HOSTS] + list(LOOPBACK_HOSTS)
    origins = [f"{scheme}://{host}" for scheme in ("http", "https") for host in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


class _EventStorePerSession(StreamableHTTPSessionManager):
    """Gives every new session its own MemoryEventStore. The SDK names a POST answer's
    event stream by its JSON-RPC request id, which every session reuses (1, 2, 3...), so
    one log shared by all sessions would replay another session's answers to a client
    resuming with Last-Event-ID."""

    @property  # read once per new session's transport
    def event_store(self) -> EventStore | None:
        return MemoryEventStore()

    @event_store.setter
    def event_store(self, value: EventStore | None) -> None:
        pass  # set by __init__; every session gets a fresh one instead


def resumable_http_app(mcp: MCPServer[Any], **options: Any) -> Starlette:
    """``mcp.streamable_http_app`` with SSE resumption, event logs kept per session."""
    app = mcp.streamable_http_app(event_store=MemoryEventStore(), **options)
    mcp.session_manager.__class__ = _EventStorePerSession
    return app


def build_app(
    asking: bool = False, cache: CacheHint | None = None, modern: bool = False
) -> Starlette:
    """The ASGI app: stateful Streamable HTTP on /mcp with SSE resumption."""
    return resumable_http_app(
        build_server(asking, cache, modern),
        streamable_http_path=MCP_PATH,
        retry_interval=100,  # ms; keeps the SSE polling scenario fast
        transport_security=transport_security(),
    )


def counting(app: Any) -> Any:
    """`app`, counting the POSTs it gets by their ``Mcp-Method`` header; ``GET /requests``
    answers the counts (JSON), for the response cache's benchmark and tests."""
    counts: dict[str, int] = {}

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/requests":
            body = json.dumps(counts).encode()
            start = {"type": "http.response.start", "status": 200}
            await send({**start, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope.get("headers", ()))
            method = headers.get(b"mcp-method", b"").decode("latin-1") or "?"
            counts[method] = counts.get(method, 0) + 1
        await app(scope, receive, send)

    return wrapped


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.servers.everything", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--stdio", action="store_true", help="serve MCP on stdin/stdout instead (one client)"
    )
    add_era_flags(parser)
    parser.add_argument(
        "--cache-ttl-ms",
        type=int,
        default=None,
        help="say every cacheable result may be kept this long (and serve test://reads)",
    )
    parser.add_argument("--cache-scope", choices=("public", "private"), default="public")
    args = parser.parse_args(argv)
    cache = None
    if args.cache_ttl_ms is not None:
        cache = CacheHint(ttl_ms=args.cache_ttl_ms, scope=args.cache_scope)
    logging.basicConfig(level=args.log_level.upper())  # on stderr: stdout is the transport
    if args.stdio:
        asyncio.run(build_server().run_stdio_async())
        return
    # uvicorn prefers httptools when it is installed (the gateway depends on it), and over
    # httptools a header value keeps its trailing whitespace, which the SDK then compares
    # with the body (2026-07-28 Mcp-Name): the test servers stay on h11.
    if args.handshake_only:
        app: Any = handshake_only(build_app(asking=True))
    elif args.stateless_only:
        app = stateless_only(build_app(modern=True))
    elif cache is not None:
        app = counting(build_app(cache=cache))
    else:
        app = build_app()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, http="h11")


if __name__ == "__main__":
    main()
