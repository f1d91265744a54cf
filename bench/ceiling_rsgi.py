"""Target ``mr`` of ``bench.run``: :mod:`bench.ceiling` on Granian's RSGI interface.

The same bare proxy over the gateway's pool (`proxy.upstream.http1.Http1Pool`), no MCP
work, served through RSGI instead of ASGI: the request's headers arrive as text and the
answer goes out with one ``response_bytes`` call instead of two ``send`` messages. ``mr``
against ``m`` is what the interface itself costs or saves on this hot path (the README's
question whether RSGI is worth offering). Not a product: small, complete answers only.

    MCP_CEILING_UPSTREAM=127.0.0.1:8080 granian --interface rsgi --loop uvloop \
        --factory bench.ceiling_rsgi:app_from_env
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bench.ceiling import DROP, CeilingProxy
from proxy import heap
from proxy.upstream.http1 import Http1Pool

_DROP_TEXT = frozenset(name.decode("ascii") for name in DROP)


class RsgiCeilingProxy(CeilingProxy):
    """:class:`~bench.ceiling.CeilingProxy`'s upstream and pool, served through RSGI."""

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        return None

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if self.pool is None:  # the first request: the loop runs
            heap.settle()  # the collector set as the gateway's is
            self.pool = Http1Pool(self.host, self.port)
        body = await protocol()
        lines = [b"%s %s HTTP/1.1" % (scope.method.encode("ascii"), scope.path.encode("ascii"))]
        lines += [
            n.encode("latin-1") + b": " + v.encode("latin-1")
            for n, v in scope.headers.items()
            if n not in _DROP_TEXT
        ]
        lines.append(b"host: " + self.authority)
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        response = await self.pool.request(b"\r\n".join(lines), body)
        try:
            headers = [
                (n.decode("latin-1"), v.decode("latin-1"))
                for n, v in response.headers
                if n not in DROP
            ]
            body = response.read_buffered() if response.body_complete() else await response.aread()
            protocol.response_bytes(response.status, headers, body)
        finally:
            response.close()


def app_from_env() -> RsgiCeilingProxy:
    return RsgiCeilingProxy(os.environ["MCP_CEILING_UPSTREAM"])
