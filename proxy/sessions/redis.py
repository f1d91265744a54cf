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
  the session id as hash tag, so each pipeline and script touches one slot.

The clients are made in :mod:`.redis_clients`, the feed runs in :mod:`.redis_feed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    RedisClusterException,
    RedisError,
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
from .cache import SessionCache
from .redis_clients import REDIS_ERRORS, RedisClients, StoreMisconfigured, misconfiguration
from .redis_feed import InvalidationFeed, cancel
from .redis_url import parse_redis_url

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

# Longest wait for a free connection once redis_max_connections are busy (then 503).
_POOL_WAIT = 1.0
# Background TTL renewals: one pipeline per tick, at most this many keys per pipeline.
_RENEW_BATCH = 1000
COUNT_MAX_AGE = 30.0
"""Seconds a count of the sessions in Redis is reused (a count is a SCAN of every key)."""


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
        self._clients = RedisClients(
            parse_redis_url(settings.session_store), settings.redis_max_connections
        )
        self._prefix = settings.redis_key_prefix
        self._counted: tuple[int, float] | None = None  # last count, and when
        self.count_max_age = COUNT_MAX_AGE
        self._channel = f"{settings.redis_key_prefix}invalidate"
        self._events = f"{settings.redis_key_prefix}events"
        self.event_listeners: list[Callable[[str], None]] = []
        self._ttl_ms = max(1, int(settings.session_ttl * 1000))
        self._max_connections = settings.redis_max_connections
        self._slots = asyncio.Semaphore(self._max_connections)
        self._redis: aioredis.Redis | RedisCluster | None = None
        self.cache = SessionCache(
            settings.redis_cache_size, settings.redis_cache_max_age, settings.session_ttl
        )
        self._feed = InvalidationFeed(
            self._clients,
            lambda: self.redis,
            self.cache,
            self._channel,
            self._events,
            self.event_listeners,
        )
        # Renewal tick: well inside the gap between RENEW_AFTER and SERVE_WITHIN x TTL.
        self._tick = min(1.0, settings.session_ttl / 10)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def __repr__(self) -> str:
        return (
            f"<RedisSessionStore {self._clients.target.shape} prefix={self._prefix!r} "
            f"max_connections={self._max_connections} {self.cache!r}>"
        )

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}s:{{{session_id}}}"

    @property
    def redis(self) -> aioredis.Redis | RedisCluster:
        if self._redis is None:
            raise StoreUnavailable("store not opened")
        return self._redis

    async def open(self) -> None:
        """Connect and check once: refused credentials or TLS settings raise
        :class:`StoreMisconfigured` (the gateway does not start); an unreachable Redis is
        only logged (requests get 503 until it answers, /readyz says why)."""
        self._closing = False
        self._redis = self._clients.client(feed=False)
        try:
            await self.ping()
        except StoreUnavailable as exc:
            problem = misconfiguration(exc)
            if problem is not None:
                await self.close()
                where = self._clients.safe_url()
                raise StoreMisconfigured(f"session store {where}: {problem}") from exc
            log.warning("session store %s not reachable yet: %s", self._clients.safe_url(), exc)
        if self.cache.size > 0:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._feed.run(), name="redis-store-invalidations"),
                loop.create_task(self._renew(), name="redis-store-renewals"),
            ]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        # The loops also check the flag: a cancellation can be swallowed inside redis-py's
        # read timeouts, and close() must not wait on such a task forever.
        self._closing = True
        self._feed.close()
        await cancel(tasks)
        self.cache.unsubscribed()
        if self._redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._redis.aclose()
            self._redis = None
        await self._clients.close()

    # -- the invalidation feed ---------------------------------------------------------------

    @property
    def cache_live(self) -> bool:
        """Whether lookups may be answered from the in-process cache right now."""
        return self.cache.live()

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

    async def execute(self, *commands: tuple[str, tuple[Any, ...]]) -> list[Any]:
        """Commands of the gateway's own (the response cache), pipelined, bounded like
        the store's; StoreUnavailable when Redis fails."""
        return await self._execute(*commands)

    async def publish_event(self, text: str) -> None:
        await self._execute(("publish", (self._events, text)))

    def key(self, name: str) -> str:
        """A key of the gateway's own beside the sessions (rate limits): the prefix, then
        `name` (put a hash tag in `name` to keep a script's keys in one cluster slot)."""
        return f"{self._prefix}{name}"

    async def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script: one round trip, atomic on the node holding its keys;
        StoreUnavailable when Redis cannot answer."""
        (result,) = await self._execute(("eval", (script, len(keys), *keys, *args)))
        return result

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
                        _BIND_SCRIPT,
                        1,
                        key,
                        backend,
                        encode_binding(binding),
                        self._ttl_ms,
                        self._channel,
                        session_id,
                    ),
                ),
            )
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
        except (*REDIS_ERRORS, StoreUnavailable) as exc:
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
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        finally:
            self._slots.release()
        self._counted = (n, time.monotonic())
        return n
