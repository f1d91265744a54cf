"""The answer to one request that the gateway writes itself, message by message (the era
bridges, :mod:`proxy.bridging` and :mod:`proxy.stateless_bridge`): one JSON body when
the answer comes alone, an event stream once anything has to go before it (progress, a
question for the client)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from .responses import send_bytes
from .sse import frame

if TYPE_CHECKING:
    from ._types import Send

__all__ = ("SSE_HEADERS", "AnswerStream")

SSE_HEADERS: Final = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class AnswerStream:
    """Where one request's answer goes. `headers`: added to the response's head;
    `shown`: rewrites each message before it leaves (in place); `status_of`: the HTTP
    status of an answer that comes alone (200 without it)."""

    __slots__ = ("headers", "send", "shown", "started", "status_of")

    def __init__(
        self,
        send: Send,
        headers: Sequence[tuple[bytes, bytes]] = (),
        *,
        shown: Callable[[dict[str, Any]], object] | None = None,
        status_of: Callable[[dict[str, Any]], int] | None = None,
    ) -> None:
        self.send = send
        self.headers = list(headers)
        self.shown = shown
        self.status_of = status_of
        self.started = False
        """Whether the answer is an event stream (something went before it)."""

    async def event(self, message: dict[str, Any]) -> None:
        if self.shown is not None:
            self.shown(message)
        await self._start()
        await self.send({"type": "http.response.body", "body": frame(message), "more_body": True})

    async def finish(self, answer: dict[str, Any]) -> int:
        """Send the answer: alone as JSON (with the status `status_of` gives it); else as
        the stream's last event."""
        if self.started:
            await self.event(answer)
            await self.end()
            return 200
        if self.shown is not None:
            self.shown(answer)
        status = 200 if self.status_of is None else self.status_of(answer)
        await send_bytes(self.send, status, orjson.dumps(answer), extra=self.headers)
        return status

    async def end(self) -> None:
        """End the answer (an event stream with nothing in it, if nothing went yet)."""
        await self._start()
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _start(self) -> None:
        if not self.started:
            headers = [*SSE_HEADERS, *self.headers]
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})
            self.started = True
