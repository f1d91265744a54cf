"""A 2026-07-28 (stateless) client in front of a backend that speaks the handshake era only.

When the one backend behind the endpoint is known to speak the handshake era alone
(:mod:`proxy.upstream.eras`), a stateless request cannot go up as it came: the backend
would refuse its protocol version. The gateway answers it as a 2026-07-28 server does
instead:

- the envelope and the routing headers are checked (:mod:`proxy.modern`), and a
  ``tools/call``'s ``Mcp-Param-*`` headers against the tool's declarations
  (:mod:`proxy.param_headers`, from the backend's ``tools/list``);
- ``server/discover`` is answered from the backend's ``initialize`` result;
- every other request travels over a backend session the gateway opened itself, shared
  by the requests of one caller (one principal with authentication on; one
  ``Authorization`` value without; never across callers), under an id of the gateway's
  (two clients' equal ids never meet), without the envelope; the client's id and progress
  token are put back in what comes down, results say ``resultType: complete`` and, for
  lists and reads, ``cacheScope: private`` with ``ttlMs: 0`` (the backend promised
  nothing about them);
- an answer comes back as the backend gave it, JSON or an event stream relayed message
  by message (progress on time);
- the session offers what the request's ``_meta`` client capabilities declare: a
  request of the server's for one, during a ``tools/call``, ``prompts/get`` or
  ``resources/read``, becomes an ``InputRequiredResult`` for the client
  (:mod:`proxy.input_required`); any other is answered with an error at once (-32021);
- ``subscriptions/listen`` relays the caller's backend session's GET stream;
  notifications from the client get 202 and are dropped.

A backend session the backend no longer knows (404) is opened again, and the request sent
once more (it was not acted on).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from . import sse
from .answer_stream import AnswerStream
from .errors import BadGateway, BadRequest, ParseError
from .federation import wire
from .federation.wire import CallFailed
from .input_required import (
    ASKABLE,
    ASKING_METHODS,
    END,
    QUEUED,
    SETTLE,
    Exchange,
    input_responses,
    request_digest,
    without_inputs,
)
from .jsonrpc import HANDSHAKE_VERSIONS, HEADER_MISMATCH, INVALID_PARAMS
from .modern import (
    ERROR_STATUS,
    LEVEL_KEY,
    declared_capabilities,
    discovered,
    for_handshake,
    http_status,
    refusal,
    rejection,
    restore,
)
from .param_headers import call_mismatch, list_tools
from .request_state import Seal
from .responses import send_bytes
from .upstream.eras import HANDSHAKE_ONLY
from .upstream.errors import UpstreamError

if TYPE_CHECKING:
    from ._types import Headers, Send
    from .config import Settings
    from .request import Request
    from .upstream.balance import Backend, Replica

__all__ = ("HandshakeBridge",)

logger = logging.getLogger("proxy.bridging")

POOLED = 256
"""Backend sessions kept at most (one per caller); the least recently used one is ended."""
HELD = 1024
"""Calls kept waiting for their client's answers at most; the oldest is let go."""
HOLD_SECONDS = 300.0
"""How long a call waits for its client's retry; a later retry sends it again."""
_NEWEST = max(v.decode() for v in HANDSHAKE_VERSIONS)


class _Pooled:
    """A backend session the gateway opened for one caller."""

    __slots__ = (
        "initialized",
        "listeners",
        "reader",
        "replica",
        "session_id",
        "tools",
        "tools_at",
        "version",
    )

    def __init__(
        self, replica: Replica, session_id: str | None, version: str, initialized: dict[str, Any]
    ) -> None:
        self.replica = replica
        self.session_id = session_id
        self.version = version
        self.initialized = initialized
        """The backend's answer to initialize (server/discover is answered from it)."""
        self.tools: dict[str, Any] | None = None
        self.tools_at = 0.0
        self.listeners: set[asyncio.Queue[Any]] = set()
        """The queues of the ``subscriptions/listen`` streams on this session."""
        self.reader: asyncio.Future[None] | None = None
        """Reads the session's GET stream while it has listeners."""


