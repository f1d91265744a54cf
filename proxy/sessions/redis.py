"""Redis session store: one hash per session, at most one round trip per lookup.

Resolved records are kept in an in-process :class:`~proxy.sessions.cache.SessionCache`:
a hit costs no round trip. Ending or changing a session publishes its id on
``<prefix>invalidate``; every gateway subscribes and evicts it. While the subscription is
not confirmed live the cache is flushed and bypassed. TTL renewals of sessions used through
the cache go out in one background pipeline per tick, never in the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, RedisError

from ..config import Settings
from . import Binding, SessionRecord, StoreUnavailable, decode_binding, encode_binding
from .cache import HEARTBEAT_INTERVAL, SessionCache

log = logging.getLogger("proxy.sessions.redis")

# Add a binding only to a record that still exists, in one atomic step: a bind racing a
# delete must never bring the session back.
_BIND_SCRIPT = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
  redis.call('pexpire', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

# Fail fast: a request that needs an unreachable Redis gets 503 within about this long.
_SOCKET_TIMEOUT = 1.0
# Resubscription after a lost subscription: first delay, doubling up to the last.
_RESUBSCRIBE_DELAYS = (0.05, 1.0)
# A subscription unheard for this long is dropped and made anew (a silently dead link).
_SILENCE_LIMIT = 5.0
# Background TTL renewals: one pipeline per tick, at most this many keys per pipeline.
_RENEW_BATCH = 1000
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class RedisSessionStore:
    """Sessions as Redis hashes ``<prefix>s:{<id>}`` (field = backend name), with a TTL.

    The id sits in a hash tag so that every key of one session maps to one cluster slot.
    redis-py picks the hiredis parser by itself when hiredis is installed.
    """

    def __init__(self, settings: Settings) -> None:
        self._url = settings.session_store
        self._prefix = settings.redis_key_prefix
        self._channel = f"{settings.redis_key_prefix}invalidate"
        self._ttl_ms = max(1, int(settings.session_ttl * 1000))
        self._max_connections = max(16, settings.max_connections // 4)
        self._redis: aioredis.Redis | None = None
        self._sub_redis: aioredis.Redis | None = None
        self.cache = SessionCache(
            settings.redis_cache_size, settings.redis_cache_max_age, settings.session_ttl
        )
        # Renewal tick: well inside the gap between RENEW_AFTER and SERVE_WITHIN x TTL.
        self._tick = min(1.0, settings.session_ttl / 10)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def __repr__(self) -> str:
        return f"<RedisSessionStore prefix={self._prefix!r} {self.cache!r}>"

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}s:{{{session_id}}}"

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreUnavailable("store not opened")
        return self._redis

    async def open(self) -> None:
        self._redis = aioredis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_SOCKET_TIMEOUT,
            # One immediate retry on a dropped connection (e.g. after a Redis restart);
            # timeouts are not retried so that an unresponsive Redis fails fast.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            max_connections=self._max_connections,
            health_check_interval=30,
        )
        if self.cache.size > 0:
            # The subscription gets its own client without retries: a dropped connection
            # must surface at once (to bypass the cache), never be silently re-subscribed.
            self._sub_redis = aioredis.from_url(
                self._url,
                decode_responses=True,
                socket_timeout=_SOCKET_TIMEOUT,
                socket_connect_timeout=_SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0, supported_errors=()),
                max_connections=2,
            )
            loop = asyncio.get_running_loop()
            self._closing = False
            self._tasks = [
                loop.create_task(self._listen(), name="redis-store-invalidations"),
                loop.create_task(self._renew(), name="redis-store-renewals"),
            ]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        # The loops also check the flag: a cancellation can be swallowed inside redis-py's
        # read timeouts, and close() must not wait on such a task forever.
        self._closing = True
        while tasks:
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=0.5)
            tasks = list(pending)
        self.cache.unsubscribed()
        if self._sub_redis is not None:
            await self._sub_redis.aclose()
            self._sub_redis = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @property
    def cache_live(self) -> bool:
        """Whether lookups may be answered from the in-process cache right now."""
        return self.cache.live()

    async def _listen(self) -> None:
        """Keep the invalidation subscription up; evict what it announces."""
        assert self._sub_redis is not None  # noqa: S101 - started by open()
        delay = _RESUBSCRIBE_DELAYS[0]
        while not self._closing:
            pubsub = self._sub_redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                next_ping = 0.0
                heard = self.cache.clock()
                while not self._closing:
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
                    self.cache.heard()
                    heard = self.cache.clock()
                    kind = message["type"]
                    if kind == "message":
                        self.cache.invalidate(message["data"])
                    elif kind == "subscribe":
                        self.cache.subscribed()  # flushes whatever was missed before
                        delay = _RESUBSCRIBE_DELAYS[0]
            except _REDIS_ERRORS as exc:
                if self.cache.live():
                    log.warning("session cache bypassed: invalidation feed lost (%s)", exc)
            finally:
                self.cache.unsubscribed()
                with contextlib.suppress(*_REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESUBSCRIBE_DELAYS[1])

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

    async def _execute(self, *commands: tuple[str, tuple[Any, ...]]) -> list[Any]:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, args in commands:
                    getattr(pipe, name)(*args)
                result: list[Any] = await pipe.execute()
                return result
        except (RedisConnectionError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        except RedisError as exc:
            raise StoreUnavailable(f"redis error: {exc}") from exc

    async def create(self, session_id: str, record: SessionRecord) -> None:
        key = self._key(session_id)
        mapping = {name: encode_binding(b) for name, b in record.items()}
        token = self.cache.begin()
        await self._execute(("hset", (key, None, None, mapping)), ("pexpire", (key, self._ttl_ms)))
        self.cache.fill(session_id, dict(record), token)

    async def resolve(self, session_id: str) -> SessionRecord | None:
        cached = self.cache.get(session_id)
        if cached is not None:
            return cached
        key = self._key(session_id)
        token = self.cache.begin()
        fields, _ = await self._execute(("hgetall", (key,)), ("pexpire", (key, self._ttl_ms)))
        if not fields:
            return None
        record = {name: decode_binding(value) for name, value in fields.items()}
        self.cache.fill(session_id, record, token)
        return record

    async def bind(self, session_id: str, backend: str, binding: Binding) -> None:
        key = self._key(session_id)
        self.cache.invalidate(session_id)
        try:
            await self._execute(
                ("eval", (_BIND_SCRIPT, 1, key, backend, encode_binding(binding), self._ttl_ms)),
                ("publish", (self._channel, session_id)),
            )
        finally:
            self.cache.invalidate(session_id)

    async def delete(self, session_id: str) -> SessionRecord | None:
        key = self._key(session_id)
        self.cache.invalidate(session_id)
        try:
            fields, _, _ = await self._execute(
                ("hgetall", (key,)), ("delete", (key,)), ("publish", (self._channel, session_id))
            )
        finally:
            self.cache.invalidate(session_id)
        if not fields:
            return None
        return {name: decode_binding(value) for name, value in fields.items()}

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc

    async def count(self) -> int:
        try:
            n = 0
            async for _ in self.redis.scan_iter(match=f"{self._prefix}s:*", count=1000):
                n += 1
            return n
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
