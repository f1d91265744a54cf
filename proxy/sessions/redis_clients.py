"""Redis clients for every deployment shape of the session store's URL.

standalone (``redis://``, ``rediss://``, ``unix://``), Sentinel (``redis+sentinel://``:
the master the sentinels name, looked up again on every new connection) and Cluster
(``redis+cluster://``, ``rediss+cluster://``); with the TLS options and logins of the
URL, short socket timeouts (a frozen Redis fails fast) and no retry of a timeout.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError as RedisConnectionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from .redis_url import RedisTarget, safe_url

__all__ = ("REDIS_ERRORS", "RedisClients", "StoreMisconfigured", "misconfiguration")

# Fail fast: a request that needs an unreachable Redis gets 503 within about this long.
SOCKET_TIMEOUT = 1.0
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)


class StoreMisconfigured(RuntimeError):
    """Redis refused the gateway's credentials or TLS settings: fatal at start-up."""


def misconfiguration(exc: BaseException) -> str | None:
    """What is wrong with the settings, if ``exc`` (or its cause) is a refused login or a
    failed TLS handshake, which retrying will not fix; None for a mere outage."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AuthenticationError | AuthorizationError):
            return f"Redis refused the credentials: {current}"
        if isinstance(current, ResponseError) and str(current).startswith(
            ("NOAUTH", "WRONGPASS", "NOPERM")
        ):
            return f"Redis refused the credentials: {current}"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake with Redis failed: {current}"
        current = current.__cause__ or current.__context__
    return None


class RedisClients:
    """Makes the store's clients for its URL (`target`): the data client, and the one
    the invalidation feed subscribes through (per node on a cluster)."""

    def __init__(self, target: RedisTarget, max_connections: int) -> None:
        self.target = target
        self.max_connections = max_connections
        self._sentinel: Sentinel | None = None

    async def close(self) -> None:
        if self._sentinel is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._sentinel.aclose()
            self._sentinel = None

    def common(self, retries: int) -> dict[str, Any]:
        """Connection settings every client shares; ``retries``: immediate retries of a
        dropped connection (timeouts are never retried, so a frozen Redis fails fast)."""
        return {
            "decode_responses": True,
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "retry": Retry(
                NoBackoff(), retries, supported_errors=(RedisConnectionError,) if retries else ()
            ),
        }

    def tls(self) -> dict[str, Any]:
        target = self.target
        if not target.tls:
            return {}
        out: dict[str, Any] = {"ssl": True}
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if name in target.options:
                out[name] = target.options[name]
        if "ssl_check_hostname" in target.options:
            flag = target.options["ssl_check_hostname"].lower()
            out["ssl_check_hostname"] = flag in ("true", "yes", "1", "on")
        return out

    def client(self, *, feed: bool) -> aioredis.Redis | RedisCluster:
        """The data client (``feed=False``) or the one the subscription uses (standalone,
        Sentinel). The subscription's client never retries: a dropped connection must
        surface at once (to bypass the cache), never be silently re-subscribed."""
        target = self.target
        kwargs = self.common(0 if feed else 1)
        size = 2 if feed else self.max_connections
        if target.shape == "standalone":
            return aioredis.from_url(
                target.url,
                max_connections=size,
                health_check_interval=0 if feed else 30,
                **kwargs,
            )
        if target.shape == "sentinel":
            if self._sentinel is None:
                login = {
                    "username": target.options.get("sentinel_username"),
                    "password": target.options.get("sentinel_password"),
                }
                self._sentinel = Sentinel(  # type: ignore[no-untyped-call]  # unannotated
                    [(host, port) for host, port in target.nodes],
                    sentinel_kwargs={**self.common(0), **login},
                )
            master: aioredis.Redis = self._sentinel.master_for(
                target.service,
                db=target.db,
                username=target.username,
                password=target.password,
                max_connections=size,
                **kwargs,
            )
            return master
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            max_connections=size,
            **kwargs,
            **self.tls(),
        )

    def node_client(self, host: str, port: int) -> aioredis.Redis:
        """A plain client for one cluster node (the feed's subscription there)."""
        return aioredis.Redis(
            host=host,
            port=port,
            username=self.target.username,
            password=self.target.password,
            max_connections=2,
            **self.common(0),
            **self.tls(),
        )

    def safe_url(self) -> str:
        """The store URL without its password (for messages)."""
        return safe_url(self.target.url)