class HandshakeBridge:
    """Stateless requests to a backend of the handshake era (see the module's docstring)."""

    def __init__(
        self, backend: Backend, settings: Settings, recheck: Callable[[], None] = lambda: None
    ) -> None:
        self.backend = backend
        self.recheck = recheck
        """Ask the backend its eras again (it refused the version the bridge chose)."""
        self.limit = settings.upstream_timeout
        self.connect_limit = settings.connect_timeout
        self.tools_seconds = settings.list_cache_seconds
        self.max_answer = settings.max_answer_size
        self._pooled: collections.OrderedDict[str, _Pooled] = collections.OrderedDict()
        self._held: collections.OrderedDict[str, Exchange] = collections.OrderedDict()
        """Calls waiting for their client's answers, by the token their state names."""
        self.seal = Seal.from_settings(settings)
        self._listeners: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        """The listen streams of each caller (:meth:`_listen`)."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()

    def wanted(self, request: Request) -> bool:
        """Whether `request` is a stateless one for a backend of the handshake era only."""
        version = request.hdrs.protocol_version
        return (
            version is not None
            and request.verb == "POST"
            and request.hdrs.session_id is None
            and version not in HANDSHAKE_VERSIONS
            and self.backend.eras == HANDSHAKE_ONLY
        )

    async def close(self) -> None:
        """End the backend sessions the gateway opened."""
        pooled, self._pooled = list(self._pooled.values()), collections.OrderedDict()
        for exchange in self._held.values():
            exchange.close()
        self._held.clear()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(self._end(p, ()) for p in pooled), return_exceptions=True)

    # -- a request ----------------------------------------------------------------------------

    async def handle(
        self,
        request: Request,
        extra: Headers,
        caller: str | None,
        shown: Callable[[Any], object] | None = None,
    ) -> int:
        """Answer `request`; `extra`: the credentials the backend gets, `caller`: whose
        they are (sessions are never shared between two callers); `shown`: what leaves
        out of a list's result what the caller may not use. The HTTP status."""
        try:
            message = orjson.loads(request.body or b"")
        except orjson.JSONDecodeError:
            raise ParseError("Parse error") from None
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            raise BadRequest("Invalid Request: one JSON-RPC request object is expected")
        headers: dict[bytes, bytes] = {}
        duplicated: set[bytes] = set()
        for name, value in request.scope["headers"]:
            if name in headers:
                duplicated.add(name)
            headers[name] = value.strip(b" \t")
        request_id = message.get("id")
        refused = rejection(message, headers)
        if refused is not None:
            return await _error(request.send, request_id, refused)
        if "id" not in message:
            await send_bytes(request.send, 202, b"")  # nobody to deliver it to
            return 202
        method = message["method"]
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        declared = declared_capabilities(params)
        key = _caller_key(caller, extra)
        caller_digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        if method == "subscriptions/listen":
            return await self._listen(request, request_id, params, extra, declared, key)
        level = _level(params)
        pooled = await self._session(key, extra, declared, level)
        if method == "server/discover":
            answer = {"jsonrpc": "2.0", "id": request_id, "result": discovered(pooled.initialized)}
            await send_bytes(request.send, 200, orjson.dumps(answer))
            return 200
        if method == "tools/call":
            disagreed = await self._param_headers(pooled, message, headers, duplicated, extra)
            if disagreed is not None:
                error = {"code": HEADER_MISMATCH, "message": disagreed}
                return await _error(request.send, request_id, error)
        asking = method in ASKING_METHODS
        digest = request_digest(message)
        answers: dict[str, Any] = {}
        asked = 0
        keys: dict[str, str] = {}
        exchange: Exchange | None = None
        if asking and "requestState" in params:
            state = self.seal.open(params["requestState"])
            responses = input_responses(params)
            if (
                state is None
                or responses is None
                or state.get("c") != caller_digest
                or state.get("q") != digest
                or not isinstance(state.get("a"), dict)
                or not isinstance(state.get("p"), dict)
            ):
                error = {
                    "code": INVALID_PARAMS,
                    "message": "Invalid params: requestState or inputResponses failed verification",
                }
                return await _error(request.send, request_id, error)
            answers = dict(state["a"])
            for input_key, fingerprint in state["p"].items():
                if input_key in responses and isinstance(fingerprint, str):
                    answers[fingerprint] = responses[input_key]
                elif isinstance(fingerprint, str):
                    keys[fingerprint] = input_key
            counted = state.get("n")
            asked = counted if isinstance(counted, int) else 0
            exchange = self._held.pop(str(state.get("x")), None)
            if exchange is not None and not exchange.alive:
                exchange.close()
                exchange = None
        original_id = request_id
        if exchange is not None:  # the call still waits on this gateway: answer it
            _, original_id, token = for_handshake(message, exchange.backend_id)
            exchange.answers = answers
            for input_key, (server_id, fingerprint, _, _) in list(exchange.pending.items()):
                if fingerprint in answers:
                    del exchange.pending[input_key]
                    reply = {"jsonrpc": "2.0", "id": server_id, "result": answers[fingerprint]}
                    await self._post(pooled, orjson.dumps(reply), extra)
        else:
            backend_id = f"mcp-fastproxy-{next(self._ids)}"
            sent, original_id, token = for_handshake(without_inputs(message), backend_id)
            body = orjson.dumps(sent)
            response = await self._send(pooled, body, extra)
            if wire.session_forgotten(response):  # a new session, once (it did not act)
                response.close()
                self._forget(key, declared, level, pooled)
                pooled = await self._session(key, extra, declared, level)
                response = await self._send(pooled, body, extra)
            if response.status == 400:  # perhaps no longer of the handshake era
                self.recheck()
            exchange = Exchange(response, backend_id, answers, asked, self.max_answer, keys)
        call = _Call(
            request, pooled, exchange, (original_id, token, method), extra, shown, declared
        )
        call.asking, call.caller, call.digest = asking, caller_digest, digest
        driving = asyncio.ensure_future(self._drive(call))
        leaving = asyncio.ensure_future(_disconnected(request))
        gone = False
        try:
            await asyncio.wait({driving, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
            if not driving.done():  # the client left: for a stateless one, a cancellation
                gone = True
                driving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driving
                cancelled = {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": exchange.backend_id, "reason": "client disconnected"},
                }
                self._in_background(self._post(pooled, orjson.dumps(cancelled), extra))
        if gone:
            return 499
        return driving.result()

    async def _drive(self, call: _Call) -> int:
        """Relay the exchange's messages to the client until its answer, or until the
        server asks what only the client can answer (an InputRequiredResult)."""
        exchange = call.exchange
        loop = asyncio.get_running_loop()
        settle_until = loop.time() if exchange.pending else None  # re-ask at once
        try:
            while True:
                try:
                    if settle_until is None:
                        item = await exchange.queue.get()
                    else:
                        wait = max(0.0, settle_until - loop.time())
                        item = await asyncio.wait_for(exchange.queue.get(), wait)
                except TimeoutError:
                    return await self._input_required(call)
                if isinstance(item, END):
                    if item.error is not None:
                        logger.warning(
                            "backend %s: a bridged stream broke: %s", self.backend.name, item.error
                        )
                    if not call.out.started:
                        raise BadGateway(
                            f"Bad gateway: {item.error or 'the stream ended without an answer'}"
                        )
                    await call.out.end()
                    return 200
                method = item.get("method")
                if isinstance(method, str) and "id" in item:  # the server asks
                    if call.asking and ASKABLE.get(method) in call.declared:
                        fingerprint = exchange.fingerprint(item)
                        if fingerprint in exchange.answers:
                            reply = {"jsonrpc": "2.0", "id": item["id"]}
                            reply["result"] = exchange.answers[fingerprint]
                            self._in_background(
                                self._post(call.pooled, orjson.dumps(reply), call.extra)
                            )
                        else:
                            exchange.ask(item, fingerprint)
                            if settle_until is None:
                                settle_until = loop.time() + SETTLE
                        continue
                    error = {"jsonrpc": "2.0", "id": item["id"], "error": refusal(method)}
                    self._in_background(self._post(call.pooled, orjson.dumps(error), call.extra))
                    continue
                if method in _ANNOUNCED:
                    self._announce(call.caller, item)
                message = restore(item, *call.restored)
                if call.shown is not None:
                    call.shown(message)
                if "method" not in message:  # the answer
                    exchange.close()
                    return await call.out.finish(message)
                await call.out.event(message)
        except BaseException:
            exchange.close()
            raise

    def _announce(self, caller: str, message: dict[str, Any]) -> None:
        """A change the backend told in an answer, for the caller's listeners."""
        for heard in self._listeners.get(caller, ()):
            with contextlib.suppress(asyncio.QueueFull):  # a listener that lags loses it
                heard.put_nowait(message)

    async def _input_required(self, call: _Call) -> int:
        """Answer the client with what the server asks, and hold the call for its retry."""
        exchange = call.exchange
        token = exchange.hold()
        while len(self._held) >= HELD:
            _, oldest = self._held.popitem(last=False)
            oldest.close()
        self._held[token] = exchange
        asyncio.get_running_loop().call_later(HOLD_SECONDS, self._let_go, token, exchange)
        state = self.seal.seal(
            {
                "x": token,
                "c": call.caller,
                "q": call.digest,
                "a": exchange.answers,
                "p": {k: fingerprint for k, (_, fingerprint, _, _) in exchange.pending.items()},
                "n": exchange.asked,
            }
        )
        result = {
            "resultType": "input_required",
            "inputRequests": exchange.input_requests(),
            "requestState": state,
        }
        answer = {"jsonrpc": "2.0", "id": call.restored[0], "result": result}
        return await call.out.finish(answer)

    def _let_go(self, token: str, exchange: Exchange) -> None:
        """A held call nobody retried in time: closed (a later retry sends it again)."""
        if self._held.get(token) is exchange:
            del self._held[token]
            exchange.close()

    async def _listen(
        self,
        request: Request,
        request_id: Any,
        params: dict[str, Any],
        extra: Headers,
        declared: dict[str, Any],
        caller: str,
    ) -> int:
        """``subscriptions/listen``: the changes the backend announces to the caller's
        backend session, relayed as long as the client listens. That session's GET stream
        is opened for its first listener (and closed after its last); the resources asked
        for are subscribed on it. The changes the backend tells in the answers to the
        caller's requests are relayed too."""
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            error = {"code": INVALID_PARAMS, "message": "Invalid params: notifications required"}
            return await _error(request.send, request_id, error)
        pooled = await self._session(caller, extra, declared, _level(params))
        caller = hashlib.sha256(caller.encode()).hexdigest()[:32]
        honored = _honored(wanted, pooled.initialized.get("capabilities") or {})
        for uri in honored.get("resourceSubscriptions", ()):
            try:
                await wire.call(
                    pooled.replica,
                    "resources/subscribe",
                    {"uri": uri},
                    session_id=pooled.session_id,
                    protocol_version=pooled.version,
                    limit=self.limit,
                    extra=extra,
                )
            except CallFailed as exc:
                raise BadGateway(f"Bad gateway: resources/subscribe: {exc}") from None
        heard: asyncio.Queue[Any] = asyncio.Queue(QUEUED)
        await self._hear(pooled, heard, extra)
        self._listeners.setdefault(caller, set()).add(heard)
        try:
            await self._relay_listen(request, request_id, honored, heard)
        finally:
            listeners = self._listeners.get(caller, set())
            listeners.discard(heard)
            if not listeners:
                self._listeners.pop(caller, None)
            pooled.listeners.discard(heard)
            if not pooled.listeners and pooled.reader is not None:
                pooled.reader.cancel()
                pooled.reader = None
        return 200

    async def _hear(self, pooled: _Pooled, heard: asyncio.Queue[Any], extra: Headers) -> None:
        """Add `heard` to the listeners of `pooled`'s GET stream, opened (and answering)
        before this returns when it was not."""
        pooled.listeners.add(heard)
        if pooled.reader is not None:
            return
        head = _bodiless(pooled, b"GET", extra)
        try:
            response = await pooled.replica.pool.request(head, None, head_timeout=self.limit)
        except UpstreamError as exc:
            pooled.listeners.discard(heard)
            raise BadGateway(f"Bad gateway: {exc}") from None
        if response.status != 200:
            response.close()
            pooled.listeners.discard(heard)
            raise BadGateway(f"Bad gateway: the backend's stream: HTTP {response.status}")
        pooled.reader = asyncio.ensure_future(self._read_stream(pooled, response, extra))

    async def _read_stream(self, pooled: _Pooled, response: Any, extra: Headers) -> None:
        """A backend session's GET stream, to every listener of it."""
        try:
            splitter = sse.EventSplitter(self.max_answer)
            while chunk := await response.read():
                for raw in splitter.feed(chunk):
                    message = sse.json_of(raw)
                    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
                        continue
                    if "id" in message:  # the server asks: a listener cannot answer
                        refused = refusal(message["method"])
                        error = {"jsonrpc": "2.0", "id": message["id"], "error": refused}
                        self._in_background(self._post(pooled, orjson.dumps(error), extra))
                        continue
                    for heard in list(pooled.listeners):
                        with contextlib.suppress(asyncio.QueueFull):
                            heard.put_nowait(message)
        except (UpstreamError, sse.EventTooLarge) as exc:
            logger.info("backend %s: a session's stream ended: %s", self.backend.name, exc)
        finally:
            response.close()
            if pooled.reader is asyncio.current_task():
                pooled.reader = None
            for heard in list(pooled.listeners):  # the listeners end with it
                with contextlib.suppress(asyncio.QueueFull):
                    heard.put_nowait(None)

    async def _relay_listen(
        self,
        request: Request,
        request_id: Any,
        honored: dict[str, Any],
        heard: asyncio.Queue[Any],
    ) -> None:
        tag = {SUBSCRIPTION_KEY: request_id}
        out = AnswerStream(request.send)
        acknowledged = {"notifications": honored, "_meta": tag}
        await out.event(
            {
                "jsonrpc": "2.0",
                "method": "notifications/subscriptions/acknowledged",
                "params": acknowledged,
            }
        )
        subscribed = set(honored.get("resourceSubscriptions", ()))
        kinds = {k for k, v in honored.items() if v is True}

        async def relay() -> None:
            while (message := await heard.get()) is not None:
                method = message["method"]
                given = message.get("params")
                given = dict(given) if isinstance(given, dict) else {}
                if method == "notifications/resources/updated":
                    if given.get("uri") not in subscribed:
                        continue
                elif _LISTEN_KINDS.get(method) not in kinds:
                    continue
                given["_meta"] = {**(given.get("_meta") or {}), **tag}
                await out.event({"jsonrpc": "2.0", "method": method, "params": given})

        relaying = asyncio.ensure_future(relay())
        leaving = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({relaying, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            relaying.cancel()
            leaving.cancel()
        if relaying.done() and not relaying.cancelled() and relaying.exception() is None:
            # The backend ended the stream: the subscription ends gracefully.
            await out.event({"jsonrpc": "2.0", "id": request_id, "result": {"_meta": tag}})
        with contextlib.suppress(Exception):
            await out.end()

    async def _param_headers(
        self,
        pooled: _Pooled,
        message: dict[str, Any],
        headers: dict[bytes, bytes],
        duplicated: set[bytes],
        extra: Headers,
    ) -> str | None:
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str):
            return None
        tool = (await self._tools(pooled, extra)).get(name)
        schema = tool.get("inputSchema") if isinstance(tool, dict) else None
        return call_mismatch(params, schema, headers, duplicated)

    async def _tools(self, pooled: _Pooled, extra: Headers) -> dict[str, Any]:
        """The backend's tools by name, read again after ``list_cache_seconds``."""
        if pooled.tools is not None and time.monotonic() - pooled.tools_at < self.tools_seconds:
            return pooled.tools

        async def page(cursor: str | None) -> Any:
            try:
                answer = await wire.call(
                    pooled.replica,
                    "tools/list",
                    None if cursor is None else {"cursor": cursor},
                    session_id=pooled.session_id,
                    protocol_version=pooled.version,
                    limit=self.limit,
                    extra=extra,
                )
            except CallFailed:
                return None
            return answer.result

        pooled.tools, pooled.tools_at = await list_tools(page), time.monotonic()
        return pooled.tools

    # -- the backend sessions -------------------------------------------------------------

    async def _session(
        self, caller: str, extra: Headers, declared: dict[str, Any], level: str | None = None
    ) -> _Pooled:
        """The caller's backend session offering what it `declared` it can answer, at the
        log `level` it asks for, opened when it has none."""
        key = _pool_key(caller, declared, level)
        pooled = self._pooled.get(key)
        if pooled is not None:
            self._pooled.move_to_end(key)
            return pooled
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            pooled = self._pooled.get(key)
            if pooled is None:
                pooled = self._pooled[key] = await self._open(extra, declared, level)
                while len(self._pooled) > POOLED:
                    _, oldest = self._pooled.popitem(last=False)
                    self._in_background(self._end(oldest, ()))
        self._locks.pop(key, None)
        return pooled

    async def _open(
        self, extra: Headers, declared: dict[str, Any], level: str | None = None
    ) -> _Pooled:
        replica = self.backend.choose()
        if replica is None:
            raise BadGateway(f"Bad gateway: no replica of backend {self.backend.name} is up")
        params = {
            "protocolVersion": _NEWEST,
            "capabilities": declared,
            "clientInfo": {"name": "mcp-fastproxy", "version": "bridge"},
        }
        try:
            answer = await wire.handshake(replica, params, limit=self.limit, extra=extra)
            initialized = answer.result
            version = initialized.get("protocolVersion")
            if not isinstance(version, str) or version.encode() not in HANDSHAKE_VERSIONS:
                raise CallFailed(f"initialize agreed on {version!r}")
            if level is not None:
                await wire.call(
                    replica,
                    "logging/setLevel",
                    {"level": level},
                    session_id=answer.session_id,
                    protocol_version=version,
                    limit=self.limit,
                    extra=extra,
                )
        except CallFailed as exc:
            logger.warning(
                "backend %s: no session for a stateless client: %s", self.backend.name, exc
            )
            self.recheck()
            raise BadGateway(f"Bad gateway: backend {self.backend.name}: {exc}") from None
        return _Pooled(replica, answer.session_id, version, initialized)

    def _forget(
        self, caller: str, declared: dict[str, Any], level: str | None, pooled: _Pooled
    ) -> None:
        key = _pool_key(caller, declared, level)
        if self._pooled.get(key) is pooled:
            del self._pooled[key]

    async def _send(self, pooled: _Pooled, body: bytes, extra: Headers) -> Any:
        head = wire.request_head(
            pooled.replica,
            body,
            session_id=pooled.session_id,
            protocol_version=pooled.version,
            extra=extra,
        )
        try:
            return await pooled.replica.pool.request(head, body, head_timeout=self.limit)
        except UpstreamError as exc:
            raise BadGateway(f"Bad gateway: {exc}") from None

    async def _post(self, pooled: _Pooled, body: bytes, extra: Headers) -> None:
        """Send a message whose answer nobody waits for (a response to the server)."""
        try:
            response = await self._send(pooled, body, extra)
            response.close()
        except BadGateway:
            pass

    async def _end(self, pooled: _Pooled, extra: Sequence[tuple[bytes, bytes]]) -> None:
        if pooled.session_id is None:
            return
        head = _bodiless(pooled, b"DELETE", extra)
        try:
            async with asyncio.timeout(self.connect_limit):
                response = await pooled.replica.pool.request(head, None)
                response.close()
        except (UpstreamError, TimeoutError):
            pass

    def _in_background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Call:
    """One bridged request on its way: where its answer goes, and how it is put back."""

    __slots__ = (
        "asking",
        "caller",
        "declared",
        "digest",
        "exchange",
        "extra",
        "out",
        "pooled",
        "request",
        "restored",
        "shown",
    )

    def __init__(
        self,
        request: Request,
        pooled: _Pooled,
        exchange: Exchange,
        restored: tuple[Any, Any, str],
        extra: Headers,
        shown: Callable[[Any], object] | None,
        declared: dict[str, Any],
    ) -> None:
        self.request = request
        self.pooled = pooled
        self.exchange = exchange
        self.restored = restored
        """The client's id and progress token, and the method (:func:`restore`)."""
        self.extra = extra
        self.shown = shown
        self.declared = declared
        self.out = AnswerStream(request.send, status_of=http_status)
        self.asking = False
        """Whether the request may be answered with an InputRequiredResult."""
        self.caller = ""
        self.digest = ""


_LISTEN_KINDS: Final = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
_ANNOUNCED: Final = frozenset({*_LISTEN_KINDS, "notifications/resources/updated"})
SUBSCRIPTION_KEY: Final = "io.modelcontextprotocol/subscriptionId"


def _honored(wanted: dict[str, Any], capabilities: dict[str, Any]) -> dict[str, Any]:
    """What of a listen's filter the backend can give (its initialize's capabilities):
    the list changes it says it announces, updates of the resources it lets subscribe."""
    honored: dict[str, Any] = {}
    for kind in ("tools", "prompts", "resources"):
        flag, offered = f"{kind}ListChanged", capabilities.get(kind)
        if wanted.get(flag) is True and isinstance(offered, dict) and offered.get("listChanged"):
            honored[flag] = True
    resources = capabilities.get("resources")
    resources = resources if isinstance(resources, dict) else {}
    uris = wanted.get("resourceSubscriptions")
    if isinstance(uris, list) and resources.get("subscribe"):
        kept = [u for u in uris if isinstance(u, str)]
        if kept:
            honored["resourceSubscriptions"] = kept
    return honored


def _bodiless(pooled: _Pooled, method: bytes, extra: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The head of a GET or DELETE in the backend session `pooled`."""
    return wire.request_head(
        pooled.replica,
        b"",
        session_id=pooled.session_id,
        protocol_version=pooled.version,
        method=method,
        extra=extra,
    )


def _pool_key(caller: str, declared: dict[str, Any], level: str | None) -> str:
    offered = orjson.dumps(declared, option=orjson.OPT_SORT_KEYS).decode()
    return f"{caller}|{offered}|{level or ''}"


_LEVELS: Final = frozenset(
    {"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"}
)


def _level(params: dict[str, Any]) -> str | None:
    """The log level the request's ``_meta`` asks for (its backend session is set to
    it), or None."""
    meta = params.get("_meta")
    level = meta.get(LEVEL_KEY) if isinstance(meta, dict) else None
    return level if level in _LEVELS else None


def _caller_key(caller: str | None, extra: Headers) -> str:
    """Whose backend session a request uses: its principal, else a digest of the
    credentials it carries up (two callers never share one)."""
    if caller is not None:
        return "principal:" + caller
    digest = hashlib.sha256()
    for name, value in extra:
        digest.update(name + b"\0" + value + b"\0")
    return "credentials:" + digest.hexdigest()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (its request's body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _error(send: Send, request_id: Any, error: dict[str, Any]) -> int:
    status = ERROR_STATUS.get(error["code"], 400)
    await send_bytes(
        send, status, orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})
    )
    return status
