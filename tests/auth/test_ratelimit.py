"""Rate limits per principal and per tool (GCRA), in memory and shared through a real
Redis; sessions per principal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from proxy.auth.principal import Principal
from proxy.auth.ratelimit import RateLimiter, SessionQuota
from proxy.auth.settings import RateLimit
from proxy.config import Settings
from proxy.errors import RateLimited, StoreDown
from proxy.metrics import Metrics
from proxy.sessions import SessionStore
from proxy.sessions.memory import MemorySessionStore
from proxy.sessions.redis import RedisSessionStore
from testbed.redis_server import RedisServer, redis_server

ALICE = Principal("https://idp.example", "alice", "cli")
BOB = Principal("https://idp.example", "bob", "cli")


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def settings(store: str = "memory") -> Settings:
    return Settings(upstream=("http://127.0.0.1:9/mcp",), session_store=store)


@pytest.fixture(params=["memory", "redis"])
async def stores(
    request: pytest.FixtureRequest, redis: RedisServer
) -> AsyncIterator[tuple[SessionStore, SessionStore]]:
    """Two stores as two gateways would hold them: separate memories, or one Redis."""
    if request.param == "memory":
        yield MemorySessionStore(settings()), MemorySessionStore(settings())
        return
    with redis.client() as client:
        client.flushdb()
    pair = (RedisSessionStore(settings(redis.url())), RedisSessionStore(settings(redis.url())))
    for store in pair:
        await store.open()
    yield pair
    for store in pair:
        await store.close()


async def charged(
    limiter: RateLimiter, principal: Principal, n: int, tool: str | None = None
) -> int:
    """How many of `n` requests in a row go through."""
    allowed = 0
    for _ in range(n):
        try:
            await limiter.charge(principal, tool)
            allowed += 1
        except RateLimited:
            pass
    return allowed


async def test_a_burst_of_the_limit_then_429_with_retry_after(
    stores: tuple[SessionStore, SessionStore],
) -> None:
    metrics = Metrics()
    limiter = RateLimiter(RateLimit(requests=5, per=60.0), stores[0], metrics)
    assert await charged(limiter, ALICE, 5) == 5
    with pytest.raises(RateLimited) as refused:
        await limiter.charge(ALICE)
    assert refused.value.status == 429
    retry_after = dict(refused.value.answer_headers() or [])[b"retry-after"]
    assert 1 <= int(retry_after) <= 12  # one request's worth of the window: 60 / 5
    assert await charged(limiter, BOB, 5) == 5  # Bob has a budget of his own
    assert metrics.rate_limited.values[("principal",)] == 1.0


async def test_two_gateways_share_one_budget_only_through_redis(
    stores: tuple[SessionStore, SessionStore],
) -> None:
    limit = RateLimit(requests=6, per=60.0)
    one, two = (RateLimiter(limit, s, Metrics()) for s in stores)
    through = await charged(one, ALICE, 4) + await charged(two, ALICE, 4)
    shared = isinstance(stores[0], RedisSessionStore)
    assert through == (6 if shared else 8)


async def test_per_tool_limits_count_each_tool_apart(
    stores: tuple[SessionStore, SessionStore],
) -> None:
    limiter = RateLimiter(RateLimit(requests=3, per=60.0, per_tool=True), stores[0], Metrics())
    assert await charged(limiter, ALICE, 5, "files\nread") == 3
    with pytest.raises(RateLimited):
        await limiter.charge(ALICE, "files\nwrite")  # the principal's total is spent too
    assert await charged(limiter, BOB, 2, "files\nread") == 2


async def test_the_budget_comes_back_over_time() -> None:
    limiter = RateLimiter(RateLimit(requests=2, per=0.2), MemorySessionStore(settings()), Metrics())
    assert await charged(limiter, ALICE, 3) == 2
    await asyncio.sleep(0.25)
    assert await charged(limiter, ALICE, 2) == 2


@pytest.mark.parametrize(("behaviour", "through"), [("open", 3), ("closed", 0)])
async def test_redis_down_lets_through_or_refuses_as_configured(
    behaviour: str, through: int
) -> None:
    with redis_server() as server:
        store = RedisSessionStore(settings(server.url()))
        await store.open()
    try:  # the server is gone now
        metrics = Metrics()
        limit = RateLimit(requests=100, per=60.0, on_store_failure=behaviour)
        limiter = RateLimiter(limit, store, metrics)
        assert await charged(limiter, ALICE, 3) == through
        assert metrics.rate_limited.values[(f"store_failed_{behaviour}",)] == 3.0
    finally:
        await store.close()


async def test_sessions_per_principal_are_capped_and_given_back(
    stores: tuple[SessionStore, SessionStore],
) -> None:
    metrics = Metrics()
    one, two = (SessionQuota(2, 60.0, s, metrics) for s in stores)
    await one.take(ALICE, "s1")
    await two.take(ALICE, "s2")
    shared = isinstance(stores[0], RedisSessionStore)
    if shared:
        with pytest.raises(RateLimited, match="too many open sessions"):
            await one.take(ALICE, "s3")
        await two.give_back(ALICE, "s1")
    await one.take(ALICE, "s3")
    with pytest.raises(RateLimited):
        await one.take(ALICE, "s4")
    await one.take(BOB, "s5")
    assert metrics.refused.values[("sessions_per_principal",)] >= 1


async def test_a_session_stops_counting_after_the_session_ttl() -> None:
    quota = SessionQuota(1, 0.1, MemorySessionStore(settings()), Metrics())
    await quota.take(ALICE, "s1")
    with pytest.raises(RateLimited):
        await quota.take(ALICE, "s2")
    await asyncio.sleep(0.15)
    await quota.take(ALICE, "s2")


async def test_a_quota_that_cannot_ask_redis_is_a_503() -> None:
    with redis_server() as server:
        store = RedisSessionStore(settings(server.url()))
        await store.open()
    try:
        with pytest.raises(StoreDown):
            await SessionQuota(2, 60.0, store, Metrics()).take(ALICE, "s1")
    finally:
        await store.close()
