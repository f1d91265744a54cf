"""One exchange: headers -> envelope -> route -> session -> upstream -> relayed response."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from . import headers as H, jsonrpc as rpc
from ._types import Headers, Receive, Scope, Send
from .fastpath import scan_envelope, scan_headers
from .guard import OriginGuard
from .headers import McpHeaders, decode_header_value
from .jsonrpc import Envelope, EnvelopeError
from .metrics import Metrics, method_label
from .responses import send_error
from .sessions import Binding, SessionStore, StoreUnavailable
from .upstream.balance import Backend, Replica

if TYPE_CHECKING:
    from .config import Settings
    from .upstream.pool import Upstreams

logger = logging.getLogger("proxy.forward")
T = TypeVar("T")

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
_RESPONSE_DROP = H.HOP_BY_HOP | {H.MCP_SESSION_ID}
_XFF = b"x-forwarded-for"
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


async def _client_gone(receive: Receive) -> None:
    """Return once the client has disconnected (a GET's or DELETE's empty request is skipped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(gone: asyncio.Future[None], pending: Awaitable[T]) -> T:
    """Await `pending`, but cancel it and give up once the client has gone away."""
    task = asyncio.ensure_future(pending)
    racing: set[asyncio.Future[Any]] = {task, gone}
    await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise asyncio.CancelledError  # nobody left to answer, as in _read_body
    return task.result()


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
        self.max_body = settings.max_body_size
        self.timeout = settings.upstream_timeout

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
                status = await self._exchange(scope, receive, send, hdrs, env, body, label)
            elif verb in ("GET", "DELETE"):
                status = await self._exchange(scope, receive, send, hdrs, None, None, label)
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
        limit = self.max_body
        if hdrs.content_length is not None:
            try:
                declared = int(hdrs.content_length)
            except ValueError:
                raise Reply(400, rpc.INVALID_REQUEST, "Invalid Content-Length") from None
            if declared > limit:
                raise Reply(413, rpc.REQUEST_TOO_LARGE, f"Request body exceeds {limit} bytes")
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

    async def _route(self, hdrs: McpHeaders, env: Envelope | None) -> Route | None:
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
        if replica is None or not replica.up:
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
        label: str,
    ) -> int:
        gone = asyncio.ensure_future(_client_gone(receive))
        try:
            route = await self._route(hdrs, env)
            backend = self.upstreams.default
            mint = env is not None and env.kind == rpc.REQUEST and env.method == "initialize"
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
                    response = await self._open(scope, current, body, gone)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    self.metrics.upstream_errors.inc(current.replica.url, "connect")
                    self.upstreams.mark_down(current.replica, str(exc) or "connection refused")
                    if route is not None:  # the session lived there: the client re-initialises
                        assert route.gateway_sid is not None  # noqa: S101 - set with the route
                        await self._forget(route.gateway_sid.decode("latin-1"))
                        raise Reply(
                            404, rpc.SESSION_NOT_FOUND, "Session not found (upstream gone)"
                        ) from None
                    tried.add(current.replica.url)
                    continue  # never reached the upstream: safe to try another replica
                break
            verb = scope["method"]
            if route is not None and (
                response.status_code == 404 or (verb == "DELETE" and response.is_success)
            ):
                # The backend no longer knows the session (or it just ended): forget ours too.
                assert route.gateway_sid is not None  # noqa: S101
                await self._forget(route.gateway_sid.decode("latin-1"))
            return await self._relay(gone, send, current, response)
        finally:
            gone.cancel()

    async def _open(
        self, scope: Scope, route: Route, body: bytes | None, gone: asyncio.Future[None]
    ) -> httpx.Response:
        """Send the request upstream and wait (bounded) for the response headers."""
        client = self.upstreams.client
        assert client is not None  # noqa: S101 - opened in the lifespan
        request = httpx.Request(
            scope["method"],
            route.replica.url,
            headers=self._request_headers(scope, route),
            content=body,
        )
        replica = route.replica
        replica.inflight += 1  # released by _relay when the body is relayed, else below
        opened = False
        try:
            async with asyncio.timeout(self.timeout):
                response = await _unless_gone(gone, client.send(request, stream=True))
            opened = True
            return response
        except TimeoutError:
            self.metrics.upstream_errors.inc(replica.url, "timeout")
            raise Reply(504, rpc.UPSTREAM_TIMEOUT, "Upstream timed out") from None
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise  # never reached the upstream: the caller decides
        except httpx.TimeoutException:
            self.metrics.upstream_errors.inc(replica.url, "timeout")
            raise Reply(504, rpc.UPSTREAM_TIMEOUT, "Upstream timed out") from None
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.inc(replica.url, "protocol")
            logger.warning("upstream %s failed: %r", replica.url, exc)
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, "Bad gateway: upstream failed") from None
        finally:
            if not opened:
                replica.inflight -= 1

    @staticmethod
    def _request_headers(scope: Scope, route: Route) -> Headers:
        raw: Headers = scope["headers"]
        drop = _REQUEST_DROP | H.connection_tokens(raw)
        out: Headers = [(n, v) for n, v in raw if n not in drop]
        out.append((H.HOST, route.replica.host_header))
        out.append((H.ACCEPT_ENCODING, b"identity"))
        if route.upstream_sid is not None:
            out.append((H.MCP_SESSION_ID, route.upstream_sid))
        client = scope.get("client")
        if client:
            peer = str(client[0]).encode("latin-1")
            for i, (name, value) in enumerate(out):
                if name == _XFF:  # extend the chain a front proxy started
                    out[i] = (name, value + b", " + peer)
                    break
            else:
                out.append((_XFF, peer))
        out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
        return out

    async def _relay(
        self, gone: asyncio.Future[None], send: Send, route: Route, response: httpx.Response
    ) -> int:
        """Relay status, filtered headers and the body, chunk by chunk, unbuffered."""
        try:
            status = response.status_code
            gateway_sid = route.gateway_sid
            upstream_sid = response.headers.get("mcp-session-id")
            if route.mint and upstream_sid is not None and status < 300:
                gateway_sid = await self._mint(route, upstream_sid)
            raw = response.headers.raw
            drop = _RESPONSE_DROP | H.connection_tokens(raw)
            out: Headers = [(n.lower(), v) for n, v in raw if n.lower() not in drop]
            if gateway_sid is not None and (upstream_sid is not None or route.mint):
                out.append((H.MCP_SESSION_ID, gateway_sid))
            if response.headers.get("content-type", "").startswith(
                "text/event-stream"
            ) and not response.headers.get("x-accel-buffering"):
                out.append((H.X_ACCEL_BUFFERING, b"no"))
            await send({"type": "http.response.start", "status": status, "headers": out})
            await self._stream_body(gone, send, response)
            return status
        finally:
            route.replica.inflight -= 1
            await response.aclose()

    async def _stream_body(
        self, gone: asyncio.Future[None], send: Send, response: httpx.Response
    ) -> None:
        """Copy the body until it ends or the client goes away (then the upstream is closed)."""
        pump = asyncio.ensure_future(self._pump(send, response))
        try:
            done, _ = await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            if pump in done and (exc := pump.exception()) is not None:
                logger.debug("relay ended early: %r", exc)  # the client went away
        finally:
            if not pump.done():
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump

    @staticmethod
    async def _pump(send: Send, response: httpx.Response) -> None:
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            # The upstream died mid-response: end the client's stream (it sees a short body).
            logger.warning("upstream stream ended abnormally: %r", exc)
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
        self.metrics.sessions_created.inc()
        return gateway_sid.encode("ascii")
