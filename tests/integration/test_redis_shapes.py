"""The Redis store in its production shapes, each against real servers on loopback ports:
ACL user and password logins, TLS with a private CA and client certificates, a bounded
connection pool, Sentinel failover and a three-master Cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from proxy.config import Settings
from proxy.sessions import Binding, SessionRecord, StoreUnavailable
from proxy.sessions.cache import LIVENESS_WINDOW
from proxy.sessions.redis import RedisSessionStore, StoreMisconfigured
from testbed.processes import REPO_ROOT, free_port
from testbed.redis_server import (
    RedisServer,
    TlsFiles,
    make_tls_files,
    redis_cluster,
    redis_sentinel,
    redis_server,
)
from tests.helpers.waiting import until

pytestmark = pytest.mark.timeout(60)

REPLICA = "http://127.0.0.1:9/mcp"
RECORD = SessionRecord({"default": Binding(REPLICA, "up-1")})


def _settings(url: str, **extra: Any) -> Settings:
    return Settings(upstream=(REPLICA,), session_store=url, redis_key_prefix="shape:", **extra)


Opener = Callable[..., Awaitable[RedisSessionStore]]


@pytest.fixture
async def open_store() -> AsyncIterator[Opener]:
    """Opens stores on a URL (waiting for a live cache unless told not to); closes them."""
    opened: list[RedisSessionStore] = []

    async def open_(url: str, *, live: bool = True, **extra: Any) -> RedisSessionStore:
        store = RedisSessionStore(_settings(url, **extra))
        await store.open()
        opened.append(store)
        if live:
            await until(lambda: store.cache_live, within=5.0)
        return store

    yield open_
    for store in opened:
        await store.close()


async def _exercise(store: RedisSessionStore, other: RedisSessionStore | None = None) -> None:
    """Create, resolve, bind and delete one session; `other` sees the delete at once."""
    await store.create("s1", RECORD)
    assert await store.resolve("s1") == RECORD
    second = Binding("http://127.0.0.1:10/mcp", None)
    await store.bind("s1", "other", second)
    both = SessionRecord({**RECORD.bindings, "other": second})
    assert await store.resolve("s1") == both
    if other is not None:
        assert await other.resolve("s1") == both
        assert await other.resolve("s1") == both  # cached
    assert await store.delete("s1") == both
    assert await store.resolve("s1") is None
    if other is not None:
        await _gone_within(other, "s1", 0.1)


async def _gone_within(store: RedisSessionStore, session_id: str, limit: float) -> None:
    started = time.monotonic()
    while await store.resolve(session_id) is not None:
        assert time.monotonic() - started < limit, f"{session_id} still served"
        await asyncio.sleep(0.001)


# -- logins ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[RedisServer]:
    """A server with a default-user password and an ACL user `gateway`."""
    admin = "admin-pw"
    with redis_server(args=["--requirepass", admin], password=admin) as server:
        with server.client() as client:
            client.acl_setuser(
                "gateway",
                enabled=True,
                passwords=["+gw pw"],
                keys=["shape:*"],
                channels=["shape:*"],
                commands=["+@all"],
            )
        yield server


async def test_an_acl_user_logs_in_and_the_cache_feed_works(
    secured: RedisServer, open_store: Opener
) -> None:
    url = f"redis://gateway:gw%20pw@{secured.host}:{secured.port}/0"
    a, b = await open_store(url), await open_store(url)
    await _exercise(a, b)


async def test_a_password_only_login_works(secured: RedisServer, open_store: Opener) -> None:
    store = await open_store(f"redis://:admin-pw@{secured.host}:{secured.port}/0")
    await _exercise(store)


@pytest.mark.parametrize(
    "login", ["gateway:wrong@", ":wrong@", "", "nobody:gw%20pw@"], ids=["acl", "pw", "none", "user"]
)
async def test_refused_credentials_stop_the_start_with_a_clear_error(
    secured: RedisServer, login: str
) -> None:
    store = RedisSessionStore(_settings(f"redis://{login}{secured.host}:{secured.port}/0"))
    started = time.monotonic()
    with pytest.raises(StoreMisconfigured, match="refused the credentials") as info:
        await store.open()
    assert time.monotonic() - started < 2.0
    assert "wrong" not in str(info.value).replace("WRONGPASS", "")  # no password in it
    await store.close()


async def test_an_unreachable_redis_at_start_is_not_fatal(open_store: Opener) -> None:
    with redis_server() as server:
        url = server.url()
        server.stop()
        store = await open_store(url, live=False)
        with pytest.raises(StoreUnavailable):
            await store.resolve("s1")
        server.start()
        await until(lambda: store.cache_live, within=5.0)
        await _exercise(store)


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files() -> Iterator[TlsFiles]:
    with tempfile.TemporaryDirectory(prefix="proxy-tls-") as directory:
        yield make_tls_files(directory)


@pytest.fixture(scope="module")
def tls_redis(tls_files: TlsFiles) -> Iterator[RedisServer]:
    with redis_server(tls=tls_files) as server:
        yield server


async def test_rediss_with_a_private_ca_and_a_client_certificate(
    tls_redis: RedisServer, open_store: Opener
) -> None:
    url = tls_redis.url()
    assert url.startswith("rediss://") and "ssl_cert_reqs=required" in url
    a, b = await open_store(url), await open_store(url)
    await _exercise(a, b)


async def test_a_server_certificate_from_another_ca_is_refused_at_start(
    tls_redis: RedisServer, tls_files: TlsFiles
) -> None:
    url = tls_redis.url().replace(tls_files.ca, tls_files.other_ca)
    store = RedisSessionStore(_settings(url))
    started = time.monotonic()
    with pytest.raises(StoreMisconfigured, match="TLS handshake") as info:
        await store.open()
    assert time.monotonic() - started < 2.0
    assert "certificate verify failed" in str(info.value).lower()
    await store.close()


# -- the connection pool bound ---------------------------------------------------------------


def _clients(server: RedisServer) -> int:
    """Connections the server holds, less the one asking."""
    with server.client() as client:
        return len(client.client_list()) - 1


async def test_more_operations_than_connections_all_complete_within_the_bound(
    open_store: Opener,
) -> None:
    with redis_server() as server:
        store = await open_store(server.url(), live=False, redis_max_connections=4)
        await store.create("s1", RECORD)
        store.cache.flush()
        peak = 0
        done = False

        def sample() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, _clients(server))

        sampler = asyncio.ensure_future(asyncio.to_thread(sample))
        try:
            for _ in range(5):
                results = await asyncio.gather(*(store.resolve("s1") for _ in range(200)))
                assert results == [RECORD] * 200
                store.cache.flush()
        finally:
            done = True
            await sampler
        # Four data connections plus the cache's subscription.
        assert 0 < peak <= 4 + 1, peak
        assert _clients(server) <= 4 + 1


async def test_an_exhausted_pool_on_a_frozen_redis_fails_fast_instead_of_queueing(
    open_store: Opener,
) -> None:
    with redis_server() as server:
        store = await open_store(server.url(), live=False, redis_max_connections=1)
        await store.ping()
        server.pause()
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(store.resolve(f"s{i}") for i in range(5)), return_exceptions=True
            )
            assert time.monotonic() - started < 2.5
            assert all(isinstance(r, StoreUnavailable) for r in results), results
        finally:
            server.resume()
        assert await store.resolve("s1") is None


# -- Sentinel -------------------------------------------------------------------------------


@pytest.mark.scale
async def test_sentinel_failover_the_store_follows_the_new_master(open_store: Opener) -> None:
    with redis_sentinel() as setup:
        url = setup.url()
        a, b = await open_store(url), await open_store(url)
        await _exercise(a, b)
        for i in range(10):
            await a.create(f"s{i}", RECORD)
        assert await b.resolve("s1") == RECORD
        old = setup.master_port()
        with setup.server(old).client() as client:
            assert client.wait(1, 2000) == 1  # the replica holds every session

        setup.server(old).stop()  # kill -9
        killed = time.monotonic()
        outcomes: list[str] = []
        while True:
            started = time.monotonic()
            try:
                record = await a.resolve("s2")
            except StoreUnavailable:
                outcomes.append("503")
            else:
                assert record == RECORD
                outcomes.append("ok")
                if outcomes.count("503"):
                    break
            assert time.monotonic() - started < 1.5, "a call hung during the failover"
            assert time.monotonic() - killed < 15.0, f"no failover: {outcomes[-5:]}"
            await asyncio.sleep(0.05)
        assert setup.master_port() != old
        # The feeds follow: both caches come back live, and invalidations flow again.
        await until(lambda: a.cache_live and b.cache_live, within=5.0)
        assert not b.cache.get("s1")  # flushed by the failover
        assert await b.resolve("s1") == RECORD
        assert await a.delete("s1") == RECORD
        await _gone_within(b, "s1", 0.1)
        await a.create("new", RECORD)
        assert await b.resolve("new") == RECORD


# -- Cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    with redis_cluster(3) as nodes:
        yield nodes


def _cluster_url(nodes: list[RedisServer]) -> str:
    return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in nodes[:2])


@pytest.mark.scale
async def test_cluster_sessions_spread_over_the_nodes_and_invalidations_reach_every_cache(
    cluster: list[RedisServer], open_store: Opener
) -> None:
    url = _cluster_url(cluster)
    a, b = await open_store(url), await open_store(url)
    ids = [f"c{i}" for i in range(30)]
    for sid in ids:
        await a.create(sid, RECORD)
    per_node = []
    for node in cluster:
        with node.client() as client:
            per_node.append(int(client.dbsize()))
            slot = client.execute_command("CLUSTER", "KEYSLOT", "shape:s:{c1}")
            assert slot == client.execute_command("CLUSTER", "KEYSLOT", "c1")  # hash tag
    assert sum(per_node) == len(ids)
    assert all(per_node), per_node  # the sessions landed on every node
    assert await b.count() == len(ids)
    # Every session on every node: cached on B, bound and deleted through A, seen on B.
    for sid in ids:
        assert await b.resolve(sid) == RECORD
    for sid in ids:
        assert await b.resolve(sid) == RECORD
    assert b.cache.hits == len(ids)
    other = Binding("http://127.0.0.1:10/mcp", "o-1")
    for sid in ids[:10]:
        await a.bind(sid, "other", other)
        started = time.monotonic()
        while await b.resolve(sid) != SessionRecord({**RECORD.bindings, "other": other}):
            assert time.monotonic() - started < 0.1
            await asyncio.sleep(0.001)
    for sid in ids:
        assert await a.delete(sid) is not None
        await _gone_within(b, sid, 0.1)
    await _exercise(b, a)


@pytest.mark.scale
async def test_a_lost_cluster_node_stops_the_cache_and_fails_fast(open_store: Opener) -> None:
    with redis_cluster(3) as nodes:
        store = await open_store(_cluster_url(nodes))
        for i in range(12):
            await store.create(f"k{i}", RECORD)
            assert await store.resolve(f"k{i}") == RECORD
        nodes[2].stop()
        await until(lambda: not store.cache_live, within=LIVENESS_WINDOW + 0.5)
        failures = 0
        for i in range(12):
            started = time.monotonic()
            try:
                assert await store.resolve(f"k{i}") == RECORD
            except StoreUnavailable:
                failures += 1
            assert time.monotonic() - started < 3.0
        assert failures > 0


async def test_a_gateway_with_refused_credentials_exits_saying_why(secured: RedisServer) -> None:
    """The lifespan start-up fails, and Granian stops instead of serving 503s forever."""
    url = f"redis://:not-the-password@{secured.host}:{secured.port}/0"
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--upstream",
        REPLICA,
        "--workers",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--session-store",
        url,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=20.0)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode != 0
    text = output.decode(errors="replace")
    assert "Redis refused the credentials" in text
    assert "not-the-password" not in text
