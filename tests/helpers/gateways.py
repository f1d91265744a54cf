"""Real processes for the integration tests: SDK upstreams and gateways on free ports.

Upstreams are ``testbed.servers.streaming`` (the official-SDK everything server plus probe
tools); gateways are ``python -m proxy serve`` (Granian) in front of them. A gateway
inherits this process's environment: a run with ``PROXY_NO_EXTENSIONS=1`` exercises the
pure-Python fast path end to end.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass

from testbed.processes import free_port, running

__all__ = ("Gateway", "Upstream", "start_gateway", "start_upstream")


@dataclass(frozen=True)
class Upstream:
    """One SDK server process: `name` is what its `whoami` tool reports."""

    name: str
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"


@dataclass(frozen=True)
class Gateway:
    """One gateway process; `url` is its MCP endpoint."""

    base: str
    upstreams: tuple[Upstream, ...]

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"


def start_upstream(stack: ExitStack, name: str) -> Upstream:
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.streaming", "--port", str(port), "--name", name]
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(running(cmd, f"{base}/healthz"))
    return Upstream(name, base)


def start_gateway(stack: ExitStack, upstreams: tuple[Upstream, ...], *options: str) -> Gateway:
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for upstream in upstreams:
        cmd += ["--upstream", upstream.url]
    cmd += ["--log-level", "warning", *options]
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(running(cmd, f"{base}/healthz"))
    return Gateway(base, upstreams)
