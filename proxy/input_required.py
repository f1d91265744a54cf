"""A handshake-era server's requests to its client, turned into a 2026-07-28
``InputRequiredResult`` (:mod:`proxy.bridging`).

A server of the handshake era asks its client in the middle of a call (elicitation,
sampling, roots) and waits for the answer on the same session. A stateless client cannot
be asked that way: it gets an ``InputRequiredResult`` naming what is asked, and retries
the request with ``inputResponses`` and the ``requestState`` it was given. Here:

- an :class:`Exchange` is one call to the backend: its answer stream read into a queue,
  the server's requests still unanswered (:attr:`Exchange.pending`), and every answer the
  client has given (:attr:`Exchange.answers`), keyed by a *fingerprint* of the question
  (its method and params, and which time the call asks it);
- the requestState (sealed, :mod:`proxy.request_state`) carries those answers, which
  questions the input request keys stand for, whose call it was and a digest of the
  request. A retry that reaches the gateway still holding the exchange answers the
  server's waiting requests and reads on; one that reaches another worker or replica (or
  comes after the exchange was let go) sends the request again and answers each question
  the server asks again from the state, without asking the client twice.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import secrets
from typing import TYPE_CHECKING, Any, Final

import orjson

from . import sse
from .upstream.errors import UpstreamError

if TYPE_CHECKING:
    from .upstream.connection import UpstreamResponse

__all__ = (
    "ASKABLE",
    "ASKING_METHODS",
    "END",
    "QUEUED",
    "Exchange",
    "input_responses",
    "request_digest",
    "without_inputs",
)

ASKING_METHODS: Final = frozenset({"tools/call", "prompts/get", "resources/read"})
"""The requests a 2026-07-28 server may answer with an InputRequiredResult."""
ASKABLE: Final = {
    "elicitation/create": "elicitation",
    "sampling/createMessage": "sampling",
    "roots/list": "roots",
}
"""A server's requests that become input requests, and the capability each needs."""
SETTLE: Final = 0.05
"""Seconds the gateway waits, after the server asks, for its other questions of the
same moment (a server may ask several at once), before answering the client."""
QUEUED: Final = 256
"""Messages of a held exchange's stream kept before the backend is made to wait."""
_INPUT_KEYS: Final = ("inputResponses", "requestState")


class _End:
    """The stream ended (`error`: why, when it broke)."""

    __slots__ = ("error",)

    def __init__(self, error: str | None = None) -> None:
        self.error = error


END: Final = _End


class Exchange:
    """One call to the backend that may ask the client (see the module's docstring)."""

    def __init__(
        self,
        response: UpstreamResponse,
        backend_id: str,
        answers: dict[str, Any],
        asked: int,
        max_event: int,
        keys: dict[str, str] | None = None,
    ) -> None:
        self.response = response
        self.backend_id = backend_id
        """The call's id on the backend session (and its progress token)."""
        self.answers = answers
        """What the client answered, by fingerprint."""
        self.pending: dict[str, tuple[Any, str, str, Any]] = {}
        """Questions to put to the client: key → (the server's request id, fingerprint,
        method, params)."""
        self.asked = asked
        """Input request keys given so far (a new key never repeats an old one)."""
        self._keys = keys or {}
        """Keys the client was given already, by fingerprint: a question asked again (the
        request sent again) keeps its key."""
        self.token = ""
        """Names the exchange while it waits for the client's retry."""
        self._seen: collections.Counter[str] = collections.Counter()
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUED)
        self.reader = asyncio.create_task(self._read(max_event))

    def fingerprint(self, message: dict[str, Any]) -> str:
        """Which question `message` is: its method and params (without ``_meta``), and
        the how-many-th time this call asks it."""
        params = message.get("params")
        if isinstance(params, dict):
            params = {k: v for k, v in params.items() if k != "_meta"}
        body = orjson.dumps({"m": message.get("method"), "p": params}, option=orjson.OPT_SORT_KEYS)
        base = hashlib.sha256(body).hexdigest()[:24]
        self._seen[base] += 1
        return f"{base}.{self._seen[base]}"

    def ask(self, message: dict[str, Any], fingerprint: str) -> None:
        """Put the server's request `message` to the client."""
        method = message["method"]
        key = self._keys.get(fingerprint)
        if key is None:
            self.asked += 1
            key = f"{ASKABLE[method]}-{self.asked}"
        params = message.get("params")
        self.pending[key] = (message["id"], fingerprint, method, {} if params is None else params)

    def input_requests(self) -> dict[str, Any]:
        return {key: {"method": m, "params": p} for key, (_, _, m, p) in self.pending.items()}

    def hold(self) -> str:
        """A new name for the exchange while it waits (an old state cannot resume it)."""
        self.token = secrets.token_hex(16)
        return self.token

    @property
    def alive(self) -> bool:
        return not self.reader.done()

    def close(self) -> None:
        self.reader.cancel()
        self.response.close()

    async def _read(self, max_event: int) -> None:
        """The backend's messages into the queue, then :data:`END`."""
        response = self.response
        ctype = response.header(b"content-type") or b""
        try:
            if not ctype.startswith(b"text/event-stream"):
                try:
                    found: Any = orjson.loads(await response.aread(max_event))
                except orjson.JSONDecodeError:
                    found = None
                if isinstance(found, dict) and ("result" in found or "error" in found):
                    await self.queue.put(found)
                    await self.queue.put(_End())
                else:
                    await self.queue.put(_End(f"the backend answered HTTP {response.status}"))
                return
            splitter = sse.EventSplitter(max_event)
            while chunk := await response.read():
                for event in splitter.feed(chunk):
                    message = sse.json_of(event)
                    if isinstance(message, dict):
                        await self.queue.put(message)
            await self.queue.put(_End())
        except (UpstreamError, sse.EventTooLarge) as exc:
            await self.queue.put(_End(str(exc)))
        finally:
            response.close()


def without_inputs(message: dict[str, Any]) -> dict[str, Any]:
    """`message` without ``inputResponses`` and ``requestState`` (a handshake-era server
    knows neither)."""
    params = message.get("params")
    if not isinstance(params, dict) or not any(k in params for k in _INPUT_KEYS):
        return message
    return {**message, "params": {k: v for k, v in params.items() if k not in _INPUT_KEYS}}


def request_digest(message: dict[str, Any]) -> str:
    """What a retry must repeat of the request it retries: method and params, without
    ``_meta`` and the inputs."""
    params = message.get("params")
    if isinstance(params, dict):
        params = {k: v for k, v in params.items() if k != "_meta" and k not in _INPUT_KEYS}
    body = orjson.dumps({"m": message.get("method"), "p": params}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()[:32]


def input_responses(params: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The retry's ``inputResponses`` (an object of objects; none: empty), or None when
    malformed."""
    found = params.get("inputResponses", {})
    if not isinstance(found, dict) or not all(isinstance(v, dict) for v in found.values()):
        return None
    return found
