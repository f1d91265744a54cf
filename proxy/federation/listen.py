"""``subscriptions/listen`` through the federation (2026-07-28).

One listen stream per backend, each asked only for the resources it owns (with the
backend's own URIs); one merged acknowledgement once they have acknowledged (or the
list timeout passed: a backend that has not by then is left out of it); then every
backend's notifications on the client's one stream, resource URIs made public again.
When every backend has ended its stream, so does the gateway, with the final result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .. import headers as H
from .._types import Receive, Send
from ..errors import GatewayError
from ..jsonrpc import Envelope
from ..request import Request
from ..sse import EventSplitter, EventTooLarge, json_of
from ..upstream.balance import Backend
from ..upstream.errors import UpstreamError
from ..upstream.head import HeadInjection
from . import wire
from .backends import BackendSessions
from .messages import frame, meta_version
from .names import Namespace
from .streams import close_queue

if TYPE_CHECKING:
    from ..config import Settings
    from ..upstream.registry import Upstreams

__all__ = ("Listen",)

logger = logging.getLogger("proxy.federation")

QUEUE_FRAMES = 64  # notifications held for a client that is not reading
_ENDED = "@ended"  # queue marker: every backend's listen stream has ended
_ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
_HEADERS = [
    (H.CONTENT_TYPE, b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (H.X_ACCEL_BUFFERING, b"no"),
]

Item = tuple[str, dict[str, Any]] | None  # (backend, message); None: the client left
_GATEWAY_CHANGES = {
    "tools/list": ("toolsListChanged", "notifications/tools/list_changed"),
    "prompts/list": ("promptsListChanged", "notifications/prompts/list_changed"),
    "resources/list": ("resourcesListChanged", "notifications/resources/list_changed"),
}
"""A list the gateway changed -> the listen flag that asks for it, and its notification."""


class Listen:
    """Serves ``subscriptions/listen`` requests."""

    def __init__(
        self,
        settings: Settings,
        upstreams: Upstreams,
        namespace: Namespace,
        backends: BackendSessions,
        listening: set[Callable[[str], None]] | None = None,
    ) -> None:
        """`listening`: where each open listen stream is told of a list the gateway
        changed (a reload), with the list method (shared with the handler a reload
        replaces)."""
        self.listening = set() if listening is None else listening
        self.upstreams = upstreams
        self.namespace = namespace
        self.backends = backends
        self.list_timeout = settings.list_timeout
        self.max_answer = settings.max_answer_size

    async def serve(self, request: Request) -> int:
        assert request.env is not None and request.body is not None  # noqa: S101 - a POST
        message = orjson.loads(request.body)
        raw_params = message.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=QUEUE_FRAMES)
        streams = _Streams(self, request, message, params, queue)
        watcher = asyncio.ensure_future(_until_gone(request.receive, queue))
        self.listening.add(streams.told)
        try:
            acks, early = await streams.acknowledgements()
            if acks is None:
                return 200  # the client left before the acknowledgement
            return await self._relay(request.send, request.env, acks, early, queue)
        finally:
            self.listening.discard(streams.told)
            watcher.cancel()
            streams.close()

    async def _relay(
        self,
        send: Send,
        env: Envelope,
        acks: dict[str, dict[str, Any]],
        early: list[tuple[str, dict[str, Any]]],
        queue: asyncio.Queue[Item],
    ) -> int:
        sub_meta = {"io.modelcontextprotocol/subscriptionId": orjson.loads(env.id or b"null")}
        merged: dict[str, Any] = {}
        for name, honored in acks.items():
            for key, value in honored.items():
                if key == "resourceSubscriptions" and isinstance(value, list):
                    merged.setdefault(key, []).extend(
                        self.namespace.public_uri(name, u) for u in value if isinstance(u, str)
                    )
                elif value is True:
                    merged[key] = True
        ack = {
            "jsonrpc": "2.0",
            "method": _ACKNOWLEDGED,
            "params": {"notifications": merged, "_meta": sub_meta},
        }
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": frame(ack), "more_body": True})
        for name, message in early:
            await self._notification(send, name, message)
        while (item := await queue.get()) is not None and item[0] != _ENDED:
            await self._notification(send, *item)
        if item is not None:  # every backend ended its stream: so does the gateway
            done = {
                "jsonrpc": "2.0",
                "id": sub_meta["io.modelcontextprotocol/subscriptionId"],
                "result": {"_meta": sub_meta, "resultType": "complete"},
            }
            await send({"type": "http.response.body", "body": frame(done), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200

    async def _notification(self, send: Send, backend: str, message: dict[str, Any]) -> None:
        """One backend notification on the merged stream (URIs made public)."""
        method = message.get("method")
        if method is None or method == _ACKNOWLEDGED:
            return  # a backend's own acknowledgement or final result
        params = message.get("params")
        if isinstance(params, dict) and isinstance(params.get("uri"), str):
            params["uri"] = self.namespace.public_uri(backend, params["uri"])
        await send({"type": "http.response.body", "body": frame(message), "more_body": True})


class _Streams:
    """The backends' listen streams of one client request, feeding one queue."""

    def __init__(
        self,
        listen: Listen,
        request: Request,
        message: dict[str, Any],
        params: dict[str, Any],
        queue: asyncio.Queue[Item],
    ) -> None:
        self.listen = listen
        self.request = request
        self.message = message
        self.params = params
        self.queue = queue
        raw_wanted = params.get("notifications")
        wanted: dict[str, Any] = raw_wanted if isinstance(raw_wanted, dict) else {}
        self.flags = {k: v for k, v in wanted.items() if k != "resourceSubscriptions"}
        self.owned: dict[str, list[str]] = {}
        for uri in wanted.get("resourceSubscriptions") or ():
            found = listen.namespace.route_uri(uri) if isinstance(uri, str) else None
            if found is not None:
                self.owned.setdefault(found[0].name, []).append(found[1])
        self.running = len(listen.upstreams.backends)
        self.tasks = [
            asyncio.ensure_future(self._stream(name, backend))
            for name, backend in listen.upstreams.backends.items()
        ]

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()

    def told(self, method: str) -> None:
        """The gateway changed the `method` list (a reload): the client is told, if
        it listens for that list's changes."""
        flag, notification = _GATEWAY_CHANGES[method]
        if self.flags.get(flag) is not True:
            return
        meta = {"io.modelcontextprotocol/subscriptionId": self.message.get("id")}
        note = {"jsonrpc": "2.0", "method": notification, "params": {"_meta": meta}}
        with contextlib.suppress(asyncio.QueueFull):  # a client that does not read
            self.queue.put_nowait(("", note))

    async def acknowledgements(
        self,
    ) -> tuple[dict[str, dict[str, Any]] | None, list[tuple[str, dict[str, Any]]]]:
        """What each backend acknowledged within the list timeout (None: the client
        left), and the notifications that came before the acknowledgements did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.listen.list_timeout
        acks: dict[str, dict[str, Any]] = {}
        early: list[tuple[str, dict[str, Any]]] = []
        while len(acks) < self.running and len(early) < QUEUE_FRAMES:
            try:
                item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
            if item is None:
                return None, early
            name, message = item
            if name == _ENDED:
                break
            if message.get("method") == _ACKNOWLEDGED:
                honored = (message.get("params") or {}).get("notifications") or {}
                acks[name] = honored if isinstance(honored, dict) else {}
            else:
                early.append(item)
        return acks, early

    async def _stream(self, name: str, backend: Backend) -> None:
        try:
            await self._relay(name, backend)
        finally:
            self.running -= 1
        if not self.running:
            await self.queue.put((_ENDED, {}))

    async def _relay(self, name: str, backend: Backend) -> None:
        replica = backend.choose()
        if replica is None:
            return
        mine = dict(self.flags)
        if self.owned.get(name):
            mine["resourceSubscriptions"] = self.owned[name]
        data = orjson.dumps({**self.message, "params": {**self.params, "notifications": mine}})
        extra = [
            (H.MCP_METHOD, b"subscriptions/listen"),
        ]
        try:
            extra += await self.listen.backends.credentials(
                name, self.listen.backends.caller(self.request)
            )
            head = wire.request_head(
                replica,
                data,
                session_id=None,
                protocol_version=meta_version(self.message),
                extra=extra,
            )
            limit = self.listen.list_timeout
            response = await replica.streams.request(head, data, head_timeout=limit)
        except (UpstreamError, HeadInjection, GatewayError) as exc:  # the others go on
            logger.info("backend %s: subscriptions/listen not opened: %s", name, exc)
            return
        try:
            if response.status != 200:
                return
            splitter = EventSplitter(self.listen.max_answer)
            while chunk := await response.read():
                for event in splitter.feed(chunk):
                    message = json_of(event)
                    if isinstance(message, dict):
                        await self.queue.put((name, message))
        except (UpstreamError, EventTooLarge) as exc:
            logger.info("backend %s: subscriptions/listen ended: %s", name, exc)
        finally:
            response.close()


async def _until_gone(receive: Receive, queue: asyncio.Queue[Item]) -> None:
    """Wait for the client to go, then make the queue say so at once."""
    while (await receive())["type"] != "http.disconnect":
        pass
    close_queue(queue)
