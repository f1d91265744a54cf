"""The session store as the request path calls it: each call timed and its failure
counted, a store that cannot be reached answered with 503 (and a full one too), in one
place for every caller."""

from __future__ import annotations

import contextlib
import logging
import time

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

    def _failed(self, op: str, exc: Exception) -> Exception:
        """The answer to a store call that failed (the failure counted and logged)."""
        if isinstance(exc, StoreFull):
            self.metrics.refused.inc("sessions_full")
            return TooManySessions()
        self.metrics.store_errors.inc(op)
        logger.warning("session store unavailable: %s", exc)
        return StoreDown()

    async def resolve(self, session_id: str) -> SessionRecord | None:
        """The session's record (its idle TTL renewed); None when unknown or expired."""
        started = time.perf_counter()
        try:
            record = await self.store.resolve(session_id)
        except StoreUnavailable as exc:
            raise self._failed("resolve", exc) from None
        self.metrics.store_latency.observe(time.perf_counter() - started, "resolve")
        return record

    async def create(self, session_id: str, record: SessionRecord) -> None:
        started = time.perf_counter()
        try:
            await self.store.create(session_id, record)
        except (StoreUnavailable, StoreFull) as exc:
            raise self._failed("create", exc) from None
        self.metrics.store_latency.observe(time.perf_counter() - started, "create")
        self.metrics.sessions_created.inc()

    async def bind(self, session_id: str, backend: str, binding: Binding) -> None:
        started = time.perf_counter()
        try:
            await self.store.bind(session_id, backend, binding)
        except StoreUnavailable as exc:
            raise self._failed("bind", exc) from None
        self.metrics.store_latency.observe(time.perf_counter() - started, "bind")

    async def forget(self, session_id: str) -> None:
        """Delete the session, if the store can be reached (it expires otherwise)."""
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete(session_id)
