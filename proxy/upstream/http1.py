"""A lean HTTP/1.1 keep-alive client pool on asyncio protocols: the gateway's hot path.

One :class:`Http1Pool` per replica. A request is written in one ``transport.write``; the
response head is parsed from the first bytes; the body (Content-Length, chunked or
read-to-close) is handed out chunk by chunk as it arrives, with back-pressure. A
connection returns to the pool only when its response was read to the end and the
server did not ask to close it. Errors are :class:`UpstreamError` subclasses, which
``proxy.upstream.transport`` maps onto httpx's exceptions.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as _ssl
import time
from collections.abc import Callable
from typing import Any, Final, cast

from .._types import Headers
from ..timers import Sweeper

__all__ = (
    "CancelToken",
    "ClientGone",
    "ConnectFailed",
    "Http1Pool",
    "ProtocolFailure",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
)

_CRLF: Final = b"\r\n"
_HEAD_END: Final = b"\r\n\r\n"
_MAX_HEAD: Final = 64 * 1024
_HIGH_WATER: Final = 256 * 1024  # buffered body bytes before reading pauses
_NO_BODY_STATUS: Final = frozenset({204, 304})

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class UpstreamError(Exception):
    """The upstream exchange failed; ``sent`` tells whether the request may have arrived."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, unreachable, timed out): nothing was sent.
    ``refused``: the host answered that nothing listens there (the server is gone), as
    opposed to a timeout or another error that may pass."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message, sent=False)
        self.refused = refused


class ProtocolFailure(UpstreamError):
    """The connection broke or the upstream sent something that is not HTTP/1.1."""


class UpstreamTimeout(UpstreamError):
    """The response head did not arrive in time."""


