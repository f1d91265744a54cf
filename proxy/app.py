"""ProxyApp: the plain ASGI callable, its lifespan and the gateway's own endpoints."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from . import heap, jsonrpc as rpc
from ._types import Receive, Scope, Send
from .accesslog import AccessLog
from .auth.access import Access
from .config import Settings, from_env_json
from .fastpath import IMPLEMENTATION
from .forward import Forwarder
from .guard import OriginGuard
from .headers import HOST, ORIGIN
from .limits import StreamLimits
from .logs import configure as configure_logs
from .metrics import Metrics
from .relay import Relay
from .reload import RELOAD_FILE_ENV, RELOAD_SIGNAL, ReloadFile, render as render_reloads
from .request import Endpoint, Handler
from .responses import send_bytes, send_error
from .sessions import StoreUnavailable, create_store
from .sessions.records import Records
from .status import PAGE, Status
from .stdio.registry import Bridges
from .tracing import Tracing
from .upstream.registry import Upstreams
from .workers import METRICS_DIR_ENV, SharedMetrics

logger = logging.getLogger("proxy")

_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
_HTML = b"text/html; charset=utf-8"
_NO_STORE = [(b"cache-control", b"no-store")]
DRAIN_SIGNAL: signal.Signals = signal.SIGUSR1
"""What `proxy.server` sends each worker when the gateway is asked to stop."""


class ProxyApp:
    """The gateway as one ASGI 3 application (no framework in between)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        shared = os.environ.get(METRICS_DIR_ENV)
        self.shared_metrics = SharedMetrics(self.metrics, Path(shared) if shared else None)
        self.store = create_store(settings)
        self.records = Records(self.store, self.metrics)
        self.bridges = Bridges(settings, metrics=self.metrics)
        self.upstreams = Upstreams(
            settings, local=self.bridges.urls, peers=self.bridges.peers, metrics=self.metrics
        )
        self.relay = Relay(settings, self.upstreams, self.metrics)
        self.tracing = Tracing(settings, self.metrics) if settings.trace_endpoint else None
        self.access: Access | None = None
        if Access.wanted(settings):
            self.access = Access(settings, self.store, self.metrics)
        self.stream_limits = StreamLimits(
            settings.max_streams_per_session, settings.max_streams_per_client
        )
        self.handler: Handler = self._handler(settings, self.upstreams, None)
        self.access_log = (
            None if settings.access_log == "off" else AccessLog(settings, self.metrics)
        )
        self.endpoint = Endpoint(
            settings, self.handler, self.metrics, self.access, self.access_log, self.tracing
        )
        gate = None if self.access is None else self.access.gate
        self.metadata_paths = () if gate is None else gate.metadata_paths()
        self.path = settings.path
        self.status = Status(self) if settings.status_page else None
        self.guard = OriginGuard(settings)
        self.draining = False
        self._unready: list[str] = []  # the problems last logged by /readyz
        self.drain_signal: signal.Signals | None = None  # set by the serving process
        self.reload_file: ReloadFile | None = None
        """Set by the serving process: where a reloaded configuration is handed on
        (:mod:`proxy.reload`); the worker applies it on ``RELOAD_SIGNAL``."""
        self.generation = 0
        """The running configuration's generation (0: as started)."""
        self.settle_heap = False
        self._settled: heap.Settled | None = None
        """Set by the serving process: tune the garbage collector once started
        (:mod:`proxy.heap`); an app mounted in someone else's server leaves it alone."""
        self._started = False
        self._start_lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        """Reloads being applied, and replaced configurations being closed."""

    def __repr__(self) -> str:
        return f"<ProxyApp {self.path} store={self.store!r} {self.upstreams!r}>"

    def _handler(
        self, settings: Settings, upstreams: Upstreams, running: Handler | None
    ) -> Handler:
        """What serves the MCP endpoint with `settings`' backends: one, or several.
        The counts of open streams, and the clients' merged streams, go on from the
        `running` handler's (a reload hands them on)."""
        if settings.federated:
            from .federation import Federator  # noqa: PLC0415 - only when configured

            return Federator(
                settings,
                self.store,
                self.records,
                upstreams,
                self.relay,
                self.metrics,
                self.access,
                self.tracing,
                self.stream_limits,
                running.streams if isinstance(running, Federator) else None,
            )
        return Forwarder(
            settings,
            self.records,
            upstreams,
            self.relay,
            self.metrics,
            self.access,
            self.tracing,
            self.stream_limits,
        )

    async def reconfigure(self, settings: Settings) -> None:
        """Apply a reloaded configuration (:mod:`proxy.reload`: only settings marked
        live differ from the running ones) without dropping a session or a request.

        Replicas that stay keep their pools; requests from now on go to a new handler
        over the new backends, requests and streams in flight finish on the one they
        began with. Sessions of a removed backend (or replica) get 404 at their next
        request, and their streams end. Clients with a stream open on a federated
        endpoint are told that the lists changed. Raises SettingsError (nothing
        changed) when a backend's credentials do not resolve; if opening the new backends
        fails, they are closed and the running configuration stays whole."""
        async with self._reload_lock:
            running, old_upstreams, old_handler = self.settings, self.upstreams, self.handler
            old_bridges = self.bridges
            access = self.access
            outbound = None if access is None else access.outbound_for(settings)
            bridges = Bridges(settings, old_bridges, self.metrics)
            upstreams = Upstreams(
                settings, old_upstreams, bridges.urls, bridges.peers, self.metrics
            )
            old_outbound = None if access is None else access.outbound
            if access is not None and outbound is not None:
                access.use_backends(settings, outbound)  # the new handler opens with them
            handler = self._handler(settings, upstreams, old_handler)
            try:
                await bridges.open()
                await upstreams.open()
                await handler.open()
            except BaseException:  # the running configuration stays, whole
                if access is not None and old_outbound is not None:
                    access.use_backends(running, old_outbound)
                await handler.retire()
                await upstreams.retire(old_upstreams, 0.0)
                await bridges.retire(old_bridges)
                raise
            self.settings, self.upstreams, self.handler = settings, upstreams, handler
            self.bridges = bridges
            self.relay.reconfigure(settings, upstreams)
            self.stream_limits.per_session = settings.max_streams_per_session
            self.stream_limits.per_client = settings.max_streams_per_client
            self.endpoint.reconfigure(settings, handler)
            self.guard = OriginGuard(settings)
            if self.draining:
                handler.drain()
            if running.backends != settings.backends:
                handler.catalog_changed()
            self._in_background(
                self._retire(old_handler, old_upstreams, upstreams, old_bridges, bridges)
            )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task the app keeps (and cancels when it closes)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _reload_soon(self) -> None:
        self._in_background(self._reload())

    async def _reload(self) -> None:
        """Apply the reload file's configuration if it is newer than the running one."""
        assert self.reload_file is not None  # noqa: S101 - only then is it asked for
        state = self.reload_file.read()
        if state is None or state.generation <= self.generation:
            return
        try:
            settings = from_env_json(state.settings)
            await self.reconfigure(settings)
        except Exception as exc:
            self.metrics.reloads_applied.inc("failed")
            logger.error(
                "reload: generation %d not applied, this worker goes on with generation %d: %s",
                state.generation,
                self.generation,
                exc,
            )
            return
        self.generation = state.generation
        self.metrics.reloads_applied.inc("ok")
        logger.info("reload: generation %d applied", state.generation)

    async def _retire(
        self,
        handler: Handler,
        upstreams: Upstreams,
        successor: Upstreams,
        bridges: Bridges,
        kept: Bridges,
    ) -> None:
        try:
            await handler.retire()
            await upstreams.retire(successor, self.settings.upstream_timeout)
            await bridges.retire(kept)
        except Exception:
            logger.exception("reload: the replaced configuration did not close cleanly")

    async def open(self) -> None:
        """Open the store, the pools and the handler (once; the lifespan's startup)."""
        async with self._start_lock:
            if not self._started:
                if IMPLEMENTATION != "c":
                    logger.warning(
                        "the compiled fast path is not in use: the pure-Python envelope "
                        "scanner runs instead (large bodies cost far more CPU); reinstall "
                        "with a C compiler, or unset PROXY_NO_EXTENSIONS"
                    )
                if self.access is not None:
                    self.access.open()
                if self.access_log is not None:
                    self.access_log.open()
                await self.store.open()
                await self.bridges.open()
                await self.upstreams.open()
                await self.handler.open()
                await self.shared_metrics.open()
                self._started = True
                if self.settle_heap:
                    self._settled = heap.settle()
                if self.drain_signal is not None:
                    asyncio.get_running_loop().add_signal_handler(self.drain_signal, self.drain)
                if self.reload_file is not None:
                    loop = asyncio.get_running_loop()
                    loop.add_signal_handler(RELOAD_SIGNAL, self._reload_soon)
                    self._reload_soon()  # one handed on while this worker started

    def drain(self) -> None:
        """Start draining (the serving process asks, on SIGTERM, before it stops
        accepting): /readyz answers 503 and the forwarder closes connections after each
        answer and ends open GET streams."""
        if not self.draining:
            logger.info("draining: unready, closing connections after each answer")
            self.draining = True
            self.relay.drain()
            self.handler.drain()

    async def close(self) -> None:
        """Undo :meth:`open` (the lifespan's shutdown)."""
        if self._started:
            self._started = False
            if self.drain_signal is not None:
                asyncio.get_running_loop().remove_signal_handler(self.drain_signal)
            if self.reload_file is not None:
                asyncio.get_running_loop().remove_signal_handler(RELOAD_SIGNAL)
            if self._settled is not None:
                self._settled.stop()
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self.shared_metrics.close()
            self.endpoint.close()
            self.relay.close()
            await self.handler.close()
            if self.access is not None:
                await self.access.close()
            if self.access_log is not None:
                self.access_log.close()
            if self.tracing is not None:  # exports what is left (blocking: in a thread)
                await asyncio.to_thread(self.tracing.close)
            await self.upstreams.close()
            await self.bridges.close()
            await self.store.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self._started:  # servers that skip the lifespan protocol
                await self.open()
            path = scope["path"]
            if path == self.path:
                await self.endpoint(scope, receive, send)
            elif path == "/healthz":
                await send_bytes(send, 200, b'{"status":"ok"}')
            elif path in self.metadata_paths:
                await self._resource_metadata(scope, send)
            elif path in ("/readyz", "/metrics") or (path == "/status" and self.status):
                if not self._host_allowed(scope):
                    message = "Forbidden: Origin or Host not allowed"
                    await send_error(send, 403, rpc.FORBIDDEN, message)
                elif path == "/readyz":
                    await self._readyz(send)
                elif path == "/metrics":
                    await self._metrics(send)
                else:
                    await self._status(scope, send)
            else:
                await send_bytes(send, 404, b'{"error":"not found"}')
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _resource_metadata(self, scope: Scope, send: Send) -> None:
        """The OAuth 2.0 Protected Resource Metadata (RFC 9728): public, readable from
        any origin (browser clients discover the authorization server with it)."""
        assert self.access is not None and self.access.gate is not None  # noqa: S101
        if scope["method"] not in ("GET", "OPTIONS"):
            allow = [(b"allow", b"GET, OPTIONS")]
            await send_bytes(send, 405, b'{"error":"method not allowed"}', extra=allow)
            return
        cors = [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-methods", b"GET"),
            (b"cache-control", b"max-age=3600"),
        ]
        if scope["method"] == "OPTIONS":
            await send_bytes(send, 204, b"", extra=cors)
            return
        await send_bytes(send, 200, self.access.gate.metadata(scope), extra=cors)

    def _host_allowed(self, scope: Scope) -> bool:
        """The MCP endpoint's Origin/Host check (a DNS-rebinding page must not read the
        gateway's state either)."""
        origin = host = None
        for name, value in scope["headers"]:
            if name == ORIGIN:
                origin = value
            elif name == HOST:
                host = value
        return self.guard.allows(origin, host)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.open()
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _readyz(self, send: Send) -> None:
        if self.draining:
            await send_bytes(send, 503, b'{"status":"draining"}', extra=[(b"connection", b"close")])
            return
        problems: list[str] = []  # what the answer says: no addresses, no errors' text
        details: list[str] = []  # what the log says
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            problems.append("session store unreachable")
            details.append(f"session store: {exc}")
        for backend in self.upstreams.backends.values():
            if not backend.healthy():
                problems.append(f"backend {backend.name}: no healthy replica")
                details.append(problems[-1])
        if details != self._unready:  # logged when it changes, not at every probe
            self._unready = details
            if details:
                logger.warning("unready: %s", "; ".join(details))
            else:
                logger.info("ready")
        if problems:
            await send_bytes(send, 503, orjson.dumps({"status": "unready", "problems": problems}))
        else:
            await send_bytes(send, 200, b'{"status":"ready"}')

    async def _status(self, scope: Scope, send: Send) -> None:
        """The status page to a browser (it asks for HTML), its JSON to anyone else."""
        assert self.status is not None  # noqa: S101 - routed here only when on
        accept = next((v for n, v in scope["headers"] if n == b"accept"), b"")
        if b"text/html" in accept:
            await send_bytes(send, 200, PAGE, _HTML)
        else:
            await send_bytes(send, 200, await self.status.json(), extra=_NO_STORE)

    async def _metrics(self, send: Send) -> None:
        try:
            open_sessions: int | None = await self.store.count()
        except StoreUnavailable:
            open_sessions = None
        page = self.shared_metrics.render(open_sessions)
        if self.reload_file is not None:
            page += render_reloads(self.reload_file.read())
        await send_bytes(send, 200, page, _PROMETHEUS)


