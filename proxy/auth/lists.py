"""One backend behind a policy: its lists shown per principal, its names known.

With federation the gateway answers the lists itself (merged from its catalog) and
filters them there. With one backend the backend answers them, so its answer (JSON, or
the event stream that carries it) is read and each entry the principal may not use is
left out before it is relayed. The backend's names come from a discovery session of the
gateway's own (the federation's catalog, over this one backend), so that a call to a
name the backend does not have is answered exactly as a denied one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from .. import headers as H
from ..errors import BadGateway
from ..jsonrpc import LIST_KEYS
from ..relay import ClientWatch, Exchange, Relay
from ..sse import EventSplitter, data_of
from ..upstream.errors import ProtocolFailure

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..request import Request
    from ..settings import Settings
    from ..upstream.registry import Upstreams
    from .access import Access

__all__ = ("Lists",)

logger = logging.getLogger("proxy.auth")


class Lists:
    """The single backend's lists filtered per principal (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        upstreams: Upstreams,
        relay: Relay,
        metrics: Metrics,
        access: Access,
    ) -> None:
        from ..federation.catalog import Catalog  # noqa: PLC0415 - only with a policy

        self.relay = relay
        self.access = access
        self.max_answer = settings.max_answer_size
        credentials = access.outbound.gateway_headers
        self.catalog = Catalog(settings, upstreams.backends, metrics, credentials)
        access.known = self.catalog.names

    async def open(self) -> None:
        """Hold the discovery session's stream (list changes) and fetch the lists, so
        that which names exist is known from the first call (bounded by list_timeout;
        until then a name is not checked, only the policy is)."""
        self.catalog.open()
        await self.catalog.warm()

    async def close(self) -> None:
        await self.catalog.close()

    def filter(self, request: Request, backend: str, message: Any) -> bool:
        """Leave out of `message` (in place), when it is the result of the request's list,
        what the principal may not use; True if it was that result."""
        method = request.method
        if not isinstance(message, dict):
            return False
        result = message.get("result")
        items = result.get(LIST_KEYS[method]) if isinstance(result, dict) else None
        if not isinstance(items, list) or not isinstance(result, dict):
            return False
        entries = [i for i in items if isinstance(i, dict)]
        result[LIST_KEYS[method]] = self.access.visible(
            request.principal, method, entries, lambda _entry: backend
        )
        if result.get("cacheScope") == "public":  # filtered for this principal: theirs only
            result["cacheScope"] = "private"
        return True

    async def relay_list(
        self,
        request: Request,
        exchange: Exchange,
        watch: ClientWatch,
        session_id: bytes | None,
    ) -> int:
        """Relay the backend's answer to a list with what the principal may not use left
        out (a JSON answer read whole, bounded; an event stream event by event)."""
        response = exchange.response
        backend = request.backend or ""

        def shown(message: Any) -> bool:
            return self.filter(request, backend, message)

        ctype = response.header(H.CONTENT_TYPE) or b""
        if response.status != 200 or request.principal is None:
            return await self.relay.relay(request.send, exchange, watch, session_id=session_id)
        if ctype.startswith(b"text/event-stream"):
            splitter = EventSplitter(self.max_answer)

            def transform(chunk: bytes) -> bytes:
                out = []
                for event in splitter.feed(chunk):
                    try:
                        message = orjson.loads(data_of(event))
                    except orjson.JSONDecodeError:
                        message = None
                    if shown(message):
                        lines = [ln for ln in event.split(b"\n") if not ln.startswith(b"data:")]
                        event = b"\n".join([*lines, b"data: " + orjson.dumps(message)])
                    out.append(event + b"\n\n")
                return b"".join(out)

            return await self.relay.relay(
                request.send, exchange, watch, session_id=session_id, transform=transform
            )
        try:
            data = await response.aread(self.max_answer)
        except ProtocolFailure as exc:
            exchange.close()
            logger.warning("backend %s: %s answer refused: %s", backend, request.method, exc)
            raise BadGateway("Bad gateway: backend failed") from None
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            exchange.close()
            raise BadGateway("Bad gateway: the backend's answer is not JSON") from None
        if shown(message):
            data = orjson.dumps(message)
        headers = self.relay.response_headers(response.headers, session_id)
        headers.append((H.CONTENT_LENGTH, b"%d" % len(data)))
        exchange.close()
        await request.send({"type": "http.response.start", "status": 200, "headers": headers})
        await request.send({"type": "http.response.body", "body": data})
        return 200
