"""Results a 2026-07-28 server said may be kept (``ttlMs``, ``cacheScope``), served again
by the gateway instead of asking the backend (:mod:`proxy.forward`).

- **What.** The answers to ``server/discover``, the four list methods and
  ``resources/read`` from a backend of the stateless era: a JSON answer whose result is
  complete (``resultType`` absent or ``complete``) and says ``ttlMs`` > 0 and a
  ``cacheScope``. Never a request that carries ``inputResponses`` or ``requestState``
  (an input-required retry), never an ``input_required`` result, never an error.
- **For whom.** A ``public`` result is kept for every caller; a ``private`` one for its
  authorization context only: the principal with authentication on, else the
  ``Authorization`` the request carries up (no header: the anonymous context).
- **Where.** In memory, least recently used first out past ``response_cache_bytes``; with
  the Redis store in Redis too (``<prefix>c:…``, expiring with the result), so every
  replica serves what one fetched, and each process keeps a copy of what it served
  (asked of Redis only when it has none).
- **Until when.** ``ttlMs`` from when the backend answered; a hit says how much is left.
  A ``notifications/*/list_changed`` or ``notifications/resources/updated`` that passes
  through the gateway on a ``subscriptions/listen`` stream drops the backend's entries
  of the methods it concerns (a generation number per backend and method, kept beside
  the entries: in Redis, and every process told through the store's event channel to
  drop its copies).
- The key is the backend, the method, the params (without ``_meta``) and the request's
  protocol version and client capabilities. A federated endpoint keeps its merged
  answers under its own name (:mod:`proxy.federation.dispatch`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from .modern import ENVELOPE_PREFIX
from .sessions import StoreUnavailable
from .sse import EventSplitter, json_of

if TYPE_CHECKING:
    from .metrics import Metrics
    from .request import Request
    from .sessions.redis import RedisSessionStore

__all__ = (
    "CACHED_METHODS",
    "MAX_ENTRY",
    "Key",
    "ResponseCache",
    "Stored",
    "cacheable",
    "context_of",
)

logger = logging.getLogger("proxy.response_cache")

CACHED_METHODS: Final = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)
CHANGES: Final = {
    "notifications/tools/list_changed": ("tools/list",),
    "notifications/prompts/list_changed": ("prompts/list",),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
    "notifications/resources/updated": ("resources/read",),
}
"""Which methods' entries a notification from the backend makes stale."""
_STALE_EVENT: Final = "cache-stale"
DECLINED_SECONDS: Final = 60.0
"""How long an answer that may not be kept stops the next ones from being read whole."""
DECLINED_KEPT: Final = 4096
FOLLOW_SECONDS: Final = 5.0
"""How long a request waits for another fetching the same answer."""
MAX_ENTRY: Final = 1 << 20
"""A result larger than this (bytes) is not kept."""
_INPUT_KEYS: Final = ("inputResponses", "requestState")
_HINT_KEYS: Final = ("ttlMs", "cacheScope")


class Key:
    """Where one request's answer is kept: shared (`public`) or the caller's (`private`)."""

    __slots__ = ("backend", "method", "private", "public")

    def __init__(self, backend: str, method: str, public: str, private: str) -> None:
        self.backend = backend
        self.method = method
        self.public = public
        self.private = private


class Stored:
    """A kept result: its JSON without the hints, its scope and when it lapses."""

    __slots__ = ("body", "expires", "generation", "method", "scope")

    def __init__(
        self, body: bytes, scope: str, expires: int, generation: int, method: str = ""
    ) -> None:
        self.body = body
        """The result object's JSON, without ``ttlMs`` and ``cacheScope``."""
        self.scope = scope
        self.expires = expires
        """Unix milliseconds."""
        self.generation = generation
        self.method = method

    def encode(self) -> bytes:
        return b"%d %d %s\n" % (self.generation, self.expires, self.scope.encode()) + self.body

    @classmethod
    def decode(cls, data: bytes | str) -> Stored | None:
        if isinstance(data, str):  # the Redis client decodes what it reads
            data = data.encode()
        head, sep, body = data.partition(b"\n")
        parts = head.split(b" ")
        if not sep or len(parts) != 3 or parts[2] not in (b"public", b"private"):
            return None
        try:
            return cls(body, parts[2].decode(), int(parts[1]), int(parts[0]))
        except ValueError:
            return None

    def answer(self, request_id: bytes, now_ms: int) -> bytes:
        """The JSON-RPC answer for a request of id `request_id` (its exact JSON text),
        the time left as ``ttlMs``."""
        hints = b'{"ttlMs":%d,"cacheScope":"%s"' % (
            max(0, self.expires - now_ms),
            self.scope.encode(),
        )
        rest = self.body[1:]
        result = hints + (b"}" if rest == b"}" else b"," + rest)
        return b'{"jsonrpc":"2.0","id":' + request_id + b',"result":' + result + b"}"


