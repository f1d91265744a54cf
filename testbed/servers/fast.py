"""A FastMCP 4 server (both protocol eras) for the gateway's tests: two tools, a resource.

Run: ``python -m testbed.servers.fast --port 8000`` (MCP on ``/mcp``, readiness on
``/healthz``), the way its users run one: ``mcp.run(transport="http")``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fastmcp import FastMCP
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ("build", "main")


def build() -> FastMCP:
    mcp = FastMCP("fast")

    @mcp.tool
    def add(a: int, b: int) -> int:
        """The sum of two numbers."""
        return a + b

    @mcp.tool
    def shout(text: str) -> str:
        """The text in capitals."""
        return text.upper()

    @mcp.resource("fast://greeting")
    def greeting() -> str:
        return "hello from fast"

    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return mcp


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testbed.servers.fast", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    build().run(transport="http", host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
