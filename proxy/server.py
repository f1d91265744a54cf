"""Starts Granian on the gateway's ASGI app with the validated settings."""

from __future__ import annotations

import os

from .config import Settings


def run(settings: Settings) -> None:
    """Serve until interrupted; each Granian worker rebuilds the app from the settings."""
    from granian import Granian  # noqa: PLC0415 - heavy, serve-only import
    from granian.constants import HTTPModes, Interfaces, Loops  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415

    os.environ.update(settings.to_env())
    Granian(
        "proxy.app:app_from_env",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        log_level=LogLevels(settings.log_level),
        log_access=False,
    ).serve()
