"""OTLP/HTTP export of finished spans: a batch every ``OTEL_BSP_SCHEDULE_DELAY``
milliseconds (5000), or as soon as ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans (512) are
waiting, sent by a thread of its own as one protobuf ``ExportTraceServiceRequest``; at most
``OTEL_BSP_MAX_QUEUE_SIZE`` spans (2048) wait, more are dropped and counted. These are
the OpenTelemetry SDK batch processor's variables and defaults.

A request only appends its span's record to a list (:class:`proxy.fastpath.Spans`);
encoding (the compiled :func:`proxy.fastpath.encode_otlp_spans`) and the POST happen on
the thread, never on a request's path.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from urllib.parse import urlsplit

from .fastpath import OtlpSpan, encode_otlp_spans
from .metrics import Metrics

__all__ = ("SpanExport", "resource_message", "scope_message")

logger = logging.getLogger("proxy.tracing")

_COMPLAIN_EVERY = 60.0  # seconds between two log lines about failed exports


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(data)) + data


def resource_message(attributes: dict[str, str]) -> bytes:
    """An OTLP ``Resource`` with string attributes, encoded."""
    out = b""
    for key, value in attributes.items():
        any_value = _field(0x0A, value.encode())
        out += _field(0x0A, _field(0x0A, key.encode()) + _field(0x12, any_value))
    return out


def scope_message(name: str, version: str) -> bytes:
    """An OTLP ``InstrumentationScope``, encoded."""
    return _field(0x0A, name.encode()) + _field(0x12, version.encode())


class SpanExport:
    """The queue of finished spans and the thread that exports them."""

    def __init__(self, endpoint: str, resource: bytes, scope: bytes, metrics: Metrics) -> None:
        parts = urlsplit(endpoint)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.resource = resource
        self.scope = scope
        self.metrics = metrics
        self.delay = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.max_queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.timeout = _env_int("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 10_000) / 1000
        self.waiting: list[OtlpSpan] = []
        """The queue: :class:`proxy.fastpath.Spans` appends, and calls :meth:`wake` when
        it holds a batch."""
        self._wake = threading.Event()
        self.wake = self._wake.set
        self._stopping = False
        self._connection: http.client.HTTPConnection | None = None
        self._complained = 0.0
        self.dropped = metrics.trace_spans.cell("dropped")
        """Spans that found the queue full (:class:`proxy.fastpath.Spans` counts them)."""
        self._thread = threading.Thread(target=self._run, name="proxy-otlp", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Export what waits, and stop the thread (blocking: call it from a thread)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        while not self._stopping:
            full = self._wake.wait(self.delay)
            self._wake.clear()
            self._export_waiting(self.batch if full else 1)
        self._export_waiting(1)
        if self._connection is not None:
            self._connection.close()

    def _export_waiting(self, least: int) -> None:
        """Export the waiting spans in batches while `least` of them wait (a batch
        filled: whole batches only, the rest waits for the timer)."""
        waiting = self.waiting
        while len(waiting) >= least:
            batch = waiting[: self.batch]
            del waiting[: len(batch)]  # appends go on at the end meanwhile
            try:
                self._post(encode_otlp_spans(batch, self.resource, self.scope))
            except (OSError, http.client.HTTPException, ExportRefused) as exc:
                self.metrics.trace_spans.inc("failed", amount=len(batch))
                now = time.monotonic()
                if now - self._complained >= _COMPLAIN_EVERY:
                    self._complained = now
                    logger.warning("traces not exported to %s: %s", self.host, exc)
            else:
                self.metrics.trace_spans.inc("exported", amount=len(batch))

    def _post(self, payload: bytes) -> None:
        for attempt in (1, 2):  # a kept-alive connection the collector closed: once more
            connection = self._connection
            if connection is None:
                kind = http.client.HTTPSConnection if self.tls else http.client.HTTPConnection
                connection = self._connection = kind(self.host, self.port, timeout=self.timeout)
            try:
                connection.request(
                    "POST",
                    self.path,
                    payload,
                    {"Content-Type": "application/x-protobuf"},
                )
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self._connection = None
                if attempt == 2:
                    raise
                continue
            if not 200 <= response.status < 300:
                raise ExportRefused(f"the collector answered {response.status}")
            return


class ExportRefused(Exception):
    """The collector answered a batch with an error status."""
