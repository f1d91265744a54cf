"""The gateway's own small HTTP requests to authorization servers: metadata and JWKS
documents, introspection, token requests. Bounded in time and size, over the gateway's
HTTP/1.1 pool (https with the system's trust store)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from ..upstream.errors import UpstreamError
from ..upstream.head import request_head
from ..upstream.http1 import Http1Pool

__all__ = ("FetchFailed", "Fetcher")

MAX_DOCUMENT = 1 << 20


class FetchFailed(Exception):
    """A document or token could not be had (unreachable, refused, not JSON)."""


class Fetcher:
    """One pool per authorization server origin."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pools: dict[tuple[str, str, int], Http1Pool] = {}

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()

    async def get_json(self, url: str) -> dict[str, Any]:
        return await self._json(url, b"GET", None, [])

    async def post_form(
        self, url: str, form: dict[str, str], headers: list[tuple[bytes, bytes]] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST an ``application/x-www-form-urlencoded`` body; the status and JSON answer
        (an OAuth error answer too)."""
        body = urlencode(form).encode()
        extra = [(b"content-type", b"application/x-www-form-urlencoded"), *(headers or [])]
        status: list[int] = []
        answer = await self._json(url, b"POST", body, extra, status)
        return status[0], answer

    async def _json(
        self,
        url: str,
        method: bytes,
        body: bytes | None,
        headers: list[tuple[bytes, bytes]],
        status_out: list[int] | None = None,
    ) -> dict[str, Any]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchFailed(f"{url} is not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        pool = self._pools.get(key)
        if pool is None:
            tls = ssl.create_default_context() if parts.scheme == "https" else None
            pool = self._pools[key] = Http1Pool(
                parts.hostname,
                port,
                max_connections=8,
                connect_timeout=self.timeout,
                pool_timeout=self.timeout,
                ssl_context=tls,
            )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2].encode()
        all_headers = [(b"host", host), (b"accept", b"application/json"), *headers]
        if body is not None:
            all_headers.append((b"content-length", b"%d" % len(body)))
        head = request_head(method, target.encode(), all_headers)
        try:
            async with asyncio.timeout(self.timeout):
                response = await pool.request(head, body, head_timeout=self.timeout, retry=True)
                try:
                    data = await response.aread(MAX_DOCUMENT)
                finally:
                    response.close()
        except (UpstreamError, TimeoutError) as exc:
            raise FetchFailed(f"{url}: {str(exc) or 'timed out'}") from None
        if status_out is not None:
            status_out.append(response.status)
        elif response.status != 200:
            raise FetchFailed(f"{url}: HTTP {response.status}")
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise FetchFailed(f"{url}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise FetchFailed(f"{url}: the answer is not a JSON object")
        return answer
