"""Faults in a scaled-out deployment: nothing is lost when one part dies.

Every test runs real processes on loopback: official-SDK upstreams
(``testbed.servers.streaming``, ``testbed.servers.json_replies``), Redis, and
``deploy/local/cluster.py``'s :class:`LocalCluster` (gateway replicas on that Redis behind
nginx ``least_conn`` with the rendered ``deploy/nginx`` configuration). Clients are the
official SDK's, or raw httpx where the test must see statuses and bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import mcp.types as types
import pytest

from proxy.sessions.cache import LIVENESS_WINDOW
from testbed.cluster import LocalCluster
from testbed.processes import free_port, running
from tests.helpers.clients import (
    ACCEPT,
    HANDSHAKE,
    MODERN_META,
    handshake_headers,
    messages,
    modern_headers,
    raw_initialize,
    sdk_session,
)

pytestmark = [pytest.mark.scale, pytest.mark.timeout(120)]

SESSION_NOT_FOUND = -32001
UPSTREAM_TIMEOUT = -32003
STORE_UNAVAILABLE = -32004


@dataclass(frozen=True)
class Upstream:
    """One SDK server process: `name` is what its `whoami` tool reports."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL it (its whole process group) and wait until it is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def start_upstream(
    stack: ExitStack, name: str, module: str = "testbed.servers.streaming"
) -> Upstream:
    port = free_port()
    cmd = [sys.executable, "-m", module, "--port", str(port), "--name", name]
    proc = stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
    return Upstream(name, f"http://127.0.0.1:{port}/mcp", proc)


@contextlib.contextmanager
def cluster_of(
    names: tuple[str, ...],
    replicas: int,
    *gateway_args: str,
    module: str = "testbed.servers.streaming",
) -> Iterator[tuple[LocalCluster, list[Upstream]]]:
    with ExitStack() as stack:
        upstreams = [start_upstream(stack, name, module) for name in names]
        cluster = stack.enter_context(
            LocalCluster([u.url for u in upstreams], replicas, gateway_args=gateway_args)
        )
        yield cluster, upstreams


# --------------------------------------------------------------------------- raw requests

_ids = itertools.count(1000)


@dataclass(frozen=True)
class Answer:
    status: int
    message: dict[str, Any]
    sent_id: int
    started: float
    elapsed: float

    @property
    def error_code(self) -> int | None:
        error = self.message.get("error")
        return None if error is None else int(error["code"])

    def whoami(self) -> dict[str, Any]:
        assert self.status == 200, self
        assert "result" in self.message, self
        result = self.message["result"]
        assert not result.get("isError"), self
        parsed: dict[str, Any] = json.loads(result["content"][0]["text"])
        return parsed


async def post(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict[str, Any]
) -> Answer:
    """POST one JSON-RPC request; its status and final JSON-RPC message (JSON or SSE)."""
    started = time.monotonic()
    async with http.stream("POST", url, headers=headers, json=body) as response:
        async for message in messages(response):
            if "id" in message:
                elapsed = time.monotonic() - started
                return Answer(response.status_code, message, body["id"], started, elapsed)
    raise AssertionError(f"no JSON-RPC answer ({response.status_code}) to {body}")


