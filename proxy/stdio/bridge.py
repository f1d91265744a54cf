"""A stdio backend served as a Streamable HTTP replica, on a Unix socket of the worker's.

Each worker runs one bridge per stdio backend. To the rest of the gateway it is one more
replica (``http+unix://…``): sessions, federation, traces, limits and the relay work on
it as on any HTTP backend. The bridge speaks the handshake era of Streamable HTTP:

- POST ``initialize`` without a session starts a process (a client session is a process
  of its own) and answers with its ``Mcp-Session-Id``;
- POST in a session writes the message to the process's stdin; a request's answer comes
  back as JSON when it is the first and only thing the process writes for it within
  ``JSON_WAIT`` seconds, else as an event stream carrying what comes before it
  (progress, log messages, the server's own requests), then the answer;
- notifications and responses get 202; GET opens the session's stream (what belongs to
  no request); DELETE ends the process.

A session whose process ended is not found (404): the client initialises again. The socket
lives in a directory only the gateway's user can enter (0700) and is itself 0600: whoever
could write to it could run the configured command's tools without passing through the
gateway's authentication, limits and audit. With ``peer_address`` (:mod:`proxy.stdio.peers`)
the bridge also listens there, on a port of its own, for the other gateway replicas: that
listener answers only requests that carry their shared key, and its URL is the replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httptools
import orjson

from .. import jsonrpc as rpc
from ..jsonrpc import HANDSHAKE_VERSIONS
from ..metrics import Metrics
from ..modern import ERROR_STATUS, discovered, rejection
from ..param_headers import call_mismatch
from ..settings import StdioSettings
from . import wire
from .peers import HEADER, Peers
from .process import StdioProcess
from .session import END, IdInUse, SessionEnded, StdioSession, Stream, event_id
from .shared import Clients, SharedProcess, restore as restored
from .spawner import Spawner

__all__ = ("JSON_WAIT", "StdioBridge")

logger = logging.getLogger("proxy.stdio")

JSON_WAIT = 1.0
"""Seconds an answer may take and still come back as JSON (see the module's docstring)."""

PEER_WAIT = 10.0
"""Seconds a connection to a bridge's network listener has to send its first request."""


class StdioBridge:
    """The processes of one stdio backend in one worker, behind a Unix socket."""

    def __init__(
        self,
        name: str,
        settings: StdioSettings,
        path: Path,
        *,
        max_body: int = 64 * 1024 * 1024,
        idle_seconds: float = 3600.0,
        metrics: Metrics | None = None,
        peers: Peers | None = None,
    ) -> None:
        """`peers`: listen for the other gateway replicas too (bound here, so that the
        URL is known before the bridge opens)."""
        self.name = name
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.path = path
        self.url = "http+unix://" + quote(str(self.path), safe="") + "/mcp"
        self.peers = peers
        self._peer_socket: socket.socket | None = None
        self._peer_path = b""
        self._peer_server: asyncio.AbstractServer | None = None
        if peers is not None:
            self._peer_socket = socket.create_server(
                (peers.address, 0),
                family=socket.AF_INET6 if ":" in peers.address else socket.AF_INET,
                backlog=1024,
            )
            self._peer_socket.setblocking(False)
            self.url = peers.url(name, self._peer_socket.getsockname()[1])
            self._peer_path = urlsplit(self.url).path.encode()
        self.max_body = max_body
        self.idle_seconds = idle_seconds
        self.sessions: dict[bytes, StdioSession] = {}
        self.used: dict[bytes, float] = {}
        self.starting = 0
        self._server: asyncio.AbstractServer | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._reaping: set[asyncio.Task[int | None]] = set()
        self.shared: SharedProcess | None = None
        self.clients = Clients()
        """Handshake-era sessions on the shared process (``shared: true``)."""
        self._shared_lock = asyncio.Lock()
        self.spawner = Spawner(name, settings, self.metrics, path.parent, self._busy)

    async def open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)
        if self._peer_socket is not None:
            self._peer_server = await asyncio.start_server(self._serve_peer, sock=self._peer_socket)
        self._reaper = asyncio.create_task(self._reap_idle(), name=f"{self.name}-reaper")
        self.spawner.fill_soon()

    async def close(self) -> None:
        """Stop listening and end every process (reaped: none is left behind)."""
        if self._reaper is not None:
            self._reaper.cancel()
        await self.spawner.close(self._reap)
        if self._server is not None:
            self._server.close()
        if self._peer_server is not None:
            self._peer_server.close()
        elif self._peer_socket is not None:  # bound, never opened (a reload that failed)
            self._peer_socket.close()
        for task in list(self._connections):
            task.cancel()
        sessions, self.sessions = list(self.sessions.values()), {}
        if self.shared is not None:
            sessions.append(self.shared.session)
        await asyncio.gather(*(s.close() for s in sessions), *self._reaping, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def processes(self) -> int:
        return self._busy() + self.spawner.count

    def _busy(self) -> int:
        return len(self.sessions) + self.starting

    # -- the HTTP side ---------------------------------------------------------------------

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection from another gateway replica (see :mod:`proxy.stdio.peers`)."""
        await self._serve(reader, writer, peer=True)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, peer: bool = False
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - called by the server, in a task
        self._connections.add(task)
        incoming = wire.Incoming()
        parser = httptools.HttpRequestParser(incoming)
        # A connection from the network has PEER_WAIT seconds for its first request;
        # each request must carry the replicas' key, checked once its head is in.
        deadline = asyncio.get_running_loop().time() + PEER_WAIT if peer else None
        try:
            while True:
                incoming.reset()
                while not incoming.complete:
                    async with asyncio.timeout_at(deadline):
                        data = await reader.read(1 << 16)
                    if not data:
                        return
                    parser.feed_data(data)
                    if peer and incoming.head_complete and not self._peer_allows(incoming):
                        writer.write(wire.error(403, -32600, "Forbidden"))
                        return
                    if len(incoming.body) > self.max_body:
                        writer.write(wire.error(413, -32600, "Content Too Large"))
                        return
                deadline = None
                if incoming.url.split(b"?", 1)[0] != (self._peer_path if peer else b"/mcp"):
                    writer.write(wire.error(404, -32600, "Not Found"))
                    return
                method = parser.get_method()
                await self._handle(method, incoming, reader, writer)
                if method == b"GET" or not parser.should_keep_alive():
                    return  # a GET stream read the connection to its end
        except httptools.HttpParserError:
            writer.write(wire.error(400, -32700, "Bad Request"))
        except TimeoutError:  # a peer connection that sent no whole request in time
            pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    def _peer_allows(self, incoming: wire.Incoming) -> bool:
        return self.peers is not None and self.peers.allows(incoming.headers.get(HEADER))

    async def _handle(
        self,
        method: bytes,
        incoming: wire.Incoming,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        sid = incoming.headers.get(b"mcp-session-id")
        version = incoming.headers.get(b"mcp-protocol-version")
        if method == b"POST" and sid is None and version and version not in HANDSHAKE_VERSIONS:
            await self._stateless(bytes(incoming.body), incoming, writer)
        elif method == b"POST":
            await self._post(sid, bytes(incoming.body), writer)
        elif method == b"GET":
            accept = incoming.headers.get(b"accept", b"")
            last_event = incoming.headers.get(b"last-event-id")
            await self._get(sid, accept, last_event, reader, writer)
        elif method == b"DELETE" and sid is not None and self.clients.leave(sid):
            self.used.pop(sid, None)
            writer.write(wire.response(200, []))
        elif method == b"DELETE":
            session = None if sid is None else self.sessions.pop(sid, None)
            if sid is None or session is None:
                writer.write(wire.error(404, -32001, "Session not found"))
                return
            self.used.pop(sid, None)
            await session.close()
            writer.write(wire.response(200, []))
        else:
            writer.write(wire.error(405, -32600, "Method Not Allowed"))

    def _session(self, sid: bytes | None, writer: asyncio.StreamWriter) -> StdioSession | None:
        """The live session `sid` names (an error answered when there is none)."""
        if sid is None:
            writer.write(wire.error(400, -32600, "Bad Request: Mcp-Session-Id header is required"))
            return None
        session = self.sessions.get(sid)
        if session is not None and session.ended:
            self.sessions.pop(sid, None)
            self.used.pop(sid, None)
            self._reap(session)
            session = None
        if session is None:
            writer.write(wire.error(404, -32001, "Session not found"))
            return None
        self.used[sid] = time.monotonic()
        return session

    async def _post(self, sid: bytes | None, body: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            writer.write(wire.error(400, -32700, "Parse error"))
            return
        messages = parsed if isinstance(parsed, list) else [parsed]
        if not messages or not all(isinstance(m, dict) for m in messages):
            writer.write(wire.error(400, -32600, "Invalid Request"))
            return
        if body.find(b"\n") >= 0 or body.find(b"\r") >= 0:
            body = orjson.dumps(parsed)  # one line: a message a line on stdin
        if any(m.get("method") == "initialize" for m in messages):
            if len(messages) != 1:
                writer.write(wire.error(400, -32600, "initialize must be sent alone"))
                return
            if self.settings.shared:
                await self._join(messages[0], writer)
            else:
                await self._initialize(body, messages[0], writer)
            return
        if sid is not None and sid in self.clients:
            await self._post_shared(sid, messages, writer)
            return
        session = self._session(sid, writer)
        if session is None:
            return
        try:
            stream = await session.post(body, messages)
        except SessionEnded:
            writer.write(wire.error(404, -32001, "Session not found"))
            return
        except IdInUse:
            writer.write(wire.error(400, -32600, "Invalid Request: a request with this id is open"))
            return
        if stream is None:
            writer.write(wire.response(202, []))
            return
        try:
            await self._answer(stream, writer, [], resumable=True)
        finally:
            session.detach(stream)  # forgotten if it ended, else kept for a resumption

    # -- 2026-07-28: no session, a shared process ------------------------------------------

    async def _stateless(
        self, body: bytes, incoming: wire.Incoming, writer: asyncio.StreamWriter
    ) -> None:
        """A 2026-07-28 request: served by the shared process (started and initialised
        by the gateway on the first), server/discover answered from its initialize; the
        routing and Mcp-Param-* headers checked as a server of that era checks them."""
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            writer.write(wire.error(400, -32700, "Parse error"))
            return
        if not isinstance(message, dict) or "method" not in message:
            writer.write(wire.error(400, -32600, "Invalid Request"))
            return
        request_id = message.get("id")
        if "id" not in message:
            writer.write(wire.response(202, []))  # nothing to deliver it to: no session
            return
        method = message["method"]
        refused = rejection(message, incoming.headers)
        if refused is not None:
            answer = {"jsonrpc": "2.0", "id": request_id, "error": refused}
            writer.write(wire.json_answer(ERROR_STATUS.get(refused["code"], 400), answer))
            return
        if method == "subscriptions/listen":
            writer.write(
                wire.error(
                    200,
                    -32601,
                    f"backend {self.name}: a local server has no subscriptions "
                    "for stateless clients",
                    request_id,
                )
            )
            return
        try:
            shared = await self._shared()
        except (OSError, SessionEnded, TimeoutError) as exc:
            logger.error("backend %s: the shared process did not start: %s", self.name, exc)
            writer.write(
                wire.error(
                    502, -32603, f"backend {self.name}: the server did not start", request_id
                )
            )
            return
        if method == "tools/call":
            disagreed = await self._param_headers(shared, message, incoming)
            if disagreed is not None:
                writer.write(wire.error(400, rpc.HEADER_MISMATCH, disagreed, request_id))
                return
        if method == "server/discover":
            writer.write(
                wire.json_answer(
                    200,
                    {"jsonrpc": "2.0", "id": request_id, "result": discovered(shared.initialized)},
                )
            )
            return
        try:
            stream, original_id, token = await shared.request(message)
        except SessionEnded:
            writer.write(
                wire.error(502, -32603, f"backend {self.name}: the server ended", request_id)
            )
            return
        try:
            await self._answer(stream, writer, [], restore=(original_id, token, method, True))
        finally:
            shared.session.done(stream)

    async def _param_headers(
        self, shared: SharedProcess, message: dict[str, Any], incoming: wire.Incoming
    ) -> str | None:
        """Why a tools/call's Mcp-Param-* headers disagree with its arguments, as the
        tool's input schema declares them (:mod:`proxy.param_headers`), or None."""
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str):
            return None
        try:
            schema = await shared.input_schema(name)
        except SessionEnded:
            return None  # the call itself finds the process gone
        return call_mismatch(params, schema, incoming.headers, incoming.duplicated)

    # -- handshake-era sessions on the shared process (shared: true) --------------------------

    async def _join(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """initialize of a session on the shared process: answered from the process's
        own initialize (the gateway's), under a session id of its own."""
        request_id = message.get("id")
        try:
            shared = await self._shared()
        except (OSError, SessionEnded, TimeoutError) as exc:
            logger.error("backend %s: the shared process did not start: %s", self.name, exc)
            failed = f"backend {self.name}: the server did not start"
            writer.write(wire.error(504, -32603, failed, request_id))
            return
        sid = self.clients.join(shared)
        self.used[sid] = time.monotonic()
        self.metrics.stdio_starts.inc(self.name, "shared")
        answer = {"jsonrpc": "2.0", "id": request_id, "result": shared.initialized}
        headers = [(b"content-type", b"application/json"), (b"mcp-session-id", sid)]
        writer.write(wire.response(200, headers, orjson.dumps(answer)))

    async def _post_shared(
        self, sid: bytes, messages: list[dict[str, Any]], writer: asyncio.StreamWriter
    ) -> None:
        """A POST in a session on the shared process: a request goes under an id of the
        gateway's; notifications and responses stay here (the gateway initialised the
        process; it asks clients nothing)."""
        self.used[sid] = time.monotonic()
        shared = self.clients.process
        requests = [m for m in messages if "method" in m and "id" in m]
        if shared is None or not requests:
            writer.write(wire.response(202, []))
            return
        if len(messages) != 1:
            writer.write(wire.error(400, -32600, "Invalid Request: one message at a time"))
            return
        try:
            stream, original_id, token = await shared.request(requests[0])
        except SessionEnded:
            writer.write(wire.error(404, -32001, "Session not found"))
            return
        method = str(requests[0].get("method"))
        try:
            await self._answer(stream, writer, [], restore=(original_id, token, method, False))
        finally:
            shared.session.done(stream)

    async def _shared(self) -> SharedProcess:
        """The shared process, started (again, if it ended) when first needed."""
        async with self._shared_lock:
            shared = self.shared
            if shared is None or shared.ended:
                if shared is not None:
                    self._reap(shared.session)
                    self.shared = None
                if self.spawner.waiting():
                    raise SessionEnded(f"{self.name}: its process keeps ending at start")
                shared = SharedProcess(self.spawner.new(), self.metrics)
                shared.session.crashed = self.spawner.crashed
                try:
                    await shared.start(self.settings.start_timeout)
                except BaseException:
                    self.metrics.stdio_spawns.inc(self.name, "unanswered")
                    await shared.close()
                    raise
                self.metrics.stdio_spawns.inc(self.name, "started")
                self.shared = shared
            return shared

    async def _initialize(self, body: bytes, message: dict[str, Any], writer: Any) -> None:
        settings = self.settings
        spawns = self.metrics.stdio_spawns
        if self.processes >= settings.max_processes:
            spawns.inc(self.name, "refused")
            writer.write(
                wire.error(
                    503,
                    -32603,
                    f"backend {self.name}: all {settings.max_processes} processes are in use",
                    message.get("id"),
                )
            )
            return
        wait = self.spawner.waiting()
        if wait:
            spawns.inc(self.name, "refused")
            writer.write(
                wire.error(
                    503,
                    -32603,
                    f"backend {self.name}: its processes keep ending at start; "
                    f"trying again in {wait:.0f} s",
                    message.get("id"),
                    retry_after=max(1, round(wait)),
                )
            )
            return
        process = self.spawner.take(self._reap)
        self.starting += 1
        starting = self.metrics.stdio_processes
        starting.inc(self.name, "starting")
        try:
            if process is None:
                self.metrics.stdio_starts.inc(self.name, "cold")
                process = self.spawner.new()
                try:
                    await process.start()
                except OSError as exc:
                    spawns.inc(self.name, "failed")
                    logger.error("%s", exc.strerror or exc)
                    failed = f"backend {self.name}: cannot start"
                    writer.write(wire.error(502, -32603, failed, message.get("id")))
                    return
            else:
                self.metrics.stdio_starts.inc(self.name, "warm")
            session = StdioSession(process, self.metrics)
            session.crashed = self.spawner.crashed
            session.start_reading()
            sid = secrets.token_hex(16).encode()
            try:
                stream = await session.post(body, [message])
                assert stream is not None  # noqa: S101 - initialize is a request
                first = await asyncio.wait_for(stream.next(), settings.start_timeout)
            except (SessionEnded, TimeoutError):
                spawns.inc(self.name, "unanswered")
                await session.close()
                logger.error(
                    "backend %s: the process did not answer initialize within %.0f s",
                    self.name,
                    settings.start_timeout,
                )
                writer.write(
                    wire.error(
                        504,
                        -32603,
                        f"backend {self.name}: the server did not start",
                        message.get("id"),
                    )
                )
                return
            if session.ended:
                spawns.inc(self.name, "unanswered")
                await session.close()
                writer.write(
                    wire.error(
                        502, -32603, f"backend {self.name}: the server ended", message.get("id")
                    )
                )
                return
            self.sessions[sid] = session
            self.used[sid] = time.monotonic()
            spawns.inc(self.name, "started")
            session.started()
        finally:
            self.starting -= 1
            starting.dec(self.name, "starting")
        try:
            await self._answer(stream, writer, [(b"mcp-session-id", sid)], first)
        finally:
            session.done(stream)

    async def _answer(
        self,
        stream: Stream,
        writer: asyncio.StreamWriter,
        headers: list[tuple[bytes, bytes]],
        first: bytes | None = None,
        *,
        restore: tuple[Any, Any, str, bool] | None = None,
        resumable: bool = False,
    ) -> None:
        """Relay a POST's stream: JSON when its answer comes first and alone, soon; an
        event stream otherwise (`resumable`: with event ids, after a priming event).
        `restore`: the client's id, progress token, method and era, to put back in place
        of the shared process's (:func:`proxy.stdio.shared.restore`)."""
        if first is None:
            try:
                first = await asyncio.wait_for(stream.next(), JSON_WAIT)
            except TimeoutError:
                first = None
        if restore is not None and first is not None and first != END:
            first = restored(first, *restore)
        if first is not None and first != END and not stream.ids and stream.queue.qsize() == 1:
            modern = restore is not None and restore[3]
            status = wire.error_status(first) if modern else 200
            stream.finished = True
            writer.write(
                wire.response(status, [(b"content-type", b"application/json"), *headers], first)
            )
            return
        writer.write(
            wire.SSE_HEAD + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
        )
        if resumable:
            writer.write(wire.priming(stream.priming_id))
        line = first
        while True:
            if line is None:
                line = await stream.next()
            if line == END:
                break
            if restore is not None and line is not first:
                line = restored(line, *restore)
            writer.write(wire.event(line, stream.relayed(line) if resumable else b""))
            await writer.drain()
            line = None
        stream.finished = True
        writer.write(b"0\r\n\r\n")

    async def _resume(
        self, session: StdioSession, stream: Stream, after: int, writer: asyncio.StreamWriter
    ) -> None:
        """A GET that takes over a detached POST stream: what it relayed after event
        `after`, then the rest as it comes, to its end."""
        writer.write(wire.SSE_HEAD + b"\r\n")
        for kept_id, line in stream.after(after):
            writer.write(wire.event(line, kept_id))
        try:
            while (line := await stream.next()) != END:
                writer.write(wire.event(line, stream.relayed(line)))
                await writer.drain()
            stream.finished = True
            writer.write(b"0\r\n\r\n")
        finally:
            session.detach(stream)

    async def _get(
        self,
        sid: bytes | None,
        accept: bytes,
        last_event: bytes | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """A GET stream; with `last_event` (``Last-Event-ID``), the resumption of the
        stream that event was on: a detached POST stream, or the latest GET stream (an
        id of no stream the session still has: a new GET stream)."""
        if b"text/event-stream" not in accept and b"*/*" not in accept:
            writer.write(wire.error(406, -32600, "Not Acceptable: text/event-stream is required"))
            return
        if sid is not None and sid in self.clients:
            stream = self.clients.listen(sid)
            try:
                await self._listen(stream, sid, reader, writer)
            finally:
                self.clients.unlisten(sid, stream)
            return
        session = self._session(sid, writer)
        if session is None:
            return
        resumed = None if last_event is None else event_id(last_event)
        number, after = resumed or (0, 0)
        detached = session.resume(number) if resumed else None
        if detached is not None:
            await self._resume(session, detached, after, writer)
            return
        stream = session.listen(number if resumed else None)
        replay = stream.after(after) if stream.sent and resumed else []
        try:
            await self._listen(stream, sid, reader, writer, replay)
        finally:
            session.unlisten(stream)

    async def _listen(
        self,
        stream: Stream,
        sid: bytes | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        replay: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Relay a GET stream until it ends or its reader leaves (a stream of a session's
        own process with event ids, after a priming event, or after `replay`)."""
        writer.write(wire.SSE_HEAD + b"\r\n")
        resumable = stream.number != 0
        if replay:
            for kept_id, line in replay:
                writer.write(wire.event(line, kept_id))
        elif resumable:
            writer.write(wire.priming(stream.priming_id))
        await writer.drain()
        gone = asyncio.ensure_future(reader.read(1))  # the gateway hangs up: EOF
        try:
            while True:
                nxt = asyncio.ensure_future(stream.next())
                await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    raise ConnectionResetError("the stream's reader left")
                line = nxt.result()
                if line == END:
                    break
                writer.write(wire.event(line, stream.relayed(line) if resumable else b""))
                await writer.drain()
                if sid is not None:
                    self.used[sid] = time.monotonic()
            writer.write(b"0\r\n\r\n")
        finally:
            gone.cancel()

    def _reap(self, ending: StdioSession | StdioProcess) -> None:
        """End (and reap) a session's process, or a process, in the background."""
        stop = ending.close() if isinstance(ending, StdioSession) else ending.stop()
        task = asyncio.create_task(stop, name=f"{self.name}-reap")
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _reap_idle(self) -> None:
        """End the processes of sessions nobody used for ``idle_seconds``."""
        while True:
            await asyncio.sleep(min(60.0, self.idle_seconds / 4))
            limit = time.monotonic() - self.idle_seconds
            for sid, used in list(self.used.items()):
                if used >= limit:
                    continue
                if sid in self.clients.listeners:  # a session on the shared process
                    if self.clients.listeners[sid] is None:
                        self.clients.leave(sid)
                        del self.used[sid]
                    continue
                session = self.sessions.get(sid)
                if session is not None and session.listener is None:
                    logger.info("backend %s: an idle session's process ended", self.name)
                    del self.sessions[sid], self.used[sid]
                    await session.close()
