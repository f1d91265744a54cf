"""Coarse timers for the hot path: arming and disarming one costs a dict operation.

``loop.call_later`` allocates a timer handle (a libuv timer under uvloop) and costs
several microseconds per request; most hot-path timers (an upstream's head timeout,
the delay before watching for a client disconnect) are disarmed long before they are
due. A :class:`Sweeper` keeps them in a dict and one task wakes every ``tick`` seconds
to fire the ones that are due, so each fires within ``tick`` of its time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable


class Sweeper:
    """Due-time callbacks keyed by any hashable, fired by one periodic task."""

    __slots__ = ("_due", "_task", "tick")

    def __init__(self, tick: float = 0.025) -> None:
        self.tick = tick
        self._due: dict[Hashable, tuple[float, Callable[[], None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Hashable, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback()`` about ``delay`` seconds from now unless ``key`` is removed."""
        self._due[key] = (time.monotonic() + delay, callback)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep())

    def remove(self, key: Hashable) -> None:
        self._due.pop(key, None)

    async def _sweep(self) -> None:
        try:
            while self._due:
                await asyncio.sleep(self.tick)
                now = time.monotonic()
                fired = [(k, cb) for k, (due, cb) in self._due.items() if due <= now]
                for key, callback in fired:
                    del self._due[key]
                    callback()
        finally:
            self._task = None

    def close(self) -> None:
        self._due.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None