def tool_call(name: str, arguments: dict[str, Any], *, modern: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if modern:
        params["_meta"] = MODERN_META
    return {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call", "params": params}


async def session_call(
    http: httpx.AsyncClient, url: str, sid: str, name: str = "whoami", **arguments: Any
) -> Answer:
    return await post(http, url, handshake_headers(sid), tool_call(name, arguments))


async def stateless_whoami(http: httpx.AsyncClient, url: str) -> Answer:
    """A 2026-07-28 request: routing headers and the version in ``params._meta``."""
    headers = modern_headers("tools/call", "whoami")
    return await post(http, url, headers, tool_call("whoami", {}, modern=True))


def initialize_body() -> dict[str, Any]:
    params = {
        "protocolVersion": HANDSHAKE,
        "capabilities": {},
        "clientInfo": {"name": "fault-test", "version": "0"},
    }
    return {"jsonrpc": "2.0", "id": next(_ids), "method": "initialize", "params": params}


def assert_jsonrpc_error(answer: Answer, status: int, code: int) -> None:
    assert (answer.status, answer.error_code, answer.message.get("id")) == (
        status,
        code,
        answer.sent_id,
    ), answer


def requests_served(metrics: str) -> float:
    """Sum of ``proxy_requests_total`` in a /metrics page."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("proxy_requests_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --------------------------------------------------------------------------- a. gateway dies

CLIENTS = 50
CALLS = 40


@dataclass
class CallRecord:
    client: int
    call: int
    attempt: int
    started: float
    ended: float
    error: str


async def test_sessions_survive_the_kill_of_one_of_three_gateway_replicas() -> None:
    """50 SDK sessions x 40 calls through nginx over 3 gateways; one gateway gets SIGKILL
    a third of the way in. Only calls in flight at that instant may fail (each is retried
    once, on the same session object); every session finishes all its calls on the same
    upstream session, served by the surviving gateways from the shared Redis."""
    with cluster_of(("a",), 3) as (cluster, _):
        completed = 0
        in_flight: set[tuple[int, int, int]] = set()
        failed: list[CallRecord] = []
        at_kill: set[tuple[int, int, int]] = set()
        killed = asyncio.Event()
        third = asyncio.Event()
        kill_time = 0.0
        seen_by: dict[str, set[int]] = {}  # upstream session -> clients that saw it

        async def client(index: int) -> None:
            nonlocal completed
            async with sdk_session(cluster.url, "handshake") as (session, wire):
                (gateway_sid,) = wire.session_ids
                upstream_sessions = set()
                for call in range(CALLS):
                    for attempt in (0, 1):
                        key = (index, call, attempt)
                        started = time.monotonic()
                        in_flight.add(key)
                        try:
                            result = await asyncio.wait_for(session.call_tool("whoami", {}), 30)
                        except Exception as exc:
                            failed.append(
                                CallRecord(
                                    index, call, attempt, started, time.monotonic(), repr(exc)
                                )
                            )
                            if attempt == 1:
                                raise
                            continue
                        finally:
                            in_flight.discard(key)
                        assert isinstance(result, types.CallToolResult), result
                        assert not result.is_error, result
                        block = result.content[0]
                        assert isinstance(block, types.TextContent)
                        upstream_session = json.loads(block.text)["session"]
                        upstream_sessions.add(upstream_session)
                        seen_by.setdefault(upstream_session, set()).add(index)
                        break
                    completed += 1
                    if completed >= CLIENTS * CALLS // 3:
                        third.set()
                # Every call, before and after the kill, reached the same upstream session.
                # (On failure: whether another client's upstream session showed up here,
                # and this client's failed calls.)
                assert len(upstream_sessions) == 1, (
                    {u: sorted(seen_by[u]) for u in upstream_sessions},
                    [f for f in failed if f.client == index],
                )
                assert wire.session_ids == {gateway_sid}

        async def killer() -> None:
            nonlocal kill_time
            await third.wait()
            async with httpx.AsyncClient(timeout=5.0) as http:
                page = await http.get(f"{cluster.gateways[0].base}/metrics")
            assert requests_served(page.text) > 0, "replica 0 never got traffic from nginx"
            # No await between the snapshot and the kill: nothing starts in between, and
            # kill() returns once the replica's processes are gone.
            at_kill.update(in_flight)
            kill_time = time.monotonic()
            cluster.kill(0)
            killed.set()

        started = time.monotonic()
        kill_task = asyncio.create_task(killer())
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(CLIENTS))), 90)
        await asyncio.wait_for(kill_task, 5)
        duration = time.monotonic() - started

        assert killed.is_set()
        assert completed == CLIENTS * CALLS
        assert len(failed) <= len(at_kill), (failed, at_kill)
        for record in failed:
            assert record.attempt == 0, record
            assert (record.client, record.call, record.attempt) in at_kill, record
            assert record.started <= kill_time <= record.ended, record
        print(
            f"\n{CLIENTS}x{CALLS} calls in {duration:.1f}s; {len(at_kill)} in flight at the "
            f"kill, {len(failed)} failed and were retried: {sorted({r.error for r in failed})}"
        )

        # The killed replica comes back on its port and serves the sessions of the others.
        cluster.start_gateway(0)
        async with sdk_session(cluster.gateways[1].url, "handshake", terminate_on_close=False) as (
            _,
            wire,
        ):
            (sid,) = wire.session_ids
        async with httpx.AsyncClient(timeout=10.0) as http:
            answer = await session_call(http, cluster.gateways[0].url, sid)
            assert answer.whoami()["replica"] == "a"


# --------------------------------------------------------------------------- b. Redis restarts


async def test_redis_restart_is_a_fast_503_then_old_sessions_404_and_clients_reinitialise() -> None:
    """Redis stops mid-run and comes back empty on the same port. Meanwhile requests that
    need it get a JSON-RPC 503 within 2 s (stateless ones, which do not, keep working);
    afterwards the gateways recover by themselves, every gateway answers 404 for the lost
    sessions (no stale in-process cache), and clients re-initialise."""
    with cluster_of(("a",), 2) as (cluster, _):
        redis = cluster.redis
        assert redis is not None
        direct = [g.url for g in cluster.gateways]
        async with httpx.AsyncClient(timeout=10.0) as http:
            sids = [await raw_initialize(http, cluster.url) for _ in range(4)]
            # Every gateway has every session in its cache (and renewed its TTL).
            for url in direct:
                for sid in sids:
                    assert (await session_call(http, url, sid)).status == 200
            async with sdk_session(cluster.url, "handshake", terminate_on_close=False) as (
                sdk,
                _,
            ):
                await sdk.call_tool("whoami", {})

                answers: list[tuple[str, Answer]] = []
                stop = asyncio.Event()

                async def worker(n: int) -> None:
                    urls = [cluster.url, *direct]
                    for i in itertools.count(n):
                        if stop.is_set():
                            return
                        url = urls[i % len(urls)]
                        kind = ("session", "initialize", "stateless", "session")[i % 4]
                        if kind == "session":
                            answer = await session_call(http, url, sids[i % len(sids)])
                        elif kind == "initialize":
                            answer = await post(http, url, {"accept": ACCEPT}, initialize_body())
                        else:
                            answer = await stateless_whoami(http, url)
                        answers.append((kind, answer))
                        await asyncio.sleep(0.01)

                redis.stop()
                stopped = time.monotonic()
                workers = [asyncio.create_task(worker(n)) for n in range(4)]
                await asyncio.sleep(2.0)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*workers), 10)

                assert len(answers) > 20
                cached = 0
                for kind, answer in answers:
                    assert answer.elapsed < 2.0, answer
                    if kind == "stateless":
                        assert answer.whoami()["replica"] == "a"
                    elif answer.status == 200 and answer.started < stopped + LIVENESS_WINDOW:
                        cached += 1  # served from a cache before the feed's loss was seen
                    else:
                        assert_jsonrpc_error(answer, 503, STORE_UNAVAILABLE)
                assert sum(kind != "stateless" for kind, _ in answers) > cached

                redis.start()  # same port, empty: nothing was persisted
                restarted = time.monotonic()
                for base in [g.base for g in cluster.gateways]:
                    while (await http.get(f"{base}/readyz")).status_code != 200:
                        assert time.monotonic() - restarted < 10, f"{base} did not recover"
                        await asyncio.sleep(0.05)
                recovered = time.monotonic() - restarted

                # The lost sessions: 404 on every gateway and through nginx, never a stale hit.
                for url in [cluster.url, *direct]:
                    for sid in sids:
                        assert_jsonrpc_error(
                            await session_call(http, url, sid), 404, SESSION_NOT_FOUND
                        )
                with pytest.raises(Exception, match=r"[Ss]ession"):
                    await sdk.call_tool("whoami", {})

            # Clients re-initialise; the new sessions are shared by every gateway again.
            for _ in range(3):
                sid = await raw_initialize(http, cluster.url)
                for url in [cluster.url, *direct]:
                    assert (await session_call(http, url, sid)).whoami()["replica"] == "a"
            async with sdk_session(cluster.url, "handshake") as (sdk, _):
                result = await sdk.call_tool("whoami", {})
                assert not result.is_error
        print(
            f"\n{len(answers)} answers during the outage ({cached} from cache); "
            f"ready {recovered:.2f}s after Redis returned"
        )


# --------------------------------------------------------------------------- c. upstream dies


async def test_an_upstream_replica_dies_its_sessions_404_and_stateless_requests_move_on() -> None:
    """One backend, two SDK replicas (a, b), two gateways behind nginx. After a is killed,
    a's sessions answer 404 and re-initialise onto b, b's sessions carry on, and a stream of
    2026-07-28 (stateless) requests across the kill sees no error at all."""
    with cluster_of(("a", "b"), 2) as (cluster, upstreams):
        a, _ = upstreams
        async with httpx.AsyncClient(timeout=10.0) as http:
            placed: dict[str, tuple[str, str]] = {}  # gateway sid -> (replica, upstream sid)
            for _ in range(20):
                sid = await raw_initialize(http, cluster.url)
                who = (await session_call(http, cluster.url, sid)).whoami()
                placed[sid] = (who["replica"], who["session"])
                if len(placed) >= 8 and {r for r, _ in placed.values()} == {"a", "b"}:
                    break
            assert {r for r, _ in placed.values()} == {"a", "b"}, placed

            seen_before: set[str] = set()
            for i in range(40):
                if i == 12:
                    a.kill()  # between two requests: none is in flight on a
                answer = await stateless_whoami(http, cluster.url)
                who = answer.whoami()  # 200 with a result, every time
                assert who["session"] is None
                if i < 12:
                    seen_before.add(who["replica"])
                else:
                    assert who["replica"] == "b", (i, who)
            assert seen_before == {"a", "b"}, "stateless requests should use both replicas"

            for sid, (replica, upstream_sid) in placed.items():
                answer = await session_call(http, cluster.url, sid)
                if replica == "a":
                    assert_jsonrpc_error(answer, 404, SESSION_NOT_FOUND)
                    # ...and stays gone, on every gateway.
                    for gateway in cluster.gateways:
                        again = await session_call(http, gateway.url, sid)
                        assert_jsonrpc_error(again, 404, SESSION_NOT_FOUND)
                    fresh = await raw_initialize(http, cluster.url)
                    assert (await session_call(http, cluster.url, fresh)).whoami()["replica"] == "b"
                else:
                    assert answer.whoami() == {"replica": "b", "session": upstream_sid}

        # A new SDK client through nginx lands on the survivor too.
        async with sdk_session(cluster.url, "handshake") as (session, _):
            result = await session.call_tool("whoami", {})
            block = result.content[0]
            assert isinstance(block, types.TextContent)
            assert json.loads(block.text)["replica"] == "b"


# --------------------------------------------------------------------------- d. slow upstream

SLOW = 20
FAST_CALLS = 60


async def test_slow_calls_time_out_with_504_and_do_not_slow_other_sessions() -> None:
    """An upstream answering JSON (so a slow tool holds its response head back) behind two
    gateways with ``--upstream-timeout 1``: 20 sessions keep a slow call hanging, each
    ending in 504 with a JSON-RPC error after about a second; other sessions' fast calls on
    the same gateways keep a p50 under 50 ms."""
    with cluster_of(
        ("j",), 2, "--upstream-timeout", "1", module="testbed.servers.json_replies"
    ) as (
        cluster,
        _,
    ):
        async with httpx.AsyncClient(
            timeout=10.0, limits=httpx.Limits(max_connections=100)
        ) as http:
            fast_sids = [await raw_initialize(http, cluster.url) for _ in range(4)]
            slow_sids = [await raw_initialize(http, cluster.url) for _ in range(SLOW)]

            async def fast_p50() -> float:
                latencies = []
                for i in range(FAST_CALLS):
                    answer = await session_call(http, cluster.url, fast_sids[i % len(fast_sids)])
                    assert answer.whoami()["replica"] == "j"
                    latencies.append(answer.elapsed)
                return statistics.median(latencies)

            idle_p50 = await fast_p50()

            slow_answers: list[Answer] = []
            hanging = 0
            stop = asyncio.Event()

            async def slow(sid: str) -> None:
                nonlocal hanging
                while not stop.is_set():
                    hanging += 1
                    try:
                        answer = await session_call(
                            http, cluster.url, sid, "sleep_then_echo", value="late", seconds=5
                        )
                    finally:
                        hanging -= 1
                    slow_answers.append(answer)

            tasks = [asyncio.create_task(slow(sid)) for sid in slow_sids]
            await asyncio.sleep(0.3)
            assert hanging == SLOW
            loaded_p50 = await fast_p50()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)

        assert len(slow_answers) >= SLOW
        for answer in slow_answers:
            assert_jsonrpc_error(answer, 504, UPSTREAM_TIMEOUT)
            assert 0.9 <= answer.elapsed < 3.0, answer
        print(
            f"\nfast-call p50 {idle_p50 * 1000:.1f} ms idle, {loaded_p50 * 1000:.1f} ms with "
            f"{SLOW} slow calls hanging ({len(slow_answers)} timed out)"
        )
        assert idle_p50 < 0.05
        assert loaded_p50 < 0.05
