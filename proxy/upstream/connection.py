"""One keep-alive HTTP/1.1 connection to an upstream, on an asyncio protocol.

A :class:`Connection` writes a request in one ``transport.write`` and receives one
response at a time, parsed strictly as it arrives (:mod:`proxy.upstream.parser`); the
body is handed out chunk by chunk through its :class:`UpstreamResponse`, with
back-pressure (reading pauses above ``HIGH_WATER`` buffered bytes). While it waits in
its pool, any byte or EOF from the server makes it unusable. The pool that owns it
(:mod:`proxy.upstream.http1`) is told when it can be reused or is gone.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from typing import TYPE_CHECKING, Any, Final, cast

from .._types import Headers
from .errors import ClientGone, ProtocolFailure, Unanswered, UpstreamError
from .parser import ResponseParser

if TYPE_CHECKING:
    from .http1 import Http1Pool

__all__ = ("HIGH_WATER", "CancelToken", "Connection", "Phase", "UpstreamResponse")

HIGH_WATER: Final = 256 * 1024
"""Buffered body bytes at which reading pauses; it resumes below half of it."""


class CancelToken:
    """Cancels whatever one exchange is waiting for (its response head or body chunk).

    Cheaper than racing futures: the waiting side registers its future here, and
    :meth:`cancel` fails it with ClientGone.
    """

    __slots__ = ("cancelled", "waiter")

    def __init__(self) -> None:
        self.cancelled = False
        self.waiter: asyncio.Future[Any] | None = None

    def cancel(self) -> None:
        self.cancelled = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientGone())


class UpstreamResponse:
    """Status, lower-cased raw headers and the body as an async iterator of chunks."""

    __slots__ = ("_conn", "_done", "headers", "status")

    def __init__(self, conn: Connection, status: int, headers: Headers) -> None:
        self._conn = conn
        self._done = False
        self.status = status
        self.headers = headers

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status}>"

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def failed(self) -> UpstreamError | None:
        """What broke the body, when that is already known (nothing was read yet)."""
        return None if self._done else self._conn.error

    def body_complete(self) -> bool:
        """True when the whole body has already arrived (no waiting in :meth:`read`)."""
        conn = self._conn
        return conn.phase == Phase.COMPLETE and conn.error is None

    def peek(self) -> bytes:
        """The whole body when :meth:`body_complete`, left to be read (or relayed)."""
        return self._conn.peek_all()

    def read_buffered(self) -> bytes:
        """The whole body when :meth:`body_complete`; the connection goes back at once."""
        data = self._conn.take_all()
        self._done = True
        self._conn.finish()
        return data

    async def read(self, cancel: CancelToken | None = None) -> bytes:
        """The next chunk of the body; ``b""`` at its end. Raises ClientGone when
        ``cancel`` is cancelled while waiting, ProtocolFailure when the body is broken."""
        if self._done:
            return b""
        chunk = await self._conn.next_chunk(cancel)
        if not chunk:
            self._done = True
            self._conn.finish()
        return chunk

    async def aread(self, limit: int | None = None) -> bytes:
        """The whole body; ProtocolFailure when it exceeds `limit` bytes."""
        if not self._done and self.body_complete():  # arrived already: no waiting
            data = self.read_buffered()
            if limit is not None and len(data) > limit:
                raise ProtocolFailure(f"answer larger than {limit} bytes")
            return data
        parts = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if limit is not None and size > limit:
                self.close()
                raise ProtocolFailure(f"answer larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Give the connection back (body read to the end) or drop it (body unread)."""
        if not self._done:
            self._done = True
            self._conn.abort()


