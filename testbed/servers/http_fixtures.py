"""Raw-bytes HTTP/1.1 servers on free loopback ports, for the upstream client's tests.

Each test hands :class:`RawServer` a handler that owns one accepted connection and writes
exactly the bytes it wants (framing, delays, early closes). The server counts accepted
and concurrently open connections, so pool behaviour is asserted from the far side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

__all__ = (
    "Peer",
    "RawServer",
    "Request",
    "chunked",
    "keep_answering",
    "request_head",
    "response",
)

Handler = Callable[["Peer"], Awaitable[None]]


@dataclass
class Request:
    """One request as the server parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Peer:
    """One accepted connection, seen from the server."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.index = index
        self.requests: list[Request] = []
        self.ended = asyncio.Event()  # set once the handler returned and the socket closed
        self.sent = 0  # body bytes a handler reports having written (drained)

    async def read_request(self) -> Request | None:
        """The next request on this connection, or None when the client closed it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head[:-4].split(b"\r\n")
        method, target, _version = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        request = Request(method, target, headers, b"")
        if (length := request.header(b"content-length")) is not None:
            request.body = await self.reader.readexactly(int(length))
        elif (request.header(b"transfer-encoding") or b"").lower() == b"chunked":
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            while await self.reader.readuntil(b"\r\n") != b"\r\n":
                pass
            request.body = b"".join(parts)
        self.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_client_closes(self) -> None:
        """Read (and drop) whatever arrives until the client closes its side."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


class RawServer:
    """An asyncio server on 127.0.0.1 that runs ``handler`` for each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.active = 0
        self.max_active = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []

    @property
    def accepted(self) -> int:
        return len(self.peers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._errors and exc is None:
            raise self._errors[0]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer, len(self.peers))
        self.peers.append(peer)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # __aexit__ cancels what is left; a cancelled task makes asyncio log an error
        except Exception as exc:  # surfaced by __aexit__
            self._errors.append(exc)
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            peer.ended.set()
            self._tasks.discard(task)


def request_head(method: str = "GET", target: str = "/", *extra: str) -> bytes:
    """A request head for :meth:`Http1Pool.request`."""
    lines = [f"{method} {target} HTTP/1.1", "host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(
    body: bytes = b"",
    *,
    status: int = 200,
    headers: Iterable[str] = (),
    length: bool = True,
) -> bytes:
    """A complete response with ``Content-Length`` (unless ``length`` is false)."""
    lines = [f"HTTP/1.1 {status} X", *headers]
    if length:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*chunks: bytes) -> bytes:
    """``chunks`` in chunked framing, without the final zero-size chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)


def keep_answering(respond: Callable[[Request], bytes]) -> Handler:
    """A handler that answers every request on the connection with ``respond(request)``."""

    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await peer.send(respond(request))

    return handler
