"""One process that serves requests of many clients: how a 2026-07-28 (stateless) client
reaches a stdio server, which speaks the handshake era only.

The process is started and initialised once, by the gateway itself (no sampling,
elicitation or roots offered: a stateless client cannot be asked back through it). Every
request's id and progress token are replaced by the gateway's own on the way in and
restored on the way out, so that two clients' id 1 never meet; what the process sends
about no request of its own (log messages, list changes) reaches no client, and a request
of the server's is answered with an error at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any

import orjson

from .. import __version__
from ..metrics import Metrics
from ..modern import for_handshake, restore as restored
from ..param_headers import list_tools
from .process import StdioProcess
from .session import END, SessionEnded, StdioSession, Stream

__all__ = ("HANDSHAKE_VERSION", "Clients", "SharedProcess", "restore")

logger = logging.getLogger("proxy.stdio")

HANDSHAKE_VERSION = "2025-11-25"
"""What the gateway asks for when it initialises a shared process."""


_TOOLS_WAIT = 10.0
"""Seconds the process has to list its tools."""


class SharedProcess:
    """A started, initialised process serving many clients' requests at once."""

    def __init__(self, process: StdioProcess, metrics: Metrics | None = None) -> None:
        self.session = StdioSession(process, metrics, shared=True)
        self.initialized: dict[str, Any] = {}
        """The process's answer to initialize (server/discover is answered from it)."""
        self._ids = itertools.count(1)
        self._tools: dict[str, Any] | None = None
        self._tools_lock = asyncio.Lock()
        self.session.tools_changed = self._forget_tools

    @property
    def ended(self) -> bool:
        return self.session.ended

    async def start(self, limit: float) -> None:
        """Start the process and initialise it (SessionEnded or TimeoutError if it does
        not answer within `limit` seconds)."""
        await self.session.process.start()
        self.session.start_reading()
        message = {
            "jsonrpc": "2.0",
            "id": "mcp-fastproxy-init",
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcp-fastproxy", "version": __version__},
            },
        }
        stream = await self.session.post(orjson.dumps(message), [message])
        assert stream is not None  # noqa: S101 - initialize is a request
        try:
            line = await asyncio.wait_for(stream.next(), limit)
        finally:
            self.session.done(stream)
        answer = orjson.loads(line) if line else {}
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise SessionEnded(self.session.name)
        self.initialized = result
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self.session.post(orjson.dumps(initialized), [initialized])
        self.session.started()

    async def request(self, message: dict[str, Any]) -> tuple[Stream, Any, Any]:
        """Send a client's request under an id (and progress token) of the gateway's; its
        stream, the client's id and progress token (to :func:`restore`)."""
        message, original_id, token = for_handshake(message, f"mcp-fastproxy-{next(self._ids)}")
        stream = await self.session.post(orjson.dumps(message), [message])
        assert stream is not None  # noqa: S101 - a request
        return stream, original_id, token

    async def input_schema(self, tool: str) -> Any:
        """The input schema of the process's tool `tool` (None: no such tool, or the
        process would not list its tools), from its tools/list, asked for once and again
        after it says the list changed."""
        async with self._tools_lock:
            if self._tools is None:
                self._tools = await self._list_tools()
            found = self._tools.get(tool)
        return found.get("inputSchema") if isinstance(found, dict) else None

    async def _list_tools(self) -> dict[str, Any]:
        return await list_tools(self._tools_page)

    async def _tools_page(self, cursor: str | None) -> Any:
        params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        message = {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": params}
        stream, _, _ = await self.request(message)
        try:
            line = await asyncio.wait_for(stream.next(), _TOOLS_WAIT)
        except TimeoutError:
            return None
        finally:
            self.session.done(stream)
        answer = orjson.loads(line) if line != END else None
        return answer.get("result") if isinstance(answer, dict) else None

    def _forget_tools(self) -> None:
        self._tools = None

    async def close(self) -> None:
        await self.session.close()


def restore(line: bytes, original_id: Any, token: Any, method: str, modern: bool = True) -> bytes:
    """A line of the process for one client's request (:func:`proxy.modern.restore`)."""
    message = orjson.loads(line)
    if not isinstance(message, dict):
        return line
    return orjson.dumps(restored(message, original_id, token, method, modern))


class Clients:
    """Handshake-era sessions served by one shared process (a backend with ``shared:
    true``): each has an id of its own and a GET stream that hears what the process says
    about no request (list changes, log messages). The process was initialised by the
    gateway, offering no sampling, elicitation or roots. When it ends, so do they all."""

    def __init__(self) -> None:
        self.process: SharedProcess | None = None
        self.listeners: dict[bytes, Stream | None] = {}

    def join(self, process: SharedProcess) -> bytes:
        """A new session on `process`; its id."""
        if process is not self.process:  # a new process: the old one's sessions are gone
            self.process = process
            self.listeners.clear()
            process.session.unrouted = self.broadcast
        sid = secrets.token_hex(16).encode()
        self.listeners[sid] = None
        return sid

    def __contains__(self, sid: object) -> bool:
        process = self.process
        return sid in self.listeners and process is not None and not process.ended

    def leave(self, sid: bytes) -> bool:
        """The session ends (its GET stream too); whether it was one."""
        if sid not in self:
            return False
        stream = self.listeners.pop(sid)
        if stream is not None:
            stream.end()
        return True

    def listen(self, sid: bytes) -> Stream:
        """The session's GET stream (a new one replaces the old, which ends)."""
        old = self.listeners.get(sid)
        if old is not None:
            old.end()
        stream = self.listeners[sid] = Stream()
        return stream

    def unlisten(self, sid: bytes, stream: Stream) -> None:
        if self.listeners.get(sid) is stream:
            self.listeners[sid] = None

    def broadcast(self, line: bytes) -> None:
        for stream in self.listeners.values():
            if stream is not None:
                stream.put(line)
