"""One backend behind the endpoint: route each request to its replica, relay the answer.

The transparent drop-in. An ``initialize`` (or a stateless request) goes to the least
busy healthy replica; when the upstream answers with its own ``Mcp-Session-Id`` the
gateway mints its own id and records which replica and backend session it stands for.
Every later request naming that id is resolved (one store round trip, TTL renewed) and
sent to the same replica with the backend's id. Everything else is the relay's.
"""

from __future__ import annotations

import logging
import secrets
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from . import headers as H, jsonrpc as rpc
from ._types import Headers
from .auth.lists import Lists
from .auth.policy import LIST_USES
from .errors import BadGateway, SessionNotFound, TooManyStreams
from .limits import StreamLimits
from .metrics import Metrics
from .relay import Exchange, Relay, ReplicaLost
from .request import Request
from .response_cache import (
    CACHED_METHODS,
    MAX_ENTRY,
    Key,
    ResponseCache,
    Stored,
    cacheable,
    context_of,
)
from .responses import send_bytes
from .sessions import Binding, SessionRecord
from .sessions.records import Records
from .tracing import Tracing, with_meta_context
from .upstream.balance import Replica
from .upstream.errors import ProtocolFailure
from .upstream.http1 import CancelToken

if TYPE_CHECKING:
    from .auth.access import Access
    from .config import Settings
    from .tracing import Span
    from .upstream.connection import UpstreamResponse
    from .upstream.registry import Upstreams

__all__ = ("SAFE_TO_REPEAT", "Forwarder", "new_session_id", "principal_key", "request_params")

logger = logging.getLogger("proxy.forward")

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


def new_session_id() -> str:
    """A gateway session id: 192 random bits, URL-safe visible ASCII."""
    return secrets.token_urlsafe(24)


def principal_key(request: Request) -> str | None:
    """What a session of this request's caller is bound to (None: no authentication)."""
    principal = request.principal
    return None if principal is None else principal.key


def _small_json(response: UpstreamResponse) -> bool:
    """Whether an answer is JSON of a length it says, small enough to be kept (anything
    else is relayed as it comes, unbuffered)."""
    ctype = response.header(H.CONTENT_TYPE) or b""
    length = response.header(H.CONTENT_LENGTH)
    return (
        ctype.startswith(b"application/json")
        and length is not None
        and length.isdigit()
        and int(length) <= MAX_ENTRY
    )


def request_params(request: Request) -> Any:
    """The ``params`` of a POST's JSON-RPC request (None when it has none)."""
    try:
        message = orjson.loads(request.body or b"")
    except orjson.JSONDecodeError:
        return None
    return message.get("params") if isinstance(message, dict) else None


def safe_to_repeat(request: Request) -> bool:
    env = request.env
    if env is None:
        return True  # GET, DELETE
    return env.kind == rpc.REQUEST and env.method in SAFE_TO_REPEAT


