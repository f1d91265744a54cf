"""A tiny JSON-RPC upstream that answers at once, except `tools/call` of `slow`, which it
holds for `--delay` seconds (or until the caller hangs up): for upstream-timeout tests.

Run: ``python -m testbed.servers.slow --host 127.0.0.1 --port N [--delay 10]`` (``/mcp``,
readiness on ``/healthz``). Plain ASGI on uvicorn; not an MCP implementation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import uvicorn

__all__ = ("SlowApp", "main")

Scope = dict[str, Any]
Message = dict[str, Any]


class SlowApp:
    """ASGI app: POST /mcp echoes an empty result for the request's id."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await self._send(send, 200, b'{"status":"ok"}')
            return
        if scope["path"] != "/mcp" or scope["method"] != "POST":
            await self._send(send, 404, b'{"error":"not found"}')
            return
        body = b""
        while True:
            message: Message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        request = json.loads(body)
        params = request.get("params") or {}
        if request.get("method") == "tools/call" and params.get("name") == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnected(receive), self.delay)
        if "id" not in request:
            await self._send(send, 202, b"")
            return
        reply = {"jsonrpc": "2.0", "id": request["id"], "result": {}}
        await self._send(send, 200, json.dumps(reply).encode())

    @staticmethod
    async def _disconnected(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    @staticmethod
    async def _send(send: Any, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=10.0)
    args = parser.parse_args(argv)
    # h11, as testbed.servers.everything explains.
    uvicorn.run(
        SlowApp(args.delay), host=args.host, port=args.port, log_level="warning", http="h11"
    )


if __name__ == "__main__":
    main()
