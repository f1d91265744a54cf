"""The leanest proxy this stack runs: target ``n`` of ``bench.run``, the yardstick of ``m``.

A bare Granian ASGI app (uvloop, one worker) like :mod:`bench.ceiling`, but over a
minimal keep-alive pool written for the bench: idle connections on a list, one
``asyncio.Protocol`` per connection that collects a response framed by Content-Length,
no limits, no timeouts, no retries, no typed errors, no strict parsing. What it reaches
is what Granian and asyncio cost with next to nothing of a pool; ``m`` (the gateway's
own pool) against ``n`` is what the pool's care costs. Not a product: it only handles
small, complete answers with a Content-Length.

    MCP_CEILING_UPSTREAM=127.0.0.1:8080 granian --interface asgi --loop uvloop \
        --factory bench.minimal:app_from_env
"""

from __future__ import annotations

import asyncio
import os

from bench.ceiling import DROP, BareProxy, read_body, request_head
from proxy._types import Receive, Scope, Send


class _Upstream(asyncio.Protocol):
    """One keep-alive connection: a request written, its response collected."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        headers = []
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                length = int(value)
            headers.append((name, value))
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((int(lines[0].split(b" ", 2)[1]), headers, body))


class MinimalProxy(BareProxy):
    """Request body in, one upstream exchange over the minimal pool, response out."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.idle: list[_Upstream] = []

    async def close(self) -> None:
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        while self.idle and self.idle[-1].lost:
            self.idle.pop()
        if self.idle:
            connection = self.idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_Upstream, self.host, self.port)
        assert connection.transport is not None
        connection.waiter = asyncio.get_running_loop().create_future()
        connection.transport.write(request_head(scope, self.authority, body) + body)
        status, headers, answer = await connection.waiter
        self.idle.append(connection)
        headers = [(n, v) for n, v in headers if n not in DROP]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def app_from_env() -> MinimalProxy:
    return MinimalProxy(os.environ["MCP_CEILING_UPSTREAM"])
