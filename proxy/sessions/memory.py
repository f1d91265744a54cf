"""In-process session store: the embedded default, one worker, no external service."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import Settings
from . import Binding, SessionRecord, StoreFull

# Expired records are swept every this many creations (resolve also drops them lazily).
_SWEEP_EVERY = 1024


class MemorySessionStore:
    """Sessions in a dict; each use renews the idle TTL. At most ``max_sessions`` are
    kept: when full, expired ones are swept, and a new one is refused if none were."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = settings.session_ttl
        self._max = settings.max_sessions
        self._clock = clock
        self._records: dict[str, tuple[SessionRecord, float]] = {}
        self._created = 0
        self.event_listeners: list[Callable[[str], None]] = []

    def __repr__(self) -> str:
        return f"<MemorySessionStore sessions={len(self._records)} ttl={self._ttl}>"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._records.clear()

    async def publish_event(self, text: str) -> None:
        """One process shares this store: its own listeners are everyone."""
        for listener in list(self.event_listeners):
            listener(text)

    async def create(self, session_id: str, record: SessionRecord) -> None:
        self._created += 1
        if self._created % _SWEEP_EVERY == 0:
            self._sweep()
        if len(self._records) >= self._max:
            self._sweep()
            if len(self._records) >= self._max:
                raise StoreFull(f"{self._max} sessions are open")
        self._records[session_id] = (record.copy(), self._clock() + self._ttl)

    async def resolve(self, session_id: str) -> SessionRecord | None:
        entry = self._records.get(session_id)
        if entry is None:
            return None
        now = self._clock()
        record, expires = entry
        if expires <= now:
            del self._records[session_id]
            return None
        self._records[session_id] = (record, now + self._ttl)
        return record

    async def bind(self, session_id: str, backend: str, binding: Binding) -> None:
        entry = self._records.get(session_id)
        if entry is not None:
            entry[0].bindings[backend] = binding

    async def delete(self, session_id: str) -> SessionRecord | None:
        entry = self._records.pop(session_id, None)
        return None if entry is None else entry[0]

    async def ping(self) -> None:
        return None

    async def count(self) -> int:
        self._sweep()
        return len(self._records)

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, (_, expires) in self._records.items() if expires <= now]:
            del self._records[key]
