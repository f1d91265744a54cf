"""A lean HTTP/1.1 keep-alive client pool on asyncio protocols: the gateway's hot path.

One :class:`Http1Pool` per replica and kind of use, holding at most ``max_connections``
:class:`~proxy.upstream.connection.Connection` s. A connection returns to the pool only
when its response was read to the end and the server did not ask to close it; while it
waits there, any byte or EOF from the server discards it. Waiting for a free connection
is bounded (:class:`PoolTimeout`), and a request is sent again on a fresh connection
only when the caller says it is safe to repeat.

Errors are the types of :mod:`proxy.upstream.errors`. The gateway only sends POST, GET
and DELETE; a response to HEAD is not supported (llhttp would expect its body).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl as _ssl
import time
from collections.abc import Callable
from typing import Final

from ..timers import Sweeper
from .connection import HIGH_WATER, CancelToken, Connection, UpstreamResponse
from .errors import (
    ClientGone,
    ConnectFailed,
    PoolTimeout,
    ProtocolFailure,
    Unanswered,
    UpstreamError,
    UpstreamTimeout,
)

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

KEEPALIVE_EXPIRY: Final = 4.0
"""Seconds an idle connection is kept: below the 5 s after which uvicorn and Node.js close
an idle keep-alive connection, so that the pool rarely writes a request into a connection
the server is closing at that moment (a request not safe to repeat then fails)."""


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
        unix_path: str | None = None,
    ) -> None:
        """`unix_path`: connect to this Unix socket instead of `host` and `port`."""
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self.pool_timeout = pool_timeout
        self.ssl_context = ssl_context
        self.unix_path = unix_path
        self._idle: list[Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
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
        now = time.monotonic()
        deadline = None if head_timeout is None else now + head_timeout
        conn = self._take_idle(now)
        reused = conn is not None
        if conn is None:
            conn, reused = await self._acquire(deadline)
        while True:  # once, or twice when a reused connection closed unanswered
            if cancel is not None and cancel.cancelled:
                conn.abort()
                raise ClientGone
            waiter = conn.send(data)
            if deadline is not None:
                wait = max(0.0, deadline - time.monotonic())
                self._timeouts.add(waiter, wait, _expire(waiter))
            if cancel is not None:
                cancel.waiter = waiter
            try:
                return await waiter
            except BaseException as exc:
                if not waiter.done():
                    waiter.cancel()
                conn.abort()
                if not (reused and retry and isinstance(exc, Unanswered)):
                    raise
            finally:
                if deadline is not None:
                    self._timeouts.remove(waiter)
                if cancel is not None:
                    cancel.waiter = None
            conn, _ = await self._acquire(deadline, fresh=True)
            retry = False  # sent again once at most

    def _take_idle(self, now: float) -> Connection | None:
        """The most recently used idle connection still fit to use, if any."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.usable() or now - conn.idle_since > self.keepalive_expiry:
                conn.abort()
                continue
            return conn
        return None

    async def _acquire(
        self, deadline: float | None, fresh: bool = False
    ) -> tuple[Connection, bool]:
        now = time.monotonic()
        if not fresh and (conn := self._take_idle(now)) is not None:
            return conn, True
        if self._open < self.max_connections:
            self._open += 1  # our slot, held by the connection until it is discarded
            return await self._connect(), False
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
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

    def _give_up(self, waiter: asyncio.Future[Connection | None]) -> Callable[[], None]:
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

    async def _connect(self) -> Connection:
        """Open a connection in a slot the caller already holds (counted in ``_open``)."""
        loop = asyncio.get_running_loop()
        conn = Connection(self)
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.unix_path is not None:
                    await loop.create_unix_connection(lambda: conn, self.unix_path)
                else:
                    await loop.create_connection(
                        lambda: conn,
                        self.host,
                        self.port,
                        ssl=self.ssl_context,
                        server_hostname=self.host if self.ssl_context else None,
                    )
        except BaseException as exc:
            # The timeout may fire as the connection is made: close what was made.
            if conn.transport is not None:
                conn.counted = False  # the slot is freed here, not by connection_lost
                conn.transport.close()
            self._free_slot()
            if isinstance(exc, TimeoutError):
                raise ConnectFailed(f"connect to {self.host}:{self.port} timed out") from None
            if isinstance(exc, OSError):
                raise ConnectFailed(
                    f"connect to {self.host}:{self.port} failed: {exc}",
                    refused=isinstance(exc, ConnectionRefusedError | FileNotFoundError),
                ) from None
            raise
        return conn

    def _release(self, conn: Connection) -> None:
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

    def _discard(self, conn: Connection) -> None:
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

    @property
    def closed(self) -> bool:
        """Closed: it opens no connection any more."""
        return self._closing

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
