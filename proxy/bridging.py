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
- the session was opened offering no sampling, elicitation or roots: a request of the
  server's for one is answered with an error at once (-32021). Turning it into an
  ``InputRequiredResult`` for the client is not built yet, nor are
  ``subscriptions/listen`` (-32601) and notifications from the client (202, dropped).

A backend session the backend no longer knows (404) is opened again, and the request sent
once more (it was not acted on).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from . import sse
from .errors import BadGateway, BadRequest, ParseError
from .federation import wire
from .federation.wire import CallFailed
from .jsonrpc import HANDSHAKE_VERSIONS, HEADER_MISMATCH
from .modern import (
    ERROR_STATUS,
    discovered,
    for_handshake,
    http_status,
    refusal,
    rejection,
    restore,
)
from .param_headers import call_mismatch, list_tools
from .responses import send_bytes
from .upstream.eras import HANDSHAKE
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
_HANDSHAKE_ONLY = frozenset({HANDSHAKE})
_NEWEST = max(v.decode() for v in HANDSHAKE_VERSIONS)
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class _Pooled:
    """A backend session the gateway opened for one caller."""

    __slots__ = ("initialized", "replica", "session_id", "tools", "tools_at", "version")

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


class HandshakeBridge:
    """Stateless requests to a backend of the handshake era (see the module's docstring)."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.limit = settings.upstream_timeout
        self.connect_limit = settings.connect_timeout
        self.tools_seconds = settings.list_cache_seconds
        self.max_answer = settings.max_answer_size
        self._pooled: collections.OrderedDict[str, _Pooled] = collections.OrderedDict()
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
            and self.backend.eras == _HANDSHAKE_ONLY
        )

    async def close(self) -> None:
        """End the backend sessions the gateway opened."""
        pooled, self._pooled = list(self._pooled.values()), collections.OrderedDict()
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
        if method == "subscriptions/listen":
            error = {"code": -32601, "message": "subscriptions/listen is not bridged yet"}
            return await _error(request.send, request_id, error)
        key = _caller_key(caller, extra)
        pooled = await self._session(key, extra)
        if method == "server/discover":
            answer = {"jsonrpc": "2.0", "id": request_id, "result": discovered(pooled.initialized)}
            await send_bytes(request.send, 200, orjson.dumps(answer))
            return 200
        if method == "tools/call":
            disagreed = await self._param_headers(pooled, message, headers, duplicated, extra)
            if disagreed is not None:
                error = {"code": HEADER_MISMATCH, "message": disagreed}
                return await _error(request.send, request_id, error)
        sent, original_id, token = for_handshake(message, f"mcp-fastproxy-{next(self._ids)}")
        body = orjson.dumps(sent)
        response = await self._send(pooled, body, extra)
        if response.status == 404:  # the backend forgot the session: a new one, once
            response.close()
            self._forget(key, pooled)
            pooled = await self._session(key, extra)
            response = await self._send(pooled, body, extra)
        restored = (original_id, token, method)
        ctype = response.header(b"content-type") or b""
        if not ctype.startswith(b"text/event-stream"):
            try:
                data = await response.aread(self.max_answer)
            except UpstreamError as exc:
                raise BadGateway(f"Bad gateway: {exc}") from None
            try:
                found: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                found = None
            if not isinstance(found, dict) or not ("result" in found or "error" in found):
                raise BadGateway(f"Bad gateway: the backend answered HTTP {response.status}")
            answer = restore(found, *restored)
            if shown is not None:
                shown(answer)
            status = http_status(answer)
            await send_bytes(request.send, status, orjson.dumps(answer))
            return status
        splitter = sse.EventSplitter(self.max_answer)
        started = False
        try:
            while chunk := await response.read():
                for event in splitter.feed(chunk):
                    message = self._message(pooled, sse.json_of(event), restored, extra)
                    if message is None:
                        continue
                    if shown is not None:
                        shown(message)
                    if not started and "method" not in message:  # the answer, and alone
                        status = http_status(message)
                        await send_bytes(request.send, status, orjson.dumps(message))
                        return status
                    if not started:
                        start = {"type": "http.response.start", "status": 200}
                        await request.send({**start, "headers": _SSE_HEADERS})
                        started = True
                    out = b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"
                    await request.send(
                        {"type": "http.response.body", "body": out, "more_body": True}
                    )
        except (UpstreamError, sse.EventTooLarge) as exc:
            logger.warning("backend %s: a bridged stream broke: %s", self.backend.name, exc)
            if not started:
                raise BadGateway(f"Bad gateway: {exc}") from None
        finally:
            response.close()
        if not started:
            raise BadGateway("Bad gateway: the backend's stream ended without an answer")
        await request.send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200

    def _message(
        self, pooled: _Pooled, message: Any, restored: tuple[Any, Any, str], extra: Headers
    ) -> dict[str, Any] | None:
        """One message of the backend's event stream as the client gets it (None: not
        for the client: the server's own request is refused here)."""
        if not isinstance(message, dict):
            return None
        method = message.get("method")
        if isinstance(method, str) and "id" in message:
            error = {"jsonrpc": "2.0", "id": message["id"], "error": refusal(method)}
            self._in_background(self._post(pooled, orjson.dumps(error), extra))
            return None
        found: dict[str, Any] = restore(message, *restored)
        return found

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

    async def _session(self, key: str, extra: Headers) -> _Pooled:
        """The caller's backend session, opened when it has none."""
        pooled = self._pooled.get(key)
        if pooled is not None:
            self._pooled.move_to_end(key)
            return pooled
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            pooled = self._pooled.get(key)
            if pooled is None:
                pooled = self._pooled[key] = await self._open(extra)
                while len(self._pooled) > POOLED:
                    _, oldest = self._pooled.popitem(last=False)
                    self._in_background(self._end(oldest, ()))
        self._locks.pop(key, None)
        return pooled

    async def _open(self, extra: Headers) -> _Pooled:
        replica = self.backend.choose()
        if replica is None:
            raise BadGateway(f"Bad gateway: no replica of backend {self.backend.name} is up")
        params = {
            "protocolVersion": _NEWEST,
            "capabilities": {},
            "clientInfo": {"name": "mcp-fastproxy", "version": "bridge"},
        }
        try:
            answer = await wire.handshake(replica, params, limit=self.limit, extra=extra)
            initialized = answer.result
            version = initialized.get("protocolVersion")
            if not isinstance(version, str) or version.encode() not in HANDSHAKE_VERSIONS:
                raise CallFailed(f"initialize agreed on {version!r}")
        except CallFailed as exc:
            logger.warning(
                "backend %s: no session for a stateless client: %s", self.backend.name, exc
            )
            raise BadGateway(f"Bad gateway: backend {self.backend.name}: {exc}") from None
        return _Pooled(replica, answer.session_id, version, initialized)

    def _forget(self, key: str, pooled: _Pooled) -> None:
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
        head = wire.request_head(
            pooled.replica,
            b"",
            session_id=pooled.session_id,
            protocol_version=pooled.version,
            method=b"DELETE",
            extra=extra,
        )
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


def _caller_key(caller: str | None, extra: Headers) -> str:
    """Whose backend session a request uses: its principal, else a digest of the
    credentials it carries up (two callers never share one)."""
    if caller is not None:
        return "principal:" + caller
    digest = hashlib.sha256()
    for name, value in extra:
        digest.update(name + b"\0" + value + b"\0")
    return "credentials:" + digest.hexdigest()


async def _error(send: Send, request_id: Any, error: dict[str, Any]) -> int:
    status = ERROR_STATUS.get(error["code"], 400)
    await send_bytes(
        send, status, orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})
    )
    return status
