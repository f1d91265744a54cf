"""The session store as the request path calls it: each call timed and its failure
counted, a store that cannot be reached answered with 503 (and a full one too), in one
place for every caller."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from ..errors import StoreDown, TooManySessions
from ..metrics import Metrics
from . import Binding, SessionRecord, SessionStore, StoreFull, StoreUnavailable

__all__ = ("Records",)

logger = logging.getLogger("proxy.sessions")


class Records:
    """Gateway session records: resolve, create, bind and forget, raising the gateway's
    errors (:class:`~proxy.errors.StoreDown`, :class:`~proxy.errors.TooManySessions`)."""

    __slots__ = ("metrics", "store")

    def __init__(self, store: SessionStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

    @contextlib.contextmanager
    def _call(self, op: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except StoreUnavailable as exc:
            self.metrics.store_errors.inc(op)
            logger.warning("session store unavailable: %s", exc)
            raise StoreDown() from None
        except StoreFull:
            self.metrics.refused.inc("sessions_full")
            raise TooManySessions() from None
        self.metrics.store_latency.observe(time.perf_counter() - started, op)

    async def resolve(self, session_id: str) -> SessionRecord | None:
        """The session's record (its idle TTL renewed); None when unknown or expired."""
        with self._call("resolve"):
            return await self.store.resolve(session_id)

    async def create(self, session_id: str, record: SessionRecord) -> None:
        with self._call("create"):
            await self.store.create(session_id, record)
        self.metrics.sessions_created.inc()

    async def bind(self, session_id: str, backend: str, binding: Binding) -> None:
        with self._call("bind"):
            await self.store.bind(session_id, backend, binding)

    async def forget(self, session_id: str) -> None:
        """Delete the session, if the store can be reached (it expires otherwise)."""
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete(session_id)
