"""The SessionStore contract, run against the memory store and a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from proxy.config import Settings
from proxy.sessions import (
    Binding,
    ClientInit,
    SessionRecord,
    SessionStore,
    StoreFull,
    StoreUnavailable,
    create_store,
)
from proxy.sessions.cache import LIVENESS_WINDOW
from proxy.sessions.memory import MemorySessionStore
from proxy.sessions.redis import RedisSessionStore
from testbed.redis_server import RedisServer, redis_server
from tests.helpers.waiting import until

REPLICA = "http://127.0.0.1:9/mcp"
PREFIX = "unit:"

StoreFactory = Callable[..., Awaitable[SessionStore]]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def _settings(kind: str, server: RedisServer | None, ttl: float) -> Settings:
    url = "memory" if kind == "memory" else server.url() if server else ""
    return Settings(
        upstream=(REPLICA,), session_store=url, session_ttl=ttl, redis_key_prefix=PREFIX
    )


@pytest.fixture(params=["memory", "redis"])
async def make_store(
    request: pytest.FixtureRequest, redis: RedisServer
) -> AsyncIterator[StoreFactory]:
    """Opens stores of the parametrized kind (with a chosen TTL); closes them afterwards."""
    kind: str = request.param
    opened: list[SessionStore] = []
    if kind == "redis":
        with redis.client() as client:
            client.flushdb()

    async def make(ttl: float = 60.0) -> SessionStore:
        store = create_store(_settings(kind, redis, ttl))
        await store.open()
        opened.append(store)
        if isinstance(store, RedisSessionStore):  # run the contract through the cache
            await until(lambda: store.cache_live)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> SessionStore:
    return await make_store()


# -- contract -------------------------------------------------------------------------------


async def test_create_then_resolve_returns_the_record(store: SessionStore) -> None:
    record = SessionRecord({"default": Binding(REPLICA, "up-1")})
    await store.create("s1", record)
    assert await store.resolve("s1") == record


async def test_stateless_binding_round_trips_without_session_id(store: SessionStore) -> None:
    await store.create("s1", SessionRecord({"default": Binding(REPLICA, None)}))
    assert await store.resolve("s1") == SessionRecord({"default": Binding(REPLICA, None)})


async def test_unknown_session_resolves_to_none(store: SessionStore) -> None:
    assert await store.resolve("never-created") is None


async def test_bind_adds_and_replaces_one_backend(store: SessionStore) -> None:
    await store.create("s1", SessionRecord({"default": Binding(REPLICA, "up-1")}))
    await store.bind("s1", "other", Binding("http://127.0.0.1:10/mcp", "o-1"))
    await store.bind("s1", "default", Binding(REPLICA, "up-2"))
    assert await store.resolve("s1") == SessionRecord(
        {
            "default": Binding(REPLICA, "up-2"),
            "other": Binding("http://127.0.0.1:10/mcp", "o-1"),
        }
    )


async def test_delete_returns_what_the_session_held(store: SessionStore) -> None:
    record = SessionRecord({"default": Binding(REPLICA, "up-1")})
    await store.create("s1", record)
    assert await store.delete("s1") == record
    assert await store.resolve("s1") is None
    assert await store.delete("s1") is None


async def test_deleted_session_never_comes_back_through_bind(store: SessionStore) -> None:
    await store.create("s1", SessionRecord({"default": Binding(REPLICA, "up-1")}))
    await store.delete("s1")
    await store.bind("s1", "default", Binding(REPLICA, "up-2"))
    assert await store.resolve("s1") is None
    await store.bind("never-created", "default", Binding(REPLICA, "up-3"))
    assert await store.resolve("never-created") is None
    assert await store.count() == 0


async def test_a_federated_record_keeps_the_clients_initialize(store: SessionStore) -> None:
    client = ClientInit("2025-11-25", {"capabilities": {"roots": {}}, "clientInfo": {"name": "c"}})
    await store.create("s1", SessionRecord({}, client))
    await store.bind("s1", "alpha", Binding(REPLICA, "a-1"))
    assert await store.resolve("s1") == SessionRecord({"alpha": Binding(REPLICA, "a-1")}, client)
    assert await store.delete("s1") == SessionRecord({"alpha": Binding(REPLICA, "a-1")}, client)


async def test_count_counts_open_sessions(store: SessionStore) -> None:
    if isinstance(store, RedisSessionStore):
        store.count_max_age = 0  # count afresh each time
    assert await store.count() == 0
    for n in range(3):
        await store.create(f"s{n}", SessionRecord({"default": Binding(REPLICA, f"up-{n}")}))
    assert await store.count() == 3
    await store.delete("s1")
    assert await store.count() == 2


async def test_redis_count_is_reused_for_a_while(redis: RedisServer) -> None:
    """A count is a SCAN of every session key: frequent /metrics scrapes reuse the last."""
    with redis.client() as client:
        client.flushdb()
    store = create_store(_settings("redis", redis, 60.0))
    assert isinstance(store, RedisSessionStore)
    await store.open()
    try:
        assert await store.count() == 0
        await store.create("s1", SessionRecord({"default": Binding(REPLICA, "up-1")}))
        assert await store.count() == 0  # the count of a moment ago
        store.count_max_age = 0
        assert await store.count() == 1
    finally:
        await store.close()


async def test_memory_store_refuses_sessions_beyond_its_bound() -> None:
    clock = [0.0]
    store = MemorySessionStore(
        Settings(upstream=("http://u/mcp",), session_ttl=10, max_sessions=2),
        clock=lambda: clock[0],
    )
    await store.create("s1", SessionRecord({"default": Binding(REPLICA, "up-1")}))
    await store.create("s2", SessionRecord({"default": Binding(REPLICA, "up-2")}))
    with pytest.raises(StoreFull):
        await store.create("s3", SessionRecord({"default": Binding(REPLICA, "up-3")}))
    clock[0] = 11.0  # both expired: swept to make room
    await store.create("s3", SessionRecord({"default": Binding(REPLICA, "up-3")}))
    assert await store.count() == 1


async def test_ping_succeeds_when_reachable(store: SessionStore) -> None:
    await store.ping()


async def test_resolve_renews_the_idle_ttl_and_idle_sessions_expire(
    make_store: StoreFactory,
) -> None:
    store = await make_store(ttl=0.6)
    await store.create("s1", SessionRecord({"default": Binding(REPLICA, "up-1")}))
    await asyncio.sleep(0.4)
    assert await store.resolve("s1") is not None  # renewed until ~1.0 s
    await asyncio.sleep(0.4)  # 0.8 s: past the first deadline (0.6 s), within the renewed one
    assert await store.resolve("s1") is not None  # renewed until ~1.4 s
    await asyncio.sleep(0.8)  # 1.6 s: idle longer than the TTL
    assert await store.resolve("s1") is None
    assert await store.count() == 0


# -- Redis only -----------------------------------------------------------------------------


@pytest.fixture
async def redis_store(redis: RedisServer) -> AsyncIterator[RedisSessionStore]:
    with redis.client() as client:
        client.flushdb()
    store = RedisSessionStore(_settings("redis", redis, 60.0))
    await store.open()
    await until(lambda: store.cache_live)
    yield store
    await store.close()


def _commandstats(server: RedisServer) -> dict[str, int]:
    with server.client() as client:
        stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_record_lives_under_the_configured_prefix_with_its_ttl(
    redis_store: RedisSessionStore, redis: RedisServer
) -> None:
    await redis_store.create("abc", SessionRecord({"default": Binding(REPLICA, "up-1")}))
    with redis.client() as client:
        assert client.keys("*") == [f"{PREFIX}s:{{abc}}"]
        assert client.hgetall(f"{PREFIX}s:{{abc}}") == {"default": f"{REPLICA}\nup-1"}
        assert 0 < client.pttl(f"{PREFIX}s:{{abc}}") <= 60_000


async def test_resolve_is_one_round_trip_that_also_renews_the_ttl(
    redis_store: RedisSessionStore, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup the in-process cache cannot answer (see test_session_cache for hits)."""
    await redis_store.create("abc", SessionRecord({"default": Binding(REPLICA, "up-1")}))
    redis_store.cache.flush()
    with redis.client() as client:
        client.pexpire(f"{PREFIX}s:{{abc}}", 5_000)

    sends = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal sends
        sends += 1
        await original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    before = _commandstats(redis)
    assert await redis_store.resolve("abc") == SessionRecord({"default": Binding(REPLICA, "up-1")})
    after = _commandstats(redis)
    monkeypatch.undo()

    assert sends == 1, "lookup and TTL renewal must go out in one write (one round trip)"
    assert after.get("hgetall", 0) - before.get("hgetall", 0) == 1
    assert after.get("pexpire", 0) - before.get("pexpire", 0) == 1
    with redis.client() as client:
        assert client.pttl(f"{PREFIX}s:{{abc}}") > 50_000  # renewed to the 60 s TTL


