"""One client session of a stdio backend: its process, and where each message the process
writes goes.

The MCP stdio transport has one pipe each way; Streamable HTTP has a stream per POSTed
request and a GET stream. A message from the process goes to:

- a response: the stream of the POST whose request has that id (and ends it once every
  request of that POST is answered);
- ``notifications/progress``: the stream of the request that gave its ``progressToken``;
- a request of the server's (sampling, elicitation, roots, ping) and a log message: the
  newest POST stream still open (the request it is most likely about), else the GET
  stream;
- anything else (``list_changed``, resource updates…): the GET stream.

What finds no stream waits (at most ``PARKED`` messages) for the next GET stream. A line
that is not JSON-RPC is logged and dropped: it never reaches a client.

Streams can be resumed (``Last-Event-ID``): each stream has a number in its session, and
each message relayed on it the event id ``<number>-<sequence>``; the stream keeps what it
relayed (up to ``REPLAY_BYTES``). A POST stream whose reader leaves before its last answer
is *detached*: its answers still gather there, and a GET naming one of its event ids
takes it over: what came after that event, then the rest as it arrives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import orjson

from ..metrics import Metrics
from ..modern import refusal
from .process import ProcessEnded, StdioProcess

__all__ = ("PARKED", "IdInUse", "SessionEnded", "StdioSession", "Stream", "event_id")

logger = logging.getLogger("proxy.stdio")

PARKED = 256
"""Messages kept for a GET stream that is not open yet; older ones are dropped."""

END = b""
"""What a stream's queue holds after its last message."""

REPLAY_BYTES = 1024 * 1024
REPLAY_EVENTS = 256
"""What a stream keeps of the messages it relayed, to replay on resumption: at most this
many, of at most this many bytes in all (the newest message is always kept). A session's
latest GET stream keeps them for the session's life."""

DETACHED = 16
"""POST streams a session keeps for resumption after their readers left; older ones are
forgotten."""


class SessionEnded(ConnectionError):
    """The session's process is gone: the client must initialise again."""


class IdInUse(ValueError):
    """A request reuses the id of one of the session's requests still in flight (its
    answer could not be told apart)."""


class Stream:
    """The messages for one POST (the answers to its requests, and what comes before
    them) or for the GET stream, in order."""

    __slots__ = ("_kept", "_sequence", "finished", "ids", "number", "queue", "sent", "tokens")

    def __init__(self, ids: set[bytes] | None = None, number: int = 0) -> None:
        self.ids = ids if ids is not None else set()
        """The requests (JSON ids) still unanswered: the stream ends with the last."""
        self.tokens: list[bytes] = []
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.number = number
        """Its number in the session (0: not resumable), the first part of its event ids."""
        self.sent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._sequence = 0
        self._kept = 0
        self.finished = False
        """Its reader took END: nothing more will come (nothing to resume)."""

    def put(self, line: bytes) -> None:
        self.queue.put_nowait(line)

    def end(self) -> None:
        self.queue.put_nowait(END)

    async def next(self) -> bytes:
        """The next message; END after the last."""
        return await self.queue.get()

    @property
    def priming_id(self) -> bytes:
        """The event id of the stream's start (an event without data: resume from here)."""
        return b"%d-%d" % (self.number, self._sequence)

    def relayed(self, line: bytes) -> bytes:
        """Keep `line` as relayed on the stream (for a resumption); its event id."""
        self._sequence += 1
        self.sent.append((self._sequence, line))
        self._kept += len(line)
        while (self._kept > REPLAY_BYTES or len(self.sent) > REPLAY_EVENTS) and len(self.sent) > 1:
            self._kept -= len(self.sent.popleft()[1])
        return b"%d-%d" % (self.number, self._sequence)

    def after(self, sequence: int) -> list[tuple[bytes, bytes]]:
        """The kept messages relayed after event `sequence`, with their event ids."""
        return [(b"%d-%d" % (self.number, n), line) for n, line in self.sent if n > sequence]

    def successor(self) -> Stream:
        """A stream that goes on where this one stopped (a GET stream resumed): the same
        number, what it relayed, the next event ids."""
        stream = Stream(number=self.number)
        stream.sent, stream._sequence, stream._kept = self.sent, self._sequence, self._kept
        return stream