class ClientGone(Exception):
    """The caller's :class:`CancelToken` was cancelled: its client went away."""


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

    def body_complete(self) -> bool:
        """True when the whole body has already arrived (no waiting in :meth:`read`)."""
        return self._conn.state == _DONE

    def read_buffered(self) -> bytes:
        """The whole body when :meth:`body_complete`; the connection goes back at once."""
        chunks = self._conn.take_all()
        self._done = True
        self._conn.finish()
        return chunks

    async def read(self, cancel: CancelToken | None = None) -> bytes:
        """The next chunk of the body; ``b""`` at its end. Raises ClientGone when
        ``cancel`` is cancelled while waiting."""
        if self._done:
            return b""
        chunk = await self._conn.next_chunk(cancel)
        if not chunk:
            self._done = True
            self._conn.finish()
        return chunk

    async def aread(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Give the connection back (body read to the end) or drop it (body unread)."""
        if not self._done:
            self._done = True
            self._conn.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses one response at a time."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.state = _DONE
        self._buf = bytearray()
        self._remaining = 0
        self._keep_alive = True
        self._received = False
        self._no_body = False  # the request was HEAD: whatever the head says, no body follows
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._paused = False
        self.counted = True  # holds one of the pool's slots until discarded

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but it is one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self.state == _DONE:  # bytes nobody asked for: the connection is unusable
            self._fail(ProtocolFailure("unexpected data from upstream"))
            return
        self._buf += data
        try:
            self._parse()
        except ProtocolFailure as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        if self.state == _UNTIL_CLOSE:
            self._finish_body()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == _UNTIL_CLOSE:
            self._finish_body()
        elif self.state != _DONE:
            self._fail(
                ProtocolFailure(
                    f"upstream closed the connection: {exc or 'EOF'}", sent=self._received
                )
                if self._received
                else _Unanswered("upstream closed the connection before answering")
            )
        self.pool._discard(self)

    def pause_writing(self) -> None:  # pragma: no cover - request bodies are small
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    # -- request / response --------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None  # noqa: S101
        self._no_body = data.startswith(b"HEAD ")
        loop = asyncio.get_running_loop()
        self._head = loop.create_future()
        self.state = _HEAD
        self._received = False
        self._keep_alive = True
        self._error = None
        self._chunks.clear()
        self._buffered = 0
        self.transport.write(data)
        return self._head

    async def next_chunk(self, cancel: CancelToken | None = None) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _HIGH_WATER // 2 and self.transport:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self.state == _DONE:
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
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def finish(self) -> None:
        """The body was read to the end: back to the pool, or closed."""
        if self._keep_alive and not self.closed and self._error is None:
            self.pool._release(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.state = _DONE
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.pool._discard(self)

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        while buf:
            state = self.state
            if state == _HEAD:
                end = buf.find(_HEAD_END)
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise ProtocolFailure("response head too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._on_head(head)
            elif state == _LENGTH:
                take = min(self._remaining, len(buf))
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._finish_body()
            elif state == _UNTIL_CLOSE:
                self._push(bytes(buf))
                buf.clear()
            elif state == _CHUNK_SIZE:
                end = buf.find(_CRLF)
                if end < 0:
                    if len(buf) > 1024:
                        raise ProtocolFailure("chunk size line too long")
                    return
                line = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    size = int(line, 16)
                except ValueError:
                    raise ProtocolFailure(f"bad chunk size {line!r}") from None
                if size < 0:
                    raise ProtocolFailure("negative chunk size")
                self._remaining = size
                self.state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_DATA:
                take = min(self._remaining, len(buf))
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self.state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    return
                if buf[:2] != _CRLF:
                    raise ProtocolFailure("chunk not followed by CRLF")
                del buf[:2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(_CRLF)
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._finish_body()
            else:  # _DONE with bytes left over: a server that talks out of turn
                raise ProtocolFailure("unexpected data after the response")

    def _on_head(self, head: bytes) -> None:
        lines = head.split(_CRLF)
        status_line = lines[0]
        code = status_line[9:12]
        if (
            not status_line.startswith(b"HTTP/1.")
            or status_line[8:9] != b" "
            or len(code) != 3
            or not code.isdigit()
            or status_line[12:13] not in (b"", b" ")
            or code[0:1] == b"0"
        ):
            raise ProtocolFailure(f"bad status line {status_line[:80]!r}")
        status = int(code)
        if status < 200:  # 100 Continue and friends: wait for the real response
            self.state = _HEAD
            return
        headers: Headers = []
        length: int | None = None
        chunked = False
        keep_alive = status_line[7:8] == b"1"  # HTTP/1.1 defaults to keep-alive
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolFailure(f"bad header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise ProtocolFailure("bad Content-Length") from None
            elif name == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif name == b"connection":
                token = value.lower()
                if b"close" in token:
                    keep_alive = False
                elif b"keep-alive" in token:
                    keep_alive = True
            headers.append((name, value))
        self._keep_alive = keep_alive
        if self._no_body or status in _NO_BODY_STATUS or (length == 0 and not chunked):
            self.state = _DONE
        elif chunked:
            self.state = _CHUNK_SIZE
        elif length is not None:
            self._remaining = length
            self.state = _LENGTH
        else:
            self._keep_alive = False
            self.state = _UNTIL_CLOSE
        head_future = self._head
        self._head = None
        if head_future is not None and not head_future.done():
            head_future.set_result(UpstreamResponse(self, status, headers))

    def _push(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish_body(self) -> None:
        self.state = _DONE
        if self._buf:
            raise ProtocolFailure("unexpected data after the response")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: UpstreamError) -> None:
        self._error = exc
        self._keep_alive = False
        self.state = _DONE
        head_future = self._head
        self._head = None
        if head_future is not None and not head_future.done():
            head_future.set_exception(exc)
        self._wake()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


def _expire(head: asyncio.Future[UpstreamResponse]) -> Callable[[], None]:
    def fire() -> None:
        if not head.done():
            head.set_exception(UpstreamTimeout("no response head in time"))

    return fire


class _Unanswered(ProtocolFailure):
    """A reused connection closed before any response byte: safe to retry once."""


class Http1Pool:
    """Keep-alive connections to one origin, at most ``max_connections`` at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = 512,
        connect_timeout: float = 5.0,
        keepalive_expiry: float = 30.0,
        ssl_context: _ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
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
    ) -> UpstreamResponse:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``;
        return once the response head has arrived.

        Raises ConnectFailed (nothing sent), UpstreamTimeout (no head within
        ``head_timeout`` seconds, give or take the sweeper's tick), ProtocolFailure, or
        ClientGone when ``cancel`` is cancelled first; in the last three cases the
        connection is closed, which an upstream sees as the request's cancellation.
        """
        data = head + body if body else head
        deadline = None if head_timeout is None else time.monotonic() + head_timeout
        conn, reused = await self._acquire()
        try:
            return await self._exchange(conn, data, deadline, cancel)
        except _Unanswered:
            if not reused:
                raise
        # The server closed a kept-alive connection as we wrote to it: nothing was
        # processed, so one retry on a fresh connection is safe.
        conn, _ = await self._acquire(fresh=True)
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

    async def _acquire(self, fresh: bool = False) -> tuple[_Connection, bool]:
        now = time.monotonic()
        idle = self._idle
        while idle and not fresh:
            conn = idle.pop()
            if conn.closed:
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
        try:
            conn_or_none = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is not None:
                    self._release(handed)
                else:
                    self._free_slot()  # pass on the slot we were handed
            raise
        if conn_or_none is None:  # a slot was handed to us: open our own in it
            return await self._connect(), False
        return conn_or_none, True

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
        if self._closing or conn.closed:
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

    async def aclose(self) -> None:
        self._closing = True
        self._timeouts.close()
        idle, self._idle = self._idle, []
        for conn in idle:  # abort() -> _discard() would edit the list under the loop
            conn.abort()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
