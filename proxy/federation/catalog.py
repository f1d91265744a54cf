"""What each backend offers, fetched through the gateway's own session with it (federation).

Per backend the gateway keeps one discovery session: its ``initialize`` answer gives the
backend's capabilities, and its lists (tools, prompts, resources, templates) are fetched
there, page by page, and cached until the backend says ``notifications/*/list_changed``
on that session's GET stream or ``list_cache_seconds`` pass. A merged list asks every
backend at once and waits at most ``list_timeout`` for each: a slow or dead backend is
left out of that answer (logged and metered) while its fetch goes on in the background,
so the next list has it as soon as it answers. Clients' own backend sessions are never
used for this: a backend a client never uses never sees an initialize from that client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..config import BackendSettings, Settings
from ..errors import GatewayError
from ..jsonrpc import HANDSHAKE_VERSIONS
from ..metrics import Metrics
from ..modern import MODERN_VERSION
from ..sse import EventSplitter, EventTooLarge, json_of
from ..upstream.balance import Backend, Replica
from ..upstream.eras import STATELESS_ONLY
from ..upstream.errors import UpstreamError
from ..upstream.head import HeadInjection
from . import wire
from .names import LIST_KEYS, Namespace

logger = logging.getLogger("proxy.federation")

GATEWAY_INFO = {"name": "mcp-fastproxy", "version": "0.1.0"}
DISCOVERY_VERSION = max(v.decode() for v in HANDSHAKE_VERSIONS)
_LIST_CHANGED = {
    "notifications/tools/list_changed": ("tools/list",),
    "notifications/prompts/list_changed": ("prompts/list",),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
}
_CAPABILITY_OF = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resources",
}
ListListener = Callable[[str], None]  # called with the list method that changed
Credentials = Callable[[str], Awaitable[list[tuple[bytes, bytes]]]]
"""A backend's name -> the headers of its own credentials (the gateway's identity there)."""
ABSENT_SECONDS = 30.0
VIEWS = 32  # discovery sessions for client capability sets, over every backend


class BackendCatalog:
    """One backend's discovery session and cached lists."""

    def __init__(
        self,
        settings: BackendSettings,
        backend: Backend,
        gateway: Settings,
        capabilities: dict[str, Any] | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.capabilities = capabilities or {}  # what the discovery session declares
        self.backend = backend
        self.gateway = gateway
        self.name = settings.name
        self.info: dict[str, Any] | None = None  # the backend's initialize result
        self._replica: Replica | None = None
        self._session_id: str | None = None
        self._lists: dict[str, tuple[list[dict[str, Any]], float]] = {}
        self._fetching: dict[str, asyncio.Task[list[dict[str, Any]]]] = {}
        self._absent: dict[str, float] = {}  # list -> when it was last left out
        self._names: dict[str, tuple[list[dict[str, Any]], frozenset[str]]] = {}
        self._asked: dict[str, float] = {}  # list -> when fetch_soon last started one
        self._session_lock = asyncio.Lock()
        self._refused_initialize = False
        """Its initialize was refused while its eras were not known yet."""

    def __repr__(self) -> str:
        return f"<BackendCatalog {self.name} session={self._session_id is not None}>"

    @property
    def protocol_version(self) -> str:
        if self.info is not None and isinstance(self.info.get("protocolVersion"), str):
            return str(self.info["protocolVersion"])
        return DISCOVERY_VERSION

    @property
    def stateless(self) -> bool:
        """Whether the backend speaks the stateless era alone: it is asked with
        self-contained requests, ``server/discover`` in place of a discovery session."""
        return self.backend.eras == STATELESS_ONLY or (
            self.backend.eras is None and self._refused_initialize
        )

    async def session(self) -> tuple[Replica, str | None]:
        """The discovery session (opened on first use, again after a failure). Before the
        backend's eras are known, one that refuses ``initialize`` is asked
        ``server/discover``."""
        async with self._session_lock:
            if self._replica is not None and self._replica.up:
                return self._replica, self._session_id
            replica = self.backend.choose()
            if replica is None:
                raise wire.CallFailed("no replica is reachable")
            if not self.stateless:
                try:
                    return await self._handshake(replica)
                except wire.CallFailed as exc:
                    if self.backend.eras is not None or exc.status not in (400, 404, 405):
                        raise
                    self._refused_initialize = True
            found = await wire.stateless_call(
                replica,
                "server/discover",
                None,
                limit=self.gateway.upstream_timeout,
                capabilities=self.capabilities,
                extra=await self.headers(),
                max_answer=self.gateway.max_answer_size,
            )
            result = found.result if isinstance(found.result, dict) else {}
            self.info = {**result, "protocolVersion": MODERN_VERSION}
            self._replica, self._session_id = replica, None
            return replica, None

    async def _handshake(self, replica: Replica) -> tuple[Replica, str | None]:
        params = {
            "protocolVersion": DISCOVERY_VERSION,
            "capabilities": self.capabilities,
            "clientInfo": GATEWAY_INFO,
        }
        answer = await wire.handshake(
            replica,
            params,
            limit=self.gateway.upstream_timeout,
            version=DISCOVERY_VERSION,
            extra=await self.headers(),
            max_answer=self.gateway.max_answer_size,
        )
        self.info = answer.result
        self._replica, self._session_id = replica, answer.session_id
        return replica, answer.session_id

    async def headers(self) -> list[tuple[bytes, bytes]]:
        """The backend's own credentials for the discovery session (none configured: none)."""
        if self.credentials is None:
            return []
        try:
            return await self.credentials(self.name)
        except GatewayError as exc:
            raise wire.CallFailed(f"no credentials: {exc.message}") from None

    def names(self, method: str, items: list[dict[str, Any]]) -> frozenset[str]:
        """The names (tools, prompts) of `items`, a list of `method` (worked out once)."""
        known = self._names.get(method)
        if known is None or known[0] is not items:
            names = frozenset(i["name"] for i in items if isinstance(i.get("name"), str))
            known = self._names[method] = (items, names)
        return known[1]

    def forget_session(self) -> None:
        self._replica = None
        self._session_id = None

    def offers(self, method: str) -> bool:
        """Whether the backend's capabilities include what `method` lists."""
        if self.info is None:
            return True  # not known yet: ask
        caps = self.info.get("capabilities")
        return isinstance(caps, dict) and _CAPABILITY_OF[method] in caps

    def cached(self, method: str) -> list[dict[str, Any]] | None:
        entry = self._lists.get(method)
        if entry is None or time.monotonic() - entry[1] > self.gateway.list_cache_seconds:
            return None
        return entry[0]

    def invalidate(self, method: str) -> None:
        self._lists.pop(method, None)

    def listed(self) -> dict[str, dict[str, Any]]:
        """Each list held: how many entries, and how many seconds ago it was fetched."""
        now = time.monotonic()
        return {
            LIST_KEYS[method]: {"count": len(items), "age_seconds": round(now - fetched, 1)}
            for method, (items, fetched) in self._lists.items()
        }

    def left_out(self, method: str) -> None:
        """The merged `method` went out without this backend (it failed or was late)."""
        self._absent[method] = time.monotonic()

    def recently_absent(self, method: str) -> bool:
        """Left out of a merged `method` within ``ABSENT_SECONDS``: lists do not wait for
        it again meanwhile (its fetch goes on; it is back as soon as it answers)."""
        return time.monotonic() - self._absent.get(method, float("-inf")) < ABSENT_SECONDS

    def fetch_soon(self, method: str, metrics: Metrics) -> None:
        """Start a fetch of `method` unless one is under way or one started within the
        last second."""
        now = time.monotonic()
        if method not in self._fetching and now - self._asked.get(method, -1.0) >= 1.0:
            self._asked[method] = now
            _ = self.fetch(method, metrics)

    def fetch(self, method: str, metrics: Metrics) -> asyncio.Task[list[dict[str, Any]]]:
        """The fetch of `method` under way, or a new one; it fills the cache when done."""
        task = self._fetching.get(method)
        if task is None:
            task = asyncio.ensure_future(self._fetch(method, metrics))
            self._fetching[method] = task
            task.add_done_callback(lambda t: self._fetched(method, t))
        return task

    def _fetched(self, method: str, task: asyncio.Task[list[dict[str, Any]]]) -> None:
        self._fetching.pop(method, None)
        if not task.cancelled():
            task.exception()  # retrieved (and logged in _fetch) even when nobody waited

    async def _fetch(self, method: str, metrics: Metrics) -> list[dict[str, Any]]:
        key = LIST_KEYS[method]
        for attempt in range(2):
            try:
                replica, sid = await self.session()
                if not self.offers(method):
                    items: list[dict[str, Any]] = []
                else:
                    items = await self._pages(replica, sid, method, key)
            except wire.CallFailed as exc:
                if attempt == 0 and exc.status == 404:  # the session expired: open another
                    self.forget_session()
                    continue
                if exc.status is None and exc.code is None:
                    self.forget_session()  # unreachable: choose a replica again next time
                metrics.list_refreshes.inc(self.name, key, "failed")
                logger.warning("backend %s: %s failed: %s", self.name, method, exc)
                raise
            self._lists[method] = (items, time.monotonic())
            self._absent.pop(method, None)
            metrics.list_refreshes.inc(self.name, key, "ok")
            return items
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pages(
        self, replica: Replica, sid: str | None, method: str, key: str
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _page in range(1000):
            params = {"cursor": cursor} if cursor is not None else None
            if self.stateless:
                answer = await wire.stateless_call(
                    replica,
                    method,
                    params,
                    limit=self.gateway.upstream_timeout,
                    capabilities=self.capabilities,
                    max_answer=self.gateway.max_answer_size,
                    extra=await self.headers(),
                )
            else:
                answer = await wire.call(
                    replica,
                    method,
                    params,
                    session_id=sid,
                    protocol_version=self.protocol_version,
                    limit=self.gateway.upstream_timeout,
                    max_answer=self.gateway.max_answer_size,
                    extra=await self.headers(),
                )
            result = answer.result if isinstance(answer.result, dict) else {}
            page = result.get(key)
            if isinstance(page, list):
                items.extend(i for i in page if isinstance(i, dict))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                return items
        return items

    async def listen(self, on_change: Callable[[str, str], None]) -> None:
        """Hold the discovery session's GET stream; on ``list_changed`` drop the cached
        list and tell `on_change` (backend name, list method). Reconnects after a break."""
        while True:
            try:
                replica, sid = await self.session()
                if self.stateless:
                    return  # no session to hold a stream: the cache's age bounds the lists
                head = wire.request_head(
                    replica,
                    b"",
                    session_id=sid,
                    protocol_version=self.protocol_version,
                    method=b"GET",
                    extra=await self.headers(),
                )
                response = await replica.streams.request(head, None, head_timeout=10.0)
                try:
                    if response.status == 405:
                        return  # the backend offers no stream: the cache's age bounds it
                    if response.status == 404:
                        self.forget_session()
                        continue
                    if response.status >= 300:
                        raise wire.CallFailed(f"GET stream: HTTP {response.status}")
                    splitter = EventSplitter(self.gateway.max_answer_size)
                    while chunk := await response.read():
                        for event in splitter.feed(chunk):
                            self._on_message(json_of(event), on_change)
                finally:
                    response.close()
            except (
                wire.CallFailed,
                UpstreamError,
                orjson.JSONDecodeError,
                EventTooLarge,
                HeadInjection,
            ) as exc:
                logger.debug("backend %s: discovery stream: %s", self.name, exc)
            await asyncio.sleep(1.0)

    def _on_message(self, message: Any, on_change: Callable[[str, str], None]) -> None:
        if not isinstance(message, dict):
            return
        for method in _LIST_CHANGED.get(str(message.get("method")), ()):
            self.invalidate(method)
            on_change(self.name, method)


class Catalog:
    """Every backend's catalog; merged lists and capabilities."""

    def __init__(
        self,
        settings: Settings,
        backends: dict[str, Backend],
        metrics: Metrics,
        credentials: Credentials | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.credentials = credentials
        self.namespace = Namespace(settings.backends)
        self.backends = {
            b.name: BackendCatalog(b, backends[b.name], settings, None, credentials)
            for b in settings.backends
        }
        self.listeners: set[ListListener] = set()
        self._listening: list[asyncio.Task[None]] = []
        # Lists as a client with these capabilities sees them: (backend, capabilities'
        # JSON) -> its own discovery session; at most VIEWS, the least recently used go.
        self._views: collections.OrderedDict[tuple[str, bytes], BackendCatalog] = (
            collections.OrderedDict()
        )

    def open(self) -> None:
        """Hold every backend's discovery stream (list changes) from now on."""
        for catalog in self.backends.values():
            self._listening.append(asyncio.ensure_future(catalog.listen(self._changed)))

    async def close(self) -> None:
        for catalog in [*self.backends.values(), *self._views.values()]:
            for fetch in list(catalog._fetching.values()):
                fetch.cancel()
        for task in self._listening:
            task.cancel()
        for task in self._listening:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listening.clear()

    @staticmethod
    def announcement(method: str) -> str | None:
        """The ``list_changed`` notification that tells clients `method` changed (one per
        notification: the resource templates ride on the resources one)."""
        return next((n for n, lists in _LIST_CHANGED.items() if lists[0] == method), None)

    @staticmethod
    def changed_lists(notification: str) -> tuple[str, ...]:
        """The list methods a ``notifications/*/list_changed`` names (none for others)."""
        return _LIST_CHANGED.get(notification, ())

    def _changed(self, backend: str, method: str) -> None:
        logger.info("backend %s: %s changed", backend, LIST_KEYS[method])
        self.invalidate(backend, method)  # every view of it, not only the plain one
        for listener in list(self.listeners):
            listener(method)

    def invalidate(self, backend: str, method: str) -> None:
        """`backend`'s `method` list changed: drop it from every view."""
        self.backends[backend].invalidate(method)
        for (name, _), view in self._views.items():
            if name == backend:
                view.invalidate(method)

    def view(self, backend: str, capabilities: dict[str, Any] | None) -> BackendCatalog:
        """`backend`'s lists as a client declaring `capabilities` sees them: a server may
        list some tools only to clients with roots, sampling or elicitation, and the
        gateway must not decide for the client. The plain view serves clients that
        declare none."""
        if not capabilities:
            return self.backends[backend]
        key = (backend, orjson.dumps(capabilities, option=orjson.OPT_SORT_KEYS))
        view = self._views.get(key)
        if view is None:
            plain = self.backends[backend]
            view = BackendCatalog(
                plain.settings, plain.backend, self.settings, capabilities, self.credentials
            )
            self._views[key] = view
            while len(self._views) > VIEWS:
                _, gone = self._views.popitem(last=False)
                for fetch in gone._fetching.values():
                    fetch.cancel()
        else:
            self._views.move_to_end(key)
        return view

    async def merged(
        self, method: str, capabilities: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The merged list for `method` as a client with `capabilities` sees it; backends
        that do not answer within the list timeout are left out (their fetch goes on and
        fills the cache)."""
        lists: dict[str, list[dict[str, Any]]] = {}
        pending: dict[str, asyncio.Task[list[dict[str, Any]]]] = {}
        for name in self.backends:
            catalog = self.view(name, capabilities)
            items = catalog.cached(method)
            if items is not None:
                lists[name] = items
            elif catalog.recently_absent(method):
                catalog.fetch_soon(method, self.metrics)  # retried in the background only
            else:
                pending[name] = catalog.fetch(method, self.metrics)
        if pending:
            done, late = await asyncio.wait(pending.values(), timeout=self.settings.list_timeout)
            for name, task in pending.items():
                if task in done and task.exception() is None:
                    lists[name] = task.result()
                    continue
                self.view(name, capabilities).left_out(method)
                if task in late:
                    self.metrics.list_refreshes.inc(name, LIST_KEYS[method], "late")
                    logger.warning(
                        "backend %s: %s not answered within %gs; left out",
                        name,
                        method,
                        self.settings.list_timeout,
                    )
        ordered = {n: lists[n] for n in self.backends if n in lists}
        merged, collisions = self.namespace.merge(method, ordered)
        for problem in collisions:
            logger.warning("name collision: %s", problem)
        return merged

    def names(self, backend: str, method: str) -> frozenset[str] | None:
        """The names `backend` itself gives in `method` (tools or prompts, unprefixed),
        from the cache; None when not known now (a fetch is then started, at most one a
        second: a backend that fails its lists is not asked again at every request)."""
        try:  # (subscripts, not .get(): asked at every governed call)
            catalog = self.backends[backend]
        except KeyError:
            return None
        items = catalog.cached(method)
        if items is None:
            catalog.fetch_soon(method, self.metrics)
            return None
        return catalog.names(method, items)

    async def warm(self) -> None:
        """Open every discovery session and fetch every list (bounded), so that
        collisions are reported at start-up and the first lists are quick."""
        await asyncio.gather(*(self.merged(method) for method in LIST_KEYS))

    def capabilities(self) -> dict[str, Any]:
        """What the gateway tells clients in its initialize answer."""
        caps: dict[str, Any] = {
            "tools": {"listChanged": True},
            "prompts": {"listChanged": True},
            "resources": {"subscribe": True, "listChanged": True},
        }
        known = [c.info for c in self.backends.values() if c.info is not None]
        backend_caps = [i.get("capabilities") for i in known]
        if any(isinstance(c, dict) and "logging" in c for c in backend_caps):
            caps["logging"] = {}
        if any(isinstance(c, dict) and "completions" in c for c in backend_caps):
            caps["completions"] = {}
        return caps
