"""In-process cache of resolved session records in front of a shared store (no I/O here).

The store does the I/O (fetches, pub/sub, background TTL renewal) and tells the cache what
happened; the cache only decides. A record is served from the cache only when all hold:

* the invalidation feed is live: subscribed, and heard from within ``LIVENESS_WINDOW``
  (a heartbeat answers every ``HEARTBEAT_INTERVAL``), so a session ended on another gateway
  is evicted within pub/sub delivery time, and a silent or frozen link stops the cache;
* the entry is younger than ``max_age`` (a backstop for changes made outside the gateway);
* the store's TTL was renewed by this process less than ``SERVE_WITHIN`` x TTL ago, so the
  key outlives the answer by at least a third of the TTL: a cached entry never outlives
  what the store holds.

Each hit marks the session as used; :meth:`SessionCache.due_renewals` hands the store the
sessions whose last renewal is older than ``RENEW_AFTER`` x TTL, for one pipelined batch.
A session used at time t is therefore renewed at or after t, and lives until at least
t + TTL, as with the memory store.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from . import SessionRecord

__all__ = (
    "HEARTBEAT_INTERVAL",
    "LIVENESS_WINDOW",
    "RENEW_AFTER",
    "SERVE_WITHIN",
    "FetchToken",
    "SessionCache",
)

HEARTBEAT_INTERVAL = 0.25  # seconds between PINGs on the subscription
LIVENESS_WINDOW = 1.0  # the feed counts as live this long after it was last heard
RENEW_AFTER = 1 / 3  # renew a used session once its last renewal is this old (x TTL)
SERVE_WITHIN = 2 / 3  # never serve an entry whose last renewal is older (x TTL)
# A fetch that started this long ago is too old to fill the cache (tombstones are kept
# this long; store round trips are bounded by a ~1 s socket timeout).
_FETCH_HORIZON = 10.0


class FetchToken(NamedTuple):
    """Taken before a store round trip; a fill is refused if anything changed since."""

    started: float  # clock() before the commands were sent (also the renewal time)
    epoch: int  # flush generation at that moment


class _Entry:
    __slots__ = ("fetched", "record", "renewed")

    def __init__(self, record: SessionRecord, fetched: float, renewed: float) -> None:
        self.record = record
        self.fetched = fetched
        self.renewed = renewed


class SessionCache:
    """A bounded LRU of session records, served only while it provably cannot be stale.

    :param size: most entries held; 0 disables the cache (every lookup misses).
    :param max_age: seconds an entry may be served after it was fetched.
    :param ttl: the store's idle TTL in seconds.
    :param clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        size: int,
        max_age: float,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.max_age = max_age
        self.ttl = ttl
        self.renew_after = ttl * RENEW_AFTER
        self.serve_within = ttl * SERVE_WITHIN
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._used: dict[str, float] = {}  # hit since the last renewal -> that renewal's time
        self._tombstones: dict[str, float] = {}  # invalidated id -> when
        self._epoch = 0
        self._subscribed = False
        self._heard = float("-inf")
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        state = "live" if self.live() else "bypassed"
        return (
            f"<SessionCache {state} entries={len(self._entries)}/{self.size} "
            f"pending_renewals={len(self._used)} hits={self.hits} misses={self.misses}>"
        )

    def __len__(self) -> int:
        return len(self._entries)

    def live(self, now: float | None = None) -> bool:
        """Whether invalidations are known to arrive (the cache may serve and fill)."""
        if not self._subscribed:
            return False
        return (self.clock() if now is None else now) - self._heard < LIVENESS_WINDOW

    # -- lookups -------------------------------------------------------------------------

    def get(self, session_id: str) -> SessionRecord | None:
        """The cached record if it may be served (the hit is noted for renewal), else None."""
        entry = self._entries.get(session_id)
        if entry is None:
            self.misses += 1
            return None
        now = self.clock()
        if (
            not self._subscribed
            or now - self._heard >= LIVENESS_WINDOW
            or now - entry.fetched >= self.max_age
            or now - entry.renewed >= self.serve_within
        ):
            self.misses += 1
            return None
        self._entries.move_to_end(session_id)
        if session_id not in self._used:
            self._used[session_id] = entry.renewed
        self.hits += 1
        return entry.record

    def begin(self) -> FetchToken:
        """Call right before a round trip that reads a record and renews its TTL."""
        return FetchToken(self.clock(), self._epoch)

    def fill(self, session_id: str, record: SessionRecord, token: FetchToken) -> None:
        """Store what a round trip begun with ``token`` read (and renewed), if still safe."""
        # That round trip renewed the TTL: earlier hits are covered.
        self._used.pop(session_id, None)
        if self.size <= 0 or token.epoch != self._epoch:
            return  # flushed (e.g. the feed dropped) since the round trip began
        now = self.clock()
        if not self.live(now) or now - token.started >= _FETCH_HORIZON:
            return
        if self._tombstones.get(session_id, float("-inf")) >= token.started:
            return  # ended or changed while the round trip was under way
        self._entries[session_id] = _Entry(record, token.started, token.started)
        self._entries.move_to_end(session_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    # -- invalidation ----------------------------------------------------------------------

    def invalidate(self, session_id: str) -> None:
        """The session ended or changed (here or elsewhere): evict it, and refuse fills by
        round trips already under way. Its pending renewal goes too: the write that
        invalidated it deleted the key or renewed its TTL after every hit noted here."""
        self._entries.pop(session_id, None)
        self._used.pop(session_id, None)
        self._tombstones[session_id] = self.clock()

    def flush(self) -> None:
        """Forget every entry; round trips under way will not fill."""
        self._entries.clear()
        self._tombstones.clear()
        self._epoch += 1

    def subscribed(self) -> None:
        """The subscription is confirmed: whatever was missed before is flushed."""
        self.flush()
        self._subscribed = True
        self._heard = self.clock()

    def heard(self, at: float | None = None) -> None:
        """Something (a message or a heartbeat answer) arrived on the subscription (at
        ``at``: with several subscriptions, when the one heard longest ago was heard)."""
        self._heard = self.clock() if at is None else at

    def unsubscribed(self) -> None:
        """The subscription is lost: bypass and flush until :meth:`subscribed`."""
        self._subscribed = False
        self.flush()

    # -- TTL renewal ---------------------------------------------------------------------

    def due_renewals(self) -> dict[str, float]:
        """Sessions used since their last renewal, which is older than ``RENEW_AFTER`` x TTL
        (id -> that renewal's time); they leave the pending set (hand them back with
        :meth:`renewal_failed`)."""
        now = self.clock()
        limit = now - self.renew_after
        due = {sid: renewed for sid, renewed in self._used.items() if renewed <= limit}
        for sid in due:
            del self._used[sid]
        horizon = now - _FETCH_HORIZON
        for sid in [s for s, at in self._tombstones.items() if at < horizon]:
            del self._tombstones[sid]
        return due

    def renewed(self, session_id: str, token: FetchToken, alive: bool) -> None:
        """A background renewal begun with ``token`` answered (``alive``: the key existed)."""
        if not alive:
            self.invalidate(session_id)
            return
        entry = self._entries.get(session_id)
        if entry is not None and token.started > entry.renewed:
            entry.renewed = token.started

    def renewal_failed(self, due: dict[str, float]) -> None:
        """A background renewal did not get through: try again on the next tick, unless
        the key has expired by now anyway."""
        limit = self.clock() - self.ttl
        for sid, renewed in due.items():
            if renewed > limit:
                self._used.setdefault(sid, renewed)
