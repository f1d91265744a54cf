"""/healthz, /readyz and /metrics of a running gateway (Granian + SDK everything upstream)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import pytest

from testbed.processes import free_port, running
from tests.helpers.clients import ACCEPT, raw_initialize

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Setup:
    gateway: str  # base URL
    upstream_port: int


@contextmanager
def everything(port: int) -> Iterator[None]:
    cmd = [sys.executable, "-m", "testbed.servers.everything", "--host", "127.0.0.1"]
    with running([*cmd, "--port", str(port)], f"http://127.0.0.1:{port}/healthz"):
        yield


def gateway(stack: ExitStack, upstream_port: int) -> str:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--upstream",
        f"http://127.0.0.1:{upstream_port}/mcp",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--probe-interval",
        "0.2",
    ]
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(running(cmd, f"{base}/healthz"))
    return base


@pytest.fixture(scope="module")
def live() -> Iterator[Setup]:
    """A gateway in front of a running upstream."""
    upstream_port = free_port()
    with ExitStack() as stack:
        stack.enter_context(everything(upstream_port))
        yield Setup(gateway(stack, upstream_port), upstream_port)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


async def eventually(http: httpx.AsyncClient, url: str, status: int, within: float) -> None:
    deadline = time.monotonic() + within
    while (response := await http.get(url)).status_code != status:
        assert time.monotonic() < deadline, f"{url}: still {response.status_code}: {response.text}"
        await asyncio.sleep(0.1)


async def test_healthz_is_200(http: httpx.AsyncClient, live: Setup) -> None:
    response = await http.get(f"{live.gateway}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_with_a_live_upstream(http: httpx.AsyncClient, live: Setup) -> None:
    response = await http.get(f"{live.gateway}/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_metrics_count_requests_after_traffic(http: httpx.AsyncClient, live: Setup) -> None:
    await raw_initialize(http, f"{live.gateway}/mcp")
    await http.post(f"{live.gateway}/mcp", content=b"{nope", headers={"accept": ACCEPT})
    response = await http.get(f"{live.gateway}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    assert "# TYPE proxy_requests_total counter" in lines
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line and not line.startswith("#")
    }
    assert samples['proxy_requests_total{method="initialize",code="2xx"}'] >= 1
    assert samples['proxy_requests_total{method="notifications",code="2xx"}'] >= 1
    assert samples['proxy_requests_total{method="other",code="4xx"}'] >= 1
    assert samples["proxy_sessions_created_total"] >= 1
    assert samples["proxy_sessions_open"] >= 1


async def test_readyz_is_503_while_the_only_upstream_is_down(http: httpx.AsyncClient) -> None:
    """Readiness reflects the upstream by itself, before any client request fails on it."""
    upstream_port = free_port()
    with ExitStack() as stack:
        base = gateway(stack, upstream_port)  # nothing listens on upstream_port yet
        response = await http.get(f"{base}/readyz")
        assert response.status_code == 503, response.text
        assert "no healthy replica" in response.text
        with everything(upstream_port):
            await eventually(http, f"{base}/readyz", 200, within=5.0)
        await eventually(http, f"{base}/readyz", 503, within=5.0)


async def test_readyz_is_503_after_a_request_finds_the_upstream_down(
    http: httpx.AsyncClient,
) -> None:
    upstream_port = free_port()
    with ExitStack() as stack:
        with everything(upstream_port):
            base = gateway(stack, upstream_port)
            await eventually(http, f"{base}/readyz", 200, within=5.0)
        body = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
        failed = await http.post(f"{base}/mcp", json=body, headers={"accept": ACCEPT})
        assert failed.status_code == 502
        assert failed.json()["id"] == 9
        response = await http.get(f"{base}/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unready"
        with everything(upstream_port):
            await eventually(http, f"{base}/readyz", 200, within=5.0)
