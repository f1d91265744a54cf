"""The front half of every request to the MCP endpoint: headers, checks, body, envelope.

:class:`Endpoint` is the MCP endpoint's ASGI callable. For each request it scans the
routing headers, applies the Origin/Host check, reads the body (bounded in size and
time), scans the JSON-RPC envelope and checks the 2026-07-28 routing headers against it;
then it hands the :class:`Request` to its :class:`Handler` (one backend: the forwarder;
several: the federator). Any :class:`~proxy.errors.GatewayError` on the way becomes the
answer, with the request's id; every request is counted and timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from . import jsonrpc as rpc
from ._types import Message, Receive, Scope, Send
from .cors import preflight_headers, with_cors
from .errors import (
    BadRequest,
    BodyTimeout,
    BodyTooLarge,
    Forbidden,
    GatewayError,
    HeaderMismatch,
    MethodNotAllowed,
    ParseError,
)
from .fastpath import scan_envelope, scan_headers
from .guard import OriginGuard
from .headers import McpHeaders, decode_header_value
from .jsonrpc import Envelope, EnvelopeError
from .metrics import Metrics, method_label
from .responses import send_bytes
from .timers import Sweeper
from .tracing import META_TRACEPARENT, ToolErrors, meta_context

if TYPE_CHECKING:
    from .accesslog import AccessLog
    from .auth.access import Access
    from .auth.principal import Principal
    from .config import Settings
    from .tracing import Span, Tracing

__all__ = ("Endpoint", "Handler", "Request")

logger = logging.getLogger("proxy.request")

_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0


class Request:
    """One request to the MCP endpoint, as far as the front half read it.

    ``hdrs``: the routing headers (:class:`~proxy.headers.McpHeaders`); ``env`` and
    ``body``: the JSON-RPC envelope and the raw body of a POST (None for GET and DELETE).
    With authentication on, ``principal`` and ``token`` say who sent it (the token only
    ever goes to a token exchange); ``backend``, ``replica`` and ``rule`` are noted on
    the way for the audit line.
    """

    __slots__ = (
        "backend",
        "body",
        "env",
        "hdrs",
        "meta_trace",
        "principal",
        "receive",
        "replica",
        "rule",
        "scope",
        "send",
        "span",
        "token",
        "upstream_seconds",
        "verb",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        hdrs: McpHeaders,
        env: Envelope | None = None,
        body: bytes | None = None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.verb: str = scope["method"]
        self.hdrs = hdrs
        self.env = env
        self.body = body
        self.principal: Principal | None = None
        self.token: bytes | None = None
        self.backend: str | None = None
        self.replica: str | None = None
        self.rule: str | None = None
        self.upstream_seconds: float | None = None
        """How long the upstream took to its answer's head (the access log)."""
        self.span: Span | None = None
        """The request's server span, with tracing on."""
        self.meta_trace = False
        """Its body carries the client's trace context in ``params._meta`` (the upstream
        gets the gateway's there instead)."""

    @property
    def method(self) -> str:
        """The JSON-RPC method of a POST ("" for GET, DELETE, responses and batches)."""
        env = self.env
        return (env.method or "") if env is not None else ""


class Handler(Protocol):
    """What serves requests once their front half is read: one backend or several."""

    async def open(self) -> None:
        """Set up once the store and the pools are open (the app's startup)."""

    async def close(self) -> None:
        """Undo :meth:`open` (the app's shutdown)."""

    async def retire(self) -> None:
        """A reload replaced this handler: stop its background work; what it serves
        now (streams included) goes on to its end."""

    def drain(self) -> None:
        """Close connections after each answer and end open streams (before shutdown)."""

    def catalog_changed(self) -> None:
        """A reload changed the backends: tell the clients whose lists it serves."""

    async def handle(self, request: Request) -> int:
        """Answer the request; return the HTTP status sent."""


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


class _Counted:
    """An ASGI send that counts the body bytes it passes on."""

    __slots__ = ("send", "sent")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.sent = 0

    def __call__(self, message: Message) -> Awaitable[None]:
        # A plain call returning the send's awaitable: no coroutine of its own per message.
        if message["type"] == "http.response.body":
            self.sent += len(message.get("body", b""))
        return self.send(message)


