"""A handshake-era client (``initialize``, ``Mcp-Session-Id``) in front of a backend that
speaks the stateless era (2026-07-28) only.

When the one backend behind the endpoint is known to speak the stateless era alone
(:mod:`proxy.upstream.eras`), the gateway is the handshake-era server its clients see:

- ``initialize`` is answered from the backend's ``server/discover`` (read again after
  ``list_cache_seconds``); the gateway mints the session and keeps what the client
  declared (its capabilities and name) in the session's record, so that any replica
  serves it;
- every request of the session goes up as a request of the stateless era: the
  envelope in ``params._meta`` (protocol version, the client's capabilities and name, the
  log level it set), the routing headers (``Mcp-Method``, ``Mcp-Name``, and a
  ``tools/call``'s ``Mcp-Param-*`` from the tool's ``x-mcp-header`` declarations); the
  answer comes down as the backend gave it (progress on time), without that era's
  ``resultType``, ``ttlMs`` and ``cacheScope``;
- an ``InputRequiredResult`` is not what a handshake-era client expects: the gateway asks
  the client itself, on the request's event stream (elicitation, sampling, roots), waits
  for its answers (the client POSTs them in the session) and sends the request again with
  ``inputResponses`` and the backend's ``requestState``, up to
  :data:`ROUNDS` times, so the client sees an ordinary result;
- ``ping`` and ``logging/setLevel`` are answered by the gateway, ``resources/subscribe``
  and ``unsubscribe`` noted; the session's GET stream is a ``subscriptions/listen`` to the
  backend for the list changes it announces and the resources subscribed;
- ``DELETE`` ends the session (the backend keeps none).

A question waits in the worker that asked it; a client's answer that reaches another
worker or replica is handed on through the store's event channel (Redis: every gateway
process on it). What the client set (log level, subscriptions) is kept by the worker
that took it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from . import headers as H, sse
from .answer_stream import AnswerStream
from .errors import BadGateway, BadRequest, ParseError, SessionNotFound
from .federation import wire
from .federation.backends import kept_initialize
from .headers import encode_header_value
from .jsonrpc import HANDSHAKE_VERSIONS, NAME_BEARING_METHODS, PROTOCOL_VERSION_META_KEY
from .modern import CAPABILITIES_KEY, CLIENT_INFO_KEY, LEVEL_KEY, MODERN_VERSION
from .param_headers import headers_for, list_tools
from .responses import send_bytes
from .sessions import ClientInit, SessionRecord, StoreUnavailable
from .upstream.eras import STATELESS_ONLY
from .upstream.errors import UpstreamError

if TYPE_CHECKING:
    from ._types import Headers, Send
    from .config import Settings
    from .request import Request
    from .sessions.records import Records
    from .upstream.balance import Backend, Replica

__all__ = ("StatelessBridge",)

logger = logging.getLogger("proxy.stateless_bridge")

_ASK_PREFIX: Final = "mcp-fastproxy-ask-"
_ANSWER_EVENT: Final = "answer"
_CANCEL_EVENT: Final = "cancel"
ROUNDS: Final = 10
"""InputRequiredResults answered for one request at most (the SDKs' limit)."""
ASK_SECONDS: Final = 300.0
"""How long the gateway waits for a client's answer to a question it put."""
_MODERN_ONLY = ("resultType", "ttlMs", "cacheScope")
_JSON_HEADERS = [(b"content-type", b"application/json")]


class StatelessBridge:
    """Handshake-era clients of a stateless-only backend (see the module's docstring)."""

    def __init__(
        self,
        backend: Backend,
        records: Records,
        settings: Settings,
        recheck: Callable[[], None] = lambda: None,
    ) -> None:
        self.backend = backend
        self.recheck = recheck
        """Ask the backend its eras again (it refused the stateless era's version)."""
        self.records = records
        self.limit = settings.upstream_timeout
        self.list_seconds = settings.list_cache_seconds
        self.max_answer = settings.max_answer_size
        self._discovered: tuple[float, dict[str, Any]] | None = None
        self._tools: tuple[float, dict[str, Any]] | None = None
        self._asks: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._levels: dict[str, str] = {}
        self._subscribed: dict[str, set[str]] = {}
        self._ids = itertools.count(1)
        self._running: dict[tuple[str, str], asyncio.Task[Any]] = {}
        """The requests being sent up, by session and the client's id (JSON)."""
        self._cancelled: dict[tuple[str, str], bool] = {}
        self._worker = secrets.token_hex(6)
        """Names the asks of this worker (an answer that reaches another is handed on)."""
        self.store = records.store
        self.store.event_listeners.append(self._on_event)

    @property
    def _ask_prefix(self) -> str:
        return f"{_ASK_PREFIX}{self._worker}-"

    def wanted(self, request: Request) -> bool:
        """Whether `request` is one of the handshake era for a stateless-only backend."""
        if self.backend.eras != STATELESS_ONLY:
            return False
        if request.hdrs.session_id is not None:
            return True
        version = request.hdrs.protocol_version
        return request.verb == "POST" and (
            request.method == "initialize"
            or (version is not None and version in HANDSHAKE_VERSIONS)
        )

    async def close(self) -> None:
        if self._on_event in self.store.event_listeners:
            self.store.event_listeners.remove(self._on_event)
        for future in self._asks.values():
            future.cancel()
        self._asks.clear()

    def answered(self, gateway_sid: str, message: dict[str, Any]) -> bool:
        """Whether `message` answers a question this bridge put in that session (and is
        now with it)."""
        future = self._asks.get((gateway_sid, str(message.get("id"))))
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    async def hand_on(self, gateway_sid: str, message: dict[str, Any]) -> bool:
        """An answer to a question another worker or replica put: handed on to it
        through the store. False when it answers no question of a bridge's."""
        ask_id = str(message.get("id"))
        if not ask_id.startswith(_ASK_PREFIX) or ask_id.startswith(self._ask_prefix):
            return False
        text = "\t".join((_ANSWER_EVENT, gateway_sid, ask_id, orjson.dumps(message).decode()))
        try:
            await self.store.publish_event(text)
        except StoreUnavailable:
            raise BadGateway("Bad gateway: the answer could not be handed on") from None
        return True

    def _on_event(self, text: str) -> None:
        """An answer that reached another worker or replica, for a question of ours; or
        a cancellation of a request running here."""
        kind, _, rest = text.partition("\t")
        if kind == _CANCEL_EVENT:
            gateway_sid, _, request_id = rest.partition("\t")
            self._stop((gateway_sid, request_id))
            return
        if kind != _ANSWER_EVENT:
            return
        gateway_sid, _, rest = rest.partition("\t")
        ask_id, _, body = rest.partition("\t")
        future = self._asks.get((gateway_sid, ask_id))
        if future is None or future.done():
            return
        try:
            future.set_result(orjson.loads(body))
        except orjson.JSONDecodeError:
            return

    # -- a request ------------------------------------------------------------------------

    async def handle(self, request: Request, extra: Headers, principal: str | None) -> int:
        """Answer `request`; `extra`: the credentials the backend gets; `principal`: who
        the session is bound to. The HTTP status."""
        sid = request.hdrs.session_id
        if sid is None:
            if request.method != "initialize":
                raise BadRequest("Bad Request: Mcp-Session-Id header required")
            return await self._initialize(request, extra, principal)
        gateway_sid = sid.decode("latin-1")
        record = await self.records.resolve(gateway_sid)
        if record is None or record.client is None or record.bindings:
            raise SessionNotFound()
        if record.principal != principal:
            raise SessionNotFound()
        if request.verb == "DELETE":
            await self.records.forget(gateway_sid)
            self._levels.pop(gateway_sid, None)
            self._subscribed.pop(gateway_sid, None)
            await send_bytes(request.send, 200, b"")
            return 200
        if request.verb == "GET":
            return await self._listen(request, gateway_sid, record.client, extra)
        try:
            message = orjson.loads(request.body or b"")
        except orjson.JSONDecodeError:
            raise ParseError("Parse error") from None
        if not isinstance(message, dict):
            raise BadRequest("Invalid Request: one JSON-RPC message is expected")
        if "method" not in message:  # the client's answer to a question of the gateway's
            if not self.answered(gateway_sid, message):
                await self.hand_on(gateway_sid, message)
            await send_bytes(request.send, 202, b"")
            return 202
        if "id" not in message:
            if message["method"] == "notifications/cancelled":
                await self._cancel(gateway_sid, message.get("params"))
            await send_bytes(request.send, 202, b"")  # initialized: nothing to do
            return 202
        stream = AnswerStream(request.send, [(H.MCP_SESSION_ID, sid)])
        method, request_id = message["method"], message["id"]
        given = message.get("params")
        params: dict[str, Any] = given if isinstance(given, dict) else {}
        if method == "ping":
            return await stream.finish(_result(request_id, {}))
        if method == "logging/setLevel":
            if isinstance(params.get("level"), str):
                self._levels[gateway_sid] = params["level"]
            return await stream.finish(_result(request_id, {}))
        if method in ("resources/subscribe", "resources/unsubscribe"):
            uri = params.get("uri")
            if isinstance(uri, str):
                kept = self._subscribed.setdefault(gateway_sid, set())
                (kept.add if method == "resources/subscribe" else kept.discard)(uri)
            return await stream.finish(_result(request_id, {}))
        if method == "initialize":
            error = {"code": -32600, "message": "Invalid Request: the session is initialized"}
            return await stream.finish({"jsonrpc": "2.0", "id": request_id, "error": error})
        key = (gateway_sid, orjson.dumps(request_id).decode())
        task = asyncio.current_task()
        if task is not None:
            self._running[key] = task
        try:
            return await self._forward(stream, gateway_sid, record.client, message, extra)
        except asyncio.CancelledError:
            if not self._cancelled.pop(key, False) or task is None:
                raise
            task.uncancel()  # the client cancelled it: its stream ends, with no answer
            await stream.end()
            return 200
        finally:
            self._running.pop(key, None)

    async def _cancel(self, gateway_sid: str, params: Any) -> None:
        """The client cancelled a request of its session: the request to the backend is
        given up (closing its stream is how the stateless era cancels). A request running
        at another worker or replica is told through the store."""
        request_id = params.get("requestId") if isinstance(params, dict) else None
        if request_id is None:
            return
        key = (gateway_sid, orjson.dumps(request_id).decode())
        if self._stop(key):
            return
        text = "\t".join((_CANCEL_EVENT, gateway_sid, key[1]))
        with contextlib.suppress(StoreUnavailable):
            await self.store.publish_event(text)

    def _stop(self, key: tuple[str, str]) -> bool:
        task = self._running.get(key)
        if task is None or task.done():
            return False
        self._cancelled[key] = True
        task.cancel()
        return True

    async def _initialize(self, request: Request, extra: Headers, principal: str | None) -> int:
        try:
            message = orjson.loads(request.body or b"")
        except orjson.JSONDecodeError:
            raise ParseError("Parse error") from None
        params = message.get("params") if isinstance(message, dict) else None
        if not isinstance(params, dict) or not isinstance(params.get("protocolVersion"), str):
            error = {"code": -32602, "message": "Invalid params: protocolVersion required"}
            body = orjson.dumps({"jsonrpc": "2.0", "id": message.get("id"), "error": error})
            await send_bytes(request.send, 400, body)
            return 400
        discovered = await self._discover(extra)
        known = sorted(v.decode() for v in HANDSHAKE_VERSIONS)
        asked = params["protocolVersion"]
        version = asked if asked in known else known[-1]
        gateway_sid = _new_session_id()
        client = ClientInit(version, kept_initialize(version, params))
        await self.records.create(gateway_sid, SessionRecord({}, client, principal))
        meta = discovered.get("_meta")
        info = meta.get("io.modelcontextprotocol/serverInfo") if isinstance(meta, dict) else None
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": discovered.get("capabilities") or {},
            "serverInfo": info
            if isinstance(info, dict)
            else {"name": self.backend.name, "version": "0"},
        }
        if isinstance(discovered.get("instructions"), str):
            result["instructions"] = discovered["instructions"]
        extra_headers = [(H.MCP_SESSION_ID, gateway_sid.encode("ascii"))]
        body = orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
        await send_bytes(request.send, 200, body, extra=extra_headers)
        return 200

    # -- up to the backend ----------------------------------------------------------------

    async def forward(
        self,
        send: Send,
        session_id: bytes,
        gateway_sid: str,
        client: ClientInit,
        message: dict[str, Any],
        extra: Headers,
        shown: Callable[[dict[str, Any]], object] | None = None,
    ) -> int:
        """One request of a handshake-era session (a federated one's, routed here), sent
        as one of the stateless era, questions put to the client; `shown` rewrites each
        message before it goes to the client."""
        return await self._forward(
            AnswerStream(send, [(H.MCP_SESSION_ID, session_id)], shown=shown),
            gateway_sid,
            client,
            message,
            extra,
        )

    async def _forward(
        self,
        stream: AnswerStream,
        gateway_sid: str,
        client: ClientInit,
        message: dict[str, Any],
        extra: Headers,
    ) -> int:
        method = message["method"]
        params = dict(message.get("params") or {})
        meta = dict(params.get("_meta") or {}) if isinstance(params.get("_meta"), dict) else {}
        meta[PROTOCOL_VERSION_META_KEY] = MODERN_VERSION
        meta[CAPABILITIES_KEY] = client.params.get("capabilities") or {}
        meta[CLIENT_INFO_KEY] = client.params.get("clientInfo") or {}
        level = self._levels.get(gateway_sid)
        if level is not None:
            meta[LEVEL_KEY] = level
        params["_meta"] = meta
        routing: Headers = [(b"mcp-method", method.encode("latin-1", "replace"))]
        key = NAME_BEARING_METHODS.get(method)
        named = None if key is None else params.get(key)
        if isinstance(named, str):
            routing.append((b"mcp-name", encode_header_value(named)))
        if method == "tools/call" and isinstance(named, str):
            tool = (await self._tool_schemas(extra)).get(named)
            schema = tool.get("inputSchema") if isinstance(tool, dict) else None
            routing += headers_for(schema, params.get("arguments"))
        asked = client.params.get("capabilities") or {}
        for _ in range(ROUNDS):
            sent = {**message, "params": params}
            answer = await self._exchange(stream, orjson.dumps(sent), [*routing, *extra])
            result = answer.get("result")
            if not isinstance(result, dict) or result.get("resultType") != "input_required":
                return await stream.finish(_handshake_answer(answer))
            requests = result.get("inputRequests")
            answers = await self._ask(
                stream, gateway_sid, requests if isinstance(requests, dict) else {}, asked
            )
            params = {**params, "inputResponses": answers}
            if "requestState" in result:
                params["requestState"] = result["requestState"]
            else:
                params.pop("requestState", None)
        error = {"code": -32603, "message": f"the server asked for input more than {ROUNDS} times"}
        return await stream.finish({"jsonrpc": "2.0", "id": message["id"], "error": error})

    async def _exchange(
        self, stream: AnswerStream, body: bytes, headers: Headers
    ) -> dict[str, Any]:
        """Send one request up; relay what comes before its answer; the answer."""
        response = await self._send(body, headers)
        if response.status in (400, 404):  # perhaps no longer of the stateless era
            self.recheck()
        try:
            ctype = response.header(b"content-type") or b""
            if not ctype.startswith(b"text/event-stream"):
                try:
                    found: Any = orjson.loads(await response.aread(self.max_answer))
                except orjson.JSONDecodeError:
                    found = None
                except UpstreamError as exc:
                    raise BadGateway(f"Bad gateway: {exc}") from None
                if not isinstance(found, dict) or not ("result" in found or "error" in found):
                    raise BadGateway(f"Bad gateway: the backend answered HTTP {response.status}")
                return found
            splitter = sse.EventSplitter(self.max_answer)
            while chunk := await response.read():
                for event in splitter.feed(chunk):
                    message = sse.json_of(event)
                    if not isinstance(message, dict):
                        continue
                    if "method" in message:
                        await stream.event(message)  # progress, logs: on time
                    elif "result" in message or "error" in message:
                        return message
        except (UpstreamError, sse.EventTooLarge) as exc:
            raise BadGateway(f"Bad gateway: {exc}") from None
        finally:
            response.close()
        raise BadGateway("Bad gateway: the backend's stream ended without an answer")

    async def _ask(
        self,
        stream: AnswerStream,
        gateway_sid: str,
        requests: dict[str, Any],
        declared: dict[str, Any],
    ) -> dict[str, Any]:
        """Put the backend's input requests to the client on `stream`; its answers by key
        (a question it cannot answer, or leaves unanswered, is left out)."""
        waiting: dict[str, tuple[str, asyncio.Future[Any]]] = {}
        loop = asyncio.get_running_loop()
        for key, asked in requests.items():
            if not isinstance(asked, dict) or not isinstance(asked.get("method"), str):
                continue
            ask_id = f"{self._ask_prefix}{next(self._ids)}"
            future: asyncio.Future[Any] = loop.create_future()
            self._asks[(gateway_sid, ask_id)] = future
            waiting[key] = (ask_id, future)
            question = {"jsonrpc": "2.0", "id": ask_id, "method": asked["method"]}
            if asked.get("params") is not None:
                question["params"] = asked["params"]
            await stream.event(question)
        del declared  # the backend was told what the client declared; it asks within that
        answers: dict[str, Any] = {}
        try:
            async with asyncio.timeout(ASK_SECONDS):
                for key, (_, future) in waiting.items():
                    reply = await future
                    if isinstance(reply, dict) and isinstance(reply.get("result"), dict):
                        answers[key] = reply["result"]
        except TimeoutError:
            logger.info("backend %s: a client did not answer in time", self.backend.name)
        finally:
            for ask_id, _ in waiting.values():
                self._asks.pop((gateway_sid, ask_id), None)
        return answers

    async def _listen(
        self, request: Request, gateway_sid: str, client: ClientInit, extra: Headers
    ) -> int:
        """The session's GET stream: a ``subscriptions/listen`` of the backend's."""
        subscribed = sorted(self._subscribed.get(gateway_sid, ()))
        async with contextlib.aclosing(self.notifications(client, subscribed, extra)) as heard:
            first = await anext(heard, None)  # the listen is open (502 when it could not be)
            out = AnswerStream(request.send, [(H.MCP_SESSION_ID, gateway_sid.encode("ascii"))])
            if first is not None:
                async for message in _chain(first, heard):
                    await out.event(message)
        await out.end()
        return 200

    async def notifications(
        self, client: ClientInit, subscribed: Sequence[str], extra: Headers
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A ``subscriptions/listen`` of the backend's for a client of `client`'s
        capabilities: the list changes the backend announces, updates of the resources
        `subscribed`. Its first item is ``{}`` once the backend answered (BadGateway
        before, if it did not); then each notification, until the stream ends."""
        capabilities = (await self._discover(extra)).get("capabilities") or {}
        wanted: dict[str, Any] = {}
        for kind in ("tools", "prompts", "resources"):
            offered = capabilities.get(kind)
            if isinstance(offered, dict) and offered.get("listChanged"):
                wanted[f"{kind}ListChanged"] = True
        if subscribed:
            wanted["resourceSubscriptions"] = list(subscribed)
        meta = {
            PROTOCOL_VERSION_META_KEY: MODERN_VERSION,
            CAPABILITIES_KEY: client.params.get("capabilities") or {},
        }
        listen = {
            "jsonrpc": "2.0",
            "id": f"mcp-fastproxy-listen-{next(self._ids)}",
            "method": "subscriptions/listen",
            "params": {"notifications": wanted, "_meta": meta},
        }
        routing = [(b"mcp-method", b"subscriptions/listen"), *extra]
        response = await self._send(orjson.dumps(listen), routing)
        try:
            if response.status != 200:
                raise BadGateway(f"Bad gateway: the backend answered HTTP {response.status}")
            yield {}
            splitter = sse.EventSplitter(self.max_answer)
            while chunk := await response.read():
                for event in splitter.feed(chunk):
                    message = sse.json_of(event)
                    if not isinstance(message, dict) or "method" not in message:
                        continue
                    if message["method"] == "notifications/subscriptions/acknowledged":
                        continue
                    yield message
        except (UpstreamError, sse.EventTooLarge) as exc:
            logger.info("backend %s: a listen stream ended: %s", self.backend.name, exc)
        finally:
            response.close()

    # -- what the backend is -------------------------------------------------------------

    async def _discover(self, extra: Headers) -> dict[str, Any]:
        now = time.monotonic()
        if self._discovered is not None and now - self._discovered[0] < self.list_seconds:
            return self._discovered[1]
        answer = await self._call("server/discover", None, extra)
        if not isinstance(answer, dict):
            raise BadGateway(f"Bad gateway: backend {self.backend.name} did not say what it is")
        self._discovered = (now, answer)
        return answer

    async def _tool_schemas(self, extra: Headers) -> dict[str, Any]:
        now = time.monotonic()
        if self._tools is not None and now - self._tools[0] < self.list_seconds:
            return self._tools[1]

        async def page(cursor: str | None) -> Any:
            try:
                return await self._call(
                    "tools/list", None if cursor is None else {"cursor": cursor}, extra
                )
            except BadGateway:
                return None

        tools = await list_tools(page)
        self._tools = (now, tools)
        return tools

    async def _call(self, method: str, params: dict[str, Any] | None, extra: Headers) -> Any:
        """A request of the gateway's own to the backend; its result."""
        try:
            answer = await wire.stateless_call(
                self._replica(),
                method,
                params,
                limit=self.limit,
                extra=extra,
                max_answer=self.max_answer,
            )
        except wire.CallFailed as exc:
            raise BadGateway(f"Bad gateway: backend {self.backend.name}: {exc}") from None
        return answer.result

    def _replica(self) -> Replica:
        replica = self.backend.choose()
        if replica is None:
            raise BadGateway(f"Bad gateway: no replica of backend {self.backend.name} is up")
        return replica

    async def _send(self, body: bytes, headers: Headers) -> Any:
        replica = self._replica()
        head = wire.request_head(
            replica, body, session_id=None, protocol_version=MODERN_VERSION, extra=headers
        )
        try:
            return await replica.pool.request(head, body, head_timeout=self.limit)
        except UpstreamError as exc:
            raise BadGateway(f"Bad gateway: {exc}") from None


async def _chain(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    """The notifications after the opening ``{}`` of :meth:`StatelessBridge.notifications`."""
    if first:
        yield first
    async for message in rest:
        yield message


def _result(request_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _handshake_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """A stateless-era answer as a handshake-era server gives it."""
    result = answer.get("result")
    if isinstance(result, dict):
        answer["result"] = {k: v for k, v in result.items() if k not in _MODERN_ONLY}
    return answer


def _new_session_id() -> str:
    from .forward import new_session_id  # noqa: PLC0415 - forward imports this module

    return new_session_id()