def event_id(value: bytes) -> tuple[int, int] | None:
    """A ``Last-Event-ID`` of ours as (stream number, sequence); None for another's."""
    number, dash, sequence = value.partition(b"-")
    if not dash or not number.isdigit() or not sequence.isdigit():
        return None
    if len(number) > 18 or len(sequence) > 18:
        return None
    return int(number), int(sequence)


def _key(value: Any) -> bytes:
    """A JSON-RPC id or progress token as a dict key (1 and "1" differ, as in JSON)."""
    return orjson.dumps(value)


class StdioSession:
    """A started process serving one client session."""

    def __init__(
        self, process: StdioProcess, metrics: Metrics | None = None, *, shared: bool = False
    ) -> None:
        self.process = process
        self.shared = shared
        """Serving many clients (:mod:`proxy.stdio.shared`): what belongs to no request
        of theirs goes nowhere, and the server's own requests are refused."""
        self._refusals: set[asyncio.Task[None]] = set()
        self.crashed: Callable[[bool], None] | None = None
        """Told, with whether it had answered initialize, when the process ends without
        being asked to."""
        self.tools_changed: Callable[[], None] | None = None
        """Shared: told when the process says its tool list changed."""
        self.unrouted: Callable[[bytes], None] | None = None
        """Shared: where a notification about no request goes (every session's GET
        stream, :class:`proxy.stdio.shared.Clients`); nowhere when None."""
        self.metrics = metrics
        name = process.name
        self._in = [0.0] if metrics is None else metrics.stdio_bytes.cell(name, "in")
        self._out = [0.0] if metrics is None else metrics.stdio_bytes.cell(name, "out")
        self.running = False
        """It answered initialize (counted among the running processes)."""
        self.closing = False
        self.pending: dict[bytes, Stream] = {}
        self.tokens: dict[bytes, Stream] = {}
        self.posts: list[Stream] = []
        self.listener: Stream | None = None
        self.listened: Stream | None = None
        """The latest GET stream, open or not (a GET may resume it)."""
        self.detached: dict[int, Stream] = {}
        """POST streams whose reader left before their end, by number (resumable)."""
        self._numbers = itertools.count(1)
        self.parked: collections.deque[bytes] = collections.deque(maxlen=PARKED)
        self.ended = False
        self._reader: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.process.name

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"{self.name}-stdout")

    def started(self) -> None:
        """It answered initialize: one more running process."""
        self.running = True
        if self.metrics is not None:
            self.metrics.stdio_processes.inc(self.name, "running")

    async def close(self) -> int | None:
        """End the process (and every stream still open); its exit status."""
        self.closing = True
        self._end()
        status = await self.process.stop()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return status

    # -- client to process ----------------------------------------------------------------

    async def post(self, body: bytes, messages: list[Any]) -> Stream | None:
        """Write a POSTed body to the process; the stream of its answers, or None when
        it holds no request (notifications and responses: nothing comes back)."""
        if self.ended:
            raise SessionEnded(self.name)
        requests = [m for m in messages if "method" in m and "id" in m]
        stream = None
        if requests:
            stream = Stream({_key(m["id"]) for m in requests}, next(self._numbers))
            if len(stream.ids) < len(requests) or not stream.ids.isdisjoint(self.pending):
                raise IdInUse(self.name)
            for key in stream.ids:
                self.pending[key] = stream
            for m in requests:
                token = _progress_token(m)
                if token is not None:
                    stream.tokens.append(token)
                    self.tokens[token] = stream
            self.posts.append(stream)
        self._in[0] += len(body) + 1
        try:
            await self.process.send(body)
        except ProcessEnded:
            if stream is not None:
                self.done(stream)
            raise SessionEnded(self.name) from None
        return stream

    def done(self, stream: Stream) -> None:
        """The POST's answer was relayed, or its client left: forget its stream."""
        for key in stream.ids:
            if self.pending.get(key) is stream:
                del self.pending[key]
        for token in stream.tokens:
            if self.tokens.get(token) is stream:
                del self.tokens[token]
        with contextlib.suppress(ValueError):
            self.posts.remove(stream)
        if self.detached.get(stream.number) is stream:
            del self.detached[stream.number]

    def detach(self, stream: Stream) -> None:
        """The POST's reader left before its end: its answers still gather in it, for a
        GET that resumes it; the server's new requests go elsewhere."""
        if stream.finished:
            self.done(stream)
            return
        with contextlib.suppress(ValueError):
            self.posts.remove(stream)
        self.detached[stream.number] = stream
        while len(self.detached) > DETACHED:
            self.done(next(iter(self.detached.values())))

    def resume(self, number: int) -> Stream | None:
        """The detached POST stream `number`, taken over by a GET (None: there is none)."""
        return self.detached.pop(number, None)

    def listen(self, resumed: int | None = None) -> Stream:
        """The GET stream (a new one replaces the old, which ends), with what waited.
        `resumed`: the number of the GET stream it goes on from, if the latest."""
        if self.listener is not None:
            self.listener.end()
        latest = self.listened
        if latest is not None and latest.number == resumed:
            stream = latest.successor()
        else:
            stream = Stream(number=next(self._numbers))
        self.listener = self.listened = stream
        while self.parked:
            stream.put(self.parked.popleft())
        if self.ended:
            stream.end()
        return stream

    def unlisten(self, stream: Stream) -> None:
        if self.listener is stream:
            self.listener = None

    # -- process to client ----------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                self.route(await self.process.receive())
        except ProcessEnded as exc:
            if not self.ended:
                logger.warning("%s", exc)
        finally:
            self._end()

    def route(self, line: bytes) -> None:
        """Send one line the process wrote where it belongs (see the module's docstring)."""
        self._out[0] += len(line) + 1
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            logger.warning("backend %s: a line on stdout that is not JSON, dropped", self.name)
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            logger.warning("backend %s: a message that is not JSON-RPC 2.0, dropped", self.name)
            return
        method = message.get("method")
        if not isinstance(method, str):  # a response
            key = _key(message.get("id"))
            stream = self.pending.pop(key, None)
            if stream is None:
                logger.warning("backend %s: an answer to no open request, dropped", self.name)
                return
            stream.put(line)
            stream.ids.discard(key)
            if not stream.ids:
                stream.end()
            return
        target: Stream | None = None
        if self.shared and method != "notifications/progress":
            if method == "notifications/tools/list_changed" and self.tools_changed is not None:
                self.tools_changed()
            if "id" in message:  # nobody to ask: the process must not wait
                self._refuse(message["id"], method)
            elif self.unrouted is not None:
                self.unrouted(line)
            return
        if method == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            target = None if token is None else self.tokens.get(_key(token))
        elif "id" in message or method == "notifications/message":
            target = self.posts[-1] if self.posts else None
        if target is None:
            target = self.listener
        if target is None:
            self.parked.append(line)
        else:
            target.put(line)

    def _refuse(self, request_id: Any, method: str) -> None:
        error = {"jsonrpc": "2.0", "id": request_id, "error": refusal(method)}
        task = asyncio.create_task(self._send_quietly(orjson.dumps(error)))
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def _send_quietly(self, line: bytes) -> None:
        with contextlib.suppress(ProcessEnded):
            await self.process.send(line)

    def _end(self) -> None:
        """The process is gone: every open request gets an error, every stream ends."""
        if self.ended:
            return
        self.ended = True
        if not self.closing and self.crashed is not None:
            self.crashed(self.running)
        if self.running and self.metrics is not None:
            self.metrics.stdio_processes.dec(self.name, "running")
            self.metrics.stdio_exits.inc(self.name, "ended" if self.closing else "crashed")
        for key, stream in list(self.pending.items()):
            error = {
                "jsonrpc": "2.0",
                "id": orjson.loads(key),
                "error": {"code": -32603, "message": f"backend {self.name}: the process ended"},
            }
            stream.put(orjson.dumps(error))
        for stream in {id(s): s for s in self.pending.values()}.values():
            stream.end()
        self.pending.clear()
        self.tokens.clear()
        self.posts.clear()
        if self.listener is not None:
            self.listener.end()


def _progress_token(message: Any) -> bytes | None:
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return None if token is None or isinstance(token, bool) else _key(token)