class Endpoint:
    """The MCP endpoint: the front half of each request, then its handler."""

    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        metrics: Metrics,
        access: Access | None = None,
        access_log: AccessLog | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.handler = handler
        self.metrics = metrics
        self.access = access
        self.access_log = access_log
        self.in_flight = 0
        """Requests to the endpoint not answered yet (the status page)."""
        self.tracing = tracing
        self.guard = OriginGuard(settings)
        self.max_body = settings.max_body_size
        self.body_timeout = settings.body_timeout
        self._deadlines = Sweeper()

    def reconfigure(self, settings: Settings, handler: Handler) -> None:
        """A reload: requests from now on go to `handler`, with `settings`' limits
        (requests in flight finish with the handler they began with)."""
        self.handler = handler
        self.guard = OriginGuard(settings)
        self.max_body = settings.max_body_size
        self.body_timeout = settings.body_timeout

    def close(self) -> None:
        """Stop the body-deadline timers (the app's shutdown)."""
        self._deadlines.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self.in_flight += 1
        verb = scope["method"]
        hdrs = scan_headers(scope["headers"])
        env: Envelope | None = None
        request: Request | None = None
        failure: GatewayError | None = None
        label = verb if verb != "POST" else "other"
        status = 500
        tracing = self.tracing
        span = None if tracing is None else tracing.server_span(scope)
        counted = None
        if self.access_log is not None:  # the access log counts the bytes sent
            send = counted = _Counted(send)
        try:
            if hdrs.duplicate is not None:
                name = hdrs.duplicate.decode("latin-1")
                raise BadRequest(f"Bad Request: {name} header sent twice")
            if not self.guard.allows(hdrs.origin, hdrs.host):
                raise Forbidden()
            raw_send = send
            if hdrs.origin is not None:  # a browser: its scripts read the answer via CORS
                send = with_cors(send, hdrs.origin)
            if verb == "POST":
                body = await self.read_body(receive, hdrs)
                env = envelope(body, hdrs)
                label = method_label(env.method if env.kind != rpc.BATCH else "batch")
                meta = None
                if tracing is not None and span is not None:
                    tracing.named(span, env, hdrs)
                    if body.find(META_TRACEPARENT) >= 0:  # find: see upstream/head.py
                        meta = meta_context(body)
                        if meta is not None:
                            tracing.adopt(span, *meta)
                    if span.sampled and env.method == "tools/call":
                        send = ToolErrors(send, span)
                request = Request(scope, receive, send, hdrs, env, body)
                request.meta_trace = meta is not None
            elif verb in ("GET", "DELETE"):
                request = Request(scope, receive, send, hdrs)
            elif verb == "OPTIONS" and hdrs.origin is not None:
                status = await self._preflight(scope, raw_send, hdrs.origin)
                return
            else:
                raise MethodNotAllowed()
            request.span = span
            access = self.access
            if access is not None and not access.entered(request):
                await access.enter(request)
            status = await self.handler.handle(request)
        except GatewayError as error:
            failure = error
            status = error.status
            headers = error.answer_headers()
            await send_bytes(send, status, error.body(env.id if env else None), extra=headers)
        finally:
            self.in_flight -= 1
            if tracing is not None and span is not None:
                error_type = None if failure is None else type(failure).__name__
                tracing.ended(span, status, error_type, hdrs)
            self.metrics.requests.inc(label, f"{status // 100}xx")
            ended = time.perf_counter()
            self.metrics.latency.observe(ended - started, label)
            if self.access is not None and request is not None:
                self.access.leave(request, status, failure, started, ended)
            if self.access_log is not None:
                sent = None if counted is None else counted.sent
                self.access_log.record(
                    scope, hdrs, env, request, status, failure, started, ended, sent
                )

    @staticmethod
    async def _preflight(scope: Scope, send: Send, origin: bytes) -> int:
        """A CORS preflight from an allowed origin (the Origin check has passed)."""
        asked = next(
            (v for n, v in scope["headers"] if n == b"access-control-request-headers"), None
        )
        headers = preflight_headers(origin, asked)
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return 204

    async def read_body(self, receive: Receive, hdrs: McpHeaders) -> bytes:
        """The whole body, within ``max_body_size`` bytes (413) and ``body_timeout``
        seconds (408: a client that sends slowly must not hold a request slot forever)."""
        limit = self.max_body
        if hdrs.content_length is not None:
            try:
                declared = int(hdrs.content_length)
            except ValueError:
                raise BadRequest("Invalid Content-Length") from None
            if declared > limit:
                raise BodyTooLarge(f"Request body exceeds {limit} bytes")
        deadline = _Deadline()
        self._deadlines.add(deadline, self.body_timeout, deadline.expire)
        try:
            return await _receive_body(receive, limit)
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.task.uncancel()
            self.metrics.refused.inc("body_timeout")
            raise BodyTimeout() from None
        finally:
            self._deadlines.remove(deadline)


async def _receive_body(receive: Receive, limit: int) -> bytes:
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
                raise BodyTooLarge(f"Request body exceeds {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


def envelope(body: bytes, hdrs: McpHeaders) -> Envelope:
    """The body's JSON-RPC envelope, checked against the 2026-07-28 routing headers."""
    try:
        env = scan_envelope(body)
    except EnvelopeError as exc:
        error = ParseError if exc.code == rpc.PARSE_ERROR else BadRequest
        title = "Parse error" if exc.code == rpc.PARSE_ERROR else "Invalid Request"
        message = exc.message if exc.message.startswith(title) else f"{title}: {exc.message}"
        raise error(message, id=exc.id) from None
    version = hdrs.protocol_version
    if version is not None and version not in rpc.HANDSHAKE_VERSIONS:
        check_routing_headers(env, hdrs)
    return env


def check_routing_headers(env: Envelope, hdrs: McpHeaders) -> None:
    """2026-07-28: Mcp-Method / Mcp-Name / MCP-Protocol-Version must agree with the body."""
    if env.kind == rpc.BATCH:
        return
    if hdrs.method is not None and hdrs.method.decode("latin-1") != env.method:
        raise HeaderMismatch("Mcp-Method header does not match the body", id=env.id)
    key = rpc.NAME_BEARING_METHODS.get(env.method or "")
    if key is not None and hdrs.name is not None:
        body_value = env.name if key == "name" else env.uri
        if body_value is not None and decode_header_value(hdrs.name) != body_value:
            raise HeaderMismatch("Mcp-Name header does not match the body", id=env.id)
    if (
        env.protocol_version is not None
        and hdrs.protocol_version is not None
        and hdrs.protocol_version.decode("latin-1") != env.protocol_version
    ):
        raise HeaderMismatch("MCP-Protocol-Version header does not match the body", id=env.id)
