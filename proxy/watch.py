"""Noticing that a client went away, cheaply."""

from __future__ import annotations

import asyncio

from ._types import Receive
from .timers import Sweeper
from .upstream.http1 import CancelToken

__all__ = ("WATCH_DELAY", "ClientWatch")

WATCH_DELAY = 0.05


class ClientWatch:
    """Cancels ``token`` when the client disconnects.

    Watching needs a task parked on ``receive()``; most exchanges finish within a few
    milliseconds, so the task starts only when one is still running after
    ``WATCH_DELAY`` seconds (armed on a coarse :class:`Sweeper`), or at once for a
    response that streams.
    """

    __slots__ = ("_receive", "_sweeper", "_task", "ending", "token")

    def __init__(self, receive: Receive, sweeper: Sweeper) -> None:
        self.token = CancelToken()
        self.ending = False  # the gateway, not the client, ends the stream (drain)
        self._receive = receive
        self._sweeper = sweeper
        self._task: asyncio.Task[None] | None = None
        sweeper.add(self, WATCH_DELAY, self.start)

    def start(self) -> None:
        if self._task is None:
            self._sweeper.remove(self)
            self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        # A GET's or DELETE's empty request message comes first: skip it.
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.token.cancel()

    def end(self) -> None:
        """Stop relaying and end the client's response cleanly (the gateway is draining)."""
        self.ending = True
        self.token.cancel()

    def close(self) -> None:
        self._sweeper.remove(self)
        if self._task is not None:
            self._task.cancel()
