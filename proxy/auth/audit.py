"""The audit log: one JSON line per tool call, prompt get and resource read, and per
refused request (no token, a bad one, policy, rate limit), written off the hot path.

A request only puts its line's fields on a bounded queue (no formatting, no I/O, no
lock). Every few milliseconds the event loop turns what is queued into JSON lines and
hands them to a writer thread, which only writes: one ``write`` per batch to a file
opened for appending (so workers sharing the file never interleave a line), or to stdout
or stderr. The thread holds the GIL for no more than that (a thread encoding lines
would hold it against the event loop, which then waits for it at every wake-up: that
cost the gateway a tenth of its throughput, for 3 µs of work a line). Encoding a tick's
lines together also costs less than encoding each in its own request: measured side by
side, lines encoded as requests ended cost the gateway 3 µs more per request (each
encoding then runs with its code and data out of the CPU's caches). The encoding is
compiled (``proxy.fastpath.encode_audit_lines``, with its pure-Python twin): in Python
it was a third of what auth added to a request. When the queue, or
what the writer has not written yet, is full, lines are dropped and counted
(``proxy_audit_lines_total{fate="dropped"}``): a slow disk never slows a request. A
line never holds a token or a session id (a fingerprint of it); a call's arguments only
as a SHA-256 digest, and only when
``audit.arguments`` is ``digest``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import sys
import threading
import time
from typing import IO, Any

import orjson

from ..fastpath import encode_audit_lines
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
_TICK = 0.025  # seconds between two rounds of encoding (a few hundred lines at most)


def _json(value: str | None) -> bytes:
    """`value` as JSON (a string, or null)."""
    return orjson.dumps(value)


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
    """The queue, the loop's encoding tick and the writer thread (all started by
    :meth:`open`, on the event loop; without one, lines are encoded at :meth:`close`).

    The queue is a list only the event loop touches (no lock, no wake-up of anyone); a
    request pays for an append and nothing else.
    """

    def __init__(self, settings: AuditSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on = settings.target != "off"
        self.digests = settings.arguments == "digest"
        self.bound = max(1, settings.queue)
        self._lines: list[tuple[float, Line]] = []
        self._chunks: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._unwritten = 0  # lines handed to the writer, not yet written
        self._lock = threading.Lock()  # for _unwritten: the tick and the writer
        self._thread: threading.Thread | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._out: IO[bytes] | None = None
        self._fd: int | None = None
        self._who: dict[tuple[Any, ...], bytes] = {}  # what names a request -> its JSON

    def open(self) -> None:
        """Open the target (a file: for appending, created when missing) and start the
        writer and, on a running event loop, the tick; an unwritable file stops the
        start, naming it."""
        if not self.on or self._thread is not None:
            return
        target = self.settings.target
        if target == "stdout":
            self._out = sys.stdout.buffer
        elif target == "stderr":
            self._out = sys.stderr.buffer
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._thread = threading.Thread(target=self._write, name="audit-writer", daemon=True)
        self._thread.start()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._tick = loop.call_later(_TICK, self._every_tick, loop)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting at most `timeout` seconds), then stop."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self.flush()
        self._chunks.put(None)
        thread.join(timeout)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, line: Line, ended: float | None = None) -> None:
        """Queue one line; dropped and counted when full. `ended`: when the request ended,
        a :func:`time.perf_counter` reading (now, when not given); the tick turns it into
        the line's time of day, so that a request reads no clock of its own for it."""
        if not self.on:
            return
        if len(self._lines) >= self.bound:
            self.metrics.audit_lines.inc("dropped")
            return
        self._lines.append((time.perf_counter() if ended is None else ended, line))

    def flush(self) -> None:
        """Encode what is queued and hand it to the writer; dropped and counted when the
        writer is as far behind as the queue may be long."""
        lines = self._lines
        if not lines:
            return
        self._lines = []
        offset = time.time() - time.perf_counter()  # a perf_counter reading -> time of day
        data = encode_audit_lines(lines, offset, self._who, self._describe, _json, self._more)
        count = len(lines)
        with self._lock:
            fits = count <= self.bound - self._unwritten
            if fits:
                self._unwritten += count
        if not fits:
            self.metrics.audit_lines.inc("dropped", amount=count)
            return
        self._chunks.put((count, data))

    def _every_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.flush()
        if self._thread is not None:
            self._tick = loop.call_later(_TICK, self._every_tick, loop)

    # -- the writer thread: it only writes --------------------------------------------------------

    def _write(self) -> None:
        chunks = self._chunks
        while (item := chunks.get()) is not None:
            count, data = item
            self._emit(data)
            with self._lock:
                self._unwritten -= count
            self.metrics.audit_lines.inc("written", amount=count)

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

    def _emit(self, data: bytes) -> None:
        try:
            if self._fd is not None:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            elif self._out is not None:
                self._out.write(data)
                self._out.flush()
        except OSError as exc:
            logger.warning("audit lines not written: %s", exc)
