"""One exchange: headers -> envelope -> route -> session -> upstream -> relayed response."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import headers as H, jsonrpc as rpc
from ._types import Headers, Receive, Scope, Send
from .fastpath import scan_envelope, scan_headers
from .forwarded import FORWARDING, ProxyHeaders
from .guard import OriginGuard
from .headers import McpHeaders, decode_header_value
from .jsonrpc import Envelope, EnvelopeError
from .limits import StreamLimits
from .metrics import Metrics, method_label
from .responses import send_error
from .sessions import Binding, SessionStore, StoreFull, StoreUnavailable
from .timers import Sweeper
from .upstream.balance import Backend, Replica
from .upstream.errors import (
    ClientGone,
    ConnectFailed,
    PoolTimeout,
    ProtocolFailure,
    UpstreamTimeout,
)
from .upstream.head import HeadInjection, request_head
from .upstream.http1 import CancelToken, Http1Pool, UpstreamResponse

if TYPE_CHECKING:
    from .config import Settings
    from .upstream.pool import Upstreams

logger = logging.getLogger("proxy.forward")

_ALLOW = [(b"allow", b"GET, POST, DELETE")]
_SSE = b"text/event-stream"
# Request headers the gateway sets itself toward the upstream.
_REQUEST_DROP = H.HOP_BY_HOP | {
    H.HOST,
    H.CONTENT_LENGTH,
    H.ACCEPT_ENCODING,
    H.ORIGIN,
    H.MCP_SESSION_ID,
}
# The upstream's framing is never relayed: Granian frames the answer itself (a length the
# gateway computed, or chunked), so no upstream can make it announce one length and send
# another.
_RESPONSE_DROP = H.HOP_BY_HOP | {H.MCP_SESSION_ID, H.CONTENT_LENGTH}
_CREDENTIALS = frozenset({b"authorization", b"cookie"})
_NO_BODY_STATUS = frozenset({204, 304})
# Requests that may be sent again when a kept-alive connection closes unanswered (the
# upstream cannot have acted on them in a way that repeating would change).
SAFE_TO_REPEAT = frozenset(
    {
        "ping",
        "initialize",
        "server/discover",
        "tools/list",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "completion/complete",
    }
)
WATCH_DELAY = 0.05
DRAIN_HANDOVER = 0.1
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0


def new_session_id() -> str:
    """A gateway session id: 192 random bits, URL-safe visible ASCII."""
    return secrets.token_urlsafe(24)


async def _drain(receive: Receive) -> None:
    """Read and drop a little more of an oversized body so that the client, still
    sending, gets the 413 instead of a connection reset; bounded in bytes and time."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            dropped = 0
            while dropped < _DRAIN_BYTES:
                message = await receive()
                dropped += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return


_CLOSE = [(H.CONNECTION, b"close")]


class _Deadline:
    """Cancels the task that armed it when it expires (on a coarse :class:`Sweeper`)."""

    __slots__ = ("expired", "task")

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - called from a request's task
        self.task = task
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()


class ClientWatch:
    """Cancels ``token`` when the client disconnects.

    Watching needs a task parked on ``receive()``; most exchanges finish within a few
    milliseconds, so the task starts only when one is still running after
    ``WATCH_DELAY`` seconds (armed on a coarse :class:`Sweeper`), or at once for a
    response that streams.
    """

    __slots__ = ("_receive", "_sweeper", "_task", "ending", "token")

    def __init__(self, receive: Receive, sweeper: Sweeper) -> None:
        self.token = CancelToken()
        self.ending = False  # the gateway, not the client, ends the stream (drain)
        self._receive = receive
        self._sweeper = sweeper
        self._task: asyncio.Task[None] | None = None
        sweeper.add(self, WATCH_DELAY, self.start)

    def start(self) -> None:
        if self._task is None:
            self._sweeper.remove(self)
            self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        # A GET's or DELETE's empty request message comes first: skip it.
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.token.cancel()

    def end(self) -> None:
        """Stop relaying and end the client's response cleanly (the gateway is draining)."""
        self.ending = True
        self.token.cancel()

    def close(self) -> None:
        self._sweeper.remove(self)
        if self._task is not None:
            self._task.cancel()


