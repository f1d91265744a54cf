"""The in-process session cache: its decisions (fake clock) and, on a real Redis, the
invalidation feed, background TTL renewal and the round trips it saves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from proxy.config import Settings
from proxy.sessions import Binding, SessionRecord
from proxy.sessions.cache import LIVENESS_WINDOW, SessionCache
from proxy.sessions.redis import RedisSessionStore
from testbed.redis_server import RedisServer, redis_server
from tests.helpers.waiting import until

REPLICA = "http://127.0.0.1:9/mcp"
PREFIX = "cache:"
RECORD: SessionRecord = SessionRecord({"default": Binding(REPLICA, "up-1")})


# -- decisions (no I/O) ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> SessionCache:
    cache = SessionCache(3, max_age=5.0, ttl=60.0, clock=clock)
    cache.subscribed()
    return cache


def test_nothing_is_served_or_filled_before_the_feed_is_live(clock: Clock) -> None:
    cache = SessionCache(10, max_age=5.0, ttl=60.0, clock=clock)
    cache.fill("s1", RECORD, cache.begin())
    assert len(cache) == 0
    cache.subscribed()
    cache.fill("s1", RECORD, cache.begin())
    assert cache.get("s1") == RECORD
    assert "live" in repr(cache)


def test_a_lost_feed_flushes_and_bypasses(cache: SessionCache) -> None:
    cache.fill("s1", RECORD, cache.begin())
    cache.unsubscribed()
    assert cache.get("s1") is None
    assert len(cache) == 0
    assert "bypassed" in repr(cache)


def test_a_silent_feed_stops_serving_until_heard_again(cache: SessionCache, clock: Clock) -> None:
    cache.fill("s1", RECORD, cache.begin())
    clock.now += LIVENESS_WINDOW
    assert cache.get("s1") is None
    cache.heard()
    assert cache.get("s1") == RECORD


def test_entries_expire_after_max_age(cache: SessionCache, clock: Clock) -> None:
    cache.fill("s1", RECORD, cache.begin())
    clock.now += 4.9
    cache.heard()
    assert cache.get("s1") == RECORD
    clock.now += 0.1
    cache.heard()
    assert cache.get("s1") is None


def test_an_entry_is_never_served_near_its_redis_expiry(clock: Clock) -> None:
    cache = SessionCache(10, max_age=1e9, ttl=3.0, clock=clock)
    cache.subscribed()
    cache.fill("s1", RECORD, cache.begin())
    clock.now += 1.99  # renewed 1.99 s ago: the key holds at least 1.01 s more
    cache.heard()
    assert cache.get("s1") == RECORD
    clock.now += 0.01  # 2/3 of the TTL since the last renewal: ask Redis
    cache.heard()
    assert cache.get("s1") is None


def test_an_invalidation_during_a_fetch_refuses_the_fill(cache: SessionCache, clock: Clock) -> None:
    token = cache.begin()
    cache.invalidate("s1")  # e.g. deleted elsewhere while our HGETALL was in flight
    cache.fill("s1", RECORD, token)
    assert cache.get("s1") is None
    clock.now += 0.001
    cache.fill("s1", RECORD, cache.begin())  # a fetch begun afterwards may fill
    assert cache.get("s1") == RECORD


def test_a_flush_during_a_fetch_refuses_the_fill(cache: SessionCache) -> None:
    token = cache.begin()
    cache.subscribed()  # resubscribed: anything could have been missed
    cache.fill("s1", RECORD, token)
    assert len(cache) == 0


def test_the_least_recently_used_entry_is_evicted(cache: SessionCache) -> None:
    for sid in ("s1", "s2", "s3"):
        cache.fill(sid, RECORD, cache.begin())
    assert cache.get("s1") == RECORD
    cache.fill("s4", RECORD, cache.begin())
    assert [cache.get(s) is not None for s in ("s1", "s2", "s3", "s4")] == [
        True,
        False,
        True,
        True,
    ]


def test_size_zero_disables_the_cache(clock: Clock) -> None:
    cache = SessionCache(0, max_age=5.0, ttl=60.0, clock=clock)
    cache.subscribed()
    cache.fill("s1", RECORD, cache.begin())
    assert cache.get("s1") is None


def test_used_sessions_are_renewed_after_a_third_of_the_ttl(
    clock: Clock,
) -> None:
    cache = SessionCache(10, max_age=1e9, ttl=30.0, clock=clock)
    cache.subscribed()
    cache.fill("used", RECORD, cache.begin())
    cache.fill("idle", RECORD, cache.begin())
    clock.now += 1.0
    cache.heard()
    assert cache.get("used") == RECORD
    assert cache.due_renewals() == {}  # renewed 1 s ago: not yet
    clock.now += 9.0
    assert list(cache.due_renewals()) == ["used"]  # the idle one is left to expire
    assert cache.due_renewals() == {}
    token = cache.begin()
    cache.renewed("used", token, alive=True)
    clock.now += 19.0  # 20 s after fill, 10 s after the renewal: still servable
    cache.heard()
    assert cache.get("used") == RECORD
    assert cache.get("idle") is None


def test_an_ended_session_leaves_nothing_behind(cache: SessionCache, clock: Clock) -> None:
    """Session churn must not grow the cache: a session used and then deleted (here or on
    another gateway) needs no renewal, and its tombstone expires."""
    cache.fill("ended", RECORD, cache.begin())
    assert cache.get("ended") == RECORD  # a hit: pending renewal
    cache.invalidate("ended")
    clock.now += 30.0
    assert cache.due_renewals() == {}
    assert "pending_renewals=0" in repr(cache)
    assert cache._tombstones == {}  # expired with the renewal sweep


def test_a_failed_renewal_is_retried_and_a_missing_key_evicts(
    cache: SessionCache, clock: Clock
) -> None:
    cache.fill("s1", RECORD, cache.begin())
    cache.fill("s2", RECORD, cache.begin())
    cache.get("s1")
    cache.get("s2")
    clock.now += 20.0
    due = cache.due_renewals()
    assert sorted(due) == ["s1", "s2"]
    cache.renewal_failed(due)
    assert sorted(cache.due_renewals()) == ["s1", "s2"]
    token = cache.begin()
    cache.renewed("s1", token, alive=False)  # PEXPIRE answered 0: the key is gone
    cache.heard()
    assert cache.get("s1") is None
    clock.now += 40.0  # 60 s after the last renewal: the key has expired, stop trying
    cache.renewal_failed(due)
    assert cache.due_renewals() == {}


def test_a_miss_round_trip_covers_earlier_hits(cache: SessionCache, clock: Clock) -> None:
    cache.fill("s1", RECORD, cache.begin())
    cache.get("s1")
    cache.fill("s1", RECORD, cache.begin())  # HGETALL + PEXPIRE renewed it
    clock.now += 30.0
    assert cache.due_renewals() == {}


# -- with a real Redis ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def _settings(server: RedisServer, ttl: float = 60.0, **extra: Any) -> Settings:
    return Settings(
        upstream=(REPLICA,),
        session_store=server.url(),
        session_ttl=ttl,
        redis_key_prefix=PREFIX,
        **extra,
    )


StoreFactory = Callable[..., Awaitable[RedisSessionStore]]


@pytest.fixture
async def make_store(redis: RedisServer) -> AsyncIterator[StoreFactory]:
    """Opens live-cached stores on the shared Redis (a fresh database per test)."""
    with redis.client() as client:
        client.flushdb()
    opened: list[RedisSessionStore] = []

    async def make(server: RedisServer = redis, ttl: float = 60.0) -> RedisSessionStore:
        store = RedisSessionStore(_settings(server, ttl))
        await store.open()
        opened.append(store)
        await until(lambda: store.cache_live)
        return store

    yield make
    for store in opened:
        await store.close()


def _commandstats(server: RedisServer) -> dict[str, int]:
    with server.client() as client:
        stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int], *names: str) -> int:
    return sum(after.get(n, 0) - before.get(n, 0) for n in names)


async def test_a_cache_hit_needs_no_round_trip(
    make_store: StoreFactory, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await make_store()
    await store.create("s1", RECORD)
    sends = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal sends
        sends += 1
        await original(self, *args, **kwargs)

    before = _commandstats(redis)
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    for _ in range(100):
        assert await store.resolve("s1") == RECORD
    monkeypatch.undo()
    after = _commandstats(redis)
    assert _delta(before, after, "hgetall", "pexpire") == 0
    # Only the subscription's heartbeat may have gone out meanwhile.
    assert sends == _delta(before, after, "ping")
    assert store.cache.hits == 100


async def test_a_miss_is_one_round_trip_and_fills_the_cache(
    make_store: StoreFactory, redis: RedisServer
) -> None:
    a, b = await make_store(), await make_store()
    await a.create("s1", RECORD)
    before = _commandstats(redis)
    assert await b.resolve("s1") == RECORD  # miss on B
    assert await b.resolve("s1") == RECORD  # hit on B
    after = _commandstats(redis)
    assert _delta(before, after, "hgetall") == 1
    assert _delta(before, after, "pexpire") == 1


async def test_a_delete_on_one_gateway_is_seen_by_another_within_100_ms(
    make_store: StoreFactory,
) -> None:
    a, b = await make_store(), await make_store()
    await a.create("s1", RECORD)
    assert await b.resolve("s1") == RECORD
    assert len(b.cache) == 1
    assert await a.delete("s1") == RECORD
    started = time.monotonic()
    for _ in range(1000):
        if await b.resolve("s1") is None:
            break
        await asyncio.sleep(0.001)
    assert time.monotonic() - started < 0.1
    assert await a.resolve("s1") is None


async def test_a_bind_on_one_gateway_is_seen_by_another(make_store: StoreFactory) -> None:
    a, b = await make_store(), await make_store()
    await a.create("s1", RECORD)
    assert await b.resolve("s1") == RECORD
    other = Binding("http://127.0.0.1:10/mcp", "o-1")
    await a.bind("s1", "other", other)
    expected = SessionRecord({**RECORD.bindings, "other": other})
    started = time.monotonic()
    for _ in range(1000):
        if await b.resolve("s1") == expected:
            break
        await asyncio.sleep(0.001)
    assert time.monotonic() - started < 0.1
    assert await a.resolve("s1") == expected


async def test_while_the_feed_is_down_every_lookup_goes_to_redis(
    make_store: StoreFactory, redis: RedisServer
) -> None:
    store = await make_store()
    await store.create("s1", RECORD)
    assert await store.resolve("s1") == RECORD
    with redis.client() as admin:
        admin.execute_command("ACL", "SETUSER", "default", "resetchannels")  # no SUBSCRIBE
        try:
            admin.client_kill_filter(_type="pubsub")
            await until(lambda: not store.cache_live)
            assert len(store.cache) == 0
            # Missed while the feed was down: a change made behind the cache's back.
            admin.hset(f"{PREFIX}s:{{s1}}", "default", f"{REPLICA}\nup-2")
            before = _commandstats(redis)
            for _ in range(5):
                assert await store.resolve("s1") == SessionRecord(
                    {"default": Binding(REPLICA, "up-2")}
                )
                await asyncio.sleep(0.05)  # resubscription keeps failing meanwhile
            assert _delta(before, _commandstats(redis), "hgetall") == 5
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "allchannels")
    await until(lambda: store.cache_live)
    before = _commandstats(redis)
    assert await store.resolve("s1") == SessionRecord({"default": Binding(REPLICA, "up-2")})  # miss
    assert await store.resolve("s1") == SessionRecord({"default": Binding(REPLICA, "up-2")})  # hit
    assert _delta(before, _commandstats(redis), "hgetall") == 1


async def test_a_session_used_only_through_the_cache_stays_alive_in_redis(
    make_store: StoreFactory, redis: RedisServer
) -> None:
    store = await make_store(ttl=0.6)
    await store.create("s1", RECORD)
    before = _commandstats(redis)
    started = time.monotonic()
    while time.monotonic() - started < 2.0:  # more than three TTLs of steady use
        assert await store.resolve("s1") == RECORD
        await asyncio.sleep(0.02)
    after = _commandstats(redis)
    with redis.client() as client:
        assert client.pttl(f"{PREFIX}s:{{s1}}") > 0
    assert store.cache.hits > _delta(before, after, "hgetall") * 3  # mostly hits
    assert _delta(before, after, "pexpire") >= 3  # renewed in the background
    # ...and once idle, it expires as usual.
    await asyncio.sleep(1.0)
    with redis.client() as client:
        assert client.exists(f"{PREFIX}s:{{s1}}") == 0
    assert await store.resolve("s1") is None


async def test_a_redis_restart_flushes_the_cache_and_it_recovers(
    make_store: StoreFactory,
) -> None:
    with redis_server() as server:
        store = await make_store(server)
        await store.create("s1", RECORD)
        assert await store.resolve("s1") == RECORD
        assert len(store.cache) == 1
        server.restart()  # nothing persisted: s1 is gone
        await until(lambda: len(store.cache) == 0, within=0.5)
        assert await store.resolve("s1") is None
        await until(lambda: store.cache_live)
        await store.create("s2", RECORD)
        assert await store.resolve("s2") == RECORD
        assert len(store.cache) == 1
        assert await store.delete("s2") == RECORD
        assert await store.resolve("s2") is None


def test_with_several_feeds_the_one_heard_longest_ago_decides(
    cache: SessionCache, clock: Clock
) -> None:
    """A cluster store listens to every node; it reports the oldest of their last words."""
    cache.fill("s1", RECORD, cache.begin())
    oldest = clock.now
    clock.now += LIVENESS_WINDOW - 0.1
    cache.heard(oldest)  # one node answered just now, another LIVENESS_WINDOW - 0.1 ago
    assert cache.get("s1") == RECORD
    clock.now += 0.1
    assert cache.get("s1") is None
