"""Starts Granian on the gateway's ASGI app with the validated settings, and drains it
on SIGTERM before Granian stops it."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from typing import Any

from .app import DRAIN_SIGNAL
from .config import Settings

logger = logging.getLogger("proxy.server")


def run(settings: Settings) -> None:
    """Serve until interrupted; each Granian worker rebuilds the app from the settings.

    The first SIGTERM or SIGINT starts a drain: every worker gets ``DRAIN_SIGNAL`` (its
    /readyz turns 503, answers close their connections, GET streams end), and after
    ``drain_seconds`` Granian's own shutdown follows: the listener closes and requests
    in flight get ``shutdown_timeout`` seconds to finish. A second signal skips the rest
    of the drain.
    """
    from granian.constants import HTTPModes, Interfaces, Loops  # noqa: PLC0415 - heavy
    from granian.http import HTTP1Settings  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415
    from granian.server import Server  # noqa: PLC0415

    class DrainingServer(Server):  # type: ignore[misc,valid-type]  # Granian is untyped
        _drain_started = False

        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            if self._drain_started or settings.drain_seconds <= 0:
                Server.signal_handler_interrupt(self, *args, **kwargs)  # type: ignore[no-untyped-call]
                return
            self._drain_started = True
            for worker in self.wrks:
                pid = getattr(getattr(worker, "inner", None), "pid", None)
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, DRAIN_SIGNAL)
            logger.info("draining for %.1fs before stopping", settings.drain_seconds)
            stop = threading.Timer(settings.drain_seconds, Server.signal_handler_interrupt, (self,))
            stop.daemon = True
            stop.start()

    os.environ.update(settings.to_env())
    DrainingServer(
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
        log_access=False,
        workers_kill_timeout=max(1, math.ceil(settings.shutdown_timeout)),
    ).serve()
