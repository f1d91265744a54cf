"""SIGTERM drains a gateway: unready first, connections closed after each answer, GET
streams ended cleanly, requests in flight finished; only then does the listener close."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from testbed.processes import free_port, wait_http
from tests.helpers.clients import handshake_headers, raw_initialize
from tests.helpers.gateways import Upstream, start_upstream

pytestmark = pytest.mark.scale

DRAIN = 2.0
NGINX_DRAIN = 5.0  # longer than nginx's idle keep-alive to the replicas (4 s): see deploy/nginx


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with ExitStack() as stack:
        yield start_upstream(stack, "drain-upstream")


@pytest.fixture
def gateway(upstream: Upstream) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A gateway of its own (it is stopped by the test): base URL and process."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--upstream",
        upstream.url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--drain-seconds",
        str(DRAIN),
        "--shutdown-timeout",
        "10",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", 30, proc=proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _call(name: str, arguments: dict[str, object], id: int = 1) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def test_sigterm_drains_before_the_listener_closes(
    gateway: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base, proc = gateway
    url = f"{base}/mcp"
    async with httpx.AsyncClient(timeout=15) as http:
        sid = await raw_initialize(http, url)
        headers = handshake_headers(sid)
        assert (await http.get(f"{base}/readyz")).status_code == 200

        # A GET stream is open and a slow call is in flight when SIGTERM arrives.
        stream_cm = http.stream("GET", url, headers=headers)
        stream = await stream_cm.__aenter__()
        assert stream.status_code == 200
        late_call = _call("sleep_then_echo", {"value": "late", "seconds": 3.5})
        slow = asyncio.ensure_future(http.post(url, json=late_call, headers=headers))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        # The GET stream ends cleanly (no error reading to its end), well before the drain.
        async def read_to_end() -> None:
            async for _ in stream.aiter_bytes():
                pass

        await asyncio.wait_for(read_to_end(), 1.5)
        await stream_cm.__aexit__(None, None, None)
        assert time.monotonic() - started < DRAIN

        # While draining: unready, and answers close their connections.
        ready = await http.get(f"{base}/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "draining"}
        answer = await http.post(url, json=_call("whoami", {}, id=2), headers=headers)
        assert answer.status_code == 200
        assert answer.headers["connection"] == "close"
        assert answer.headers["mcp-session-id"] == sid

        # The call in flight at SIGTERM still gets its answer.
        late = await slow
        assert late.status_code == 200, late.text
        assert "late" in late.text

        # After the drain the listener is closed and the gateway has exited cleanly.
        assert time.monotonic() - started >= DRAIN - 0.2
        assert proc.wait(15) == 0
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{base}/healthz", timeout=2)


async def test_a_get_stream_opened_while_draining_ends_at_once(
    gateway: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base, proc = gateway
    url = f"{base}/mcp"
    async with httpx.AsyncClient(timeout=15) as http:
        sid = await raw_initialize(http, url)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        headers = handshake_headers(sid)
        async with http.stream("GET", url, headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["connection"] == "close"
            await asyncio.wait_for(stream.aread(), 1.5)
        assert time.monotonic() - started < 1.5
    assert proc.wait(15) == 0


# ------------------------------------------------------------ (e) drain behind nginx


async def test_sigterm_to_one_replica_under_load_fails_no_request(upstream: Upstream) -> None:
    """Three replicas behind nginx on Redis, clients calling steadily and holding GET
    streams: SIGTERM to one replica's main process (as Docker and Kubernetes send it)
    fails no request, and the GET streams it ends are reopened through nginx."""
    from testbed.cluster import LocalCluster  # noqa: PLC0415 - loads deploy/local by path

    args = ("--drain-seconds", str(NGINX_DRAIN), "--shutdown-timeout", "10")
    with LocalCluster([upstream.url], 3, gateway_args=args) as cluster:
        statuses: list[int] = []
        failures: list[str] = []
        reopened: list[int] = []
        stop = asyncio.Event()

        async def caller(n: int) -> None:
            async with httpx.AsyncClient(timeout=20) as http:
                sid = await raw_initialize(http, cluster.url)
                for i in itertools.count():
                    if stop.is_set():
                        return
                    call = _call("whoami", {}, id=i)
                    try:
                        answer = await http.post(
                            cluster.url, json=call, headers=handshake_headers(sid)
                        )
                    except httpx.HTTPError as exc:
                        failures.append(f"caller {n}: {exc!r}")
                        continue
                    statuses.append(answer.status_code)
                    if answer.status_code != 200 or '"result"' not in answer.text:
                        failures.append(f"caller {n}: {answer.status_code} {answer.text[:200]}")

        async def listener(url: str) -> None:
            """Holds a GET stream; when the gateway ends it, reopens it through nginx."""
            async with httpx.AsyncClient(timeout=httpx.Timeout(20, read=None)) as http:
                sid = await raw_initialize(http, cluster.url)
                while not stop.is_set():
                    async with http.stream("GET", url, headers=handshake_headers(sid)) as s:
                        if s.status_code != 200:
                            failures.append(f"GET stream: {s.status_code}")
                            return
                        read = asyncio.ensure_future(s.aread())
                        ended = await asyncio.wait(
                            {read, asyncio.ensure_future(stop.wait())},
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        if read not in ended[0]:
                            read.cancel()
                            return
                    url = cluster.url  # the client reconnects through the balancer
                    reopened.append(1)

        victim = cluster.gateways[0]
        assert victim.proc is not None
        # One stream straight on the victim (as if nginx had placed it there), three
        # through nginx.
        tasks = [asyncio.ensure_future(caller(n)) for n in range(6)]
        tasks += [asyncio.ensure_future(listener(victim.url))]
        tasks += [asyncio.ensure_future(listener(cluster.url)) for _ in range(3)]
        await asyncio.sleep(1.5)
        before = len(statuses)
        victim.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(NGINX_DRAIN + 2.5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

        assert victim.proc.wait(15) == 0  # it drained and exited cleanly
        assert failures == []
        assert len(statuses) > before + 50, "the load did not go on across the SIGTERM"
        assert len(reopened) >= 1  # at least the stream on the victim was reopened
