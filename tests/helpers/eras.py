"""Parts of the era-bridging tests: the conformance fixture server kept to one era, and a
gateway in front of it that knows which era that is."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack

import httpx

from testbed.processes import free_port, running


def fixture_server(stack: ExitStack, *options: str) -> str:
    """The conformance fixture server (``--handshake-only``, ``--stateless-only``, …),
    started in `stack`; its MCP URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.everything", "--port", str(port), *options]
    stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
    return f"http://127.0.0.1:{port}/mcp"


def era_gateway(
    stack: ExitStack, upstream: str, *options: str, env: dict[str, str] | None = None
) -> str:
    """A gateway in front of `upstream`, started in `stack`, once it knows the backend's
    eras; its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--upstream", upstream]
    cmd += ["--probe-interval", "0.2", "--log-level", "warning", *options]
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(running(cmd, f"{base}/healthz", env))
    deadline = time.monotonic() + 15
    while httpx.get(f"{base}/status", timeout=10).json()["backends"][0]["eras"] is None:
        assert time.monotonic() < deadline, "the backend's eras were never asked"
        time.sleep(0.1)
    return base
