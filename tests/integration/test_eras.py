"""A backend's protocol eras asked of it by a running gateway, when it answers."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from testbed.processes import free_port, running
from tests.helpers.eras import era_gateway
from tests.helpers.gateways import start_gateway


def test_a_backend_that_comes_up_later_is_asked_then(tmp_path: Path) -> None:
    """Nothing listens at first (not known); once a server answers there, its eras are
    asked and shown (the status page, /metrics)."""
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "backends:\n"
        f"  - {{name: late, replicas: ['http://127.0.0.1:{port}/mcp']}}\n"
        "probe_interval: 0.2\n"
    )
    with ExitStack() as stack:
        gateway = start_gateway(stack, (), "--config", str(config))

        def late() -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(f"{gateway.base}/status", timeout=10).json()
            backend: dict[str, Any] = found["backends"][0]
            return backend

        assert late()["eras"] is None
        server = [sys.executable, "-m", "testbed.servers.streaming", "--port", str(port)]
        stack.enter_context(running([*server, "--name", "late"], f"tcp://127.0.0.1:{port}"))
        deadline = time.monotonic() + 15
        while late()["eras"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert (late()["eras"], late()["era_source"]) == (["handshake", "stateless"], "probed")
        metrics = httpx.get(f"{gateway.base}/metrics", timeout=10).text
        assert 'proxy_backend_era{backend="late",era="stateless"} 1' in metrics


def test_a_backend_upgraded_in_place_is_asked_again_when_it_refuses_the_bridge() -> None:
    """The gateway probes rarely (``--probe-interval 60``): it does not see the backend
    restart as a server of the 2026-07-28 era alone. The era bridge's request in its
    backend session is refused (the client gets that 400), the backend is asked again,
    and stateless requests then go through as they came."""
    port = free_port()
    upstream = f"http://127.0.0.1:{port}/mcp"
    server = [sys.executable, "-m", "testbed.servers.everything", "--port", str(port)]
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/list",
    }
    with ExitStack() as stack:
        old = ExitStack()
        old.enter_context(
            running([*server, "--handshake-only"], f"http://127.0.0.1:{port}/healthz")
        )
        base = era_gateway(stack, upstream, "--probe-interval", "60")
        assert _eras(base) == ["handshake"]
        assert httpx.post(f"{base}/mcp", json=body, headers=headers, timeout=10).status_code == 200
        old.close()
        stack.enter_context(
            running([*server, "--stateless-only"], f"http://127.0.0.1:{port}/healthz")
        )
        refused = httpx.post(f"{base}/mcp", json=body, headers=headers, timeout=10)
        assert refused.status_code == 400  # the bridge's session: a version it does not know
        deadline = time.monotonic() + 10
        while _eras(base) != ["stateless"]:
            assert time.monotonic() < deadline, _eras(base)
            time.sleep(0.1)
        answer = httpx.post(f"{base}/mcp", json=body, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["tools"]


def _eras(base: str) -> Any:
    return httpx.get(f"{base}/status", timeout=10).json()["backends"][0]["eras"]
