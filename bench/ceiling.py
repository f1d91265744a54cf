"""The ceiling of any Python ASGI proxy on this stack: target ``m`` of ``bench.run``.

A bare Granian ASGI app (uvloop, one worker) that forwards every request to one upstream
over the gateway's own pool (`proxy.upstream.http1.Http1Pool`) and relays the answer: no
envelope scan, no session lookup, no header policy, no metrics. What it reaches is what
Granian, asyncio and the pool cost together; the gateway's distance from it is what the
gateway's own work costs. The garbage collector is set as the gateway's is
(:mod:`proxy.heap`), so that the comparison is like for like. Not a product: it only
handles small, complete answers.

    MCP_CEILING_UPSTREAM=127.0.0.1:8080 granian --interface asgi --loop uvloop \
        --factory bench.ceiling:app_from_env
"""

from __future__ import annotations

import os

from proxy import heap
from proxy._types import Receive, Scope, Send
from proxy.upstream.http1 import Http1Pool

DROP = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding"})


async def read_body(receive: Receive) -> bytes:
    """The whole request body."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


def request_head(scope: Scope, authority: bytes, body: bytes) -> bytes:
    """The upstream request's line and headers: the client's, less hop-by-hop framing."""
    lines = [b"%s %s HTTP/1.1" % (scope["method"].encode("ascii"), scope["raw_path"])]
    lines += [n + b": " + v for n, v in scope["headers"] if n not in DROP]
    lines.append(b"host: " + authority)
    lines.append(b"content-length: %d\r\n\r\n" % len(body))
    return b"\r\n".join(lines)


class BareProxy:
    """An upstream's address, the lifespan, and one request at a time to :meth:`forward`."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.authority = upstream.encode("ascii")
        self.host = host
        self.port = int(port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            settled = None
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    settled = heap.settle()  # the collector set as the gateway's is
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    if settled is not None:
                        settled.stop()
                    await self.close()
                    return
        if scope["type"] == "http":
            await self.forward(scope, receive, send)

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class CeilingProxy(BareProxy):
    """Request body in, one upstream exchange over the gateway's pool, response out."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.pool: Http1Pool | None = None

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.pool is None:
            self.pool = Http1Pool(self.host, self.port)
        body = await read_body(receive)
        response = await self.pool.request(request_head(scope, self.authority, body), body)
        try:
            headers = [(n, v) for n, v in response.headers if n not in DROP]
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            # As the gateway's relay: a body that arrived whole is taken without waiting.
            body = response.read_buffered() if response.body_complete() else await response.aread()
            await send({"type": "http.response.body", "body": body})
        finally:
            response.close()


def app_from_env() -> CeilingProxy:
    return CeilingProxy(os.environ["MCP_CEILING_UPSTREAM"])