def create_app(settings: Settings) -> ProxyApp:
    """The gateway's ASGI app, for mounting under any ASGI server."""
    return ProxyApp(settings)


def app_from_env() -> ProxyApp:
    """Granian's factory target: settings come from the serving process's environment."""
    text = os.environ.get("PROXY_SETTINGS_JSON")
    if text is None:
        raise RuntimeError("PROXY_SETTINGS_JSON is not set; start with `mcp-fastproxy serve`")
    reload_file = None
    generation = 0
    path = os.environ.get(RELOAD_FILE_ENV)
    if path:  # started after a reload (Granian replaced a worker): the newest settings
        reload_file = ReloadFile(Path(path))
        state = reload_file.read()
        if state is not None:
            text, generation = state.settings, state.generation
    settings = from_env_json(text)
    configure_logs(settings.log_level, settings.log_format)
    # Ctrl-C at a terminal reaches every process of the group: the main process decides
    # what it means (a drain, or stopping at once) and tells the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    app = ProxyApp(settings)
    app.drain_signal = DRAIN_SIGNAL  # proxy.server sends it to every worker on SIGTERM
    app.reload_file = reload_file  # and RELOAD_SIGNAL on a reload
    app.generation = generation
    app.settle_heap = True  # a worker process of our own: the collector is ours to set
    return app