class Reply(Exception):
    """Answer the client with a JSON-RPC error and this HTTP status."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        id: bytes | None = None,
        extra: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.id = id  # for errors raised before the envelope was known
        self.extra = extra


class Route:
    """Where one request goes: the replica, the backend session id, the gateway session."""

    __slots__ = ("backend", "gateway_sid", "mint", "replica", "upstream_sid")

    def __init__(
        self,
        backend: Backend,
        replica: Replica,
        upstream_sid: bytes | None = None,
        gateway_sid: bytes | None = None,
        *,
        mint: bool = False,
    ) -> None:
        self.backend = backend
        self.replica = replica
        self.upstream_sid = upstream_sid
        self.gateway_sid = gateway_sid
        self.mint = mint  # initialize: bind the upstream's new session to a new gateway id


class Forwarder:
    """Handles requests to the MCP endpoint."""

    def __init__(
        self, settings: Settings, store: SessionStore, upstreams: Upstreams, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstreams = upstreams
        self.metrics = metrics
        self.guard = OriginGuard(settings)
        self.proxy_headers = ProxyHeaders(settings.trusted_proxies)
        self.stream_limits = StreamLimits(
            settings.max_streams_per_session, settings.max_streams_per_client
        )
        self.max_body = settings.max_body_size
        self.timeout = settings.upstream_timeout
        self.body_timeout = settings.body_timeout
        self.draining = False
        self._watches = Sweeper()
        self._server_streams: set[ClientWatch] = set()

    async def start(self) -> None:
        """Anything to set up once the store and the pools are open (the app's startup)."""

    async def stop(self) -> None:
        """Undo :meth:`start` (the app's shutdown)."""

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

    # -- entry ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        verb = scope["method"]
        hdrs = scan_headers(scope["headers"])
        env: Envelope | None = None
        label = verb if verb != "POST" else "other"
        status = 500
        try:
            if hdrs.duplicate is not None:
                name = hdrs.duplicate.decode("latin-1")
                raise Reply(400, rpc.INVALID_REQUEST, f"Bad Request: {name} header sent twice")
            if not self.guard.allows(hdrs.origin, hdrs.host):
                raise Reply(403, rpc.FORBIDDEN, "Forbidden: Origin or Host not allowed")
            if verb == "POST":
                body = await self._read_body(receive, hdrs)
                env = self._envelope(body, hdrs)
                label = method_label(env.method if env.kind != rpc.BATCH else "batch")
                status = await self._exchange(scope, receive, send, hdrs, env, body)
            elif verb in ("GET", "DELETE"):
                status = await self._exchange(scope, receive, send, hdrs, None, None)
            else:
                raise Reply(405, rpc.INVALID_REQUEST, "Method Not Allowed", extra=_ALLOW)
        except Reply as reply:
            status = reply.status
            rid = reply.id if reply.id is not None else (env.id if env is not None else None)
            await send_error(send, reply.status, reply.code, reply.message, rid, reply.extra)
        finally:
            self.metrics.requests.inc(label, f"{status // 100}xx")
            self.metrics.latency.observe(time.perf_counter() - started, label)

    async def _read_body(self, receive: Receive, hdrs: McpHeaders) -> bytes:
        """The whole body, within ``max_body_size`` bytes (413) and ``body_timeout``
        seconds (408: a client that sends slowly must not hold a request slot forever)."""
        limit = self.max_body
        if hdrs.content_length is not None:
            try:
                declared = int(hdrs.content_length)
            except ValueError:
                raise Reply(400, rpc.INVALID_REQUEST, "Invalid Content-Length") from None
            if declared > limit:
                raise Reply(413, rpc.REQUEST_TOO_LARGE, f"Request body exceeds {limit} bytes")
        deadline = _Deadline()
        self._watches.add(deadline, self.body_timeout, deadline.expire)
        try:
            return await self._receive_body(receive, limit)
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.task.uncancel()
            self.metrics.refused.inc("body_timeout")
            message = "Request Timeout: body not received in time"
            raise Reply(408, rpc.INVALID_REQUEST, message, extra=_CLOSE) from None
        finally:
            self._watches.remove(deadline)

    async def _receive_body(self, receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError  # nobody left to answer
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    if message.get("more_body", False):
                        await _drain(receive)
                    raise Reply(413, rpc.REQUEST_TOO_LARGE, f"Request body exceeds {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _envelope(self, body: bytes, hdrs: McpHeaders) -> Envelope:
        try:
            env = scan_envelope(body)
        except EnvelopeError as exc:
            title = "Parse error" if exc.code == rpc.PARSE_ERROR else "Invalid Request"
            message = exc.message if exc.message.startswith(title) else f"{title}: {exc.message}"
            raise Reply(400, exc.code, message, id=exc.id) from None
        version = hdrs.protocol_version
        if version is not None and version not in rpc.HANDSHAKE_VERSIONS:
            self._check_routing_headers(env, hdrs)
        return env

    @staticmethod
    def _check_routing_headers(env: Envelope, hdrs: McpHeaders) -> None:
        """2026-07-28: Mcp-Method / Mcp-Name / MCP-Protocol-Version must agree with the body."""
        if env.kind == rpc.BATCH:
            return
        if hdrs.method is not None and hdrs.method.decode("latin-1") != env.method:
            raise Reply(
                400, rpc.HEADER_MISMATCH, "Mcp-Method header does not match the body", id=env.id
            )
        key = rpc.NAME_BEARING_METHODS.get(env.method or "")
        if key is not None and hdrs.name is not None:
            body_value = env.name if key == "name" else env.uri
            if body_value is not None and decode_header_value(hdrs.name) != body_value:
                raise Reply(
                    400, rpc.HEADER_MISMATCH, "Mcp-Name header does not match the body", id=env.id
                )
        if (
            env.protocol_version is not None
            and hdrs.protocol_version is not None
            and hdrs.protocol_version.decode("latin-1") != env.protocol_version
        ):
            raise Reply(
                400,
                rpc.HEADER_MISMATCH,
                "MCP-Protocol-Version header does not match the body",
                id=env.id,
            )

    # -- routing ---------------------------------------------------------------------------

    async def _route(self, hdrs: McpHeaders) -> Route | None:
        """The route of a request that names a session; None when it starts or needs none."""
        sid = hdrs.session_id
        if sid is None:
            return None
        gateway_sid = sid.decode("latin-1")
        try:
            t0 = time.perf_counter()
            record = await self.store.resolve(gateway_sid)
            self.metrics.store_latency.observe(time.perf_counter() - t0, "resolve")
        except StoreUnavailable as exc:
            self.metrics.store_errors.inc("resolve")
            logger.warning("session store unavailable: %s", exc)
            raise Reply(503, rpc.STORE_UNAVAILABLE, "Session store unavailable") from None
        backend = self.upstreams.default
        binding = None if record is None else record.get(backend.name)
        if binding is None:
            raise Reply(404, rpc.SESSION_NOT_FOUND, "Session not found")
        replica = backend.by_url.get(binding.replica)
        if replica is None or (not replica.up and self.upstreams.lost(replica)):
            # The replica holding the session is gone: the client must re-initialise.
            await self._forget(gateway_sid)
            raise Reply(404, rpc.SESSION_NOT_FOUND, "Session not found (its upstream is gone)")
        upstream_sid = None if binding.session_id is None else binding.session_id.encode("latin-1")
        return Route(backend, replica, upstream_sid, sid)

    async def _forget(self, gateway_sid: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete(gateway_sid)

    # -- the exchange -------------------------------------------------------------------------

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        hdrs: McpHeaders,
        env: Envelope | None,
        body: bytes | None,
    ) -> int:
        watch = ClientWatch(receive, self._watches)
        verb = scope["method"]
        stream_key: tuple[bytes | None, str] | None = None
        try:
            route = await self._route(hdrs)
            if verb == "GET":
                stream_key = self._take_stream(scope, hdrs)
            backend = self.upstreams.default
            mint = env is not None and env.kind == rpc.REQUEST and env.method == "initialize"
            retry = verb != "POST" or (
                env is not None and env.kind == rpc.REQUEST and env.method in SAFE_TO_REPEAT
            )
            tried: set[str] = set()
            while True:
                if route is None:
                    replica = backend.choose()
                    if replica is None or replica.url in tried:
                        raise Reply(
                            502, rpc.UPSTREAM_UNAVAILABLE, "No upstream replica is reachable"
                        )
                    current = Route(backend, replica, mint=mint and hdrs.session_id is None)
                else:
                    current = route
                try:
                    response = await self._open(scope, current, body, watch.token, retry=retry)
                except ConnectFailed as exc:
                    self.metrics.upstream_errors.inc(current.replica.url, "connect")
                    self.upstreams.mark_down(current.replica, str(exc), gone=exc.refused)
                    if route is not None and self.upstreams.lost(current.replica):
                        # The session lived there: the client re-initialises.
                        assert route.gateway_sid is not None  # noqa: S101 - set with the route
                        await self._forget(route.gateway_sid.decode("latin-1"))
                        raise Reply(
                            404, rpc.SESSION_NOT_FOUND, "Session not found (upstream gone)"
                        ) from None
                    if route is not None:  # unreachable for now: keep the session
                        raise Reply(
                            503, rpc.UPSTREAM_UNAVAILABLE, "Upstream unreachable; retry"
                        ) from None
                    tried.add(current.replica.url)
                    continue  # never reached the upstream: safe to try another replica
                break
            if route is not None and (
                response.status == 404 or (verb == "DELETE" and response.status < 300)
            ):
                # The backend no longer knows the session (or it just ended): forget ours too.
                assert route.gateway_sid is not None  # noqa: S101
                await self._forget(route.gateway_sid.decode("latin-1"))
            return await self._relay(watch, send, current, response, verb == "GET")
        finally:
            watch.close()
            if stream_key is not None:
                self.stream_limits.give_back(*stream_key)

    def _take_stream(self, scope: Scope, hdrs: McpHeaders) -> tuple[bytes | None, str]:
        """Count one more open GET stream for this session and client, or answer 429."""
        client = self.proxy_headers.client(_peer(scope), _forwarding(scope["headers"]))
        refused = self.stream_limits.take(hdrs.session_id, client)
        if refused is not None:
            self.metrics.refused.inc(f"streams_per_{refused}")
            raise Reply(
                429,
                rpc.INVALID_REQUEST,
                f"Too Many Requests: too many open streams for this {refused}",
                extra=[(b"retry-after", b"1")],
            )
        return hdrs.session_id, client

    async def _open(
        self,
        scope: Scope,
        route: Route,
        body: bytes | None,
        cancel: CancelToken,
        *,
        retry: bool = False,
        credentials: bool = True,
    ) -> UpstreamResponse:
        """Send the request upstream and wait (bounded) for the response head. GET
        streams use the replica's stream connections, everything else its exchange
        connections; ``retry``: safe to send again if a kept-alive connection closes
        unanswered; ``credentials``: the client's Authorization and Cookie go along."""
        replica = route.replica
        try:
            head = self._request_head(scope, route, body, credentials)
        except HeadInjection:
            raise Reply(400, rpc.INVALID_REQUEST, "Bad Request: invalid header") from None
        pool: Http1Pool = replica.streams if scope["method"] == "GET" else replica.pool
        replica.inflight += 1  # released by _relay once the body is relayed, else below
        opened = False
        try:
            response = await pool.request(
                head, body, head_timeout=self.timeout, cancel=cancel, retry=retry
            )
            opened = True
            return response
        except ClientGone:
            raise asyncio.CancelledError from None  # nobody left to answer
        except PoolTimeout as exc:
            self.metrics.upstream_errors.inc(replica.url, "pool")
            logger.warning("upstream %s: %s", replica.url, exc)
            raise Reply(
                503,
                rpc.UPSTREAM_UNAVAILABLE,
                "Upstream busy: no connection came free in time; retry",
                extra=[(b"retry-after", b"1")],
            ) from None
        except UpstreamTimeout:
            self.metrics.upstream_errors.inc(replica.url, "timeout")
            raise Reply(504, rpc.UPSTREAM_TIMEOUT, "Upstream timed out") from None
        except ProtocolFailure as exc:
            self.metrics.upstream_errors.inc(replica.url, "protocol")
            logger.warning("upstream %s failed: %s", replica.url, exc)
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, "Bad gateway: upstream failed") from None
        finally:
            if not opened:
                replica.inflight -= 1

    def _request_head(
        self, scope: Scope, route: Route, body: bytes | None, credentials: bool = True
    ) -> bytes:
        """Request line and headers for the upstream: hop-by-hop and gateway-owned
        headers replaced, the upstream's own Host, the backend's session id, the
        forwarding headers (:mod:`proxy.forwarded`)."""
        replica = route.replica
        out: Headers = []
        sent: Headers | None = None
        connection: bytes | None = None
        host: bytes | None = None
        for name, value in scope["headers"]:
            if name in _REQUEST_DROP:
                if name == H.CONNECTION:
                    connection = value
                elif name == H.HOST:
                    host = value
                continue
            if name in FORWARDING:
                if sent is None:
                    sent = []
                sent.append((name, value))
                continue
            if not credentials and name in _CREDENTIALS:
                continue
            out.append((name, value))
        if connection is not None and (tokens := H.connection_tokens(connection)):
            # Headers named in Connection are hop-by-hop too.
            out = [(n, v) for n, v in out if n not in tokens]
        out.append((H.HOST, replica.host_header))
        out.append((H.ACCEPT_ENCODING, b"identity"))
        if body is not None:
            out.append((H.CONTENT_LENGTH, b"%d" % len(body)))
        if route.upstream_sid is not None:
            out.append((H.MCP_SESSION_ID, route.upstream_sid))
        out.extend(
            self.proxy_headers.headers(_peer(scope), scope.get("scheme", "http"), host, sent)
        )
        return request_head(scope["method"].encode("ascii"), replica.target, out)

    async def _relay(
        self,
        watch: ClientWatch,
        send: Send,
        route: Route,
        response: UpstreamResponse,
        server_stream: bool,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> int:
        """Relay status, filtered headers and the body, chunk by chunk, unbuffered
        (through `transform` when given: it may hold back an incomplete part)."""
        try:
            status = response.status
            if (broken := response.failed()) is not None:  # before a byte went to the client
                self.metrics.upstream_errors.inc(route.replica.url, "protocol")
                logger.warning("upstream %s failed: %s", route.replica.url, broken)
                raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, "Bad gateway: upstream failed")
            gateway_sid = route.gateway_sid
            upstream_sid = response.header(H.MCP_SESSION_ID)
            if route.mint and upstream_sid is not None and status < 300:
                gateway_sid = await self._mint(route, upstream_sid.decode("latin-1"))
            out: Headers = []
            connection: bytes | None = None
            sse = buffering_set = False
            for name, value in response.headers:
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
            if gateway_sid is not None and (upstream_sid is not None or route.mint):
                out.append((H.MCP_SESSION_ID, gateway_sid))
            if sse and not buffering_set:
                out.append((H.X_ACCEL_BUFFERING, b"no"))
            if self.draining:
                out.append((H.CONNECTION, b"close"))
            if response.body_complete():  # the common case: a small JSON answer
                body = response.read_buffered()
                if transform is not None:
                    body = transform(body)
                if status not in _NO_BODY_STATUS:
                    out.append((H.CONTENT_LENGTH, b"%d" % len(body)))
                await self._start(send, status, out, route)
                await send({"type": "http.response.body", "body": body})
            elif server_stream:
                await self._start(send, status, out, route)
                self._server_streams.add(watch)
                try:
                    if self.draining:
                        watch.end()  # opened while draining: the client reconnects elsewhere
                    watch.start()
                    await self._stream_body(watch, send, response, transform)
                finally:
                    self._server_streams.discard(watch)
            else:
                await self._start(send, status, out, route)
                watch.start()
                await self._stream_body(watch, send, response, transform)
            return status
        finally:
            route.replica.inflight -= 1
            response.close()

    async def _start(self, send: Send, status: int, headers: Headers, route: Route) -> None:
        """Send the response head; one the server refuses (say, an upstream header it
        will not write) is a 502, not a traceback."""
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
        except Exception as exc:
            self.metrics.upstream_errors.inc(route.replica.url, "protocol")
            logger.warning("upstream %s: its response head was refused: %s", route.replica.url, exc)
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, "Bad gateway: upstream failed") from None

    @staticmethod
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
                return  # response.close() in _relay drops the upstream connection
            # Draining: end the upstream's stream first and give it a moment to notice,
            # since an upstream allows one GET stream per session (409 to a second) and
            # the client reconnects, through the balancer, as soon as its stream ends.
            response.close()
            await asyncio.sleep(DRAIN_HANDOVER)
        except ProtocolFailure as exc:
            # The upstream broke mid-response: so does the client's response (no final
            # chunk), so that it cannot take a cut-off body for a whole one.
            logger.warning("upstream answer broke off: %s", exc)
            return
        except Exception as exc:  # the client's connection broke while we wrote to it
            logger.debug("relay ended early: %r", exc)
            return
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _mint(self, route: Route, upstream_sid: str) -> bytes:
        gateway_sid = new_session_id()
        record = {route.backend.name: Binding(route.replica.url, upstream_sid)}
        try:
            t0 = time.perf_counter()
            await self.store.create(gateway_sid, record)
            self.metrics.store_latency.observe(time.perf_counter() - t0, "create")
        except StoreUnavailable:
            self.metrics.store_errors.inc("create")
            raise Reply(503, rpc.STORE_UNAVAILABLE, "Session store unavailable") from None
        except StoreFull:
            self.metrics.refused.inc("sessions_full")
            raise Reply(
                503,
                rpc.STORE_UNAVAILABLE,
                "Too many open sessions; retry later",
                extra=[(b"retry-after", b"5")],
            ) from None
        self.metrics.sessions_created.inc()
        return gateway_sid.encode("ascii")


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _forwarding(headers: Headers) -> Headers | None:
    sent = [(n, v) for n, v in headers if n in FORWARDING]
    return sent or None
