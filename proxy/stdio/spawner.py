"""How a stdio backend's processes are made: with exactly its settings, written down for
the sweep after a killed gateway (:mod:`proxy.stdio.orphans`), and, with ``min_idle``,
some started ahead of demand so that a new session does not wait for a program to
start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..metrics import Metrics
from ..settings import StdioSettings
from .process import StdioProcess, process_environment

__all__ = ("Spawner",)

logger = logging.getLogger("proxy.stdio")


BACKOFF_MAX = 30.0
"""The longest wait before a backend whose processes keep failing at start is started
again."""


class Spawner:
    """The processes of one backend in one worker, before a session has them."""

    def __init__(
        self,
        name: str,
        settings: StdioSettings,
        metrics: Metrics,
        registry: Path,
        busy: Callable[[], int],
    ) -> None:
        """`registry`: where started groups are written down; `busy`: how many of the
        backend's processes serve sessions or are starting for one (``max_processes``
        bounds those and these together)."""
        self.name = name
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.busy = busy
        self.warm: list[StdioProcess] = []
        """Started ahead of demand, not yet initialised."""
        self.warming = 0
        self._filling: asyncio.Task[None] | None = None
        self._backoff = 0.0
        self._retry_at = 0.0

    def crashed(self, served: bool) -> None:
        """A process ended by itself: one that never answered initialize makes the next
        start wait (1 s, doubled each time, up to ``BACKOFF_MAX``); one that had served
        clears the wait."""
        if served:
            self._backoff = 0.0
            return
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 or 1.0)
        self._retry_at = time.monotonic() + self._backoff
        logger.warning(
            "backend %s: a process ended before it answered initialize; the next starts in %.0f s",
            self.name,
            self._backoff,
        )

    def waiting(self) -> float:
        """Seconds before a process may be started again (0: now)."""
        return max(0.0, self._retry_at - time.monotonic())

    @property
    def count(self) -> int:
        """Processes started (or starting) ahead of demand."""
        return len(self.warm) + self.warming

    def new(self) -> StdioProcess:
        """A process of the backend, not started."""
        settings = self.settings
        return StdioProcess(
            self.name,
            (settings.command, *settings.args),
            process_environment(settings),
            settings.cwd or None,
            stop_grace=settings.stop_grace,
            registry=self.registry,
        )

    def take(self, reap: Callable[[StdioProcess], None]) -> StdioProcess | None:
        """A process started ahead of demand and still running, if one waits (one that
        ended meanwhile goes to `reap`); the pool fills again."""
        found = None
        while self.warm and found is None:
            process = self.warm.pop()
            self.metrics.stdio_processes.dec(self.name, "idle")
            if process.proc is not None and process.proc.returncode is None:
                found = process
            else:
                reap(process)
        self.fill_soon()
        return found

    def fill_soon(self) -> None:
        if self.settings.min_idle and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill(), name=f"{self.name}-warm")

    async def _fill(self) -> None:
        """Start processes until ``min_idle`` wait, within ``max_processes``."""
        settings = self.settings
        while (
            len(self.warm) < settings.min_idle and self.busy() + self.count < settings.max_processes
        ):
            process = self.new()
            self.warming += 1
            try:
                await process.start()
            except OSError as exc:
                self.metrics.stdio_spawns.inc(self.name, "failed")
                logger.error("%s", exc.strerror or exc)
                return  # tried again at the next session's start
            finally:
                self.warming -= 1
            self.warm.append(process)
            self.metrics.stdio_processes.inc(self.name, "idle")

    async def close(self, reap: Callable[[StdioProcess], None]) -> None:
        """Stop filling; the waiting processes go to `reap`."""
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filling
        while self.warm:
            self.metrics.stdio_processes.dec(self.name, "idle")
            reap(self.warm.pop())
