"""A log of one line per request, written off the hot path: the audit log and the access log.

A request only appends what its line is made of to a bounded list (no formatting, no I/O,
no lock). Every few milliseconds the event loop turns what is queued into lines (one
call of the log's encoder for all of them) and hands them to a writer thread, which only
writes: one ``write`` per batch to a file opened for appending (so workers sharing the
file never interleave a line), or to stdout or stderr. The thread holds the GIL for no
more than that (a thread encoding lines would hold it against the event loop, which then
waits for it at every wake-up: that cost the gateway a tenth of its throughput, for 3 µs
of work a line). Encoding a tick's lines together also costs less than encoding each in
its own request: measured side by side, lines encoded as requests ended cost the gateway
3 µs more per request (each encoding then runs with its code and data out of the CPU's
caches). When the queue, or what the writer has not written yet, is full, lines are
dropped and counted: a slow disk never slows a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from .metrics import Counter

__all__ = ("TICK", "LineLog")

logger = logging.getLogger("proxy.logs")

TICK = 0.025
"""Seconds between two rounds of encoding (a few hundred lines at most)."""

Encode = Callable[[list[Any]], bytes]
"""What is queued -> the lines, one bytes object."""


class LineLog:
    """The queue, the loop's encoding tick and the writer thread (all started by
    :meth:`open`, on the event loop; without one, lines are encoded at :meth:`close`).
    `target`: ``off``, ``stdout``, ``stderr`` or a file path; `lines` counts each line's
    fate (``written``, ``dropped``)."""

    def __init__(self, name: str, target: str, bound: int, encode: Encode, lines: Counter) -> None:
        self.name = name
        self.target = target
        self.on = target != "off"
        self.bound = max(1, bound)
        self.encode = encode
        self.lines = lines
        self.queued: list[Any] = []
        """What requests appended (only the event loop touches it; :meth:`record`)."""
        self.tick = TICK
        self._chunks: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._unwritten = 0  # lines handed to the writer, not yet written
        self._lock = threading.Lock()  # for _unwritten: the tick and the writer
        self._thread: threading.Thread | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._out: IO[bytes] | None = None
        self._fd: int | None = None

    def open(self) -> None:
        """Open the target (a file: for appending, created when missing) and start the
        writer and, on a running event loop, the tick; an unwritable file stops the
        start, naming it."""
        if not self.on or self._thread is not None:
            return
        if self.target == "stdout":
            self._out = sys.stdout.buffer
        elif self.target == "stderr":
            self._out = sys.stderr.buffer
        else:
            self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._thread = threading.Thread(target=self._write, name=f"{self.name}-writer", daemon=True)
        self._thread.start()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._tick = loop.call_later(self.tick, self._every_tick, loop)

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

    def record(self, item: Any) -> None:
        """Queue one line's parts; dropped and counted when full."""
        if len(self.queued) >= self.bound:
            self.lines.inc("dropped")
            return
        self.queued.append(item)

    def flush(self) -> None:
        """Encode what is queued and hand it to the writer; dropped and counted when the
        writer is as far behind as the queue may be long."""
        items = self.queued
        if not items:
            return
        self.queued = []
        data = self.encode(items)
        count = len(items)
        with self._lock:
            fits = count <= self.bound - self._unwritten
            if fits:
                self._unwritten += count
        if not fits:
            self.lines.inc("dropped", amount=count)
            return
        self._chunks.put((count, data))

    def _every_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.flush()
        if self._thread is not None:
            self._tick = loop.call_later(self.tick, self._every_tick, loop)

    # -- the writer thread: it only writes --------------------------------------------------------

    def _write(self) -> None:
        chunks = self._chunks
        while (item := chunks.get()) is not None:
            count, data = item
            self._emit(data)
            with self._lock:
                self._unwritten -= count
            self.lines.inc("written", amount=count)

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
            logger.warning("%s lines not written: %s", self.name, exc)
