"""A lean HTTP/1.1 keep-alive client pool on asyncio protocols: the gateway's hot path.

One :class:`Http1Pool` per replica and kind of use. A request is written in one
``transport.write``; the response is parsed strictly (:mod:`proxy.upstream.parser`) as
it arrives, and its body handed out chunk by chunk with back-pressure. A connection
returns to the pool only when its response was read to the end and the server did not
ask to close it; while it waits there, any byte or EOF from the server discards it.
Waiting for a free connection is bounded (:class:`PoolTimeout`), and a request is sent
again on a fresh connection only when the caller says it is safe to repeat.

Errors are the types of :mod:`proxy.upstream.errors`. The gateway only sends POST, GET
and DELETE; a response to HEAD is not supported (llhttp would expect its body).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import ssl as _ssl
import time
from collections.abc import Callable
from typing import Any, Final, cast

from .._types import Headers
from ..timers import Sweeper
from .errors import (
    ClientGone,
    ConnectFailed,
    PoolTimeout,
    ProtocolFailure,
    Unanswered,
    UpstreamError,
    UpstreamTimeout,
)
from .parser import ResponseParser

__all__ = (
    "HIGH_WATER",
    "CancelToken",
    "ClientGone",
    "ConnectFailed",
    "Http1Pool",
    "PoolTimeout",
    "ProtocolFailure",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
)

HIGH_WATER: Final = 256 * 1024
"""Buffered body bytes at which reading pauses; it resumes below half of it."""


KEEPALIVE_EXPIRY: Final = 4.0
"""Seconds an idle connection is kept: below the 5 s after which uvicorn and Node.js close
an idle keep-alive connection, so that the pool rarely writes a request into a connection
the server is closing at that moment (a request not safe to repeat then fails)."""


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

    def __init__(self, conn: _Connection, status: int, headers: Headers) -> None:
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


class Phase(enum.IntEnum):
    """Where a connection's current exchange stands."""

    COMPLETE = 0  # no response outstanding, or its body has fully arrived
    WAITING = 1  # request written; the response head has not arrived
    BODY = 2  # head handed out; body arriving


