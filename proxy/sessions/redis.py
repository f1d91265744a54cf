"""Redis session store: one hash per session, one pipelined round trip per lookup."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, RedisError

from ..config import Settings
from . import Binding, SessionRecord, StoreUnavailable, decode_binding, encode_binding

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


class RedisSessionStore:
    """Sessions as Redis hashes ``<prefix>s:{<id>}`` (field = backend name), with a TTL.

    The id sits in a hash tag so that every key of one session maps to one cluster slot.
    redis-py picks the hiredis parser by itself when hiredis is installed.
    """

    def __init__(self, settings: Settings) -> None:
        self._url = settings.session_store
        self._prefix = settings.redis_key_prefix
        self._ttl_ms = max(1, int(settings.session_ttl * 1000))
        self._max_connections = max(16, settings.max_connections // 4)
        self._redis: aioredis.Redis | None = None

    def __repr__(self) -> str:
        return f"<RedisSessionStore prefix={self._prefix!r}>"

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

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

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
        await self._execute(("hset", (key, None, None, mapping)), ("pexpire", (key, self._ttl_ms)))

    async def resolve(self, session_id: str) -> SessionRecord | None:
        key = self._key(session_id)
        fields, _ = await self._execute(("hgetall", (key,)), ("pexpire", (key, self._ttl_ms)))
        if not fields:
            return None
        return {name: decode_binding(value) for name, value in fields.items()}

    async def bind(self, session_id: str, backend: str, binding: Binding) -> None:
        key = self._key(session_id)
        await self._execute(
            ("eval", (_BIND_SCRIPT, 1, key, backend, encode_binding(binding), self._ttl_ms))
        )

    async def delete(self, session_id: str) -> SessionRecord | None:
        key = self._key(session_id)
        fields, _ = await self._execute(("hgetall", (key,)), ("delete", (key,)))
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
