"""MCP servers nobody here wrote, started on free loopback ports: the reference
``server-everything`` (Streamable HTTP, handshake era only) and a FastMCP 4 server (both
eras), as their users run them."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass

from testbed import node
from testbed.processes import free_port, running

__all__ = ("Peer", "everything", "fast")


@dataclass(frozen=True)
class Peer:
    """A running server: its base URL and process id."""

    base: str
    pid: int

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"


def everything(stack: ExitStack, port: int | None = None) -> Peer:
    """``npx @modelcontextprotocol/server-everything streamableHttp`` (MCP on ``/mcp``)."""
    port = port or free_port()
    cmd = [node.node(), node.package_bin("mcp-server-everything"), "streamableHttp"]
    proc = stack.enter_context(
        running(cmd, f"tcp://127.0.0.1:{port}", {"PORT": str(port)}, timeout=60)
    )
    return Peer(f"http://127.0.0.1:{port}", proc.pid)


def fast(stack: ExitStack) -> Peer:
    """``testbed.servers.fast``: FastMCP 4 with ``transport="http"`` (MCP on ``/mcp``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.fast", "--port", str(port)]
    proc = stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz", timeout=60))
    return Peer(f"http://127.0.0.1:{port}", proc.pid)