def cacheable(message: Any) -> tuple[bytes, str, int] | None:
    """What of a backend's answer may be kept: the result without its hints, its scope
    and ``ttlMs``; None when it may not."""
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict) or "error" in message:
        return None
    ttl, scope = result.get("ttlMs"), result.get("cacheScope")
    kind = result.get("resultType", "complete")
    if kind != "complete" or scope not in ("public", "private"):
        return None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        return None
    body = orjson.dumps({k: v for k, v in result.items() if k not in _HINT_KEYS})
    if len(body) > MAX_ENTRY:
        return None
    return body, scope, ttl


class ResponseCache:
    """The kept results (see the module's docstring)."""

    def __init__(
        self, limit: int, metrics: Metrics, redis: RedisSessionStore | None = None
    ) -> None:
        self.limit = limit
        self.metrics = metrics
        self.redis = redis
        self._entries: collections.OrderedDict[str, Stored] = collections.OrderedDict()
        self._size = 0
        self._generations: dict[str, int] = {}
        self._leaders: dict[str, asyncio.Future[None]] = {}
        self._declined: dict[str, float] = {}
        """Keys whose last answer said it may not be kept, and until when that holds."""
        if redis is not None:
            redis.event_listeners.append(self._on_event)
        """Answers being fetched, by public key: the requests for the same wait."""

    def key(self, backend: str, method: str, params: Any, context: str) -> Key | None:
        """The request's key; None when its answer is never kept (it carries inputs)."""
        if not isinstance(params, dict):
            params = {}
        if any(k in params for k in _INPUT_KEYS):
            return None
        meta = params.get("_meta")
        envelope = (
            {k: v for k, v in meta.items() if k.startswith(ENVELOPE_PREFIX)}
            if isinstance(meta, dict)
            else {}
        )
        plain = {k: v for k, v in params.items() if k != "_meta"}
        what = orjson.dumps([backend, method, plain, envelope], option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(what).hexdigest()[:40]
        context_digest = hashlib.sha256(context.encode()).hexdigest()[:24]
        return Key(backend, method, f"{digest}:public", f"{digest}:{context_digest}")

    # -- reading and writing ----------------------------------------------------------------

    def declines(self, key: Key) -> bool:
        """Whether the last answer for `key` said it may not be kept (within
        :data:`DECLINED_SECONDS`): the next is relayed as it comes, not looked up nor read
        whole."""
        until = self._declined.get(key.public)
        return until is not None and until > time.monotonic()

    def decline(self, key: Key) -> None:
        """The backend's answer for `key` may not be kept (no terms, or ``ttlMs: 0``)."""
        if len(self._declined) >= DECLINED_KEPT:
            self._declined.clear()  # keys come from clients: never an unbounded memory
        self._declined[key.public] = time.monotonic() + DECLINED_SECONDS

    async def get(self, key: Key) -> Stored | None:
        """The kept answer for `key` (its own context's, else the shared one), or None.
        While another request of this worker fetches the same answer, wait for it (at
        most :data:`FOLLOW_SECONDS`) rather than ask the backend too."""
        found = await self._find(key)
        leader = self._leaders.get(key.public) if found is None else None
        if leader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(leader), FOLLOW_SECONDS)
            found = await self._find(key)
        outcome = "hit" if found is not None else "miss"
        self.metrics.response_cache.inc(key.method, outcome)
        if found is not None:
            self.metrics.response_cache_bytes.inc(key.method, amount=len(found.body))
        return found

    def lead(self, key: Key) -> bool:
        """This request fetches `key`'s answer; the others wait for it. False when one
        already does."""
        if key.public in self._leaders:
            return False
        self._leaders[key.public] = asyncio.get_running_loop().create_future()
        return True

    def release(self, key: Key) -> None:
        """The leading request for `key` is done (kept or not): the others go on."""
        leader = self._leaders.pop(key.public, None)
        if leader is not None and not leader.done():
            leader.set_result(None)

    async def _find(self, key: Key) -> Stored | None:
        """In memory; with Redis, what is not in memory (this process's near copies)
        is looked for there, and a copy kept."""
        now = _now_ms()
        found = self._near(key, now)
        if found is None and self.redis is not None:
            found = await self._redis_get(key, now)
            if found is not None:
                name = key.public if found.scope == "public" else key.private
                self._remember(key, name, found.body, found.scope, found.expires)
        return found

    def _near(self, key: Key, now: int) -> Stored | None:
        generation = self._generations.get(_generation_key(key), 0)
        for name in (key.public, key.private):
            stored = self._entries.get(name)
            if stored is None:
                continue
            if stored.expires <= now or stored.generation != generation:
                self._drop(name)
                continue
            self._entries.move_to_end(name)
            return stored
        return None

    def _remember(self, key: Key, name: str, body: bytes, scope: str, expires: int) -> None:
        generation = self._generations.get(_generation_key(key), 0)
        self._drop(name)
        self._entries[name] = Stored(body, scope, expires, generation, key.method)
        self._size += len(body)
        while self._size > self.limit and self._entries:
            evicted = self._drop(next(iter(self._entries)))
            self.metrics.response_cache_evictions.inc(evicted)
        self.metrics.response_cache_size.set(value=self._size)

    async def put(self, key: Key, body: bytes, scope: str, ttl_ms: int) -> None:
        name = key.public if scope == "public" else key.private
        now = _now_ms()
        if self.redis is not None:
            await self._redis_put(key, name, body, scope, now, ttl_ms)
        self._remember(key, name, body, scope, now + ttl_ms)
        self.metrics.response_cache.inc(key.method, "stored")

    async def changed(self, backend: str, notification: str) -> None:
        """The backend said `notification`: its entries of the methods concerned go."""
        for method in CHANGES.get(notification, ()):
            await self.stale(backend, method)

    async def stale(self, backend: str, method: str) -> None:
        """`backend`'s entries of `method` go (on every replica, with Redis: there, and
        every process's copies, told through the store's event channel)."""
        name = _generation_key(Key(backend, method, "", ""))
        self._generations[name] = self._generations.get(name, 0) + 1
        if self.redis is None:
            return
        try:
            await self.redis.execute(("incr", (self.redis.key(name),)))
            await self.redis.publish_event(f"{_STALE_EVENT}\t{name}")
        except StoreUnavailable as exc:  # the TTL still holds
            self.metrics.store_errors.inc("cache")
            logger.warning("response cache: could not note a change: %s", type(exc).__name__)

    def close(self) -> None:
        if self.redis is not None and self._on_event in self.redis.event_listeners:
            self.redis.event_listeners.remove(self._on_event)

    def _on_event(self, text: str) -> None:
        """Entries went stale at another process (or this one): the copies here go too."""
        kind, _, name = text.partition("\t")
        if kind == _STALE_EVENT and name.startswith("cg:"):
            self._generations[name] = self._generations.get(name, 0) + 1

    def watcher(self, backend: str) -> Any:
        """A ``transform`` for a ``subscriptions/listen`` stream of `backend`'s: passes
        every byte on as it came, and notes each change the backend announces."""
        splitter = EventSplitter(MAX_ENTRY)
        tasks: set[asyncio.Task[None]] = set()

        def transform(chunk: bytes) -> bytes:
            try:
                events = splitter.feed(chunk)
            except ValueError:
                return chunk
            for event in events:
                message = json_of(event)
                method = message.get("method") if isinstance(message, dict) else None
                if isinstance(method, str) and method in CHANGES:
                    task = asyncio.get_running_loop().create_task(self.changed(backend, method))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            return chunk

        return transform

    # -- the two places -------------------------------------------------------------------

    def _drop(self, name: str) -> str:
        """Forget the entry `name`; its method ("" when there was none)."""
        stored = self._entries.pop(name, None)
        if stored is None:
            return ""
        self._size -= len(stored.body)
        self.metrics.response_cache_size.set(value=self._size)
        return stored.method

    async def _redis_get(self, key: Key, now: int) -> Stored | None:
        assert self.redis is not None  # noqa: S101 - the caller checked
        names = [
            self.redis.key(_generation_key(key)),
            self.redis.key(_entry_key(key, key.public)),
            self.redis.key(_entry_key(key, key.private)),
        ]
        try:
            ((generation, *entries),) = await self.redis.execute(("mget", (names,)))
        except StoreUnavailable as exc:  # ask the backend
            self.metrics.store_errors.inc("cache")
            logger.warning("response cache: could not read: %s", type(exc).__name__)
            return None
        current = int(generation) if generation is not None else 0
        for data in entries:
            stored = None if data is None else Stored.decode(data)
            if stored is not None and stored.expires > now and stored.generation == current:
                return stored
        return None

    async def _redis_put(
        self, key: Key, name: str, body: bytes, scope: str, now: int, ttl_ms: int
    ) -> None:
        assert self.redis is not None  # noqa: S101 - the caller checked
        try:
            (generation,) = await self.redis.execute(
                ("get", (self.redis.key(_generation_key(key)),))
            )
            current = int(generation) if generation is not None else 0
            stored = Stored(body, scope, now + ttl_ms, current)
            entry = self.redis.key(_entry_key(key, name))
            await self.redis.execute(
                ("set", (entry, stored.encode())), ("pexpire", (entry, ttl_ms))
            )
        except StoreUnavailable as exc:  # nothing is kept
            self.metrics.store_errors.inc("cache")
            logger.warning("response cache: could not write: %s", type(exc).__name__)


def context_of(request: Request) -> str:
    """Whose a ``private`` result is: the principal's, else that of the ``Authorization``
    the request carries (none: the anonymous context)."""
    principal = request.principal
    if principal is not None:
        return "principal:" + principal.key
    given = [v for n, v in request.scope["headers"] if n == b"authorization"]
    if not given:
        return "anonymous"
    return "authorization:" + hashlib.sha256(b"\0".join(given)).hexdigest()


def _slot(key: Key) -> str:
    """The hash tag the keys of one backend and method share (one Redis Cluster slot)."""
    return "{" + f"{hashlib.sha256(key.backend.encode()).hexdigest()[:16]}:{key.method}" + "}"


def _generation_key(key: Key) -> str:
    return f"cg:{_slot(key)}"


def _entry_key(key: Key, name: str) -> str:
    return f"c:{_slot(key)}:{name}"


def _now_ms() -> int:
    return int(time.time() * 1000)
