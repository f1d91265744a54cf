"""The ceiling of any Python ASGI proxy on this stack: target ``m`` of ``bench.run``.

A bare Granian ASGI app (uvloop, one worker) that forwards every request to one upstream
over the gateway's own pool (`proxy.upstream.http1.Http1Pool`) and relays the answer: no
envelope scan, no session lookup, no header policy, no metrics. What it reaches is what
Granian, asyncio and the pool cost together; the gateway's distance from it is what the
gateway's own work costs. Not a product: it only handles small, complete answers.

    MCP_CEILING_UPSTREAM=127.0.0.1:8080 granian --interface asgi --loop uvloop \
        --factory bench.ceiling:app_from_env
"""

from __future__ import annotations

import os

from proxy._types import Receive, Scope, Send
from proxy.upstream.http1 import Http1Pool

_DROP = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding"})


class CeilingProxy:
    """Request body in, one upstream exchange, response out."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.authority = upstream.encode("ascii")
        self.host = host
        self.port = int(port)
        self.pool: Http1Pool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    if self.pool is not None:
                        await self.pool.close()
                    return
        if scope["type"] != "http":
            return
        if self.pool is None:
            self.pool = Http1Pool(self.host, self.port)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        lines = [b"%s %s HTTP/1.1" % (scope["method"].encode("ascii"), scope["raw_path"])]
        lines += [n + b": " + v for n, v in scope["headers"] if n not in _DROP]
        lines.append(b"host: " + self.authority)
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        response = await self.pool.request(b"\r\n".join(lines), body)
        try:
            headers = [(n, v) for n, v in response.headers if n not in _DROP]
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": await response.aread()})
        finally:
            response.close()


def app_from_env() -> CeilingProxy:
    return CeilingProxy(os.environ["MCP_CEILING_UPSTREAM"])
