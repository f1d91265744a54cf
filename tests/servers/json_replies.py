"""``tests.servers.streaming`` answering every POST with one JSON body instead of an SSE stream.

With ``json_response=True`` the SDK sends a response's head only once the tool is done, so
``sleep_then_echo`` holds the head back: what the gateway's ``--upstream-timeout`` bounds
(504). An SSE answer would send its head at once and then wait on the stream.

Run: ``python -m tests.servers.json_replies --port 3003 --name slow`` (MCP on ``/mcp``,
readiness on ``/healthz``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette

from tests.servers.everything import MCP_PATH, build_server, transport_security
from tests.servers.streaming import LINGER_PATH, Lingering, add_probe_tools

__all__ = ("build_app", "main")


def build_app(replica: str) -> Starlette:
    """Stateful Streamable HTTP on /mcp with JSON answers, plus the probe tools."""
    mcp = build_server()
    lingering = Lingering()
    add_probe_tools(mcp, replica, lingering)
    app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=True,
        transport_security=transport_security(),
    )
    app.add_route(LINGER_PATH + "/{marker}", lingering.endpoint, methods=["GET"])
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.servers.json_replies", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3003)
    parser.add_argument("--name", default="json", help="Replica name reported by `whoami`.")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    uvicorn.run(build_app(args.name), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
