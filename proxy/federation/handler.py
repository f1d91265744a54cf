"""Several backends behind one endpoint: the federated exchange.

The gateway answers ``initialize`` itself (merged capabilities, a gateway session id whose
record keeps the client's initialize parameters), answers the lists from the catalog
(merged, prefixed, cached), and routes every other request by its tool or prompt prefix
or its resource URI to one backend, opening that backend's session for this client on
the first request that needs it (lazily) and recording it in the shared session record.
Routed answers stream back as the forwarder relays them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .. import headers as H, jsonrpc as rpc
from .._types import Receive, Scope, Send
from ..forward import ClientWatch, Forwarder, Reply, Route, new_session_id
from ..headers import McpHeaders
from ..jsonrpc import Envelope
from ..metrics import Metrics, method_label
from ..responses import send_bytes
from ..sessions import Binding, SessionRecord, SessionStore, StoreFull, StoreUnavailable
from ..upstream.balance import Backend
from ..upstream.errors import ConnectFailed, ProtocolFailure, UpstreamError
from ..upstream.head import HeadInjection
from . import wire
from .catalog import GATEWAY_INFO, Catalog
from .names import LIST_KEYS
from .streams import (
    BadEventId,
    EventSplitter,
    EventTooLarge,
    parse_ids,
    rewrite_event,
    unwrap_id,
)

if TYPE_CHECKING:
    from ..config import BackendSettings, Settings
    from ..upstream.pool import Upstreams

logger = logging.getLogger("proxy.federation")

CLIENT_KEY = "@client"
"""The session record's entry for the client's own initialize (not a backend)."""
_LAST_EVENT_ID = b"last-event-id"
_CREDENTIALS = frozenset({b"authorization", b"cookie"})
_NAMED = ("tools/call", "prompts/get")
MAX_CAPABILITIES = 8 * 1024
"""Largest ``capabilities`` object of a client's initialize that the session keeps (bytes
of JSON); the rest of its parameters are kept only as far as a backend needs them."""
_INFO_FIELDS = ("name", "title", "version")
_STREAM_QUEUE = 64  # events a merged stream holds for a client that is not reading
_BY_URI = ("resources/read", "resources/subscribe", "resources/unsubscribe")


def client_binding(protocol_version: str, params: dict[str, Any]) -> Binding:
    """The record entry holding what the client's initialize asked for."""
    return Binding(protocol_version, orjson.dumps(params).decode())


def kept_initialize(version: str, params: dict[str, Any]) -> dict[str, Any]:
    """What the session keeps of a client's initialize parameters (what each backend's
    own initialize is later given): the version, the capabilities (at most
    ``MAX_CAPABILITIES`` bytes of JSON, else Reply 400) and the client's name, title and
    version (short strings); nothing else, so a session costs little memory."""
    capabilities = params.get("capabilities")
    if not isinstance(capabilities, dict):
        capabilities = {}
    if len(orjson.dumps(capabilities)) > MAX_CAPABILITIES:
        raise Reply(
            400, rpc.INVALID_PARAMS, f"Invalid params: capabilities exceed {MAX_CAPABILITIES} bytes"
        )
    info = params.get("clientInfo")
    kept_info: dict[str, str] = {}
    if isinstance(info, dict):
        for key in _INFO_FIELDS:
            value = info.get(key)
            if isinstance(value, str):
                kept_info[key] = value[:256]
    kept_info.setdefault("name", "unknown")
    kept_info.setdefault("version", "0")
    return {"protocolVersion": version, "capabilities": capabilities, "clientInfo": kept_info}


def _stream_queue() -> asyncio.Queue[Any]:
    return asyncio.Queue(maxsize=_STREAM_QUEUE)


def close_queue(queue: asyncio.Queue[Any]) -> None:
    """Put the end marker (None) on `queue` at once: what is still queued is dropped
    (its consumer is leaving or was told to)."""
    while True:
        try:
            queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            queue.get_nowait()


def result_body(id: bytes | None, result: Any) -> bytes:
    return b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (id or rpc.NULL_ID, orjson.dumps(result))


