"""A backend's protocol eras asked of it by a running gateway, when it answers."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from testbed.processes import free_port, running
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