async def test_bind_racing_a_delete_does_not_resurrect_the_session(
    redis_store: RedisSessionStore, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another gateway deletes the session while this one binds: it must stay deleted."""
    await redis_store.create("abc", SessionRecord({"default": Binding(REPLICA, "up-1")}))
    original = redis_store._execute
    calls = 0

    async def execute_then_delete_elsewhere(*commands: tuple[str, tuple[Any, ...]]) -> list[Any]:
        nonlocal calls
        result = await original(*commands)
        calls += 1
        if calls == 1:  # right after bind's first round trip, a DELETE lands elsewhere
            with redis.client() as other_gateway:
                other_gateway.delete(f"{PREFIX}s:{{abc}}")
        return result

    monkeypatch.setattr(redis_store, "_execute", execute_then_delete_elsewhere)
    await redis_store.bind("abc", "default", Binding(REPLICA, "up-2"))
    monkeypatch.undo()
    assert await redis_store.resolve("abc") is None


async def test_every_operation_raises_store_unavailable_when_redis_is_down() -> None:
    with redis_server() as server:
        store = RedisSessionStore(_settings("redis", server, 60.0))
        await store.open()
        try:
            await until(lambda: store.cache_live)
            await store.create("abc", SessionRecord({"default": Binding(REPLICA, "up-1")}))
            assert await store.resolve("abc") is not None  # cached
            server.stop()
            # The cache stops answering as soon as the subscription's socket closes.
            assert await until(lambda: not store.cache_live) < 0.1
            operations: list[Callable[[], Awaitable[object]]] = [
                lambda: store.resolve("abc"),
                lambda: store.create("xyz", SessionRecord({"default": Binding(REPLICA, "up-2")})),
                lambda: store.bind("abc", "default", Binding(REPLICA, "up-3")),
                lambda: store.delete("abc"),
                store.ping,
                store.count,
            ]
            for operation in operations:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await operation()
                assert time.monotonic() - started < 2.0
            server.start()  # same port, empty: the same store reconnects by itself
            assert await store.resolve("abc") is None
            await store.create("abc", SessionRecord({"default": Binding(REPLICA, "up-4")}))
            assert await store.resolve("abc") == SessionRecord(
                {"default": Binding(REPLICA, "up-4")}
            )
        finally:
            await store.close()


async def test_first_call_after_a_redis_restart_reconnects_instead_of_failing() -> None:
    """Pooled connections die with the server; the store must retry on a fresh one."""
    with redis_server() as server:
        store = RedisSessionStore(_settings("redis", server, 60.0))
        await store.open()
        try:
            await store.create("abc", SessionRecord({"default": Binding(REPLICA, "up-1")}))
            server.restart()  # no call in between: the pooled connection is stale
            await store.create("xyz", SessionRecord({"default": Binding(REPLICA, "up-2")}))
            assert await store.resolve("xyz") == SessionRecord(
                {"default": Binding(REPLICA, "up-2")}
            )
        finally:
            await store.close()


async def test_a_frozen_redis_fails_within_the_socket_timeout() -> None:
    """Redis accepts but never answers (SIGSTOP): one timeout, no retry doubling it; the
    cache answers only until its heartbeat goes unanswered for LIVENESS_WINDOW."""
    with redis_server() as server:
        store = RedisSessionStore(_settings("redis", server, 60.0))
        await store.open()
        try:
            await until(lambda: store.cache_live)
            await store.create("abc", SessionRecord({"default": Binding(REPLICA, "up-1")}))
            await store.create("xyz", SessionRecord({"default": Binding(REPLICA, "up-2")}))
            store.cache.invalidate("xyz")  # not cached: needs Redis
            server.pause()
            frozen = time.monotonic()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.resolve("xyz")
            assert time.monotonic() - started < 1.5
            await until(lambda: not store.cache_live, within=LIVENESS_WINDOW + 0.5)
            assert time.monotonic() - frozen < LIVENESS_WINDOW + 0.5
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.resolve("abc")
            assert time.monotonic() - started < 1.5
        finally:
            server.resume()
            await store.close()
