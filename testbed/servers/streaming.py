"""Upstream MCP server for the gateway's integration tests: everything.py plus timing probes.

It serves every fixture of ``testbed.servers.everything`` and adds tools whose effects a test
can observe from outside:

* ``whoami``: which replica answered (``--name``) and the ``Mcp-Session-Id`` it was sent;
* ``count_slowly``: progress notifications spread over time (proves unbuffered SSE);
* ``sleep_then_echo``: a slow call, for several calls in flight on one session;
* ``linger``: records ``started`` / ``completed`` / ``cancelled`` under a marker, readable
  at ``GET /linger/{marker}``, so a test sees whether a disconnect cancelled the call;
* ``announce_later``: sends ``notifications/resources/updated`` after the call returned,
  so it can only reach the client over the standalone GET stream (handshake era);
* ``echo_mcp_headers``: returns the ``mcp-*`` request headers it received; its ``region``
  argument is declared ``x-mcp-header`` so 2026-07-28 clients mirror it in
  ``Mcp-Param-Region``.

Run: ``python -m testbed.servers.streaming --port 3002 --name a`` (MCP on ``/mcp``,
readiness on ``/healthz``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from testbed.servers.eras import add_era_flags, handshake_only, stateless_only
from testbed.servers.everything import (
    MCP_PATH,
    Region,
    build_server,
    resumable_http_app,
    transport_security,
)

__all__ = (
    "HEADERS_PATH",
    "INITIALIZES_PATH",
    "LINGER_PATH",
    "HeaderLog",
    "InitializeLog",
    "Lingering",
    "add_probe_tools",
    "build_app",
    "main",
)

INITIALIZES_PATH = "/initializes"
"""``GET /initializes`` -> ``{"clients": [clientInfo.name of every initialize, in order]}``."""

HEADERS_PATH = "/seen-headers"
"""``GET /seen-headers`` -> ``{"requests": [{"verb", "headers"}...]}``: the credential and
forwarding headers of every request to the MCP endpoint, in order."""

LINGER_PATH = "/linger"
"""``GET /linger/{marker}`` -> ``{"state": "started" | "completed" | "cancelled"}`` or 404."""


class Lingering:
    """What became of each `linger` call, by marker; served at ``GET /linger/{marker}``."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    async def endpoint(self, request: Request) -> Response:
        state = self.states.get(request.path_params["marker"])
        if state is None:
            return JSONResponse({"state": None}, status_code=404)
        return JSONResponse({"state": state})