class Federator(Forwarder):
    """The MCP endpoint when several backends sit behind it."""

    def __init__(
        self, settings: Settings, store: SessionStore, upstreams: Upstreams, metrics: Metrics
    ) -> None:
        super().__init__(settings, store, upstreams, metrics)
        self.catalog = Catalog(settings, upstreams.backends, metrics)
        self.namespace = self.catalog.namespace
        self._opening: dict[tuple[str, str], asyncio.Future[Binding]] = {}
        self._merged: dict[str, set[MergedStream]] = {}  # gateway session -> open GETs
        self._origin = new_session_id()  # this process, in events shared through the store
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.catalog.listeners.add(self._lists_changed)
        self.store.event_listeners.append(self._on_event)
        self.catalog.start()
        await self.catalog.warm()

    async def stop(self) -> None:
        await self.catalog.stop()
        for streams in list(self._merged.values()):
            for stream in list(streams):
                stream.end()

    def drain(self) -> None:
        super().drain()
        for streams in list(self._merged.values()):
            for stream in list(streams):
                stream.end()

    def _lists_changed(self, method: str) -> None:
        """A backend's list changed: every client with an open stream here is told."""
        note = self.catalog.announcement(method)
        if note is None:
            return
        event = b'data: {"jsonrpc":"2.0","method":"%s"}\n\n' % note.encode()
        for streams in self._merged.values():
            for stream in list(streams):
                stream.offer(event)

    # -- the exchange ------------------------------------------------------------------------

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        hdrs: McpHeaders,
        env: Envelope | None,
        body: bytes | None,
    ) -> int:
        verb = scope["method"]
        if verb == "GET":
            return await self._merged_stream(scope, receive, send, hdrs)
        if verb == "DELETE":
            return await self._end(scope, send, hdrs)
        assert env is not None and body is not None  # noqa: S101 - POST
        version = hdrs.protocol_version
        if env.kind == rpc.BATCH:
            raise Reply(400, rpc.INVALID_REQUEST, "Invalid Request: batches are not supported")
        if version is not None and version not in rpc.HANDSHAKE_VERSIONS:
            return await self._stateless(scope, receive, send, env, body)
        if hdrs.session_id is None:
            if env.kind == rpc.REQUEST and env.method == "initialize":
                return await self._initialize(send, env, body)
            raise Reply(400, rpc.INVALID_REQUEST, "Bad Request: Mcp-Session-Id header required")
        gateway_sid = hdrs.session_id.decode("latin-1")
        record = await self._record(gateway_sid)
        extra = [(H.MCP_SESSION_ID, hdrs.session_id)]
        if env.kind != rpc.REQUEST:
            await self._pass_on(scope, gateway_sid, record, env, body)
            await send_bytes(send, 202, b"", extra=extra)
            return 202
        method = env.method or ""
        if method == "ping":
            await send_bytes(send, 200, result_body(env.id, {}), extra=extra)
            return 200
        if method in LIST_KEYS:
            items = await self.catalog.merged(method)
            listed = result_body(env.id, {LIST_KEYS[method]: items})
            await send_bytes(send, 200, listed, extra=extra)
            return 200
        if method == "logging/setLevel":
            await self._to_bound(scope, gateway_sid, record, body)
            await send_bytes(send, 200, result_body(env.id, {}), extra=extra)
            return 200
        backend, rewritten, _ = self._target(env, body)
        return await self._routed(scope, receive, send, hdrs, gateway_sid, record, backend,
                                  rewritten, method)  # fmt: skip

    async def _record(self, gateway_sid: str) -> SessionRecord:
        try:
            record = await self.store.resolve(gateway_sid)
        except StoreUnavailable:
            self.metrics.store_errors.inc("resolve")
            raise Reply(503, rpc.STORE_UNAVAILABLE, "Session store unavailable") from None
        if record is None or CLIENT_KEY not in record:
            raise Reply(404, rpc.SESSION_NOT_FOUND, "Session not found")
        return dict(record)  # this exchange's copy: the store's cache keeps its own

    # -- initialize, DELETE ------------------------------------------------------------------

    async def _initialize(self, send: Send, env: Envelope, body: bytes) -> int:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:  # the scanner accepted it: cannot happen
            raise Reply(400, rpc.PARSE_ERROR, "Parse error") from None
        params = message.get("params")
        if not isinstance(params, dict) or not isinstance(params.get("protocolVersion"), str):
            raise Reply(400, rpc.INVALID_PARAMS, "Invalid params: protocolVersion required")
        asked = params["protocolVersion"]
        known = sorted(v.decode() for v in rpc.HANDSHAKE_VERSIONS)
        version = asked if asked in known else known[-1]
        params = kept_initialize(version, params)
        gateway_sid = new_session_id()
        try:
            await self.store.create(gateway_sid, {CLIENT_KEY: client_binding(version, params)})
        except StoreUnavailable:
            self.metrics.store_errors.inc("create")
            raise Reply(503, rpc.STORE_UNAVAILABLE, "Session store unavailable") from None
        except StoreFull:
            self.metrics.refused.inc("sessions_full")
            raise Reply(503, rpc.STORE_UNAVAILABLE, "Too many open sessions; retry later",
                        extra=[(b"retry-after", b"5")]) from None
        self.metrics.sessions_created.inc()
        result = {
            "protocolVersion": version,
            "capabilities": self.catalog.capabilities(),
            "serverInfo": GATEWAY_INFO,
            "instructions": "Tools and prompts of several MCP servers; each name begins "
            "with its server's prefix.",
        }
        extra = [(H.MCP_SESSION_ID, gateway_sid.encode("ascii"))]
        await send_bytes(send, 200, result_body(env.id, result), extra=extra)
        return 200

    def _credentials(self, backend: str, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The client's Authorization and Cookie, for a backend configured to take them
        (``forward_credentials``); none for the others."""
        settings = self.namespace.backends.get(backend)
        if settings is None or not settings.forward_credentials:
            return []
        return [(n, v) for n, v in scope["headers"] if n in _CREDENTIALS]

    async def _end(self, scope: Scope, send: Send, hdrs: McpHeaders) -> int:
        if hdrs.session_id is None:
            raise Reply(400, rpc.INVALID_REQUEST, "Bad Request: Mcp-Session-Id header required")
        gateway_sid = hdrs.session_id.decode("latin-1")
        record = await self._record(gateway_sid)
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete(gateway_sid)
        ends = []
        for name, binding in record.items():
            backend = self.upstreams.backends.get(name)
            replica = None if backend is None else backend.by_url.get(binding.replica)
            if replica is not None and binding.session_id is not None:
                try:
                    head = wire.request_head(
                        replica, b"", session_id=binding.session_id, protocol_version=None,
                        method=b"DELETE", extra=self._credentials(name, scope),
                    )  # fmt: skip
                except HeadInjection:
                    continue
                ends.append(self._quietly(replica.pool.request(head, None, head_timeout=5.0)))
        await asyncio.gather(*ends)
        await send_bytes(send, 200, b"")
        return 200

    @staticmethod
    async def _quietly(request: Any) -> None:
        with contextlib.suppress(Exception):
            response = await request
            response.close()

    # -- routing -----------------------------------------------------------------------------

    def _target(self, env: Envelope, body: bytes) -> tuple[BackendSettings, bytes, str]:
        """The backend a request goes to, its body with the backend's own names, and the
        backend's own name or URI that the request names."""
        message = orjson.loads(body)
        params = message.get("params")
        if not isinstance(params, dict):
            params = {}
        method = env.method or ""
        found = None
        if method in _NAMED:
            name = params.get("name")
            if isinstance(name, str):
                found = (self.namespace.route_tool(name) if method == "tools/call"
                         else self.namespace.route_name(name))  # fmt: skip
                if found is not None:
                    params["name"] = found[1]
            if found is None:
                kind = "tool" if method == "tools/call" else "prompt"
                raise Reply(200, rpc.INVALID_PARAMS, f"Unknown {kind}: {name!r}")
        elif method in _BY_URI:
            uri = params.get("uri")
            if isinstance(uri, str):
                found = self.namespace.route_uri(uri)
                if found is not None:
                    params["uri"] = found[1]
            if found is None:
                raise Reply(200, -32002, f"Resource not found: {uri!r}")
        elif method == "completion/complete":
            ref = params.get("ref")
            if isinstance(ref, dict) and ref.get("type") == "ref/prompt":
                found = self.namespace.route_name(str(ref.get("name")))
                if found is not None:
                    ref["name"] = found[1]
            elif isinstance(ref, dict) and ref.get("type") == "ref/resource":
                found = self.namespace.route_uri(str(ref.get("uri")))
                if found is not None:
                    ref["uri"] = found[1]
            if found is None:
                raise Reply(200, rpc.INVALID_PARAMS, "Unknown completion reference")
        else:
            raise Reply(200, rpc.METHOD_NOT_FOUND, f"Method not found: {method}")
        message["params"] = params
        return found[0], orjson.dumps(message), found[1]

    async def _routed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        hdrs: McpHeaders,
        gateway_sid: str,
        record: SessionRecord,
        settings: BackendSettings,
        body: bytes,
        method: str,
    ) -> int:
        backend = self.upstreams.backends[settings.name]
        self.metrics.backend_requests.inc(settings.name, method_label(method))
        watch = ClientWatch(receive, self._watches)
        try:
            for attempt in range(2):
                binding = record.get(settings.name)
                if binding is None:
                    binding = await self._open_backend(
                        gateway_sid, record, backend, self._credentials(backend.name, scope)
                    )
                replica = backend.by_url.get(binding.replica)
                if replica is None or self.upstreams.lost(replica):
                    record.pop(settings.name, None)  # open another on a live replica
                    continue
                sid = None if binding.session_id is None else binding.session_id.encode()
                route = Route(backend, replica, sid, hdrs.session_id)
                started = time.perf_counter()
                try:
                    response = await self._open(
                        scope, route, body, watch.token,
                        credentials=settings.forward_credentials,
                    )  # fmt: skip
                except ConnectFailed as exc:
                    self.metrics.backend_errors.inc(settings.name, "connect")
                    self.upstreams.mark_down(replica, str(exc), gone=exc.refused)
                    if not self.upstreams.lost(replica):
                        raise Reply(
                            503, rpc.UPSTREAM_UNAVAILABLE, "Backend unreachable; retry"
                        ) from None
                    record.pop(settings.name, None)
                    continue
                self.metrics.backend_latency.observe(time.perf_counter() - started, settings.name)
                if response.status == 404 and attempt == 0 and binding.session_id is not None:
                    response.close()  # the backend forgot our session: open a new one
                    replica.inflight -= 1
                    record.pop(settings.name, None)
                    continue
                if response.status >= 400:
                    self.metrics.backend_errors.inc(settings.name, "http")
                if method == "resources/read" and response.status < 300:
                    return await self._read_resource(send, settings.name, route, response)
                ctype = response.header(H.CONTENT_TYPE) or b""
                sse = ctype.startswith(b"text/event-stream")
                events = self._events(settings.name) if sse else None
                return await self._relay(watch, send, route, response, False, events)
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, f"Backend {settings.name} is unreachable")
        finally:
            watch.close()

    async def _read_resource(
        self, send: Send, backend: str, route: Route, response: Any
    ) -> int:
        """resources/read: the contents' URIs are mapped back to what the client knows."""
        try:
            data = await response.aread(self.settings.max_answer_size)
        except ProtocolFailure as exc:
            logger.warning("backend %s: resources/read answer refused: %s", backend, exc)
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, "Bad gateway: backend failed") from None
        finally:
            route.replica.inflight -= 1
            response.close()
        ctype = response.header(H.CONTENT_TYPE) or b""
        messages = (wire.sse_messages(data) if ctype.startswith(b"text/event-stream")
                    else [orjson.loads(data)])  # fmt: skip
        answer = next((m for m in messages if isinstance(m, dict) and "id" in m), None)
        if answer is None:
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, "Bad gateway: no answer from the backend")
        if "result" in answer:
            answer["result"] = self.namespace.map_contents(backend, answer["result"])
        extra = None if route.gateway_sid is None else [(H.MCP_SESSION_ID, route.gateway_sid)]
        await send_bytes(send, response.status, orjson.dumps(answer), extra=extra)
        return int(response.status)

    # -- backend sessions ------------------------------------------------------------------

    async def _open_backend(
        self,
        gateway_sid: str,
        record: SessionRecord,
        backend: Backend,
        credentials: list[tuple[bytes, bytes]],
    ) -> Binding:
        """This client's session with `backend`, opened now (once per process at a time)."""
        key = (gateway_sid, backend.name)
        pending = self._opening.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                self._initialize_backend(gateway_sid, record, backend, credentials)
            )
            self._opening[key] = pending
            pending.add_done_callback(lambda _f: self._opening.pop(key, None))
        binding = await asyncio.shield(pending)
        record[backend.name] = binding
        return binding

    async def _initialize_backend(
        self,
        gateway_sid: str,
        record: SessionRecord,
        backend: Backend,
        credentials: list[tuple[bytes, bytes]],
    ) -> Binding:
        client = record[CLIENT_KEY]
        params = orjson.loads(client.session_id or "{}")
        replica = backend.choose()
        if replica is None:
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, f"Backend {backend.name} is unreachable")
        try:
            answer = await wire.call(
                replica, "initialize", params, session_id=None, protocol_version=None,
                limit=self.timeout, extra=credentials, max_answer=self.settings.max_answer_size,
            )  # fmt: skip
            version = client.replica
            result = answer.result if isinstance(answer.result, dict) else {}
            if isinstance(result.get("protocolVersion"), str):
                version = result["protocolVersion"]
            await wire.call(
                replica, "notifications/initialized", None, session_id=answer.session_id,
                protocol_version=version, limit=self.timeout, notification=True,
                extra=credentials,
            )  # fmt: skip
        except wire.CallFailed as exc:
            self.metrics.backend_errors.inc(backend.name, "initialize")
            logger.warning("backend %s: initialize failed: %s", backend.name, exc)
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, f"Backend {backend.name} failed") from None
        binding = Binding(replica.url, answer.session_id)
        try:
            await self.store.bind(gateway_sid, backend.name, binding)
        except StoreUnavailable:
            self.metrics.store_errors.inc("bind")
            raise Reply(503, rpc.STORE_UNAVAILABLE, "Session store unavailable") from None
        self.metrics.lazy_inits.inc(backend.name)
        self._attach_new_backend(gateway_sid, backend.name, binding)
        return binding

    # -- notifications and responses from the client ---------------------------------------

    async def _pass_on(
        self, scope: Scope, gateway_sid: str, record: SessionRecord, env: Envelope, body: bytes
    ) -> None:
        """A client notification or response: to the backends this session uses (the one
        that asked recognises its request id; the others ignore it)."""
        if env.method == "notifications/initialized":
            return  # each backend session got its own when it was opened
        if env.kind == rpc.RESPONSE:
            message = orjson.loads(body)
            found = unwrap_id(message.get("id"))
            if found is not None and found[0] in record:
                message["id"] = found[1]
                await self._to_bound(scope, gateway_sid, {
                    CLIENT_KEY: record[CLIENT_KEY], found[0]: record[found[0]],
                }, orjson.dumps(message))  # fmt: skip
                return
        method = env.method or ""
        if env.kind == rpc.NOTIFICATION and not method.startswith("notifications/"):
            return
        await self._to_bound(scope, gateway_sid, record, body)

    async def _to_bound(
        self, scope: Scope, gateway_sid: str, record: SessionRecord, body: bytes
    ) -> None:
        sends = []
        for name, binding in record.items():
            if name == CLIENT_KEY:
                continue
            backend = self.upstreams.backends.get(name)
            replica = None if backend is None else backend.by_url.get(binding.replica)
            if replica is None:
                continue
            try:
                head = wire.request_head(
                    replica, body, session_id=binding.session_id,
                    protocol_version=record[CLIENT_KEY].replica,
                    extra=self._credentials(name, scope),
                )  # fmt: skip
            except HeadInjection:
                continue
            sends.append(self._quietly(replica.pool.request(head, body, head_timeout=10.0)))
        await asyncio.gather(*sends)

    # -- the stateless era (2026-07-28) -----------------------------------------------------

    async def _stateless(
        self, scope: Scope, receive: Receive, send: Send, env: Envelope, body: bytes
    ) -> int:
        """A self-contained request: discovery and lists fan out to every backend with the
        caller's envelope (nothing of them is cached: results may be private to the
        caller); everything else goes to the one backend its name or URI names."""
        if env.kind != rpc.REQUEST:
            await send_bytes(send, 202, b"")  # nothing to relay without a session
            return 202
        method = env.method or ""
        if method == "server/discover" or method in LIST_KEYS:
            answers = await self._fan_out(scope, body)
            if method == "server/discover":
                result = self._discovered(answers)
            else:
                result = self._merged_result(method, answers)
            await send_bytes(send, 200, result_body(env.id, result))
            return 200
        if method == "subscriptions/listen":
            return await self._listen(scope, receive, send, env, body)
        settings, rewritten, local = self._target(env, body)
        backend = self.upstreams.backends[settings.name]
        self.metrics.backend_requests.inc(settings.name, method_label(method))
        replica = backend.choose()
        if replica is None:
            raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, f"Backend {settings.name} is unreachable")
        routed_scope = scope
        if method in rpc.NAME_BEARING_METHODS:  # Mcp-Name mirrors what the body names
            routed_scope = {**scope, "headers": _with_name_header(scope["headers"], local)}
        route = Route(backend, replica)
        watch = ClientWatch(receive, self._watches)
        try:
            started = time.perf_counter()
            try:
                response = await self._open(
                    routed_scope, route, rewritten, watch.token,
                    credentials=settings.forward_credentials,
                )  # fmt: skip
            except ConnectFailed as exc:
                self.metrics.backend_errors.inc(settings.name, "connect")
                self.upstreams.mark_down(replica, str(exc), gone=exc.refused)
                unreachable = f"Backend {settings.name} is unreachable"
                raise Reply(502, rpc.UPSTREAM_UNAVAILABLE, unreachable) from None
            self.metrics.backend_latency.observe(time.perf_counter() - started, settings.name)
            if method == "resources/read" and response.status < 300:
                return await self._read_resource(send, settings.name, route, response)
            return await self._relay(watch, send, route, response, False)
        finally:
            watch.close()

    async def _listen(
        self, scope: Scope, receive: Receive, send: Send, env: Envelope, body: bytes
    ) -> int:
        """subscriptions/listen: one listen stream per backend (each asked only for the
        resources it owns), one merged acknowledgement once they have acknowledged (or
        the list timeout passed), then every backend's notifications on one stream."""
        message = orjson.loads(body)
        raw_params = message.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        raw_wanted = params.get("notifications")
        wanted: dict[str, Any] = raw_wanted if isinstance(raw_wanted, dict) else {}
        flags = {k: v for k, v in wanted.items() if k != "resourceSubscriptions"}
        owned: dict[str, list[str]] = {}
        for uri in wanted.get("resourceSubscriptions") or ():
            found = self.namespace.route_uri(uri) if isinstance(uri, str) else None
            if found is not None:
                owned.setdefault(found[0].name, []).append(found[1])
        version = _meta_version(message)
        stream_key = self._take_stream(scope, McpHeaders())
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = _stream_queue()
        acks: dict[str, dict[str, Any]] = {}
        streams: list[asyncio.Task[None]] = []
        running = len(self.upstreams.backends)

        async def stream(name: str, backend: Backend) -> None:
            nonlocal running
            try:
                await relay(name, backend)
            finally:
                running -= 1
            if not running:
                await queue.put((_ENDED, {}))

        async def relay(name: str, backend: Backend) -> None:
            replica = backend.choose()
            if replica is None:
                return
            mine = dict(flags)
            if owned.get(name):
                mine["resourceSubscriptions"] = owned[name]
            ask = {**message, "params": {**params, "notifications": mine}}
            data = orjson.dumps(ask)
            extra = [(H.MCP_METHOD, b"subscriptions/listen"), *self._credentials(name, scope)]
            try:
                head = wire.request_head(
                    replica, data, session_id=None, protocol_version=version, extra=extra
                )
                limit = self.settings.list_timeout
                response = await replica.streams.request(head, data, head_timeout=limit)
            except Exception as exc:  # one backend's stream; the others go on
                logger.info("backend %s: subscriptions/listen not opened: %s", name, exc)
                return
            try:
                if response.status != 200:
                    return
                splitter = EventSplitter(self.settings.max_answer_size)
                while chunk := await response.read():
                    for event in splitter.feed(chunk):
                        for frame in wire.sse_messages(event + b"\n\n"):
                            if isinstance(frame, dict):
                                await queue.put((name, frame))
            except (UpstreamError, EventTooLarge) as exc:
                logger.info("backend %s: subscriptions/listen ended: %s", name, exc)
            finally:
                response.close()

        for name, backend in self.upstreams.backends.items():
            streams.append(asyncio.ensure_future(stream(name, backend)))
        watcher = asyncio.ensure_future(_until_gone(receive, queue))
        headers = [(H.CONTENT_TYPE, b"text/event-stream"), (b"cache-control", b"no-cache"),
                   (H.X_ACCEL_BUFFERING, b"no")]  # fmt: skip
        sub_meta = {"io.modelcontextprotocol/subscriptionId": orjson.loads(env.id or b"null")}
        try:
            deadline = asyncio.get_running_loop().time() + self.settings.list_timeout
            early: list[tuple[str, dict[str, Any]]] = []
            while len(acks) < running and len(early) < _STREAM_QUEUE:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, left))
                except TimeoutError:
                    break
                if item is None:
                    return 200  # the client left before the acknowledgement
                name, frame = item
                if name == _ENDED:
                    break
                if frame.get("method") == "notifications/subscriptions/acknowledged":
                    honored = (frame.get("params") or {}).get("notifications") or {}
                    acks[name] = honored if isinstance(honored, dict) else {}
                else:
                    early.append(item)
            merged: dict[str, Any] = {}
            for name, honored in acks.items():
                for key, value in honored.items():
                    if key == "resourceSubscriptions" and isinstance(value, list):
                        merged.setdefault(key, []).extend(
                            self.namespace.public_uri(name, u)
                            for u in value
                            if isinstance(u, str)
                        )
                    elif value is True:
                        merged[key] = True
            ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                   "params": {"notifications": merged, "_meta": sub_meta}}  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": _frame(ack), "more_body": True})
            for name, frame in early:
                await self._listen_frame(send, name, frame)
            while (item := await queue.get()) is not None and item[0] != _ENDED:
                await self._listen_frame(send, *item)
            if item is not None:  # every backend ended its stream: so does the gateway
                done = {"jsonrpc": "2.0", "id": sub_meta["io.modelcontextprotocol/subscriptionId"],
                        "result": {"_meta": sub_meta, "resultType": "complete"}}  # fmt: skip
                await send({"type": "http.response.body", "body": _frame(done), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 200
        finally:
            watcher.cancel()
            for task in streams:
                task.cancel()
            self.stream_limits.give_back(*stream_key)

    async def _listen_frame(self, send: Send, backend: str, frame: dict[str, Any]) -> None:
        """One backend notification on the merged listen stream (URIs made public)."""
        method = frame.get("method")
        if method is None or method == "notifications/subscriptions/acknowledged":
            return  # a backend's own acknowledgement or final result
        params = frame.get("params")
        if isinstance(params, dict) and isinstance(params.get("uri"), str):
            params["uri"] = self.namespace.public_uri(backend, params["uri"])
        await send({"type": "http.response.body", "body": _frame(frame), "more_body": True})

    async def _fan_out(self, scope: Scope, body: bytes) -> dict[str, dict[str, Any]]:
        """`body` (a stateless request) sent to one replica of every backend; their
        results, by backend, from those that answered within the list timeout."""
        message = orjson.loads(body)

        async def ask(name: str, backend: Backend) -> tuple[str, dict[str, Any] | None]:
            replica = backend.choose()
            if replica is None:
                return name, None
            params = message.get("params") if isinstance(message.get("params"), dict) else None
            try:
                answer = await wire.call(
                    replica, str(message["method"]), params, session_id=None,
                    protocol_version=_meta_version(message), limit=self.settings.list_timeout,
                    method_header=True, extra=self._credentials(name, scope),
                    max_answer=self.settings.max_answer_size,
                )  # fmt: skip
            except wire.CallFailed as exc:
                self.metrics.backend_errors.inc(name, "list")
                logger.warning("backend %s: %s left out: %s", name, message["method"], exc)
                return name, None
            return name, answer.result if isinstance(answer.result, dict) else None

        asked = await asyncio.gather(
            *(ask(name, backend) for name, backend in self.upstreams.backends.items())
        )
        return {name: result for name, result in asked if result is not None}

    def _discovered(self, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """server/discover of the federation: the versions every answering backend
        supports (so that whichever backend a request reaches speaks the version the
        client chose), capabilities merged, never cached by the client beyond the
        strictest backend's terms."""
        versions: set[str] | None = None
        for result in answers.values():
            offered = {v for v in result.get("supportedVersions", ()) if isinstance(v, str)}
            versions = offered if versions is None else versions & offered
        caps = self.catalog.capabilities()
        for result in answers.values():
            backend_caps = result.get("capabilities")
            if isinstance(backend_caps, dict):
                for key in ("logging", "completions"):
                    if key in backend_caps:
                        caps[key] = {}
        out = {
            "supportedVersions": sorted(versions or ()),
            "capabilities": caps,
            **_cache_terms(answers.values()),
            "resultType": "complete",
            "_meta": {"io.modelcontextprotocol/serverInfo": GATEWAY_INFO},
        }
        return out

    def _merged_result(self, method: str, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        key = LIST_KEYS[method]
        lists = {
            name: [i for i in answers[name].get(key, ()) if isinstance(i, dict)]
            for name in self.upstreams.backends
            if name in answers
        }
        merged, collisions = self.namespace.merge(method, lists)
        for problem in collisions:
            logger.warning("name collision: %s", problem)
        return {key: merged, **_cache_terms(answers.values()), "resultType": "complete"}

    # -- server-sent events ----------------------------------------------------------------

    def _events(self, backend: str) -> Callable[[bytes], bytes]:
        """A relay transform for one backend's event stream: requests to the client get
        gateway ids (their answers come back to this backend)."""
        splitter = EventSplitter(self.settings.max_answer_size)
        heard = self._heard_from(backend)

        def transform(chunk: bytes) -> bytes:
            return b"".join(
                rewrite_event(event, backend, None, heard) for event in splitter.feed(chunk)
            )

        return transform

    def _heard_from(self, backend: str) -> Callable[[str], None]:
        """Notifications a backend sends a client: a list change there also drops the
        cached list and reaches every other client with a stream here."""

        def heard(method: str) -> None:
            for changed in self.catalog.changed_lists(method):
                self.catalog.backends[backend].invalidate(changed)
                self._lists_changed(changed)
                # The other gateway processes on this store have clients too.
                text = f"{self._origin}\tlist\t{backend}\t{changed}"
                task = asyncio.ensure_future(self._publish(text))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        return heard

    async def _publish(self, text: str) -> None:
        try:
            await self.store.publish_event(text)
        except StoreUnavailable as exc:
            logger.warning("list change not shared with the other gateways: %s", exc)

    def _on_event(self, text: str) -> None:
        """An event another gateway process published: a backend's list changed there."""
        origin, _, rest = text.partition("\t")
        kind, _, rest = rest.partition("\t")
        backend, _, method = rest.partition("\t")
        if origin == self._origin or kind != "list" or backend not in self.catalog.backends:
            return
        if method in LIST_KEYS:
            self.catalog.backends[backend].invalidate(method)
            self._lists_changed(method)

    async def _merged_stream(
        self, scope: Scope, receive: Receive, send: Send, hdrs: McpHeaders
    ) -> int:
        """The client's one GET stream: its backend sessions' streams merged, and the
        gateway's own notifications (list changes)."""
        if hdrs.session_id is None:
            raise Reply(400, rpc.INVALID_REQUEST, "Bad Request: Mcp-Session-Id header required")
        gateway_sid = hdrs.session_id.decode("latin-1")
        record = await self._record(gateway_sid)
        last_event_id = next(
            (v.decode("latin-1") for n, v in scope["headers"] if n == _LAST_EVENT_ID), None
        )
        version = record[CLIENT_KEY].replica
        try:
            resume = parse_ids(last_event_id)
        except (BadEventId, UnicodeDecodeError):
            raise Reply(400, rpc.INVALID_REQUEST, "Bad Request: invalid Last-Event-ID") from None
        stream_key = self._take_stream(scope, hdrs)
        stream = MergedStream(self, gateway_sid, version, resume)
        stream.credentials = [(n, v) for n, v in scope["headers"] if n in _CREDENTIALS]
        headers = [
            (H.CONTENT_TYPE, b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (H.X_ACCEL_BUFFERING, b"no"),
            (H.MCP_SESSION_ID, hdrs.session_id),
        ]
        if self.draining:
            headers.append((H.CONNECTION, b"close"))
        self._merged.setdefault(gateway_sid, set()).add(stream)
        watcher = asyncio.ensure_future(_until_disconnect(receive, stream))
        try:
            for name, binding in record.items():
                if name != CLIENT_KEY:
                    stream.attach(name, binding)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if self.draining:
                stream.end()
            while not stream.ended and (event := await stream.queue.get()) is not None:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 200
        finally:
            watcher.cancel()
            stream.close()
            self.stream_limits.give_back(*stream_key)
            streams = self._merged.get(gateway_sid)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._merged[gateway_sid]

    def _attach_new_backend(self, gateway_sid: str, backend: str, binding: Binding) -> None:
        """A backend session opened here while the client's stream is open: merge it in."""
        for stream in self._merged.get(gateway_sid, ()):
            stream.attach(backend, binding)


def _meta_version(message: dict[str, Any]) -> str | None:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(rpc.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def _cache_terms(results: Any) -> dict[str, Any]:
    """The strictest caching terms among backend results: private if any is private,
    the shortest ttlMs."""
    scopes = [r.get("cacheScope") for r in results]
    ttls = [r["ttlMs"] for r in results if isinstance(r.get("ttlMs"), int)]
    scope = "public" if scopes and all(s == "public" for s in scopes) else "private"
    return {"cacheScope": scope, "ttlMs": min(ttls) if ttls else 0}


def _with_name_header(headers: Any, value: str) -> list[tuple[bytes, bytes]]:
    """The request headers with Mcp-Name naming the backend's own tool, prompt or URI."""
    if value.isascii() and value.isprintable():
        encoded = value.encode("ascii")
    else:  # the spec's form for values that do not fit in a header
        encoded = b"=?base64?" + base64.b64encode(value.encode("utf-8")) + b"?="
    out = [(n, v) for n, v in headers if n != H.MCP_NAME]
    out.append((H.MCP_NAME, encoded))
    return out


_ENDED = "@ended"  # queue marker: every backend's listen stream has ended


def _frame(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


async def _until_gone(receive: Receive, queue: asyncio.Queue[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    close_queue(queue)


async def _until_disconnect(receive: Receive, stream: MergedStream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.end()


class MergedStream:
    """One client GET stream: a pump per backend session feeding one bounded queue.

    A pump waits while the queue is full (so a client that does not read holds back its
    backends' streams, not the gateway's memory); the gateway's own notes are offered
    without waiting, and a stream whose client has not read for that long is ended.
    """

    def __init__(
        self, owner: Federator, gateway_sid: str, version: str, last_ids: dict[str, str]
    ) -> None:
        self.owner = owner
        self.gateway_sid = gateway_sid
        self.version = version
        self.last_ids = dict(last_ids)  # what the client resumes from, then what it got
        self.queue: asyncio.Queue[bytes | None] = _stream_queue()
        self.credentials: list[tuple[bytes, bytes]] = []  # the GET's Authorization, Cookie
        self.ended = False
        self._pumps: dict[str, asyncio.Task[None]] = {}

    def attach(self, backend: str, binding: Binding) -> None:
        if backend not in self._pumps and not self.ended:
            self._pumps[backend] = asyncio.ensure_future(self._pump(backend, binding))

    def offer(self, event: bytes) -> None:
        """A note of the gateway's own: queued, or the stream ends if the client has
        left it unread this long (it reconnects and lists again)."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            logger.info("GET stream of a session not read: ended")
            self.end()

    def end(self) -> None:
        self.ended = True
        close_queue(self.queue)

    def close(self) -> None:
        for pump in self._pumps.values():
            pump.cancel()

    async def _pump(self, name: str, binding: Binding) -> None:
        backend = self.owner.upstreams.backends.get(name)
        replica = None if backend is None else backend.by_url.get(binding.replica)
        settings = self.owner.namespace.backends.get(name)
        if replica is None or settings is None:
            return
        try:
            head = wire.request_head(
                replica, b"", session_id=binding.session_id, protocol_version=self.version,
                method=b"GET", last_event_id=self.last_ids.get(name),
                extra=self.credentials if settings.forward_credentials else (),
            )  # fmt: skip
            response = await replica.streams.request(head, None, head_timeout=30.0)
        except Exception as exc:  # one backend's stream; the others go on
            logger.info("backend %s: GET stream not opened: %s", name, exc)
            return
        heard = self.owner._heard_from(name)
        try:
            if response.status != 200:  # 405: no stream; 409: one is open elsewhere
                logger.info("backend %s: GET stream answered %d", name, response.status)
                return
            splitter = EventSplitter(self.owner.settings.max_answer_size)
            while chunk := await response.read():
                for event in splitter.feed(chunk):
                    await self.queue.put(rewrite_event(event, name, self.last_ids, heard))
        except Exception as exc:
            logger.info("backend %s: GET stream ended: %s", name, exc)
        finally:
            response.close()
