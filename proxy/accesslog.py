"""The access log: one line per request to the MCP endpoint, off by default.

A line says when the request ended, what it was (HTTP method, MCP method, the tool,
prompt or resource it names), what came of it (HTTP status, the JSON-RPC error code of an
answer the gateway gave itself, latency, the upstream's time to its answer's head), where
it went (backend, replica), who sent it (client address, the principal with
authentication on), its size (request and answer body bytes), the session as a fingerprint (never
the id: it is a credential) and the W3C trace id the client sent. Never a token, never a
body.

Written off the hot path (:mod:`proxy.linelog`): a request queues what its line is made
of, the event loop's tick encodes, a thread writes. JSON (one object a line) or text
(``key=value`` pairs); ``access_log_sample`` keeps that share of the lines.
"""

from __future__ import annotations

import random
import re
import time
from typing import TYPE_CHECKING, Any

import orjson

from . import jsonrpc as rpc
from .auth.audit import session_fingerprint
from .errors import GatewayError
from .headers import McpHeaders
from .jsonrpc import Envelope
from .linelog import LineLog
from .metrics import Metrics

if TYPE_CHECKING:
    from ._types import Scope
    from .request import Request
    from .settings import Settings

__all__ = ("AccessLog",)

_QUEUE = 10_000  # lines waiting for the writer at most
_SESSIONS = 4096  # session fingerprints remembered (then worked out again)
_TRACEPARENT = b"traceparent"
_TRACE = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_NO_TRACE = b"0" * 32

Item = tuple[
    float,  # when the request ended (perf_counter)
    float,  # seconds taken
    "Scope",
    McpHeaders,
    Envelope | None,
    "Request | None",
    int,  # the HTTP status sent
    GatewayError | None,
    int | None,  # the answer's body bytes
]


class AccessLog:
    """The access log's :class:`~proxy.linelog.LineLog` and how its lines are made."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.log = LineLog(
            "access", settings.access_log, _QUEUE, self._encode, metrics.access_lines
        )
        self.on = self.log.on
        self.sample = settings.access_log_sample
        self.text = settings.access_log_format == "text"
        self._sessions: dict[bytes, str] = {}
        self._second = -1
        self._stamp = ""

    def open(self) -> None:
        self.log.open()

    def close(self) -> None:
        self.log.close()

    def record(
        self,
        scope: Scope,
        hdrs: McpHeaders,
        env: Envelope | None,
        request: Request | None,
        status: int,
        error: GatewayError | None,
        started: float,
        ended: float,
        sent: int | None = None,
    ) -> None:
        """Queue the request's line (`started`, `ended`: perf_counter readings; `sent`:
        the answer's body bytes)."""
        if self.sample < 1 and random.random() >= self.sample:  # noqa: S311 - a sample
            return
        item = (ended, ended - started, scope, hdrs, env, request, status, error, sent)
        self.log.record(item)

    def _encode(self, items: list[Item]) -> bytes:
        offset = time.time() - time.perf_counter()  # a perf_counter reading -> time of day
        lines = [self._fields(offset + item[0], item) for item in items]
        if self.text:
            return b"".join(_text(line) for line in lines)
        return b"".join(orjson.dumps(line) + b"\n" for line in lines)

    def _fields(self, at: float, item: Item) -> dict[str, Any]:
        _, seconds, scope, hdrs, env, request, status, error, sent = item
        second = int(at)
        if second != self._second:  # formatted once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = self._stamp
        mcp_method = None
        name = None
        if env is not None:
            mcp_method = "batch" if env.kind == rpc.BATCH else env.method
            name = env.name or env.uri
        client = scope.get("client")
        upstream = None if request is None else request.upstream_seconds
        principal = None if request is None else request.principal
        body = None if request is None else request.body
        return {
            "time": f"{stamp}.{int((at - second) * 1000):03d}Z",
            "method": scope["method"],
            "mcp_method": mcp_method,
            "name": name,
            "status": status,
            "error_code": None if error is None else error.code,
            "latency_ms": round(seconds * 1000, 3),
            "upstream_ms": None if upstream is None else round(upstream * 1000, 3),
            "bytes_in": None if body is None else len(body),
            "bytes_out": sent,
            "backend": None if request is None else request.backend,
            "replica": None if request is None else request.replica,
            "session": None if hdrs.session_id is None else self._session(hdrs.session_id),
            "client": None if not client else client[0],
            "trace_id": _trace_id(scope),
            "principal": None if principal is None else principal.subject,
        }

    def _session(self, session_id: bytes) -> str:
        found = self._sessions.get(session_id)
        if found is None:
            if len(self._sessions) >= _SESSIONS:
                self._sessions.clear()
            found = self._sessions[session_id] = session_fingerprint(session_id)
        return found


def _trace_id(scope: Scope) -> str | None:
    """The trace id of the request's W3C ``traceparent``, when it has a valid one."""
    for name, value in scope["headers"]:
        if name == _TRACEPARENT:
            found = _TRACE.match(value)
            if found is None or found.group(1) == _NO_TRACE:
                return None
            return found.group(1).decode()
    return None


def _text(fields: dict[str, Any]) -> bytes:
    """``key=value`` pairs, absent fields left out; a value with a space or a quote is
    written as a JSON string."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        if not text or any(c in text for c in ' "=\\') or not text.isprintable():
            text = orjson.dumps(text).decode()
        parts.append(f"{key}={text}")
    return (" ".join(parts) + "\n").encode()
