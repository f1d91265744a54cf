"""The relay: one exchange with an upstream replica, opened and relayed to the client.

Both request paths stand on it: the single backend (:mod:`proxy.forward`) and the
federation (:mod:`proxy.federation`), which is a relay that multiplexes backends.

- :meth:`Relay.open` writes the request head (through the one head writer, with the
  forwarding headers of :mod:`proxy.forwarded`) and waits, bounded, for the response
  head. It takes an in-flight slot on the replica, held by the returned
  :class:`Exchange` and given back when the exchange closes (httpcore's
  ``PoolByteStream.aclose`` idea: one place, not a decrement per exit path).
- :meth:`Relay.open_any` and :meth:`Relay.open_on` hold the connect policy: a replica
  that cannot be reached is marked down; a request that needs no particular replica
  tries the next one (nothing was sent), a session's own replica answers
  :class:`ReplicaLost` (the caller forgets or reopens that session) or 503.
- :meth:`Relay.relay` sends the status, the filtered headers and the body, chunk by
  chunk, unbuffered; the upstream's framing is never relayed (Granian frames the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from . import headers as H
from ._types import Headers, Receive, Scope, Send
from .cors import CORS_HEADERS
from .errors import BadGateway, GatewayError, UpstreamUnreachable, upstream_error
from .forwarded import FORWARDING, ProxyHeaders
from .metrics import Metrics
from .timers import Sweeper
from .upstream.balance import Backend, Replica
from .upstream.errors import ClientGone, ConnectFailed, ProtocolFailure, UpstreamError
from .upstream.head import HeadInjection, request_head
from .upstream.http1 import CancelToken, Http1Pool, UpstreamResponse
from .watch import ClientWatch

if TYPE_CHECKING:
    from .config import Settings
    from .upstream.registry import Upstreams

__all__ = ("CREDENTIALS", "DRAIN_HANDOVER", "ClientWatch", "Exchange", "Relay", "ReplicaLost")

logger = logging.getLogger("proxy.relay")

DRAIN_HANDOVER = 0.1
_SSE = b"text/event-stream"
# Request headers the gateway sets itself toward the upstream.
_REQUEST_DROP = H.HOP_BY_HOP | {
    H.HOST,
    H.CONTENT_LENGTH,
    H.ACCEPT_ENCODING,
    H.ORIGIN,
    H.MCP_SESSION_ID,
    H.PEER,
}
# The upstream's framing is never relayed: Granian frames the answer itself (a length the
# gateway computed, or chunked), so no upstream can make it announce one length and send
# another.
_RESPONSE_DROP = H.HOP_BY_HOP | {H.MCP_SESSION_ID, H.CONTENT_LENGTH} | CORS_HEADERS
CREDENTIALS = frozenset({b"authorization", b"cookie"})
_NO_BODY_STATUS = frozenset({204, 304})


class ReplicaLost(Exception):
    """The replica holding a session refused the connection or stayed unreachable past
    the grace period: the sessions it held are gone."""

    def __init__(self, replica: Replica) -> None:
        super().__init__(replica.url)
        self.replica = replica


class Exchange:
    """An upstream exchange under way: the response, and the replica's in-flight slot,
    given back (once) when the exchange closes."""

    __slots__ = ("_open", "replica", "response")

    def __init__(self, replica: Replica, response: UpstreamResponse) -> None:
        self.replica = replica
        self.response = response
        self._open = True

    def close(self) -> None:
        """Give the slot back and the connection to its pool (or drop it, body unread)."""
        if self._open:
            self._open = False
            self.replica.inflight -= 1
            self.response.close()


class Relay:
    """Opens upstream exchanges and relays them to clients (see the module docstring)."""

    def __init__(self, settings: Settings, upstreams: Upstreams, metrics: Metrics) -> None:
        self.upstreams = upstreams
        self.metrics = metrics
        self.proxy_headers = ProxyHeaders(settings.trusted_proxies)
        self.timeout = settings.upstream_timeout
        self.draining = False
        self._watches = Sweeper()
        self._server_streams: set[ClientWatch] = set()

    def reconfigure(self, settings: Settings, upstreams: Upstreams) -> None:
        """A reload: exchanges opened from now on follow `settings` (those in flight go
        on as they began)."""
        self.upstreams = upstreams
        self.proxy_headers = ProxyHeaders(settings.trusted_proxies)
        self.timeout = settings.upstream_timeout

    def close(self) -> None:
        """Stop the disconnect-watch timers (the app's shutdown)."""
        self._watches.close()

    def drain(self) -> None:
        """Before shutdown: every answer from now on closes its connection (so a load
        balancer stops reusing it), and open GET streams end cleanly so that their
        clients reconnect, through the balancer, to another replica. Requests in flight,
        POST streams included, run to their end."""
        self.draining = True
        for watch in list(self._server_streams):
            watch.end()

    def watch(self, receive: Receive) -> ClientWatch:
        """A watch for the client's disconnect (close it when the exchange is over)."""
        return ClientWatch(receive, self._watches)

    def client(self, scope: Scope) -> str:
        """Who sent the request, for per-client limits (trusted proxies looked through)."""
        return self.proxy_headers.client(_peer(scope), forwarding(scope["headers"]))

    # -- opening -----------------------------------------------------------------------------

    async def open_any(
        self,
        scope: Scope,
        backend: Backend,
        body: bytes | None,
        cancel: CancelToken,
        *,
        retry: bool = False,
        withhold: frozenset[bytes] = frozenset(),
        extra: Headers | None = None,
        name: bytes | None = None,
    ) -> Exchange:
        """Open on the least busy healthy replica of `backend`; one that cannot be reached
        is marked down and the next is tried (nothing was sent), 502 when none is left.
        The keywords are :meth:`open`'s."""
        tried: set[str] = set()
        while (replica := backend.choose()) is not None and replica.url not in tried:
            try:
                return await self.open(
                    scope,
                    replica,
                    body,
                    cancel,
                    retry=retry,
                    withhold=withhold,
                    extra=extra,
                    name=name,
                )
            except ConnectFailed as exc:
                self._unreachable(replica, exc)
                tried.add(replica.url)
        raise BadGateway("No upstream replica is reachable")

    async def open_on(
        self,
        scope: Scope,
        replica: Replica,
        body: bytes | None,
        cancel: CancelToken,
        *,
        upstream_sid: bytes | None,
        retry: bool = False,
        withhold: frozenset[bytes] = frozenset(),
        extra: Headers | None = None,
    ) -> Exchange:
        """Open on the replica that holds a session. When it cannot be reached it is
        marked down, and the session is either lost (ReplicaLost: it refused, or stayed
        away past the grace period) or kept for a retry (503). The keywords are
        :meth:`open`'s."""
        try:
            return await self.open(
                scope,
                replica,
                body,
                cancel,
                upstream_sid=upstream_sid,
                retry=retry,
                withhold=withhold,
                extra=extra,
            )
        except ConnectFailed as exc:
            self._unreachable(replica, exc)
            if self.upstreams.lost(replica):
                raise ReplicaLost(replica) from None
            raise UpstreamUnreachable() from None

    def _unreachable(self, replica: Replica, exc: ConnectFailed) -> None:
        self.metrics.upstream_errors.inc(replica.url, "connect")
        self.upstreams.mark_down(replica, str(exc), gone=exc.refused)

    async def open(
        self,
        scope: Scope,
        replica: Replica,
        body: bytes | None,
        cancel: CancelToken,
        *,
        upstream_sid: bytes | None = None,
        retry: bool = False,
        withhold: frozenset[bytes] = frozenset(),
        extra: Headers | None = None,
        name: bytes | None = None,
    ) -> Exchange:
        """Send the client's request to `replica` and wait (bounded) for the response
        head. GET streams use the replica's stream connections, everything else its
        exchange connections. ``upstream_sid``: the backend's session id to send;
        ``retry``: safe to send again if a kept-alive connection closes unanswered;
        ``withhold``: the client's headers that must not go along (its Authorization and
        Cookie, where the backend does not take them); ``extra``: headers of the
        gateway's to add (the backend's own credentials); ``name``: an Mcp-Name header
        replacing the client's. Raises ConnectFailed (nothing was sent) or a
        GatewayError."""
        pool: Http1Pool = replica.streams if scope["method"] == "GET" else replica.pool
        replica.inflight += 1  # given back by Exchange.close, or just below
        try:
            head = self.head(scope, replica, body, upstream_sid, withhold, extra, name)
            response = await pool.request(
                head, body, head_timeout=self.timeout, cancel=cancel, retry=retry
            )
        except ConnectFailed:
            replica.inflight -= 1
            raise
        except ClientGone:
            replica.inflight -= 1
            raise asyncio.CancelledError from None  # nobody left to answer
        except (UpstreamError, HeadInjection) as exc:
            replica.inflight -= 1
            url = replica.url
            raise upstream_error(exc, url, partial(self.metrics.upstream_errors.inc, url)) from None
        except BaseException:
            replica.inflight -= 1
            raise
        return Exchange(replica, response)

    def head(
        self,
        scope: Scope,
        replica: Replica,
        body: bytes | None,
        upstream_sid: bytes | None = None,
        withhold: frozenset[bytes] = frozenset(),
        extra: Headers | None = None,
        name: bytes | None = None,
    ) -> bytes:
        """Request line and headers for the upstream: hop-by-hop and gateway-owned
        headers replaced, the upstream's own Host, the backend's session id, the
        forwarding headers (:mod:`proxy.forwarded`)."""
        out: Headers = []
        sent: Headers | None = None
        connection: bytes | None = None
        host: bytes | None = None
        for header, value in scope["headers"]:
            if header in _REQUEST_DROP:
                if header == H.CONNECTION:
                    connection = value
                elif header == H.HOST:
                    host = value
                continue
            if header in FORWARDING:
                if sent is None:
                    sent = []
                sent.append((header, value))
                continue
            if header in withhold or (name is not None and header == H.MCP_NAME):
                continue
            out.append((header, value))
        if connection is not None and (tokens := H.connection_tokens(connection)):
            # Headers named in Connection are hop-by-hop too.
            out = [(n, v) for n, v in out if n not in tokens]
        out.append((H.HOST, replica.host_header))
        out.append((H.ACCEPT_ENCODING, b"identity"))
        if replica.peer_headers:
            out.extend(replica.peer_headers)
        if body is not None:
            out.append((H.CONTENT_LENGTH, b"%d" % len(body)))
        if upstream_sid is not None:
            out.append((H.MCP_SESSION_ID, upstream_sid))
        if name is not None:
            out.append((H.MCP_NAME, name))
        if extra:
            out.extend(extra)
        scheme = scope.get("scheme", "http")
        out.extend(self.proxy_headers.headers(_peer(scope), scheme, host, sent))
        return request_head(scope["method"].encode("ascii"), replica.target, out)

    # -- relaying ----------------------------------------------------------------------------

    async def relay(
        self,
        send: Send,
        exchange: Exchange,
        watch: ClientWatch,
        *,
        session_id: bytes | None = None,
        server_stream: bool = False,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> int:
        """Relay status, filtered headers and the body, chunk by chunk, unbuffered
        (through `transform` when given: it may hold back an incomplete part), then
        close the exchange. ``session_id``: the Mcp-Session-Id the client gets (the
        upstream's own never reaches it); ``server_stream``: a GET stream, ended when the
        gateway drains."""
        response = exchange.response
        try:
            status = response.status
            if (broken := response.failed()) is not None:  # before a byte went to the client
                self.metrics.upstream_errors.inc(exchange.replica.url, "protocol")
                logger.warning("upstream %s failed: %s", exchange.replica.url, broken)
                raise BadGateway()
            if (kind := not_mcp(response)) is not None:
                self.metrics.upstream_errors.inc(exchange.replica.url, "not_mcp")
                logger.warning(
                    "upstream %s answered HTTP %d with %s, not MCP: is the URL the MCP "
                    "endpoint (Streamable HTTP, not legacy SSE)?",
                    exchange.replica.url,
                    status,
                    kind,
                )
                raise BadGateway("Bad gateway: the upstream's answer is not MCP")
            out = self.response_headers(response.headers, session_id)
            if response.body_complete():  # the common case: a small JSON answer
                body = response.read_buffered()
                if transform is not None:
                    body = transform(body)
                if status not in _NO_BODY_STATUS:
                    out.append((H.CONTENT_LENGTH, b"%d" % len(body)))
                await self._start(send, status, out, exchange)
                await send({"type": "http.response.body", "body": body})
                return status
            await self._start(send, status, out, exchange)
            if server_stream:
                self._server_streams.add(watch)
                if self.draining:
                    watch.end()  # opened while draining: the client reconnects elsewhere
            try:
                watch.start()
                await _stream_body(watch, send, response, transform)
            finally:
                self._server_streams.discard(watch)
            return status
        finally:
            exchange.close()

    def response_headers(self, upstream: Headers, session_id: bytes | None) -> Headers:
        """The upstream's response headers as the client gets them: hop-by-hop, framing
        and CORS headers dropped, the client's session id, ``X-Accel-Buffering: no`` on an
        event stream, ``Connection: close`` while draining."""
        out: Headers = []
        connection: bytes | None = None
        sse = buffering_set = False
        for name, value in upstream:
            if name in _RESPONSE_DROP:
                if name == H.CONNECTION:
                    connection = value
                continue
            if name == H.CONTENT_TYPE:
                sse = value.startswith(_SSE)
            elif name == H.X_ACCEL_BUFFERING:
                buffering_set = True
            out.append((name, value))
        if connection is not None and (tokens := H.connection_tokens(connection)):
            out = [(n, v) for n, v in out if n not in tokens]
        if session_id is not None:
            out.append((H.MCP_SESSION_ID, session_id))
        if sse and not buffering_set:
            out.append((H.X_ACCEL_BUFFERING, b"no"))
        if self.draining:
            out.append((H.CONNECTION, b"close"))
        return out

    async def _start(self, send: Send, status: int, headers: Headers, exchange: Exchange) -> None:
        """Send the response head; one the server refuses (say, an upstream header it
        will not write) is a 502, not a traceback."""
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
        except Exception as exc:
            url = exchange.replica.url
            self.metrics.upstream_errors.inc(url, "protocol")
            logger.warning("upstream %s: its response head was refused: %s", url, exc)
            raise BadGateway() from None


_MCP_TYPES = (b"application/json", b"text/event-stream")


def not_mcp(response: UpstreamResponse) -> str | None:
    """What an answer is, when it cannot be MCP: a body typed as something other than
    JSON or an event stream (a web page, a framework's 404), or an untyped body. None for
    an MCP answer, or one without a body (202, 204, an empty error)."""
    if response.status in _NO_BODY_STATUS or response.status == 202:  # no answer to judge
        return None
    ctype = response.header(H.CONTENT_TYPE)
    if ctype is not None:
        if ctype.lower().startswith(_MCP_TYPES):
            return None
        return ctype.split(b";")[0].decode("latin-1")
    if response.body_complete() and response.peek():
        return "a body of no content type"
    return None  # empty, or still arriving (an event stream is typed; this is not judged)


async def _stream_body(
    watch: ClientWatch,
    send: Send,
    response: UpstreamResponse,
    transform: Callable[[bytes], bytes] | None = None,
) -> None:
    """Copy the body as it arrives; when the client goes away, close the upstream."""
    try:
        while chunk := await response.read(watch.token):
            if transform is not None and not (chunk := transform(chunk)):
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except ClientGone:
        if not watch.ending:
            return  # closing the exchange drops the upstream connection
        # Draining: end the upstream's stream first and give it a moment to notice,
        # since an upstream allows one GET stream per session (409 to a second) and
        # the client reconnects, through the balancer, as soon as its stream ends.
        response.close()
        await asyncio.sleep(DRAIN_HANDOVER)
    except (ProtocolFailure, GatewayError, ValueError) as exc:
        # The upstream broke mid-response (or sent what the transform refuses): so does
        # the client's response (no final chunk), so that it cannot take a cut-off body
        # for a whole one.
        logger.warning("upstream answer broke off: %s", exc)
        return
    except Exception as exc:  # the client's connection broke while we wrote to it
        logger.debug("relay ended early: %r", exc)
        return
    with contextlib.suppress(Exception):
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def forwarding(headers: Sequence[tuple[bytes, bytes]]) -> Headers | None:
    """The client's forwarding headers (None when it sent none, the usual case)."""
    sent = [(n, v) for n, v in headers if n in FORWARDING]
    return sent or None
