"""A stdio MCP server (the official SDK's ``MCPServer``) with the tools the stdio backend's
tests need: which process answers, a crash, progress over time, a flood on stderr, a large
answer, a change of its tool list, a sampling and an elicitation round trip.

Run: ``python -m testbed.servers.stdio_tools`` (MCP on stdin and stdout), or with
``--port N`` the same server over Streamable HTTP on ``/mcp`` (the benchmark's HTTP side).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import SamplingMessage, TextContent
from pydantic import BaseModel

__all__ = ("build_server", "main")


class Answer(BaseModel):
    answer: str


def build_server() -> MCPServer:
    mcp = MCPServer("stdio-tools")

    @mcp.tool()
    def pid() -> str:
        """The process's id: which process serves the session."""
        return str(os.getpid())

    @mcp.tool()
    def crash(code: int = 3) -> str:
        """The process dies at once, mid-call."""
        sys.stderr.write("Traceback (most recent call last):\n  crash: asked to\n")
        sys.stderr.flush()
        os._exit(code)

    @mcp.tool()
    async def count_slowly(steps: int, interval: float, ctx: Context) -> str:
        """Progress `steps` times, `interval` seconds apart."""
        for step in range(1, steps + 1):
            await asyncio.sleep(interval)
            await ctx.report_progress(step, steps, f"step {step}")
        return f"counted {steps}"

    @mcp.tool()
    def shout(lines: int) -> str:
        """Write `lines` lines on stderr."""
        for n in range(lines):
            sys.stderr.write(f"shouting line {n}\n")
        sys.stderr.flush()
        return "shouted"

    @mcp.tool()
    def big(size: int) -> str:
        """An answer of `size` characters."""
        return "x" * size

    @mcp.tool()
    def echo(text: str) -> str:
        return text

    @mcp.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """A new tool appears, and the client is told (tools/list_changed)."""
        mcp.add_tool(lambda: name, name=name)
        await ctx.session.send_tool_list_changed()
        return "added"

    @mcp.tool()
    async def ask_model(prompt: str, ctx: Context) -> str:
        """Sampling: the client's model answers."""
        result = await ctx.session.create_message(
            [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
            max_tokens=50,
        )
        content = result.content
        return content.text if isinstance(content, TextContent) else str(content)

    @mcp.tool()
    async def ask_user(question: str, ctx: Context) -> str:
        """Elicitation: the client's user answers."""
        result = await ctx.elicit(question, Answer)
        return f"{result.action}: {getattr(result, 'data', None)}"

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testbed.servers.stdio_tools")
    parser.add_argument("--port", type=int, help="serve Streamable HTTP on /mcp instead")
    args = parser.parse_args(argv)
    server = build_server()
    if args.port is None:
        asyncio.run(server.run_stdio_async())
        return
    import uvicorn  # noqa: PLC0415 - only over HTTP

    # h11, as the other test servers (see testbed.servers.everything).
    uvicorn.run(
        server.streamable_http_app(),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        http="h11",
    )


if __name__ == "__main__":
    main()
