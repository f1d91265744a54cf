"""httpx.AsyncBaseTransport over the gateway's lean HTTP/1.1 pool, for measuring it against
httpx's own (``python -m bench.upstream_clients``). Not part of the gateway: it runs
only here, in the benchmarks."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpx

from proxy.upstream.errors import ConnectFailed, PoolTimeout, ProtocolFailure, UpstreamTimeout
from proxy.upstream.head import HeadInjection, request_head
from proxy.upstream.http1 import Http1Pool, UpstreamResponse

_IDEMPOTENT = frozenset({b"GET", b"OPTIONS", b"PUT", b"DELETE"})


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._response.read():
                yield chunk
        except ProtocolFailure as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc

    async def aclose(self) -> None:
        self._response.close()


class LeanTransport(httpx.AsyncBaseTransport):
    """One :class:`Http1Pool` per origin behind httpx.AsyncClient.

    Streams request bodies that are already bytes, streams response bodies chunk by
    chunk, keeps connections alive, and maps failures onto httpx's exceptions:
    ConnectFailed → ConnectError (or ConnectTimeout), UpstreamTimeout → ReadTimeout,
    ProtocolFailure → RemoteProtocolError.
    """

    def __init__(
        self,
        *,
        max_connections: int = 512,
        connect_timeout: float = 5.0,
        keepalive_expiry: float = 30.0,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self._pools: dict[tuple[str, str, int], Http1Pool] = {}
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._keepalive_expiry = keepalive_expiry
        self._ssl = verify

    def pool(self, url: httpx.URL) -> Http1Pool:
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.host, port)
        pool = self._pools.get(key)
        if pool is None:
            context = None
            if scheme == "https":
                context = self._ssl or ssl.create_default_context()
            pool = self._pools[key] = Http1Pool(
                url.host,
                port,
                max_connections=self._max_connections,
                connect_timeout=self._connect_timeout,
                keepalive_expiry=self._keepalive_expiry,
                ssl_context=context,
            )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            raise httpx.UnsupportedProtocol("HEAD is not supported by the lean pool")
        body = await request.aread()
        headers = []
        chunked = False
        for name, value in request.headers.raw:
            if name.lower() == b"transfer-encoding":  # the body goes whole, with its length
                chunked = True
                continue
            headers.append((name, value))
        if chunked:
            headers.append((b"content-length", b"%d" % len(body)))
        method = request.method.encode("ascii")
        try:
            head = request_head(method, request.url.raw_path, headers)
        except HeadInjection as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            response = await self.pool(request.url).request(
                head, body, head_timeout=timeout, retry=method in _IDEMPOTENT
            )
        except PoolTimeout as exc:
            raise httpx.PoolTimeout(str(exc), request=request) from exc
        except ConnectFailed as exc:
            if "timed out" in str(exc):
                raise httpx.ConnectTimeout(str(exc), request=request) from exc
            raise httpx.ConnectError(str(exc), request=request) from exc
        except UpstreamTimeout as exc:
            raise httpx.ReadTimeout(str(exc), request=request) from exc
        except ProtocolFailure as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_Body(response),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
