"""One /metrics for all of a gateway's workers.

Granian hands each scrape to one worker, and each worker counts only what it served. So
every worker writes its figures, once a second and at each scrape, to a file of its own
in a directory the main process made (``PROXY_METRICS_DIR``); the worker that is scraped
adds up the files of the workers that are alive. A figure is at most a second old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import orjson

from .metrics import Metrics

__all__ = ("METRICS_DIR_ENV", "SharedMetrics")

METRICS_DIR_ENV = "PROXY_METRICS_DIR"
_INTERVAL = 1.0

logger = logging.getLogger("proxy.metrics")


class SharedMetrics:
    """This worker's :class:`Metrics` and, at a scrape, every worker's added up."""

    def __init__(self, metrics: Metrics, directory: Path | None) -> None:
        self.metrics = metrics
        self.directory = directory
        self._own = None if directory is None else directory / f"worker-{os.getpid()}.json"
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self._own is not None:
            self._task = asyncio.create_task(self._publish_loop(), name="proxy-metrics-share")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own is not None:
            with contextlib.suppress(OSError):
                self._own.unlink()

    def render(self, open_sessions: int | None) -> bytes:
        """The page: this worker's figures, or every live worker's added up."""
        if self.directory is None:
            return self.metrics.render(open_sessions)
        self._publish()
        total = Metrics()
        workers = 0
        for path in self.directory.glob("worker-*.json"):
            pid = int(path.stem.removeprefix("worker-"))
            if not _alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink()  # a worker that died (Granian starts another)
                continue
            try:
                total.add(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue  # being replaced right now: the next scrape has it
            workers += 1
        return total.render(open_sessions, workers)

    async def _publish_loop(self) -> None:
        while True:
            self._publish()
            await asyncio.sleep(_INTERVAL)

    def _publish(self) -> None:
        assert self._own is not None  # noqa: S101 - only with a directory
        staging = self._own.with_suffix(".tmp")
        try:
            staging.write_bytes(orjson.dumps(self.metrics.snapshot()))
            staging.replace(self._own)  # atomic: a reader sees the old or the new
        except OSError as exc:
            logger.warning("metrics not shared with the other workers: %s", exc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
