"""The audit log: one JSON line per tool call, prompt get and resource read, and per
refused request (no token, a bad one, policy, rate limit), written off the hot path
(:mod:`proxy.linelog`: a request queues its line's parts; the event loop encodes a tick's
lines together; a thread only writes; a full queue drops and counts,
``proxy_audit_lines_total{fate="dropped"}``). The encoding is compiled
(``proxy.fastpath.encode_audit_lines``, with its pure-Python twin): in Python it was a
third of what auth added to a request. A line never holds a token or a session id (a
fingerprint of it); a call's arguments only as a SHA-256 digest, and only when
``audit.arguments`` is ``digest``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from typing import Any

import orjson

from ..fastpath import encode_audit_lines
from ..linelog import LineLog
from ..metrics import Metrics
from .principal import Principal
from .settings import AuditSettings

__all__ = ("AUDITED", "Audit", "Line", "arguments_digest", "session_fingerprint")

logger = logging.getLogger("proxy.auth")

AUDITED = frozenset({"tools/call", "prompts/get", "resources/read"})
"""Methods with a line for every request (other methods: a line when refused)."""

Line = tuple[
    Principal | None,  # who
    bytes | None,  # the session id
    str,  # the method (or GET, DELETE)
    str | None,  # the tool or prompt name, or the resource URI
    str | None,  # the backend
    str | None,  # the replica
    str,  # the outcome: ok, error, unauthenticated, insufficient_scope, denied, rate_limited
    int,  # the HTTP status
    float,  # seconds taken
    bytes | None,  # the JSON-RPC id, as sent
    str | None,  # the rule that decided (denials)
    bytes | None,  # the body, when its arguments' digest is asked for
]
"""What a request queues: its line's parts, made into JSON on the event loop's tick."""

_DESCRIBED = 4096  # encoded request descriptions kept (then worked out again)


def _json(value: str | None) -> bytes:
    """`value` as JSON (a string, or null)."""
    return orjson.dumps(value)


@functools.lru_cache(maxsize=4096)  # a session's requests ask again and again
def session_fingerprint(session_id: bytes) -> str:
    """What an audit line says of a session: the first 16 hex digits of the SHA-256 of its
    id. The same on every replica (lines of one session go together), and of no use to
    present as the session: the id itself is a credential and never written."""
    return hashlib.sha256(session_id).hexdigest()[:16]


def arguments_digest(body: bytes) -> str | None:
    """The SHA-256 (hex) of a request's ``params.arguments`` as canonical JSON (sorted
    keys), so equal arguments give equal digests; None when there are none."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    params = message.get("params") if isinstance(message, dict) else None
    arguments = params.get("arguments") if isinstance(params, dict) else None
    if arguments is None:
        return None
    return hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Audit:
    """The audit log's :class:`~proxy.linelog.LineLog` and how its lines are made."""

    def __init__(self, settings: AuditSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.digests = settings.arguments == "digest"
        self.log = LineLog(
            "audit", settings.target, settings.queue, self._encode, metrics.audit_lines
        )
        self.on = self.log.on
        self._who: dict[tuple[Any, ...], bytes] = {}  # what names a request -> its JSON

    def open(self) -> None:
        """Open the target and start writing (an unwritable file stops the start)."""
        self.log.open()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting at most `timeout` seconds), then stop."""
        self.log.close(timeout)

    def record(self, line: Line, ended: float | None = None) -> None:
        """Queue one line; dropped and counted when full. `ended`: when the request ended,
        a :func:`time.perf_counter` reading (now, when not given); the tick turns it into
        the line's time of day, so that a request reads no clock of its own for it."""
        if self.on:
            self.log.record((time.perf_counter() if ended is None else ended, line))

    def flush(self) -> None:
        """Encode what is queued and hand it to the writer."""
        self.log.flush()

    def _encode(self, lines: list[tuple[float, Line]]) -> bytes:
        offset = time.time() - time.perf_counter()  # a perf_counter reading -> time of day
        return encode_audit_lines(lines, offset, self._who, self._describe, _json, self._more)

    @staticmethod
    def _more(rule: str | None, body: bytes | None) -> bytes:
        """The members a denial's rule or a call's arguments add to its line."""
        more = b"" if rule is None else b',"rule":' + _json(rule)
        if body is not None:
            more += b',"arguments_sha256":' + _json(arguments_digest(body))
        return more

    def _describe(self, key: tuple[Any, ...], principal: Principal | None) -> bytes:
        """The fields that name a request, as JSON object members (no braces)."""
        _, session, method, name, backend, replica = key
        fields = {
            "principal": None if principal is None else principal.subject,
            "issuer": None if principal is None else principal.issuer,
            "client_id": None if principal is None else principal.client_id,
            "session": None if session is None else session_fingerprint(session),
            "method": method,
            "name": name,
            "backend": backend,
            "replica": replica,
        }
        who = orjson.dumps(fields)[1:-1]
        if len(self._who) >= _DESCRIBED:
            self._who.clear()
        self._who[key] = who
        return who
