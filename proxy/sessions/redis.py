"""Redis session store: one hash per session, at most one round trip per lookup.

Resolved records are kept in an in-process :class:`~proxy.sessions.cache.SessionCache`:
a hit costs no round trip. Ending or changing a session publishes its id on
``<prefix>invalidate`` from inside the script that makes the change (so on the node that
holds the key, after the change); every gateway subscribes and evicts it. While the
subscription is not confirmed live the cache is flushed and bypassed. TTL renewals of
sessions used through the cache go out in one background pipeline per tick, never in the
request.

Deployment shapes (see :func:`proxy.sessions.redis_url.parse_redis_url` for the URL forms):

* standalone (``redis://``, ``rediss://``, ``unix://``): one server;
* Sentinel (``redis+sentinel://``): the master the sentinels name, looked up again on
  every new connection, so the store follows a failover by itself; Sentinel closes the
  clients of a demoted master, so the invalidation feed is made anew on the new master;
* Cluster (``redis+cluster://``, ``rediss+cluster://``): every key of a session carries
  the session id as hash tag, so each pipeline and script touches one slot. The feed
  subscribes to *every* node directly (an invalidation is published on the node that
  made the change, and reaches our connection to that node first-hand, not over the
  cluster bus); the cache serves only while all those subscriptions are live, and a
  topology change (a node added, failed or back) flushes it within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
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

from ..config import Settings
from . import (
    Binding,
    SessionRecord,
    StoreUnavailable,
    decode_record,
    encode_binding,
    encode_record,
)
from .cache import HEARTBEAT_INTERVAL, SessionCache
from .redis_url import RedisTarget, parse_redis_url

__all__ = ("RedisSessionStore", "StoreMisconfigured")

log = logging.getLogger("proxy.sessions.redis")

# Add a binding only to a record that still exists, in one atomic step: a bind racing a
# delete must never bring the session back. The invalidation is published by the same
# script, after the change and on the node holding the key.
_BIND_SCRIPT = """
local bound = 0
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
  redis.call('pexpire', KEYS[1], ARGV[3])
  bound = 1
end
redis.call('publish', ARGV[4], ARGV[5])
return bound
"""
# Read and remove a record, then announce it: one atomic step on the key's node.
_DELETE_SCRIPT = """
local fields = redis.call('hgetall', KEYS[1])
if #fields > 0 then
  redis.call('del', KEYS[1])
end
redis.call('publish', ARGV[1], ARGV[2])
return fields
"""

# Fail fast: a request that needs an unreachable Redis gets 503 within about this long.
_SOCKET_TIMEOUT = 1.0
# Longest wait for a free connection once redis_max_connections are busy (then 503).
_POOL_WAIT = 1.0
# Resubscription after a lost subscription: first delay, doubling up to the last.
_RESUBSCRIBE_DELAYS = (0.05, 1.0)
# A subscription unheard for this long is dropped and made anew (a silently dead link).
_SILENCE_LIMIT = 5.0
# Cluster: how often the feed compares the cluster's nodes with the ones it listens to.
_TOPOLOGY_CHECK = 1.0
# Background TTL renewals: one pipeline per tick, at most this many keys per pipeline.
_RENEW_BATCH = 1000
COUNT_MAX_AGE = 30.0
"""Seconds a count of the sessions in Redis is reused (a count is a SCAN of every key)."""
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
# CLUSTER NODES flags of nodes that cannot take writes nor be subscribed to.
_GONE_FLAGS = frozenset({"fail", "noaddr", "handshake"})


class StoreMisconfigured(RuntimeError):
    """Redis refused the gateway's credentials or TLS settings: fatal at start-up."""


class _TopologyChanged(Exception):
    """The cluster's nodes differ from those the invalidation feed listens to."""


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


class _Round:
    """One attempt at the invalidation feed: a subscription per node, all live or none."""

    def __init__(self, size: int, cache: SessionCache, on_live: Callable[[], None]) -> None:
        self.cache = cache
        self.on_live = on_live
        self.confirmed: set[int] = set()
        self.heard = [cache.clock()] * size
        self.stopped = False

    def hear(self, index: int, confirmation: bool) -> None:
        self.heard[index] = self.cache.clock()
        if confirmation:
            self.confirmed.add(index)
            if len(self.confirmed) == len(self.heard):
                self.cache.subscribed()  # flushes whatever was missed before
                self.on_live()
        elif len(self.confirmed) == len(self.heard):
            self.cache.heard(min(self.heard))


