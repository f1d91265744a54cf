"""Rate limits per principal (and per tool), and a bound on each principal's open sessions.

The limit is GCRA (the generic cell rate algorithm: a token bucket kept as one number, the
"theoretical arrival time"): ``requests`` per ``per`` seconds, with as much burst. With
the Redis session store every gateway replica shares one budget: one Lua script checks
and updates the principal's (and the tool's) cell in one round trip, on Redis's clock.
With the memory store the cells live in the process. When Redis cannot be asked,
``on_store_failure`` decides: ``open`` lets the request through, ``closed`` answers 429;
either is counted (``proxy_rate_limited_total{limit="store_failed_open"}``).

Sessions per principal: a session counts against its principal from its ``initialize``
until it is ended (DELETE) or ``session_ttl`` seconds have passed since it opened; over
``sessions_per_principal`` a new ``initialize`` gets 429 and nothing open is touched.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING

from ..errors import RateLimited, StoreDown
from ..metrics import Metrics
from ..sessions import SessionStore, StoreUnavailable
from .principal import Principal
from .settings import RateLimit

if TYPE_CHECKING:
    from ..sessions.redis import RedisSessionStore

__all__ = ("RateLimiter", "SessionQuota")

logger = logging.getLogger("proxy.auth")

_CELLS_MAX = 100_000  # cells kept in memory before the spent ones are swept

# KEYS: the cells to charge (all or none). ARGV: the emission interval and the burst
# window, in seconds. Returns "0" when charged, else the seconds to wait (as text: Lua
# numbers would reach the client as integers).
_GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local wait = 0
local next_tats = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + interval
  local w = new - window - now
  if w > wait then wait = w end
  next_tats[i] = new
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.6f', next_tats[i]), 'PX',
             math.ceil((next_tats[i] - now) * 1000) + 1)
end
return '0'
"""

