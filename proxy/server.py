"""Starts Granian on the gateway's ASGI app with the validated settings, says what it
serves, drains it on SIGTERM before Granian stops it, and reloads its configuration on
SIGHUP without respawning its workers (:mod:`proxy.reload`)."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .app import DRAIN_SIGNAL
from .config import Settings
from .fastpath import IMPLEMENTATION
from .logs import config as log_config, configure as configure_logs
from .reload import RELOAD_FILE_ENV, RELOAD_SIGNAL, ReloadFile, Reloads
from .request_state import KEY_FILE_ENV, write_key_file
from .workers import METRICS_DIR_ENV

logger = logging.getLogger("proxy.server")


class PortInUse(RuntimeError):
    """The address to listen on is taken, and sharing it was not asked for."""


def check_port(settings: Settings) -> None:
    """Refuse to start on a port another process listens on (two gateways on one port
    would each get a random half of the clients), unless ``reuse_port`` says to share."""
    if settings.reuse_port:
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"{settings.host}:{settings.port} is already in use (another gateway?): "
                    "choose another --port, or --reuse-port true to share it"
                ) from None
            raise


def describe(settings: Settings) -> list[str]:
    """What the gateway serves, for the start-up log: a few lines, no secrets."""
    from .auth.validate import describe as describe_access  # noqa: PLC0415 - a message
    from .sessions.redis_url import safe_url  # noqa: PLC0415 - a message

    store = "memory" if settings.store_kind == "memory" else safe_url(settings.session_store)
    lines = [
        f"mcp-fastproxy {__version__}: MCP endpoint http://{settings.host}:{settings.port}"
        f"{settings.path}",
        f"  session store {store}, {settings.workers} worker(s), fast path {IMPLEMENTATION}",
        "  protocol eras: the handshake era (2024-11-05 to 2025-11-25) and 2026-07-28",
    ]
    for backend in settings.backends:
        prefix = f" (prefix {backend.prefix})" if backend.prefix else ""
        lines.append(f"  backend {backend.name}{prefix}: {backend.describe()}")
    lines += [f"  {line}" for line in describe_access(settings)]
    return lines


def run(settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
    """Serve until interrupted; each Granian worker rebuilds the app from the settings.

    The first SIGTERM (or SIGINT from a process manager) starts a drain: every worker
    gets ``DRAIN_SIGNAL`` (its /readyz turns 503, answers close their connections, GET
    streams end), and after ``drain_seconds`` Granian's own shutdown follows: the
    listener closes and requests in flight get ``shutdown_timeout`` seconds to finish. A
    second signal skips the rest of the drain, and so does Ctrl-C at a terminal (SIGINT
    while stdin is a TTY): a person wants it to stop, not a balancer to notice.

    SIGHUP: a reload (:mod:`proxy.reload`; `reload` loads the configuration as at the
    start), applied in every worker without respawning it.
    """
    from granian.server import Server  # noqa: PLC0415 - heavy

    configure_logs(settings.log_level, settings.log_format)
    check_port(settings)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    runtime = Path(tempfile.mkdtemp(prefix="mcp-fastproxy-"))
    reloads = Reloads(settings, reload, ReloadFile(runtime / "reload.json"))

    class DrainingServer(Server):  # type: ignore[misc,valid-type]  # Granian is untyped
        _drain_started = False

        def _signal_workers(self, signum: signal.Signals) -> None:
            for worker in self.wrks:
                pid = getattr(getattr(worker, "inner", None), "pid", None)
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)

        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            at_terminal = interactive and args and args[0] == signal.SIGINT
            if self._drain_started or settings.drain_seconds <= 0 or at_terminal:
                Server.signal_handler_interrupt(self, *args, **kwargs)  # type: ignore[no-untyped-call]
                return
            self._drain_started = True
            self._signal_workers(DRAIN_SIGNAL)
            logger.info("draining for %.1fs before stopping", settings.drain_seconds)
            stop = threading.Timer(settings.drain_seconds, Server.signal_handler_interrupt, (self,))
            stop.daemon = True
            stop.start()

        def signal_handler_reload(self, *args: Any, **kwargs: Any) -> None:
            if reloads.reload() is not None:  # never Granian's respawn of every worker
                self._signal_workers(RELOAD_SIGNAL)

    for line in describe(settings):
        logger.info("%s", line)
    os.environ.update(settings.to_env())
    os.environ[RELOAD_FILE_ENV] = str(runtime / "reload.json")
    if not settings.state_secret:  # one key for every worker of this run
        os.environ[KEY_FILE_ENV] = str(write_key_file(runtime))
    if settings.workers > 1:  # one /metrics over every worker (proxy.workers)
        os.environ[METRICS_DIR_ENV] = str(runtime)
    try:
        _serve(DrainingServer, settings)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _serve(server: Any, settings: Settings) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops  # noqa: PLC0415 - heavy
    from granian.http import HTTP1Settings  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415

    server(
        "proxy.app:app_from_env",
        factory=True,
        address=settings.host,
        port=settings.port,
        backlog=settings.backlog,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        # A client gets header_timeout to send its request head (a slow one is cut off
        # instead of holding a connection); the body's own deadline is the forwarder's.
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.header_timeout * 1000)),
        websockets=False,
        log_level=LogLevels(settings.log_level),
        log_dictconfig=log_config(settings.log_level, settings.log_format),
        log_access=False,
        workers_kill_timeout=max(1, math.ceil(settings.shutdown_timeout)),
    ).serve()