class _Connection(asyncio.Protocol):
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
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = True
        self._until_close = False
        self._received = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but it is one.
        self.transport = cast(asyncio.Transport, transport)

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
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_end(self) -> None:
        self.phase = Phase.COMPLETE
        self._wake()

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
        self._buffered = 0
        self.transport.write(data)
        return self._head

    async def next_chunk(self, cancel: CancelToken | None = None) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < HIGH_WATER // 2:
                    self._resume()
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

    def take_all(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._resume()
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

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None:
            self.transport.resume_reading()

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


def _expire(head: asyncio.Future[UpstreamResponse]) -> Callable[[], None]:
    def fire() -> None:
        if not head.done():
            head.set_exception(UpstreamTimeout("no response head in time"))

    return fire


class Http1Pool:
    """Keep-alive connections to one origin, at most ``max_connections`` at a time.

    ``pool_timeout``: the longest a request waits for a connection when all
    ``max_connections`` are busy (:class:`PoolTimeout` after it); ``keepalive_expiry``:
    the longest a connection waits in the pool.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = 512,
        connect_timeout: float = 5.0,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        pool_timeout: float = 10.0,
        ssl_context: _ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self.pool_timeout = pool_timeout
        self.ssl_context = ssl_context
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._timeouts = Sweeper()
        self._closing = False

    def __repr__(self) -> str:
        return (
            f"<Http1Pool {self.host}:{self.port} open={self._open} idle={len(self._idle)} "
            f"waiting={len(self._waiters)}>"
        )

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(
        self,
        head: bytes,
        body: bytes | None,
        *,
        head_timeout: float | None = None,
        cancel: CancelToken | None = None,
        retry: bool = False,
    ) -> UpstreamResponse:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``;
        return once the response head has arrived.

        ``retry``: the request is safe to repeat, so when a kept-alive connection closes
        before any byte of the answer it is sent once more on a fresh connection (an
        upstream may have acted on it before closing: never set this for a tools/call).

        Raises ConnectFailed or PoolTimeout (nothing sent), UpstreamTimeout (no head
        within ``head_timeout`` seconds, give or take the sweeper's tick),
        ProtocolFailure, or ClientGone when ``cancel`` is cancelled first; in the last
        three cases the connection is closed, which an upstream sees as the request's
        cancellation.
        """
        data = head + body if body else head
        deadline = None if head_timeout is None else time.monotonic() + head_timeout
        conn, reused = await self._acquire(deadline)
        try:
            return await self._exchange(conn, data, deadline, cancel)
        except Unanswered:
            if not (reused and retry):
                raise
        conn, _ = await self._acquire(deadline, fresh=True)
        return await self._exchange(conn, data, deadline, cancel)

    async def _exchange(
        self,
        conn: _Connection,
        data: bytes,
        deadline: float | None,
        cancel: CancelToken | None,
    ) -> UpstreamResponse:
        if cancel is not None and cancel.cancelled:
            conn.abort()
            raise ClientGone
        head = conn.send(data)
        if deadline is not None:
            self._timeouts.add(head, max(0.0, deadline - time.monotonic()), _expire(head))
        if cancel is not None:
            cancel.waiter = head
        try:
            return await head
        except BaseException:
            if not head.done():
                head.cancel()
            conn.abort()
            raise
        finally:
            if deadline is not None:
                self._timeouts.remove(head)
            if cancel is not None:
                cancel.waiter = None

    async def _acquire(
        self, deadline: float | None, fresh: bool = False
    ) -> tuple[_Connection, bool]:
        now = time.monotonic()
        idle = self._idle
        while idle and not fresh:
            conn = idle.pop()
            if not conn.usable():
                conn.abort()
                continue
            if now - conn.idle_since > self.keepalive_expiry:
                conn.abort()
                continue
            return conn, True
        if self._open < self.max_connections:
            self._open += 1  # our slot, held by the connection until it is discarded
            return await self._connect(), False
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        wait = self.pool_timeout
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - now))
        self._timeouts.add(waiter, wait, self._give_up(waiter))
        try:
            conn_or_none = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is not None:
                    self._release(handed)
                else:
                    self._free_slot()  # pass on the slot we were handed
            raise
        finally:
            self._timeouts.remove(waiter)
        if conn_or_none is None:  # a slot was handed to us: open our own in it
            return await self._connect(), False
        return conn_or_none, True

    def _give_up(self, waiter: asyncio.Future[_Connection | None]) -> Callable[[], None]:
        def fire() -> None:
            if not waiter.done():
                waiter.set_exception(
                    PoolTimeout(
                        f"all {self.max_connections} connections to {self.host}:{self.port} "
                        "stayed busy"
                    )
                )
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

        return fire

    async def _connect(self) -> _Connection:
        """Open a connection in a slot the caller already holds (counted in ``_open``)."""
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context else None,
                )
        except TimeoutError:
            self._free_slot()
            raise ConnectFailed(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            self._free_slot()
            raise ConnectFailed(
                f"connect to {self.host}:{self.port} failed: {exc}",
                refused=isinstance(exc, ConnectionRefusedError),
            ) from None
        except BaseException:
            self._free_slot()
            raise
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._closing or not conn.usable():
            conn.abort()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        """A connection closed: free its slot (once)."""
        if not conn.counted:
            return
        conn.counted = False
        if conn in self._idle:
            self._idle.remove(conn)
        self._free_slot()

    def _free_slot(self) -> None:
        """A slot came free: hand it to the first waiter (which opens a connection in it),
        or give it back."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    async def close(self) -> None:
        self._closing = True
        self._timeouts.close()
        idle, self._idle = self._idle, []
        for conn in idle:  # abort() -> _discard() would edit the list under the loop
            conn.abort()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