# KEYS[1]: the principal's sessions (a sorted set, scored by when each stops counting).
# ARGV: seconds a session counts, the cap, the session id. 1 when taken, 0 when full.
_QUOTA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000))
return 1
"""


def _tag(principal: Principal) -> str:
    """A short, fixed-size stand-in for the principal in keys (no subject in Redis keys)."""
    return hashlib.sha256(principal.key.encode()).hexdigest()[:32]


def _redis(store: SessionStore) -> RedisSessionStore | None:
    from ..sessions.redis import RedisSessionStore  # noqa: PLC0415 - only with Redis

    return store if isinstance(store, RedisSessionStore) else None


class RateLimiter:
    """Charges each request to its principal's cell (and its tool's); see the module."""

    def __init__(self, limit: RateLimit, store: SessionStore, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.interval = limit.per / limit.requests if limit.requests else 0.0
        self.window = limit.per
        self.redis = _redis(store)
        self._cells: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.limit.requests > 0

    def charge_here(self, principal: Principal) -> None:
        """:meth:`charge` for the principal alone, with the memory store (no await)."""
        try:  # (subscripts, not .get(): a method call each, on every request)
            key: str = principal.memo["rate_key"]
        except KeyError:
            key = principal.memo["rate_key"] = f"rl:{{{_tag(principal)}}}"
        now = time.monotonic()
        cells = self._cells
        try:
            tat = cells[key]
        except KeyError:
            if len(cells) > _CELLS_MAX:
                self._sweep(now)
            tat = now
        tat = (tat if tat > now else now) + self.interval
        if tat - self.window > now:
            self._refuse("principal", tat - self.window - now)
        cells[key] = tat

    def _refuse(self, limit: str, wait: float) -> None:
        self.metrics.rate_limited.inc(limit)
        seconds = max(1, math.ceil(wait))
        raise RateLimited(headers=((b"retry-after", b"%d" % seconds),))

    async def charge(self, principal: Principal, tool: str | None = None) -> None:
        """Count one request; RateLimited (429, with Retry-After) when over the limit."""
        key: str | None = principal.memo.get("rate_key")
        if key is None:
            key = principal.memo["rate_key"] = f"rl:{{{_tag(principal)}}}"
        keys = [key]
        if tool is not None and self.limit.per_tool:
            keys.append(f"{key}:t:{hashlib.sha256(tool.encode()).hexdigest()[:16]}")
        if self.redis is None:
            wait = self._charge_here(keys)
        else:
            try:
                answer = await self.redis.eval(
                    _GCRA_SCRIPT,
                    [self.redis.key(k) for k in keys],
                    [repr(self.interval), repr(self.window)],
                )
                wait = float(answer)
            except (StoreUnavailable, ValueError) as exc:
                wait = self._store_failed(exc)
        if wait > 0:
            self._refuse("tool" if len(keys) > 1 else "principal", wait)

    def _charge_here(self, keys: list[str]) -> float:
        now = time.monotonic()
        cells = self._cells
        tats = []
        for key in keys:
            tat = cells.get(key, now)
            tat = (tat if tat > now else now) + self.interval
            if tat - self.window > now:
                return tat - self.window - now
            tats.append(tat)
        for key, tat in zip(keys, tats, strict=True):
            cells[key] = tat
        if len(cells) > _CELLS_MAX:
            self._sweep(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        """Forget the cells whose time has passed (each is a full bucket again)."""
        cells = self._cells
        for key in [k for k, tat in cells.items() if tat <= now]:
            del cells[key]

    def _store_failed(self, exc: Exception) -> float:
        closed = self.limit.on_store_failure == "closed"
        self.metrics.rate_limited.inc("store_failed_closed" if closed else "store_failed_open")
        outcome = "refused" if closed else "let through"
        logger.warning("rate limit not checked (the store did not answer: %s): %s", exc, outcome)
        return 1.0 if closed else 0.0


class SessionQuota:
    """At most ``cap`` sessions per principal (see the module docstring)."""

    def __init__(self, cap: int, seconds: float, store: SessionStore, metrics: Metrics) -> None:
        self.cap = cap
        self.seconds = seconds
        self.metrics = metrics
        self.redis = _redis(store)
        self._open: dict[str, dict[str, float]] = {}

    async def take(self, principal: Principal, session_id: str) -> None:
        """Count a session about to open; RateLimited when the principal has its cap."""
        if not self.cap:
            return
        key = f"sq:{{{_tag(principal)}}}"
        if self.redis is None:
            taken = self._take_here(key, session_id)
        else:
            try:
                taken = bool(
                    await self.redis.eval(
                        _QUOTA_SCRIPT, [self.redis.key(key)], [self.seconds, self.cap, session_id]
                    )
                )
            except StoreUnavailable as exc:  # the session could not be recorded either
                self.metrics.store_errors.inc("quota")
                logger.warning("session store unavailable: %s", exc)
                raise StoreDown() from None
        if not taken:
            self.metrics.refused.inc("sessions_per_principal")
            raise RateLimited("Too Many Requests: too many open sessions for this principal")

    def _take_here(self, key: str, session_id: str) -> bool:
        now = time.monotonic()
        sessions = self._open.setdefault(key, {})
        for sid in [s for s, until in sessions.items() if until <= now]:
            del sessions[sid]
        if len(sessions) >= self.cap:
            return False
        sessions[session_id] = now + self.seconds
        return True

    async def give_back(self, principal: Principal, session_id: str) -> None:
        """The session ended (or never opened): it no longer counts."""
        if not self.cap:
            return
        key = f"sq:{{{_tag(principal)}}}"
        if self.redis is None:
            sessions = self._open.get(key)
            if sessions is not None:
                sessions.pop(session_id, None)
                if not sessions:
                    del self._open[key]
            return
        try:
            await self.redis.eval(
                "return redis.call('ZREM', KEYS[1], ARGV[1])", [self.redis.key(key)], [session_id]
            )
        except StoreUnavailable as exc:
            logger.info("a session's slot not given back (it lapses): %s", exc)
