"""Server-sent events through the federating gateway: parsing, id namespacing, rewriting.

- Requests a backend sends the client (sampling, elicitation, roots) get a gateway id,
  ``"<backend>~<original id as JSON>"``, so that the client's answer, whichever gateway
  replica it reaches, goes back to the backend that asked, with its own id; a backend's
  ``notifications/cancelled`` for such a request names it by the same gateway id.
- A client's one GET stream merges the GET streams of its backend sessions; each event id
  becomes the composite ``<backend>=<id>`` of every backend seen so far (``;``-separated,
  percent-escaped), so ``Last-Event-ID`` resumes each backend where it left off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

import orjson

from ..sse import EventSplitter

_ID_MARK = "~"


def wrap_id(backend: str, raw_id: Any) -> str:
    return f"{backend}{_ID_MARK}{orjson.dumps(raw_id).decode()}"


def unwrap_id(value: Any) -> tuple[str, Any] | None:
    """The backend and its own id for a gateway id; None for any other id."""
    if not isinstance(value, str) or _ID_MARK not in value:
        return None
    backend, _, original = value.partition(_ID_MARK)
    try:
        return backend, orjson.loads(original)
    except orjson.JSONDecodeError:
        return None


def compose_ids(last: dict[str, str]) -> str:
    return ";".join(f"{quote(b, safe='')}={quote(i, safe='')}" for b, i in last.items())


class BadEventId(ValueError):
    """A Last-Event-ID part that no backend can have sent as an event id."""


def valid_event_id(value: str) -> bool:
    """Whether `value` can be an SSE event id: an ``id:`` line ends at CR or LF, and an
    id holding NUL is ignored by clients; no other control character is accepted either,
    as the id goes to the backend in a header."""
    return not any(c < " " or c == "\x7f" for c in value)


def parse_ids(value: str | None) -> dict[str, str]:
    """A composite Last-Event-ID back to backend -> that backend's event id; BadEventId
    when a part decodes to something that cannot be an event id."""
    out: dict[str, str] = {}
    if not value:
        return out
    for part in value.split(";"):
        backend, eq, event_id = part.partition("=")
        if eq and backend:
            decoded = unquote(event_id, errors="strict")
            if not valid_event_id(decoded):
                raise BadEventId(f"Last-Event-ID part for {unquote(backend)!r} is not an event id")
            out[unquote(backend)] = decoded
    return out


Publish = Callable[[str, Any], bool]
"""Rewrites one backend's message for the client in place (resource URIs made public);
True when it changed something."""


def rewrite_event(
    event: bytes,
    backend: str,
    last_ids: dict[str, str] | None = None,
    notified: Callable[[str], None] | None = None,
    publish: Publish | None = None,
    wrap: bool = True,
) -> bytes:
    """One backend event as the client gets it: a request's id wrapped and, on a merged
    stream (`last_ids` given), the event id made composite; `notified` hears the method
    of every notification; `publish` maps what the message names (resource URIs); `wrap`:
    give the backend's requests gateway ids (not in the stateless era: no session to
    answer through)."""
    lines = event.split(b"\n")
    data = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
    out: list[bytes] = []
    event_id: str | None = None
    for line in lines:
        if line.startswith(b"id:"):
            event_id = line[3:].removeprefix(b" ").decode("utf-8", "replace")
        elif not line.startswith(b"data:"):
            out.append(line)
    payload = b"\n".join(data)
    if payload.strip():
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            message = None
        changed = publish is not None and publish(backend, message)
        if isinstance(message, dict) and "method" in message:
            params = message.get("params")
            if "id" in message:
                if wrap:
                    message["id"] = wrap_id(backend, message["id"])
                    payload = orjson.dumps(message)
            elif (
                message["method"] == "notifications/cancelled"
                and isinstance(params, dict)
                and "requestId" in params
            ):
                # A backend cancels requests it sent the client (a server never cancels
                # the client's): the client knows that request by its gateway id.
                params["requestId"] = wrap_id(backend, params["requestId"])
                payload = orjson.dumps(message)
            elif notified is not None:
                notified(str(message["method"]))
        if changed:
            payload = orjson.dumps(message)
    if last_ids is not None and event_id is not None:
        last_ids[backend] = event_id
        event_id = compose_ids(last_ids)
    if event_id is not None:
        out.append(b"id: " + event_id.encode("utf-8"))
    if data:
        out.extend(b"data: " + ln for ln in payload.split(b"\n"))
    return b"\n".join(out) + b"\n\n"


def events_transform(
    backend: str,
    heard: Callable[[str, str], None],
    limit: int,
    publish: Publish | None = None,
    *,
    wrap: bool = True,
) -> Callable[[bytes], bytes]:
    """A relay transform for one backend's answer as an event stream: requests to the
    client get gateway ids (their answers come back to this backend); `heard` hears
    (backend, method) of every notification; `publish` maps resource URIs; an event over
    `limit` bytes breaks it off."""
    splitter = EventSplitter(limit)

    def notified(method: str) -> None:
        heard(backend, method)

    def transform(chunk: bytes) -> bytes:
        return b"".join(
            rewrite_event(event, backend, None, notified, publish, wrap)
            for event in splitter.feed(chunk)
        )

    return transform


def close_queue(queue: asyncio.Queue[Any]) -> None:
    """Put the end marker (None) on `queue` at once: what is still queued is dropped
    (its consumer is leaving or was told to)."""
    while True:
        try:
            queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            queue.get_nowait()
