"""The audit log: one JSON line per tool call, prompt get and resource read, and per
refused request (no token, a bad one, policy, rate limit), written off the hot path.

A request only puts its line's fields on a bounded queue (no formatting, no I/O); a
writer thread turns them into JSON and writes them in batches, one ``write`` per batch
to a file opened for appending (so workers sharing the file never interleave a line), or
to stdout or stderr. When the queue is full the line is dropped and counted
(``proxy_audit_lines_total{fate="dropped"}``): a slow disk never slows a request. A
line never holds a token; a call's arguments only as a SHA-256 digest, and only when
``audit.arguments`` is ``digest``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from ..metrics import Metrics
from .settings import AuditSettings

__all__ = ("AUDITED", "Audit", "arguments_digest")

logger = logging.getLogger("proxy.auth")

AUDITED = frozenset({"tools/call", "prompts/get", "resources/read"})
"""Methods with a line for every request (other methods: a line when refused)."""

_BATCH = 512
_STOP = None


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
    """The queue and its writer thread (started by :meth:`open`)."""

    def __init__(self, settings: AuditSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on = settings.target != "off"
        self.digests = settings.arguments == "digest"
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max(1, settings.queue))
        self._thread: threading.Thread | None = None
        self._out: IO[bytes] | None = None
        self._fd: int | None = None

    def open(self) -> None:
        """Open the target (a file: for appending, created when missing) and start the
        writer; an unwritable file stops the start, naming it."""
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

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting at most `timeout` seconds), then stop."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        thread.join(timeout)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, line: dict[str, Any]) -> None:
        """Queue one line's fields (``time`` is added); dropped and counted when full."""
        if not self.on:
            return
        line["time"] = time.time()
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.metrics.audit_lines.inc("dropped")

    # -- the writer thread ----------------------------------------------------------------------

    def _write(self) -> None:
        get = self._queue.get
        while True:
            batch = [get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            lines = [_encode(line) for line in batch if line is not _STOP]
            if lines:
                self._emit(b"".join(lines))
                self.metrics.audit_lines.inc("written", amount=len(lines))
            if stop:
                return

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


def _encode(line: dict[str, Any]) -> bytes:
    stamp = datetime.fromtimestamp(line["time"], UTC).isoformat(timespec="milliseconds")
    line["time"] = stamp.replace("+00:00", "Z")
    return orjson.dumps(line) + b"\n"