class Forwarder:
    """Handles requests when one backend sits behind the endpoint."""

    def __init__(
        self,
        settings: Settings,
        records: Records,
        upstreams: Upstreams,
        relay: Relay,
        metrics: Metrics,
        access: Access | None = None,
        tracing: Tracing | None = None,
        stream_limits: StreamLimits | None = None,
    ) -> None:
        """`stream_limits`: the counts of the streams open (a reload hands them on)."""
        self.records = records
        self.relay = relay
        self.metrics = metrics
        self.tracing = tracing
        self.timed = settings.access_log != "off"
        """Whether a request notes its backend and the upstream's time (the access log)."""
        self.backend = upstreams.default
        self.upstreams = upstreams
        self.stream_limits = stream_limits or StreamLimits(
            settings.max_streams_per_session, settings.max_streams_per_client
        )
        self.access = access
        self.fixed: tuple[frozenset[bytes], Headers] | None = None
        """The backend's credentials when they are the same for every request."""
        self.lists: Lists | None = None
        if access is not None and access.policy is not None:
            self.lists = Lists(settings, upstreams, relay, metrics, access)
        from .bridging import HandshakeBridge  # noqa: PLC0415 - it imports federation, which imports this
        from .stateless_bridge import StatelessBridge  # noqa: PLC0415 - the same

        recheck = partial(upstreams.recheck_eras, self.backend.name)
        self.bridge = HandshakeBridge(self.backend, settings, recheck)
        """Stateless clients in front of a backend of the handshake era only."""
        self.stateless_bridge = StatelessBridge(self.backend, records, settings, recheck)
        """Handshake-era clients in front of a backend of the stateless era only."""
        self.cache: ResponseCache | None = None
        if settings.response_cache:
            redis = records.store if settings.store_kind == "redis" else None
            self.cache = ResponseCache(settings.response_cache_bytes, metrics, redis)  # type: ignore[arg-type]
        self.max_answer = settings.max_answer_size

    async def open(self) -> None:
        if self.access is not None:  # opened already: its secrets are read
            self.fixed = self.access.fixed(self.backend.name, transparent=True)
        if self.lists is not None:
            await self.lists.open()

    async def close(self) -> None:
        if self.lists is not None:
            await self.lists.close()
        await self.bridge.close()
        await self.stateless_bridge.close()
        if self.cache is not None:
            self.cache.close()

    async def retire(self) -> None:
        await self.close()  # GET streams are the relay's, and go on

    def drain(self) -> None:
        return None  # the relay ends the GET streams

    def catalog_changed(self) -> None:
        return None  # the one backend's lists are its own: it tells its clients itself

    async def handle(self, request: Request) -> int:
        watch = self.relay.watch(request.receive)
        held = None
        cached: Key | None = None
        leading = False
        access = self.access
        minted: str | None = None
        client_span: Span | None = None
        try:
            if self.stateless_bridge.wanted(request):
                if access is not None and not access.admitted(request, self.backend.name):
                    await access.admit(request, self.backend.name)
                extra, _ = await self._bridged_credentials(request)
                principal = principal_key(request)
                return await self.stateless_bridge.handle(request, extra, principal)
            session = await self._session(request)
            if access is not None:
                if not access.admitted(request, self.backend.name):
                    await access.admit(request, self.backend.name)
                if session is None and request.method == "initialize" and access.quota:
                    minted = new_session_id()
                    assert request.principal is not None  # noqa: S101 - quota: auth on
                    await access.quota.take(request.principal, minted)
            if self.bridge.wanted(request):
                extra, caller = await self._bridged_credentials(request)
                shown = None
                if self.lists is not None and request.method in LIST_USES and request.principal:
                    shown = partial(self.lists.filter, request, self.backend.name)
                watch.close()  # the bridge watches for the client leaving itself
                return await self.bridge.handle(request, extra, caller, shown)
            if self.cache is not None and session is None and request.method in CACHED_METHODS:
                cached = self.cache.key(
                    self.backend.name, request.method, request_params(request), context_of(request)
                )
                if cached is not None and self.cache.declines(cached):
                    cached = None  # relayed as it comes: the backend keeps saying no
                if cached is not None and request.env is not None and request.env.id is not None:
                    stored = await self.cache.get(cached)
                    if stored is not None:
                        return await self._from_cache(request, stored, request.env.id)
                    leading = self.cache.lead(cached)
            if request.verb == "GET":
                held = take_stream(self.stream_limits, self.relay, self.metrics, request)
            carried: Headers = []
            if self.tracing is not None and request.span is not None:
                replica = None if session is None else session.replica
                traced = self.tracing.client_span(
                    request.span, request.env, replica, self.backend.name
                )
                client_span, carried = traced
                if request.meta_trace and request.body is not None:
                    request.body = with_meta_context(request.body, client_span)
            if self.timed:  # for the access log
                request.backend = self.backend.name
                sent = time.perf_counter()
                exchange = await self._open(request, session, watch.token, carried)
                request.upstream_seconds = time.perf_counter() - sent
            else:
                exchange = await self._open(request, session, watch.token, carried)
            if client_span is not None and self.tracing is not None:
                self.tracing.reached(client_span, exchange.replica, exchange.response.status)
            request.replica = exchange.replica.url
            status = exchange.response.status
            if session is not None and (
                status == 404 or (request.verb == "DELETE" and status < 300)
            ):
                # The backend no longer knows the session (or it just ended): forget ours.
                await self.records.forget(session.gateway_sid)
                if access is not None and access.quota and request.principal is not None:
                    await access.quota.give_back(request.principal, session.gateway_sid)
            client_sid = await self._client_session_id(request, session, exchange, minted)
            if client_sid is not None and minted is not None:
                minted = None  # the session opened: its slot stays taken
            if cached is not None and status == 200 and _small_json(exchange.response):
                return await self._kept(request, exchange, cached)
            if self.lists is not None and request.method in LIST_USES:
                return await self.lists.relay_list(request, exchange, watch, client_sid)
            watcher = None
            if self.cache is not None and request.method == "subscriptions/listen":
                watcher = self.cache.watcher(self.backend.name)
            return await self.relay.relay(
                request.send,
                exchange,
                watch,
                session_id=client_sid,
                server_stream=request.verb == "GET",
                transform=watcher,
            )
        finally:
            if leading and cached is not None and self.cache is not None:
                self.cache.release(cached)
            watch.close()
            if client_span is not None:
                client_span.end()
            if held is not None:
                self.stream_limits.give_back(*held)
            if minted is not None and access is not None and access.quota:
                assert request.principal is not None  # noqa: S101 - taken with it
                await access.quota.give_back(request.principal, minted)

    async def _from_cache(self, request: Request, stored: Stored, request_id: bytes) -> int:
        """Answer from the response cache (a list the principal sees filtered)."""
        data = self._filtered(request, stored.answer(request_id, int(time.time() * 1000)))
        request.backend = self.backend.name
        await send_bytes(request.send, 200, data)
        return 200

    def _filtered(self, request: Request, data: bytes, message: Any = None) -> bytes:
        """`data` (a list's answer; `message`, when it was decoded already) without what
        the principal may not use."""
        if self.lists is None or request.method not in LIST_USES or not request.principal:
            return data
        if message is None:
            message = orjson.loads(data)
        return (
            orjson.dumps(message)
            if self.lists.filter(request, self.backend.name, message)
            else data
        )

    async def _kept(self, request: Request, exchange: Exchange, key: Key) -> int:
        """The backend's JSON answer, read whole (bounded), kept in the response cache
        when its result says it may be, then sent on."""
        assert self.cache is not None  # noqa: S101 - a key came from it
        response = exchange.response
        try:
            data = await response.aread(self.max_answer)
        except ProtocolFailure as exc:
            exchange.close()
            logger.warning("backend %s: %s answer refused: %s", key.backend, key.method, exc)
            raise BadGateway("Bad gateway: backend failed") from None
        headers = self.relay.response_headers(response.headers, None)
        exchange.close()
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BadGateway("Bad gateway: the backend's answer is not JSON") from None
        kept = cacheable(message)
        if kept is not None:
            await self.cache.put(key, *kept)
        elif isinstance(message, dict) and "result" in message:
            self.cache.decline(key)
        data = self._filtered(request, data, message)
        headers.append((H.CONTENT_LENGTH, b"%d" % len(data)))
        await request.send({"type": "http.response.start", "status": 200, "headers": headers})
        await request.send({"type": "http.response.body", "body": data})
        return 200

    async def _bridged_credentials(self, request: Request) -> tuple[Headers, str | None]:
        """What a bridged request carries up (:mod:`proxy.bridging`): the backend's
        credentials, and the client's ``Authorization`` where it would go up as it came;
        and whose they are."""
        withhold: frozenset[bytes] = frozenset()
        extra: Headers = []
        access = self.access
        if self.fixed is not None:
            withhold, added = self.fixed
            extra = list(added or ())
        elif access is not None:
            credentials = access.credentials(request)
            withhold = credentials.withheld(self.backend.name, transparent=True)
            extra = list(await credentials.added(self.backend.name) or ())
        if H.AUTHORIZATION not in withhold:
            extra += [(n, v) for n, v in request.scope["headers"] if n == H.AUTHORIZATION]
        return extra, principal_key(request)

    async def _session(self, request: Request) -> _Session | None:
        """The session a request names, with its replica; None when it names none. A
        session bound to another principal (or to none, when this request has one) is
        not found, exactly as an unknown one."""
        sid = request.hdrs.session_id
        if sid is None:
            return None
        gateway_sid = sid.decode("latin-1")
        record = await self.records.resolve(gateway_sid)
        binding = None if record is None else record.bindings.get(self.backend.name)
        if binding is None or record is None or record.principal != principal_key(request):
            raise SessionNotFound()
        if record.client is not None:  # a session of several backends, before a reload
            raise SessionNotFound()
        replica = self.upstreams.replica_for(self.backend.name, binding.replica)
        if replica is None or (not replica.up and self.upstreams.lost(replica)):
            # The replica holding the session is gone: the client must re-initialise.
            await self.records.forget(gateway_sid)
            raise SessionNotFound("Session not found (its upstream is gone)")
        upstream_sid = None if binding.session_id is None else binding.session_id.encode("latin-1")
        return _Session(gateway_sid, sid, replica, upstream_sid)

    async def _open(
        self,
        request: Request,
        session: _Session | None,
        cancel: CancelToken,
        carried: Headers,
    ) -> Exchange:
        """The exchange with the backend (`carried`: the gateway's trace headers, sent in
        place of the client's)."""
        scope, body, retry = request.scope, request.body, safe_to_repeat(request)
        withhold: frozenset[bytes] = frozenset()
        extra = None
        access = self.access
        if self.fixed is not None:
            withhold, extra = self.fixed
        elif access is not None:
            name = self.backend.name
            credentials = access.credentials(request)
            withhold = credentials.withheld(name, transparent=True)
            extra = await credentials.added(name)
        if carried:
            withhold, extra = Tracing.instead(carried, withhold, extra)
        if session is None:
            return await self.relay.open_any(
                scope, self.backend, body, cancel, retry=retry, withhold=withhold, extra=extra
            )
        try:
            return await self.relay.open_on(
                scope,
                session.replica,
                body,
                cancel,
                upstream_sid=session.upstream_sid,
                retry=retry,
                withhold=withhold,
                extra=extra,
            )
        except ReplicaLost:
            await self.records.forget(session.gateway_sid)
            raise SessionNotFound("Session not found (upstream gone)") from None

    async def _client_session_id(
        self,
        request: Request,
        session: _Session | None,
        exchange: Exchange,
        minted: str | None = None,
    ) -> bytes | None:
        """The Mcp-Session-Id the client gets: a new gateway id (`minted`, when one was
        counted already) when an initialize opened an upstream session, bound to the
        request's principal; the one it sent when the upstream names its session."""
        response = exchange.response
        upstream_sid = response.header(H.MCP_SESSION_ID)
        if session is not None:
            return session.client_sid if upstream_sid is not None else None
        env = request.env
        mint = env is not None and env.kind == rpc.REQUEST and env.method == "initialize"
        if not (mint and upstream_sid is not None and response.status < 300):
            return None
        gateway_sid = minted or new_session_id()
        binding = Binding(exchange.replica.url, upstream_sid.decode("latin-1"))
        record = SessionRecord({self.backend.name: binding}, principal=principal_key(request))
        try:
            await self.records.create(gateway_sid, record)
        except BaseException:
            exchange.close()
            raise
        return gateway_sid.encode("ascii")


class _Session:
    """A request's session: the gateway's id (as text and as the client sent it), the
    replica holding the backend's session, and the backend's session id."""

    __slots__ = ("client_sid", "gateway_sid", "replica", "upstream_sid")

    def __init__(
        self, gateway_sid: str, client_sid: bytes, replica: Replica, upstream_sid: bytes | None
    ) -> None:
        self.gateway_sid = gateway_sid
        self.client_sid = client_sid
        self.replica = replica
        self.upstream_sid = upstream_sid


def take_stream(
    limits: StreamLimits, relay: Relay, metrics: Metrics, request: Request
) -> tuple[bytes | None, str]:
    """Count one more open stream for the request's session and client, or answer 429;
    returns what to give back when the stream ends."""
    client = relay.client(request.scope)
    refused = limits.take(request.hdrs.session_id, client)
    if refused is not None:
        metrics.refused.inc(f"streams_per_{refused}")
        raise TooManyStreams(f"Too Many Requests: too many open streams for this {refused}")
    return request.hdrs.session_id, client