class RedisSessionStore:
    """Sessions as Redis hashes ``<prefix>s:{<id>}`` (field = backend name), with a TTL.

    The id sits in a hash tag so that every key of one session maps to one cluster slot.
    redis-py picks the hiredis parser by itself when hiredis is installed. At most
    ``settings.redis_max_connections`` operations use Redis at once (per node on a
    cluster); more wait up to a second for a turn, then fail with StoreUnavailable.

    :param settings: ``session_store`` (the URL), ``redis_key_prefix``, ``session_ttl``,
        ``redis_cache_size``, ``redis_cache_max_age`` and ``redis_max_connections``.
    """

    def __init__(self, settings: Settings) -> None:
        self._target: RedisTarget = parse_redis_url(settings.session_store)
        self._prefix = settings.redis_key_prefix
        self._counted: tuple[int, float] | None = None  # last count, and when
        self.count_max_age = COUNT_MAX_AGE
        self._channel = f"{settings.redis_key_prefix}invalidate"
        self._events = f"{settings.redis_key_prefix}events"
        self._invalidations = {self._channel, self._channel.encode()}  # as delivered
        self.event_listeners: list[Callable[[str], None]] = []
        self._ttl_ms = max(1, int(settings.session_ttl * 1000))
        self._max_connections = settings.redis_max_connections
        self._slots = asyncio.Semaphore(self._max_connections)
        self._redis: aioredis.Redis | RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self.cache = SessionCache(
            settings.redis_cache_size, settings.redis_cache_max_age, settings.session_ttl
        )
        # Renewal tick: well inside the gap between RENEW_AFTER and SERVE_WITHIN x TTL.
        self._tick = min(1.0, settings.session_ttl / 10)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._feed_delay = _RESUBSCRIBE_DELAYS[0]

    def __repr__(self) -> str:
        return (
            f"<RedisSessionStore {self._target.shape} prefix={self._prefix!r} "
            f"max_connections={self._max_connections} {self.cache!r}>"
        )

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}s:{{{session_id}}}"

    @property
    def redis(self) -> aioredis.Redis | RedisCluster:
        if self._redis is None:
            raise StoreUnavailable("store not opened")
        return self._redis

    # -- connecting --------------------------------------------------------------------------

    def _common(self, retries: int) -> dict[str, Any]:
        """Connection settings every client shares; ``retries``: immediate retries of a
        dropped connection (timeouts are never retried, so a frozen Redis fails fast)."""
        return {
            "decode_responses": True,
            "socket_timeout": _SOCKET_TIMEOUT,
            "socket_connect_timeout": _SOCKET_TIMEOUT,
            "retry": Retry(
                NoBackoff(), retries, supported_errors=(RedisConnectionError,) if retries else ()
            ),
        }

    def _tls(self) -> dict[str, Any]:
        target = self._target
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

    def _client(self, *, feed: bool) -> aioredis.Redis | RedisCluster:
        """The data client (``feed=False``) or the one the subscription uses (standalone,
        Sentinel). The subscription's client never retries: a dropped connection must
        surface at once (to bypass the cache), never be silently re-subscribed."""
        target = self._target
        kwargs = self._common(0 if feed else 1)
        size = 2 if feed else self._max_connections
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
                    sentinel_kwargs={**self._common(0), **login},
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
            **self._tls(),
        )

    def _node_client(self, host: str, port: int) -> aioredis.Redis:
        """A plain client for one cluster node (the feed's subscription there)."""
        return aioredis.Redis(
            host=host,
            port=port,
            username=self._target.username,
            password=self._target.password,
            max_connections=2,
            **self._common(0),
            **self._tls(),
        )

    async def open(self) -> None:
        """Connect and check once: refused credentials or TLS settings raise
        :class:`StoreMisconfigured` (the gateway does not start); an unreachable Redis is
        only logged (requests get 503 until it answers, /readyz says why)."""
        self._closing = False
        self._redis = self._client(feed=False)
        try:
            await self.ping()
        except StoreUnavailable as exc:
            problem = misconfiguration(exc)
            if problem is not None:
                await self.close()
                raise StoreMisconfigured(f"session store {self._safe_url()}: {problem}") from exc
            log.warning("session store %s not reachable yet: %s", self._safe_url(), exc)
        if self.cache.size > 0:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._listen(), name="redis-store-invalidations"),
                loop.create_task(self._renew(), name="redis-store-renewals"),
            ]

    def _safe_url(self) -> str:
        """The store URL without its password (for messages)."""
        url = self._target.url
        scheme, sep, rest = url.partition("://")
        userinfo, at, hosts = rest.rpartition("@")
        if not at:
            return url
        user, colon, _ = userinfo.partition(":")
        return f"{scheme}{sep}{user}{':***' if colon else ''}@{hosts}"

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        # The loops also check the flag: a cancellation can be swallowed inside redis-py's
        # read timeouts, and close() must not wait on such a task forever.
        self._closing = True
        await _cancel(tasks)
        self.cache.unsubscribed()
        if self._redis is not None:
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._redis.aclose()
            self._redis = None
        if self._sentinel is not None:
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._sentinel.aclose()
            self._sentinel = None

    # -- the invalidation feed ---------------------------------------------------------------

    @property
    def cache_live(self) -> bool:
        """Whether lookups may be answered from the in-process cache right now."""
        return self.cache.live()

    async def _feed_clients(self) -> tuple[list[aioredis.Redis], frozenset[tuple[str, int]]]:
        """The clients to subscribe through, and (cluster) the nodes they stand for."""
        if self._target.shape != "cluster":
            client = self._client(feed=True)
            assert isinstance(client, aioredis.Redis)  # noqa: S101 - not a cluster
            return [client], frozenset()
        nodes = await self._cluster_nodes()
        return [self._node_client(host, port) for host, port in sorted(nodes)], nodes

    async def _cluster_nodes(self) -> frozenset[tuple[str, int]]:
        """Every node of the cluster that can be reached in principle (masters and
        replicas: a replica may be promoted at any moment)."""
        cluster = self.redis
        assert isinstance(cluster, RedisCluster)  # noqa: S101 - cluster shape only
        nodes: dict[str, Any] = await cluster.cluster_nodes()
        out: set[tuple[str, int]] = set()
        for address, info in nodes.items():
            flags = set(str(info.get("flags", "")).split(","))
            if flags & _GONE_FLAGS:
                continue
            host, _, port = address.rpartition(":")
            out.add((host, int(port.partition("@")[0])))
        if not out:
            raise _TopologyChanged("no reachable cluster node")
        return frozenset(out)

    async def _listen(self) -> None:
        """Keep the invalidation subscriptions up; evict what they announce."""
        while not self._closing:
            clients: list[aioredis.Redis] = []
            try:
                clients, nodes = await self._feed_clients()
                await self._follow(clients, nodes)
            except (*_REDIS_ERRORS, _TopologyChanged) as exc:
                if self.cache.live():
                    log.warning("session cache bypassed: invalidation feed lost (%s)", exc)
            finally:
                self.cache.unsubscribed()
                for client in clients:
                    with contextlib.suppress(*_REDIS_ERRORS):
                        await client.aclose()
            await asyncio.sleep(self._feed_delay)
            self._feed_delay = min(self._feed_delay * 2, _RESUBSCRIBE_DELAYS[1])

    async def _follow(
        self, clients: list[aioredis.Redis], nodes: frozenset[tuple[str, int]]
    ) -> None:
        """Run one subscription per client until one fails (it raises) or we close."""

        def live() -> None:
            self._feed_delay = _RESUBSCRIBE_DELAYS[0]

        attempt = _Round(len(clients), self.cache, live)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._subscribe(c, i, attempt)) for i, c in enumerate(clients)]
        if nodes:
            tasks.append(loop.create_task(self._watch_topology(nodes, attempt)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises what ended it
        finally:
            attempt.stopped = True
            self.cache.unsubscribed()
            await _cancel(tasks)

    async def _subscribe(self, client: aioredis.Redis, index: int, attempt: _Round) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel, self._events)
            next_ping = 0.0
            heard = self.cache.clock()
            while not (self._closing or attempt.stopped):
                now = self.cache.clock()
                if now - heard > _SILENCE_LIMIT:
                    raise TimeoutError(f"no answer on the subscription for {now - heard:.1f}s")
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + HEARTBEAT_INTERVAL
                message = await pubsub.get_message(timeout=max(0.0, next_ping - now))
                if message is None:
                    continue
                # Anything received proves the link; the heartbeat's answer is
                # "PONG" or ["pong", ""], depending on the protocol version.
                heard = self.cache.clock()
                kind = message["type"]
                ours = message.get("channel") in self._invalidations
                if kind == "message" and ours:
                    self.cache.invalidate(message["data"])
                elif kind == "message" and index == 0:  # events: heard once, on one feed
                    data = message["data"]
                    for listener in list(self.event_listeners):
                        listener(data.decode() if isinstance(data, bytes) else data)
                attempt.hear(index, kind == "subscribe" and ours)
        finally:
            with contextlib.suppress(*_REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    async def _watch_topology(self, nodes: frozenset[tuple[str, int]], attempt: _Round) -> None:
        while not (self._closing or attempt.stopped):
            await asyncio.sleep(_TOPOLOGY_CHECK)
            now = await self._cluster_nodes()
            if now != nodes:
                raise _TopologyChanged(f"cluster nodes changed: {sorted(now)}")

    async def _renew(self) -> None:
        """Renew, in one pipeline per tick, the TTL of sessions used only through the cache."""
        while not self._closing:
            await asyncio.sleep(self._tick)
            due = self.cache.due_renewals()
            ids = list(due)
            for start in range(0, len(ids), _RENEW_BATCH):
                batch = ids[start : start + _RENEW_BATCH]
                token = self.cache.begin()
                try:
                    alive = await self._execute(
                        *(("pexpire", (self._key(sid), self._ttl_ms)) for sid in batch)
                    )
                except StoreUnavailable:
                    self.cache.renewal_failed({sid: due[sid] for sid in ids[start:]})
                    break
                for sid, ok in zip(batch, alive, strict=True):
                    self.cache.renewed(sid, token, bool(ok))

    async def _turn(self) -> None:
        """Wait (briefly) for one of the ``redis_max_connections`` turns."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once, no suspension
            return
        try:
            async with asyncio.timeout(_POOL_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            raise StoreUnavailable(
                f"all {self._max_connections} redis connections busy for {_POOL_WAIT}s"
            ) from None

    async def _execute(self, *commands: tuple[str, tuple[Any, ...]]) -> list[Any]:
        await self._turn()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, args in commands:
                    getattr(pipe, name)(*args)
                result: list[Any] = await pipe.execute()
                return result
        except (RedisConnectionError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        except (RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(f"redis error: {exc}") from exc
        finally:
            self._slots.release()

    async def publish_event(self, text: str) -> None:
        await self._execute(("publish", (self._events, text)))

    async def create(self, session_id: str, record: SessionRecord) -> None:
        key = self._key(session_id)
        mapping = encode_record(record)
        token = self.cache.begin()
        await self._execute(("hset", (key, None, None, mapping)), ("pexpire", (key, self._ttl_ms)))
        self.cache.fill(session_id, record.copy(), token)

    async def resolve(self, session_id: str) -> SessionRecord | None:
        cached = self.cache.get(session_id)
        if cached is not None:
            return cached
        key = self._key(session_id)
        token = self.cache.begin()
        fields, _ = await self._execute(("hgetall", (key,)), ("pexpire", (key, self._ttl_ms)))
        if not fields:
            return None
        record = decode_record(fields)
        self.cache.fill(session_id, record, token)
        return record

    async def bind(self, session_id: str, backend: str, binding: Binding) -> None:
        key = self._key(session_id)
        self.cache.invalidate(session_id)
        try:
            await self._execute(
                (
                    "eval",
                    (
                        _BIND_SCRIPT, 1, key, backend, encode_binding(binding), self._ttl_ms,
                        self._channel, session_id,
                    ),
                ),
            )  # fmt: skip
        finally:
            self.cache.invalidate(session_id)

    async def delete(self, session_id: str) -> SessionRecord | None:
        key = self._key(session_id)
        self.cache.invalidate(session_id)
        try:
            (flat,) = await self._execute(
                ("eval", (_DELETE_SCRIPT, 1, key, self._channel, session_id))
            )
        finally:
            self.cache.invalidate(session_id)
        if not flat:
            return None
        return decode_record({flat[i]: flat[i + 1] for i in range(0, len(flat), 2)})

    async def ping(self) -> None:
        await self._turn()
        try:
            await self.redis.ping()
        except (*_REDIS_ERRORS, StoreUnavailable) as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        finally:
            self._slots.release()

    async def count(self) -> int:
        """Sessions in Redis, by a SCAN of the session keys: at most one SCAN per
        ``COUNT_MAX_AGE`` seconds (a scrape in between gets the last count), so frequent
        /metrics scrapes cost Redis nothing."""
        now = time.monotonic()
        if self._counted is not None and now - self._counted[1] < self.count_max_age:
            return self._counted[0]
        await self._turn()
        try:
            n = 0
            async for _ in self.redis.scan_iter(match=f"{self._prefix}s:*", count=1000):
                n += 1
        except _REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        finally:
            self._slots.release()
        self._counted = (n, time.monotonic())
        return n


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and await tasks; a task that swallows its cancellation is asked again."""
    while tasks:
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=0.5)
        tasks = list(pending)