class ReadFlow:
    """Back-pressure on reading: paused above ``HIGH_WATER`` bytes buffered and not yet
    taken, resumed below half of it (so that a slow client slows its upstream, not the
    gateway's memory)."""

    __slots__ = ("buffered", "paused", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffered = 0
        self.paused = False

    def added(self, size: int) -> None:
        self.buffered += size
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def taken(self, size: int) -> None:
        self.buffered -= size
        if self.paused and self.buffered < HIGH_WATER // 2:
            self._resume()

    def reset(self) -> None:
        """Everything buffered was taken (or dropped)."""
        self.buffered = 0
        if self.paused:
            self._resume()

    def _resume(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()


class Phase(enum.IntEnum):
    """Where a connection's current exchange stands."""

    COMPLETE = 0  # no response outstanding, or its body has fully arrived
    WAITING = 1  # request written; the response head has not arrived
    BODY = 2  # head handed out; body arriving


class Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, receives one response at a time."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.phase = Phase.COMPLETE
        self.error: UpstreamError | None = None
        self.counted = True  # holds one of the pool's slots until discarded
        self._parser = ResponseParser(self)
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._flow = ReadFlow()
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = True
        self._until_close = False
        self._received = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but it is one.
        self.transport = cast(asyncio.Transport, transport)
        self._flow.transport = self.transport

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed(data)
        except ProtocolFailure as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.phase == Phase.BODY and self._until_close:
            self.on_end()  # the body is framed by the close
        elif self.phase != Phase.COMPLETE:
            self._fail(
                ProtocolFailure(f"upstream closed the connection: {exc or 'EOF'}")
                if self._received
                else Unanswered("upstream closed the connection before answering")
            )
        self.pool._discard(self)

    # -- ResponseSink (the parser's callbacks) -------------------------------------------------

    def on_head(self, status: int, headers: Headers, keep_alive: bool, until_close: bool) -> None:
        self.phase = Phase.BODY
        self._keep_alive = keep_alive
        self._until_close = until_close
        head = self._head
        self._head = None
        if head is not None and not head.done():
            head.set_result(UpstreamResponse(self, status, headers))

    def on_body(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._flow.added(len(chunk))
        self._wake()

    def on_end(self) -> None:
        self.phase = Phase.COMPLETE
        self._wake()

    def on_response(self, status: int, headers: Headers, keep_alive: bool, body: bytes) -> None:
        self.phase = Phase.COMPLETE  # nothing waits for a chunk before the head is out
        self._keep_alive = keep_alive
        if body:
            self._chunks.append(body)
            self._flow.added(len(body))
        head = self._head
        self._head = None
        if head is not None and not head.done():
            head.set_result(UpstreamResponse(self, status, headers))

    # -- request / response --------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None  # noqa: S101 - connected before use
        self._head = asyncio.get_running_loop().create_future()
        self._parser.expect()
        self.phase = Phase.WAITING
        self._received = False
        self._keep_alive = True
        self._until_close = False
        self.error = None
        self._chunks.clear()
        self._flow.reset()
        self.transport.write(data)
        return self._head

    async def next_chunk(self, cancel: CancelToken | None = None) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._flow.taken(len(chunk))
                return chunk
            if self.error is not None:
                raise self.error
            if self.phase == Phase.COMPLETE:
                return b""
            if cancel is not None and cancel.cancelled:
                raise ClientGone
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            if cancel is not None:
                cancel.waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
                if cancel is not None:
                    cancel.waiter = None

    def peek_all(self) -> bytes:
        chunks = self._chunks
        if len(chunks) > 1:
            joined = b"".join(chunks)
            chunks.clear()
            chunks.append(joined)
        return chunks[0] if chunks else b""

    def take_all(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._flow.reset()
        return data

    def finish(self) -> None:
        """The body was read to the end: back to the pool, or closed."""
        if self._keep_alive and not self.closed and self.error is None:
            self.pool._release(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.phase = Phase.COMPLETE
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.pool._discard(self)

    def usable(self) -> bool:
        """Open, idle and not closing (nothing would be written into a dead socket)."""
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    # -- internals -----------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: UpstreamError) -> None:
        """The connection is unusable: fail what waits on it (if a response is
        outstanding) and close it."""
        self._keep_alive = False
        if self.phase != Phase.COMPLETE:
            self.error = exc
            self.phase = Phase.COMPLETE
            head = self._head
            self._head = None
            if head is not None and not head.done():
                head.set_exception(exc)
            self._wake()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
