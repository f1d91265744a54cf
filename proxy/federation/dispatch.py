"""Several backends behind one endpoint: what each request to it becomes (federation).

The gateway answers ``initialize`` itself (merged capabilities, a gateway session id
whose record keeps what the client's initialize asked for), answers the lists from the
catalog (merged, prefixed, cached), and routes every other request by its tool or prompt
prefix or its resource URI to one backend, through that backend's session for this
client (opened lazily, :mod:`.backends`). Routed answers go back through the same relay
the single backend uses, their events rewritten so that requests a backend sends the
client carry ids that find their way back. GET is the merged stream (:mod:`.merged`);
the stateless era fans out (:mod:`.stateless`, :mod:`.listen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from .. import headers as H, jsonrpc as rpc
from .._types import Headers, Receive
from ..errors import (
    BadGateway,
    BadRequest,
    InvalidParams,
    NotAllowed,
    ParseError,
    ResourceNotFound,
    SessionNotFound,
    UnknownName,
    UpstreamUnreachable,
)
from ..forward import new_session_id, principal_key, request_params, take_stream
from ..limits import StreamLimits
from ..metrics import Metrics, method_label
from ..relay import ClientWatch, Exchange, Relay, ReplicaLost
from ..request import Request
from ..response_cache import ResponseCache, cacheable, context_of
from ..responses import send_bytes
from ..sessions import ClientInit, SessionRecord, SessionStore
from ..sessions.records import Records
from ..tracing import Tracing, with_meta_context
from ..upstream.eras import HANDSHAKE_ONLY, STATELESS_ONLY
from ..upstream.errors import ProtocolFailure
from . import wire
from .backends import BackendSessions, kept_initialize
from .catalog import GATEWAY_INFO, Catalog
from .listen import Listen
from .merged import ListChanges, MergedStream, MergedStreams
from .messages import result_body
from .names import LIST_KEYS, Routed, name_header
from .stateless import FanOut
from .streams import BadEventId, events_transform, parse_ids

if TYPE_CHECKING:
    from ..auth.access import Access, CallerCredentials
    from ..bridging import HandshakeBridge
    from ..config import Settings
    from ..jsonrpc import Envelope
    from ..stateless_bridge import StatelessBridge
    from ..tracing import Span
    from ..upstream.registry import Upstreams

__all__ = ("Federator",)

logger = logging.getLogger("proxy.federation")

_URI_RESULTS = frozenset({"tools/call", "prompts/get", "resources/read"})
FEDERATION = "@federation"
"""Whose entries the merged answers are in the response cache (no backend is so named:
a name is a prefix's word)."""
"""Methods whose results may name resources (their URIs are made public)."""

_STREAM_HEADERS = [
    (H.CONTENT_TYPE, b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (H.X_ACCEL_BUFFERING, b"no"),
]


class Federator:
    """Handles requests when several backends sit behind the endpoint."""

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        records: Records,
        upstreams: Upstreams,
        relay: Relay,
        metrics: Metrics,
        access: Access | None = None,
        tracing: Tracing | None = None,
        stream_limits: StreamLimits | None = None,
        streams: MergedStreams | None = None,
    ) -> None:
        """`stream_limits` and `streams`: the counts and the clients' merged streams of
        the handler a reload replaces (they go on)."""
        self.settings = settings
        self.records = records
        self.upstreams = upstreams
        self.relay = relay
        self.metrics = metrics
        self.tracing = tracing
        self.access = access
        credentials = None if access is None else access.gateway_headers
        self.catalog = Catalog(settings, upstreams.backends, metrics, credentials)
        self.namespace = self.catalog.namespace
        self.backends = BackendSessions(
            settings, upstreams, records, self.namespace, metrics, access
        )
        if access is not None and access.policy is not None:
            access.known = self.catalog.names
        self.streams = streams or MergedStreams()
        self.changes = ListChanges(self.catalog, store, self.streams)
        self.cache: ResponseCache | None = None
        if settings.response_cache:
            redis = store if settings.store_kind == "redis" else None
            self.cache = ResponseCache(settings.response_cache_bytes, metrics, redis)  # type: ignore[arg-type]
        self.changes.on_change.append(self._list_changed)
        self._background: set[asyncio.Task[None]] = set()
        self._bridges: dict[str, HandshakeBridge] = {}
        self._stateless_bridges: dict[str, StatelessBridge] = {}
        """Handshake-era sessions' requests to backends of the stateless era alone."""
        """The era bridges of backends of the handshake era alone (made on first use)."""
        self.fan_out = FanOut(settings, upstreams, self.catalog, self.backends, metrics, tracing)
        self.listen = Listen(
            settings, upstreams, self.namespace, self.backends, self.streams.listening
        )
        self.stream_limits = stream_limits or StreamLimits(
            settings.max_streams_per_session, settings.max_streams_per_client
        )
        self.backends.opened.append(self.streams.attach)

    async def open(self) -> None:
        self.changes.open()
        self.catalog.open()
        await self.catalog.warm()

    async def close(self) -> None:
        await self.retire()
        self.streams.end_all()

    async def retire(self) -> None:
        await self.catalog.close()
        self.changes.close()
        bridges, self._bridges = list(self._bridges.values()), {}
        for bridge in bridges:
            await bridge.close()
        stateless, self._stateless_bridges = list(self._stateless_bridges.values()), {}
        for other in stateless:
            await other.close()
        if self.cache is not None:
            self.cache.close()

    def catalog_changed(self) -> None:
        """A reload changed the backends: every client with a stream open here is told
        that every list may have changed (they list again)."""
        for method in ("tools/list", "prompts/list", "resources/list"):
            self.changes.tell_streams(method)
            for told in list(self.streams.listening):
                told(method)
        for method in ("server/discover", "resources/templates/list"):
            self._list_changed(method)  # the merged ones kept in the response cache go

    def listed(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Backend -> each list its catalog holds (the status page)."""
        return {name: catalog.listed() for name, catalog in self.catalog.backends.items()}

    def drain(self) -> None:
        self.streams.end_all()

    # -- dispatch ------------------------------------------------------------------------------

    async def handle(self, request: Request) -> int:
        if request.verb == "GET":
            return await self._merged_stream(request)
        if request.verb == "DELETE":
            return await self._end(request)
        env, body, hdrs = request.env, request.body, request.hdrs
        assert env is not None and body is not None  # noqa: S101 - a POST
        if env.kind == rpc.BATCH:
            raise BadRequest("Invalid Request: batches are not supported")
        version = hdrs.protocol_version
        if version is not None and version not in rpc.HANDSHAKE_VERSIONS:
            return await self._stateless(request)
        if hdrs.session_id is None:
            if env.kind == rpc.REQUEST and env.method == "initialize":
                return await self._initialize(request)
            raise BadRequest("Bad Request: Mcp-Session-Id header required")
        gateway_sid, record = await self._record(request)
        extra = [(H.MCP_SESSION_ID, hdrs.session_id)]
        send = request.send
        if env.kind != rpc.REQUEST:
            if env.kind == rpc.RESPONSE and await self._answers_a_question(gateway_sid, body):
                await send_bytes(send, 202, b"", extra=extra)
                return 202
            await self.backends.pass_on(self.backends.caller(request), record, env, body)
            await send_bytes(send, 202, b"", extra=extra)
            return 202
        method = request.method
        if method == "ping":
            await send_bytes(send, 200, result_body(env.id, {}), extra=extra)
            return 200
        if method in LIST_KEYS:
            capabilities = (
                None if record.client is None else record.client.params.get("capabilities")
            )
            items = self._visible(request, method, await self.catalog.merged(method, capabilities))
            await send_bytes(
                send, 200, result_body(env.id, {LIST_KEYS[method]: items}), extra=extra
            )
            return 200
        if method == "logging/setLevel":
            await self.backends.to_bound(self.backends.caller(request), record, body)
            await send_bytes(send, 200, result_body(env.id, {}), extra=extra)
            return 200
        return await self._routed(request, self._route(request, method, body), gateway_sid, record)

    def _route(self, request: Request, method: str, body: bytes) -> Routed:
        """The backend a request names; with a policy, a name no backend offers is
        answered as a denied one (NotAllowed), so that policy leaks nothing."""
        try:
            return self.namespace.route(method, body)
        except (UnknownName, ResourceNotFound):
            if self.access is None or self.access.policy is None:
                raise
            request.rule = "unknown"
            raise NotAllowed() from None

    def _visible(
        self, request: Request, method: str, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """A merged list as the request's principal may use it."""
        if self.access is None:
            return items
        return self.access.visible(request.principal, method, items, self._backend_of(method))

    def _backend_of(self, method: str) -> Callable[[str], str]:
        """The backend of a merged list's entry, from its public name or URI."""
        by_uri = method in ("resources/list", "resources/templates/list")

        def backend_of(entry: str) -> str:
            found = self.namespace.route_uri(entry) if by_uri else self.namespace.route_name(entry)
            return "" if found is None else found[0].name

        return backend_of

    async def _record(self, request: Request) -> tuple[str, SessionRecord]:
        """The gateway session a request names, with this exchange's copy of its record
        (the store's cache keeps its own). A session bound to another principal (or to
        none, when this request has one) is not found, exactly as an unknown one."""
        sid = request.hdrs.session_id
        if sid is None:
            raise BadRequest("Bad Request: Mcp-Session-Id header required")
        gateway_sid = sid.decode("latin-1")
        record = await self.records.resolve(gateway_sid)
        if record is None or record.client is None or record.principal != principal_key(request):
            raise SessionNotFound()
        return gateway_sid, record.copy()

    # -- initialize, DELETE ----------------------------------------------------------------------

    async def _initialize(self, request: Request) -> int:
        assert request.body is not None and request.env is not None  # noqa: S101 - a POST
        try:
            message = orjson.loads(request.body)
        except orjson.JSONDecodeError:  # the scanner accepted it: cannot happen
            raise ParseError() from None
        params = message.get("params")
        if not isinstance(params, dict) or not isinstance(params.get("protocolVersion"), str):
            raise InvalidParams("Invalid params: protocolVersion required")
        asked = params["protocolVersion"]
        known = sorted(v.decode() for v in rpc.HANDSHAKE_VERSIONS)
        version = asked if asked in known else known[-1]
        client = ClientInit(version, kept_initialize(version, params))
        gateway_sid = new_session_id()
        quota = None if self.access is None else self.access.quota
        principal = request.principal
        if quota is not None and principal is not None:
            await quota.take(principal, gateway_sid)
        try:
            record = SessionRecord({}, client, principal_key(request))
            await self.records.create(gateway_sid, record)
        except BaseException:
            if quota is not None and principal is not None:
                await quota.give_back(principal, gateway_sid)
            raise
        result = {
            "protocolVersion": version,
            "capabilities": self.catalog.capabilities(),
            "serverInfo": GATEWAY_INFO,
            "instructions": "Tools and prompts of several MCP servers; each name begins "
            "with its server's prefix.",
        }
        extra = [(H.MCP_SESSION_ID, gateway_sid.encode("ascii"))]
        await send_bytes(request.send, 200, result_body(request.env.id, result), extra=extra)
        return 200

    async def _end(self, request: Request) -> int:
        gateway_sid, record = await self._record(request)
        await self.records.forget(gateway_sid)
        quota = None if self.access is None else self.access.quota
        if quota is not None and request.principal is not None:
            await quota.give_back(request.principal, gateway_sid)
        await self.backends.end(self.backends.caller(request), record)
        await send_bytes(request.send, 200, b"")
        return 200

    # -- routed requests -------------------------------------------------------------------------

    async def _routed(
        self, request: Request, routed: Routed, gateway_sid: str, record: SessionRecord
    ) -> int:
        """A request with a session, through this client's session with the backend (opened
        now if need be; opened again, once, when the backend has forgotten it)."""
        name = request.backend = routed.backend.name
        backend = self.upstreams.backends[name]
        access = self.access
        if access is not None and not access.admitted(request, name, routed.local):
            await access.admit(request, name, routed.local)
        self.metrics.backend_requests.inc(name, method_label(request.method))
        caller = self.backends.caller(request)
        credentials = await self.backends.credentials(name, caller)
        withhold = caller.withheld(name, routed.backend.forward_credentials)
        extra = await caller.added(name)
        client_span, withhold, extra, body = self._traced(
            request, name, routed.body, withhold, extra
        )
        if backend.eras == STATELESS_ONLY and record.client is not None:
            if client_span is not None:
                client_span.end()
            return await self._to_stateless(request, routed, gateway_sid, record, credentials)
        watch = self.relay.watch(request.receive)
        try:
            for attempt in range(2):
                binding = await self.backends.binding(gateway_sid, record, backend, credentials)
                replica = self.backends.replica(name, binding)
                if replica is None or self.upstreams.lost(replica):
                    record.bindings.pop(name, None)  # open another on a live replica
                    continue
                sid = None if binding.session_id is None else binding.session_id.encode()
                started = time.perf_counter()
                try:
                    exchange = await self.relay.open_on(
                        request.scope,
                        replica,
                        body,
                        watch.token,
                        upstream_sid=sid,
                        withhold=withhold,
                        extra=extra,
                    )
                except ReplicaLost:
                    self.metrics.backend_errors.inc(name, "connect")
                    record.bindings.pop(name, None)
                    continue
                except UpstreamUnreachable:
                    self.metrics.backend_errors.inc(name, "connect")
                    raise UpstreamUnreachable("Backend unreachable; retry") from None
                request.upstream_seconds = time.perf_counter() - started
                self.metrics.backend_latency.observe(request.upstream_seconds, name)
                request.replica = replica.url
                if client_span is not None and self.tracing is not None:
                    self.tracing.reached(client_span, replica, exchange.response.status)
                if attempt == 0 and sid is not None and forgot_the_session(exchange):
                    exchange.close()  # the backend forgot our session: open a new one
                    self.metrics.backend_errors.inc(name, "session_lost")
                    logger.info("backend %s no longer knows a session: opening another", name)
                    record.bindings.pop(name, None)
                    continue
                client_sid = request.hdrs.session_id
                public = None if request.env is None else request.env.name
                names = None if public is None else (routed.local, public)
                return await self._answer(request, exchange, watch, name, client_sid, names)
            raise BadGateway(f"Backend {name} is unreachable")
        finally:
            watch.close()
            if client_span is not None:
                client_span.end()

    def _traced(
        self,
        request: Request,
        backend: str,
        body: bytes,
        withhold: frozenset[bytes],
        extra: Headers,
    ) -> tuple[Span | None, frozenset[bytes], Headers, bytes]:
        """With tracing: a client span for the exchange with `backend`, and the headers
        (and the body, when the client's trace context is in its ``params._meta``) that
        carry it there in place of the client's."""
        if self.tracing is None or request.span is None:
            return None, withhold, extra, body
        span, carried = self.tracing.client_span(request.span, request.env, None, backend)
        if request.meta_trace:
            body = with_meta_context(body, span)
        return (span, *Tracing.instead(carried, withhold, extra), body)

    async def _stateless(self, request: Request) -> int:
        """A self-contained request: discovery and lists fan out to every backend;
        subscriptions/listen too; everything else goes to the one backend it names."""
        env, body = request.env, request.body
        assert env is not None and body is not None  # noqa: S101 - a POST
        if env.kind != rpc.REQUEST:
            await send_bytes(request.send, 202, b"")  # nothing to relay without a session
            return 202
        method = request.method
        if method == "server/discover" or method in LIST_KEYS:
            return await self._merged(request, env, body)
        if method == "subscriptions/listen":
            held = take_stream(self.stream_limits, self.relay, self.metrics, request)
            try:
                return await self.listen.serve(request)
            finally:
                self.stream_limits.give_back(*held)
        routed = self._route(request, method, body)
        name = request.backend = routed.backend.name
        access = self.access
        if access is not None and not access.admitted(request, name, routed.local):
            await access.admit(request, name, routed.local)
        self.metrics.backend_requests.inc(name, method_label(method))
        header = name_header(routed.local) if method in rpc.NAME_BEARING_METHODS else None
        caller = self.backends.caller(request)
        if self.upstreams.backends[name].eras == HANDSHAKE_ONLY:
            return await self._bridged(request, routed, header, caller)
        withhold = caller.withheld(name, routed.backend.forward_credentials)
        extra = await caller.added(name)
        client_span, withhold, extra, body = self._traced(
            request, name, routed.body, withhold, extra
        )
        watch = self.relay.watch(request.receive)
        try:
            started = time.perf_counter()
            exchange = await self.relay.open_any(
                request.scope,
                self.upstreams.backends[name],
                body,
                watch.token,
                withhold=withhold,
                extra=extra,
                name=header,
            )
            request.upstream_seconds = time.perf_counter() - started
            self.metrics.backend_latency.observe(request.upstream_seconds, name)
            request.replica = exchange.replica.url
            if client_span is not None and self.tracing is not None:
                self.tracing.reached(client_span, exchange.replica, exchange.response.status)
            public = None if request.env is None else request.env.name
            names = None if public is None else (routed.local, public)
            return await self._answer(request, exchange, watch, name, None, names, rewrite=False)
        finally:
            watch.close()
            if client_span is not None:
                client_span.end()

    def _stateless_bridge(self, name: str) -> StatelessBridge:
        """The stateless bridge to backend `name` (made on first use)."""
        bridge = self._stateless_bridges.get(name)
        if bridge is None:
            from ..stateless_bridge import StatelessBridge  # noqa: PLC0415 - it imports this

            backend = self.upstreams.backends[name]
            recheck = partial(self.upstreams.recheck_eras, name)
            bridge = StatelessBridge(backend, self.records, self.settings, recheck)
            self._stateless_bridges[name] = bridge
        return bridge

    async def _answers_a_question(self, gateway_sid: str, body: bytes) -> bool:
        """Whether a client's response answers a question a stateless bridge put (here,
        or at another worker or replica: handed on)."""
        bridges = list(self._stateless_bridges.values())
        if not bridges:
            return False
        message = orjson.loads(body)
        if not isinstance(message, dict):
            return False
        if any(bridge.answered(gateway_sid, message) for bridge in bridges):
            return True
        return await bridges[0].hand_on(gateway_sid, message)

    async def _to_stateless(
        self,
        request: Request,
        routed: Routed,
        gateway_sid: str,
        record: SessionRecord,
        credentials: Headers,
    ) -> int:
        """A request of a handshake-era session for a backend of the stateless era alone:
        sent as one of that era, its questions put to the client on the request's stream
        (:mod:`proxy.stateless_bridge`), what it answers made public."""
        name = routed.backend.name
        bridge = self._stateless_bridge(name)
        assert record.client is not None and request.hdrs.session_id is not None  # noqa: S101
        public = None if request.env is None else request.env.name
        publish = self._publisher(None if public is None else (routed.local, public))
        return await bridge.forward(
            request.send,
            request.hdrs.session_id,
            gateway_sid,
            record.client,
            orjson.loads(routed.body),
            credentials,
            lambda message: publish(name, message),
        )

    async def _merged(self, request: Request, env: Envelope, body: bytes) -> int:
        """``server/discover`` or a list, merged from every backend's; kept in the
        response cache when every part may be (the merged terms are the strictest of the
        parts), unless a policy shows each principal its own."""
        method = request.method
        cache, cached = self.cache, None
        filtered = self.access is not None and self.access.policy is not None
        if cache is not None and not filtered and env.id is not None:
            cached = cache.key(FEDERATION, method, request_params(request), context_of(request))
            if cached is not None:
                stored = await cache.get(cached)
                if stored is not None:
                    answer = stored.answer(env.id, int(time.time() * 1000))
                    await send_bytes(request.send, 200, answer)
                    return 200
        leading = cache is not None and cached is not None and cache.lead(cached)
        try:
            traced = None if request.span is None else (request.span, env)
            caller = self.backends.caller(request)
            result = await self.fan_out.result(caller, method, body, traced)
            if method in LIST_KEYS:
                key = LIST_KEYS[method]
                result[key] = self._visible(request, method, result[key])
                if filtered and result.get("cacheScope") == "public":
                    result["cacheScope"] = "private"  # filtered for this principal
            if cache is not None and cached is not None:
                kept = cacheable({"result": result})
                if kept is not None:
                    await cache.put(cached, *kept)
        finally:
            if leading and cache is not None and cached is not None:
                cache.release(cached)
        await send_bytes(request.send, 200, result_body(env.id, result))
        return 200

    def _list_changed(self, method: str) -> None:
        """A backend's `method` list changed (here or at another gateway process): the
        merged one kept in the response cache goes."""
        if self.cache is None:
            return
        task = asyncio.ensure_future(self.cache.stale(FEDERATION, method))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _bridged(
        self,
        request: Request,
        routed: Routed,
        header: bytes | None,
        caller: CallerCredentials,
    ) -> int:
        """A stateless request for a backend of the handshake era alone: through its era
        bridge (:mod:`proxy.bridging`), as the backend's own request (its name, in the
        body and ``Mcp-Name``), with what it answers made public."""
        name = routed.backend.name
        bridge = self._bridges.get(name)
        if bridge is None:
            from ..bridging import HandshakeBridge  # noqa: PLC0415 - it imports federation

            backend = self.upstreams.backends[name]
            recheck = partial(self.upstreams.recheck_eras, name)
            bridge = self._bridges[name] = HandshakeBridge(backend, self.settings, recheck)
        request.body = routed.body
        if header is not None:
            headers = [(n, v) for n, v in request.scope["headers"] if n != H.MCP_NAME]
            request.scope["headers"] = [*headers, (H.MCP_NAME, header)]
        extra = await self.backends.credentials(name, caller)
        public = None if request.env is None else request.env.name
        names = None if public is None else (routed.local, public)
        publish = self._publisher(names)
        return await bridge.handle(
            request, extra, principal_key(request), lambda message: publish(name, message)
        )

    async def _answer(
        self,
        request: Request,
        exchange: Exchange,
        watch: ClientWatch,
        backend: str,
        client_sid: bytes | None,
        names: tuple[str, str] | None = None,
        *,
        rewrite: bool = True,
    ) -> int:
        """Relay a backend's answer with every resource URI it names made public, and (an
        event stream with a session: `rewrite`) its requests to the client given gateway
        ids, so that their answers find their way back."""
        response = exchange.response
        if response.status >= 400:
            self.metrics.backend_errors.inc(backend, "http")
        sid = client_sid if response.header(H.MCP_SESSION_ID) is not None else None
        ctype = response.header(H.CONTENT_TYPE) or b""
        transform = None
        if ctype.startswith(b"text/event-stream"):
            transform = events_transform(
                backend,
                self.changes.heard,
                self.settings.max_answer_size,
                self._publisher(names),
                wrap=rewrite,
            )
        elif request.method in _URI_RESULTS and response.status < 300:
            return await self._published(request, backend, exchange, sid, names)
        return await self.relay.relay(
            request.send, exchange, watch, session_id=sid, transform=transform
        )

    def _publisher(self, names: tuple[str, str] | None) -> Callable[[str, Any], bool]:
        """What rewrites a routed answer's messages for the client: resource URIs made
        public, and an error's mention of the backend's own tool or prompt name given the
        client's (`names`: the backend's and the client's)."""
        publish = self.namespace.publish
        if names is None:
            return publish

        def publish_and_rename(backend: str, message: Any) -> bool:
            changed = publish(backend, message)
            return _rename_in_error(message, *names) or changed

        return publish_and_rename

    async def _published(
        self,
        request: Request,
        backend: str,
        exchange: Exchange,
        client_sid: bytes | None,
        names: tuple[str, str] | None = None,
    ) -> int:
        """A JSON answer whose result may name resources: read whole (bounded), its URIs
        made public, an error's mention of the backend's own name (`names`: it and the
        client's) given the client's, then sent."""
        response = exchange.response
        try:
            data = await response.aread(self.settings.max_answer_size)
        except ProtocolFailure as exc:
            logger.warning("backend %s: %s answer refused: %s", backend, request.method, exc)
            raise BadGateway("Bad gateway: backend failed") from None
        finally:
            exchange.close()
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("backend %s: %s answer is not JSON", backend, request.method)
            raise BadGateway("Bad gateway: backend failed") from None
        if self._publisher(names)(backend, answer):
            data = orjson.dumps(answer)
        extra = None if client_sid is None else [(H.MCP_SESSION_ID, client_sid)]
        await send_bytes(request.send, response.status, data, extra=extra)
        return int(response.status)

    # -- the merged GET stream -------------------------------------------------------------------

    async def _merged_stream(self, request: Request) -> int:
        """The client's one GET stream: its backend sessions' streams merged, and the
        gateway's own notifications (list changes)."""
        gateway_sid, record = await self._record(request)
        last_event_id = request.hdrs.last_event_id
        try:
            resume = parse_ids(None if last_event_id is None else last_event_id.decode("latin-1"))
        except (BadEventId, UnicodeDecodeError):
            raise BadRequest("Bad Request: invalid Last-Event-ID") from None
        held = take_stream(self.stream_limits, self.relay, self.metrics, request)
        client = record.client
        stream = MergedStream(
            self.backends,
            None if client is None else client.protocol_version,
            resume,
            self.backends.caller(request),
            self.changes.heard,
            self.settings.max_answer_size,
            self.namespace.publish,
        )
        assert request.hdrs.session_id is not None  # noqa: S101 - _record checked it
        headers = [*_STREAM_HEADERS, (H.MCP_SESSION_ID, request.hdrs.session_id)]
        if self.relay.draining:
            headers.append((H.CONNECTION, b"close"))
        self.streams.add(gateway_sid, stream)
        watcher = asyncio.ensure_future(_until_disconnect(request.receive, stream))
        send = request.send
        try:
            for name, binding in record.bindings.items():
                stream.attach(name, binding)
            for name, backend in self.upstreams.backends.items():
                if backend.eras == STATELESS_ONLY and client is not None:
                    credentials = await self.backends.credentials(name, stream.caller)
                    heard = partial(self._stateless_bridge(name).notifications, client, ())
                    stream.attach_listen(name, partial(heard, credentials))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if self.relay.draining:
                stream.end()
            while not stream.ended and (event := await stream.queue.get()) is not None:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 200
        finally:
            watcher.cancel()
            stream.close()
            self.stream_limits.give_back(*held)
            self.streams.remove(gateway_sid, stream)


async def _until_disconnect(receive: Receive, stream: MergedStream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.end()


def forgot_the_session(exchange: Exchange) -> bool:
    """Whether a backend's answer says it does not know the session
    (:func:`wire.session_forgotten`)."""
    return wire.session_forgotten(exchange.response)


def _rename_in_error(message: Any, local: str, public: str) -> bool:
    """An error that names the backend's own tool or prompt names it as the client did
    (``Unknown tool: 'nosuch'`` → ``'ev_nosuch'``): a JSON-RPC error's message, or the
    text of a tool result flagged ``isError``. True when it changed."""
    if not isinstance(message, dict) or local == public:
        return False
    pattern = re.compile(rf"(?<![\w-]){re.escape(local)}(?![\w-])")
    changed = False
    holders: list[tuple[dict[str, Any], str]] = []
    error = message.get("error")
    if isinstance(error, dict):
        holders.append((error, "message"))
    result = message.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        content = result.get("content")
        if isinstance(content, list):
            holders += [
                (b, "text") for b in content if isinstance(b, dict) and b.get("type") == "text"
            ]
    for holder, key in holders:
        text = holder.get(key)
        if isinstance(text, str) and (renamed := pattern.sub(public, text)) != text:
            holder[key] = renamed
            changed = True
    return changed