class InitializeLog:
    """ASGI middleware noting the ``clientInfo.name`` of every ``initialize`` POSTed to
    the MCP endpoint (served at ``GET /initializes``), so tests see who opened sessions."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.clients: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == INITIALIZES_PATH:
            await JSONResponse({"clients": self.clients})(scope, receive, send)
            return
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != MCP_PATH:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("method") == "initialize":
            info = (request.get("params") or {}).get("clientInfo") or {}
            self.clients.append(str(info.get("name")))
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class HeaderLog:
    """ASGI middleware noting, for every request to the MCP endpoint, the headers a test
    must see or not see upstream (credentials, forwarding, anything injected)."""

    WATCHED = frozenset(
        {
            "authorization",
            "cookie",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-real-ip",
            "forwarded",
            "x-injected",
            "traceparent",
            "tracestate",
        }
    )

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == HEADERS_PATH:
            await JSONResponse({"requests": self.requests})(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == MCP_PATH:
            seen: dict[str, list[str]] = {}
            for name, value in scope["headers"]:
                key = name.decode("latin-1").lower()
                if key in self.WATCHED:
                    seen.setdefault(key, []).append(value.decode("latin-1"))
            self.requests.append({"verb": scope["method"], "headers": seen})
        await self.app(scope, receive, send)


def add_probe_tools(mcp: MCPServer[Any], replica: str, lingering: Lingering) -> None:
    """Register the observable tools on `mcp`; `replica` names this process."""
    background: set[asyncio.Task[None]] = set()

    @mcp.tool()
    def whoami(ctx: Context) -> str:
        """JSON: this replica's name and the Mcp-Session-Id the request carried."""
        headers = ctx.headers or {}
        return json.dumps({"replica": replica, "session": headers.get("mcp-session-id")})

    @mcp.tool()
    async def count_slowly(steps: int, interval: float, ctx: Context) -> str:
        """Reports progress 1..steps, one step every `interval` seconds, then returns."""
        for step in range(1, steps + 1):
            await ctx.report_progress(progress=step, total=steps, message=f"step {step}")
            await asyncio.sleep(interval)
        return f"counted {steps}"

    @mcp.tool()
    async def sleep_then_echo(value: str, seconds: float) -> str:
        """Returns `value` after `seconds`."""
        await asyncio.sleep(seconds)
        return value

    @mcp.tool()
    async def linger(marker: str, seconds: float, ctx: Context) -> str:
        """Reports one progress step, then runs `seconds`; its fate is kept under `marker`."""
        lingering.states[marker] = "started"
        try:
            await ctx.report_progress(progress=0, total=1, message="lingering")
            await asyncio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            lingering.states[marker] = "cancelled"
            raise
        lingering.states[marker] = "completed"
        return f"lingered {seconds}s"

    @mcp.tool()
    async def announce_later(uri: str, delay: float, ctx: Context) -> str:
        """Sends resources/updated for `uri` on the standalone stream `delay` s after returning."""
        session = ctx.session

        async def announce() -> None:
            await asyncio.sleep(delay)
            await session.send_resource_updated(uri)

        task = asyncio.create_task(announce())
        background.add(task)
        task.add_done_callback(background.discard)
        return "scheduled"

    @mcp.tool()
    async def announce_tools_changed(delay: float, ctx: Context) -> str:
        """Sends notifications/tools/list_changed on the standalone stream `delay` s after
        returning."""
        session = ctx.session

        async def announce() -> None:
            await asyncio.sleep(delay)
            await session.send_tool_list_changed()

        task = asyncio.create_task(announce())
        background.add(task)
        task.add_done_callback(background.discard)
        return "scheduled"

    @mcp.tool()
    def echo_meta(ctx: Context) -> str:
        """JSON object of the request's ``params._meta`` as received."""
        meta = ctx.request_context.meta
        return json.dumps({} if meta is None else dict(meta))

    @mcp.tool()
    def echo_mcp_headers(
        ctx: Context,
        region: Region = "<none>",
    ) -> str:
        """JSON object of every mcp-* request header as received, plus the region argument."""
        headers = ctx.headers or {}
        seen = {k: v for k, v in headers.items() if k.lower().startswith("mcp-")}
        return json.dumps({"region": region, "headers": seen})


def build_app(replica: str, *, json_response: bool = False) -> HeaderLog:
    """Stateful Streamable HTTP on /mcp: both protocol eras, probe tools, and SSE answers
    with resumption (or, with `json_response`, one JSON body per answer)."""
    mcp = build_server()
    lingering = Lingering()
    add_probe_tools(mcp, replica, lingering)
    if json_response:
        app = mcp.streamable_http_app(
            streamable_http_path=MCP_PATH,
            json_response=True,
            transport_security=transport_security(),
        )
    else:
        app = resumable_http_app(
            mcp,
            streamable_http_path=MCP_PATH,
            retry_interval=100,
            transport_security=transport_security(),
        )
    app.add_route(LINGER_PATH + "/{marker}", lingering.endpoint, methods=["GET"])
    return HeaderLog(InitializeLog(app))


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "python -m testbed.servers.streaming",
    description: str | None = __doc__,
    port: int = 3002,
    json_response: bool = False,
) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--name", default="solo", help="Replica name reported by `whoami`.")
    parser.add_argument("--log-level", default="warning")
    add_era_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    app: Any = build_app(args.name, json_response=json_response)
    if args.handshake_only:
        app = handshake_only(app)
    elif args.stateless_only:
        app = stateless_only(app)
    # h11, as testbed.servers.everything explains.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, http="h11")


if __name__ == "__main__":
    main()
