"""Pooled upstream connections (one httpx.AsyncClient) and health probes of replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from ..config import Settings
from .balance import Backend, Replica

logger = logging.getLogger("proxy.upstream")


def make_client(settings: Settings) -> httpx.AsyncClient:
    """One keep-alive pool for every replica; no read timeout (SSE streams are long)."""
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=30.0,
        ),
        timeout=httpx.Timeout(
            connect=settings.connect_timeout,
            read=None,
            write=settings.connect_timeout,
            pool=settings.upstream_timeout,
        ),
        http1=True,
        http2=False,
        trust_env=False,
        follow_redirects=False,
    )


class Upstreams:
    """The configured backends, their shared client and the probe of down replicas."""

    def __init__(self, settings: Settings) -> None:
        self.backends = {b.name: Backend(b.name, b.replicas) for b in settings.backends}
        self.default = next(iter(self.backends.values()))
        self._settings = settings
        self.client: httpx.AsyncClient | None = None
        self._probe: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Upstreams {list(self.backends.values())}>"

    async def open(self) -> None:
        self.client = make_client(self._settings)
        self._probe = asyncio.create_task(self._probe_loop(), name="proxy-probe")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.up:
            logger.warning("replica %s marked down: %s", replica.url, reason)
        replica.up = False

    def healthy(self) -> bool:
        return all(b.healthy() for b in self.backends.values())

    async def _probe_loop(self) -> None:
        """Probe every replica now and then every interval: a replica that refuses
        connections is marked down (and skipped) until it accepts them again."""
        replicas = [r for b in self.backends.values() for r in b.replicas]
        while True:
            await asyncio.gather(*(self._probe_one(r) for r in replicas))
            await asyncio.sleep(self._settings.probe_interval)

    async def _probe_one(self, replica: Replica) -> None:
        host, port = replica.netloc
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            self.mark_down(replica, f"probe failed: {exc!r}")
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if not replica.up:
            logger.warning("replica %s answers again: marked up", replica.url)
            replica.up = True
