"""The client's one GET stream, merged from its backend sessions' streams, and the list
changes every client with a stream hears about (federation).

Each event id on a merged stream is the composite ``<backend>=<id>;…`` of the last id
seen from each backend, so ``Last-Event-ID`` resumes every backend where it left off. A
backend's ``notifications/*/list_changed`` (on a client's stream, or on the gateway's
own discovery stream) drops that backend's cached list, reaches every merged stream in
this process, and is published through the session store so that the other gateway
processes on it do the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson

from ..auth.access import CallerCredentials
from ..sessions import Binding, SessionStore, StoreUnavailable
from ..sse import EventSplitter
from .backends import BackendSessions
from .catalog import Catalog
from .names import LIST_KEYS
from .streams import Publish, close_queue, rewrite_event

__all__ = ("ListChanges", "MergedStream", "MergedStreams")

logger = logging.getLogger("proxy.federation")

QUEUE_EVENTS = 64
"""Events a merged stream holds for a client that is not reading (its backends' streams
wait meanwhile)."""


class MergedStream:
    """One client GET stream: a pump per backend session feeding one bounded queue.

    A pump waits while the queue is full (so a client that does not read holds back its
    backends' streams, not the gateway's memory); the gateway's own notes are offered
    without waiting, and a stream whose client has not read for that long is ended.
    ``heard``: called with (backend, notification method) for each backend notification.
    """

    def __init__(
        self,
        backends: BackendSessions,
        version: str | None,
        last_ids: dict[str, str],
        caller: CallerCredentials,
        heard: Callable[[str, str], None],
        max_event: int,
        publish: Publish | None = None,
    ) -> None:
        self.backends = backends
        self.version = version
        self.last_ids = dict(last_ids)  # what the client resumes from, then what it got
        self.caller = caller  # what the GET's caller lets each backend see
        self.heard = heard
        self.publish = publish  # resource URIs in what the backends send made public
        self.max_event = max_event
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_EVENTS)
        self.ended = False
        self._pumps: dict[str, asyncio.Task[None]] = {}

    def attach(self, backend: str, binding: Binding) -> None:
        if backend not in self._pumps and not self.ended:
            self._pumps[backend] = asyncio.ensure_future(self._pump(backend, binding))

    def attach_listen(
        self, backend: str, notifications: Callable[[], AsyncGenerator[dict[str, Any], None]]
    ) -> None:
        """A backend of the stateless era alone, which keeps no session: what its
        ``subscriptions/listen`` says (`notifications`) is merged in instead."""
        if backend not in self._pumps and not self.ended:
            self._pumps[backend] = asyncio.ensure_future(self._listen(backend, notifications))

    async def _listen(
        self, name: str, notifications: Callable[[], AsyncGenerator[dict[str, Any], None]]
    ) -> None:
        heard = self._heard_from(name)
        try:
            async with contextlib.aclosing(notifications()) as messages:
                async for message in messages:
                    if not message:
                        continue  # the listen is open
                    event = b"event: message\ndata: " + orjson.dumps(message)
                    await self.queue.put(
                        rewrite_event(event, name, None, heard, self.publish, wrap=False)
                    )
        except Exception as exc:  # one backend's stream; the others go on
            logger.info("backend %s: listen stream ended: %s", name, exc)

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
        last = self.last_ids.get(name)
        try:
            response = await self.backends.stream(name, binding, self.version, last, self.caller)
        except Exception as exc:  # one backend's stream; the others go on
            logger.info("backend %s: GET stream not opened: %s", name, exc)
            return
        if response is None:
            return
        try:
            if response.status != 200:  # 405: no stream; 409: one is open elsewhere
                logger.info("backend %s: GET stream answered %d", name, response.status)
                return
            splitter = EventSplitter(self.max_event)
            heard = self._heard_from(name)
            while chunk := await response.read():
                for event in splitter.feed(chunk):
                    event = rewrite_event(event, name, self.last_ids, heard, self.publish)
                    await self.queue.put(event)
        except Exception as exc:
            logger.info("backend %s: GET stream ended: %s", name, exc)
        finally:
            response.close()

    def _heard_from(self, name: str) -> Callable[[str], None]:
        return lambda method: self.heard(name, method)


class MergedStreams:
    """The merged streams open in this process, by gateway session."""

    def __init__(self) -> None:
        self._open: dict[str, set[MergedStream]] = {}
        self.listening: set[Callable[[str], None]] = set()
        """The open ``subscriptions/listen`` streams, each told with the list method
        when the gateway itself changes a list (:mod:`.listen`)."""

    def add(self, gateway_sid: str, stream: MergedStream) -> None:
        self._open.setdefault(gateway_sid, set()).add(stream)

    def remove(self, gateway_sid: str, stream: MergedStream) -> None:
        streams = self._open.get(gateway_sid)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._open[gateway_sid]

    def attach(self, gateway_sid: str, backend: str, binding: Binding) -> None:
        """A backend session opened while the client's stream is open: merge it in."""
        for stream in self._open.get(gateway_sid, ()):
            stream.attach(backend, binding)

    def announce(self, event: bytes) -> None:
        for streams in list(self._open.values()):
            for stream in list(streams):
                stream.offer(event)

    def end_all(self) -> None:
        for streams in list(self._open.values()):
            for stream in list(streams):
                stream.end()


class ListChanges:
    """List changes: heard from a backend here (a client's stream, or the catalog's
    discovery stream), or from another gateway process through the store."""

    def __init__(self, catalog: Catalog, store: SessionStore, streams: MergedStreams) -> None:
        self.catalog = catalog
        self.store = store
        self.streams = streams
        self._origin = secrets.token_urlsafe(16)  # this process, in events shared by the store
        self.on_change: list[Callable[[str], None]] = []
        """Told of every list change this process hears of (the response cache)."""
        self._background: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        self.catalog.listeners.add(self.tell_streams)
        self.store.event_listeners.append(self._on_event)

    def close(self) -> None:
        self.catalog.listeners.discard(self.tell_streams)
        if self._on_event in self.store.event_listeners:
            self.store.event_listeners.remove(self._on_event)
        for task in list(self._background):
            task.cancel()

    def heard(self, backend: str, method: str) -> None:
        """A backend sent a client `method`: a list change there also drops the cached
        list, reaches every client with a stream here, and is published."""
        for changed in self.catalog.changed_lists(method):
            self.catalog.invalidate(backend, changed)
            self.tell_streams(changed)
            text = f"{self._origin}\tlist\t{backend}\t{changed}"
            task = asyncio.ensure_future(self._publish(text))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def tell_streams(self, method: str) -> None:
        """A backend's `method` list changed: every client with an open stream here is
        told (the catalog calls this for changes heard on its discovery streams)."""
        for told in self.on_change:
            told(method)
        note = self.catalog.announcement(method)
        if note is not None:
            self.streams.announce(b'data: {"jsonrpc":"2.0","method":"%s"}\n\n' % note.encode())

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
            self.catalog.invalidate(backend, method)
            self.tell_streams(method)
