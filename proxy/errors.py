"""Errors the gateway answers itself: each type knows its HTTP status and JSON-RPC code.

Raise one anywhere on the request path (``raise SessionNotFound()``, ``raise
BadRequest("Bad Request: Mcp-Session-Id header required")``); the endpoint turns it into
the answer, with the request's id. :func:`upstream_error` maps what can go wrong with an
upstream exchange onto these types in one place (httpcore's ``map_exceptions`` idiom).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

from . import jsonrpc as rpc
from .upstream.errors import PoolTimeout, UpstreamError, UpstreamTimeout
from .upstream.head import HeadInjection

__all__ = (
    "BadGateway",
    "BadRequest",
    "BodyTimeout",
    "BodyTooLarge",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "HeaderMismatch",
    "InsufficientScope",
    "InvalidParams",
    "MethodNotAllowed",
    "MethodNotFound",
    "NoCredentials",
    "NotAllowed",
    "ParseError",
    "RateLimited",
    "ResourceNotFound",
    "SessionNotFound",
    "StoreDown",
    "TooManySessions",
    "TooManyStreams",
    "Unauthorized",
    "UnknownName",
    "UpstreamBusy",
    "UpstreamUnreachable",
    "upstream_error",
)

logger = logging.getLogger("proxy.errors")


class GatewayError(Exception):
    """An answer the gateway gives itself: HTTP ``status``, JSON-RPC ``code`` and a
    message (``default`` unless one is given), with extra response ``headers``.

    ``id``: the request's raw id, for errors raised before its envelope was known (a
    parse error carries what the scanner could read); otherwise the endpoint uses the
    envelope's.
    """

    status: ClassVar[int] = 500
    code: ClassVar[int] = rpc.INTERNAL_ERROR
    default: ClassVar[str] = "Internal error"
    headers: ClassVar[tuple[tuple[bytes, bytes], ...]] = ()

    def __init__(
        self,
        message: str | None = None,
        *,
        id: bytes | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.message = message or self.default
        super().__init__(self.message)
        self.id = id
        self.more_headers = headers  # this answer's own, besides the kind's ``headers``

    def answer_headers(self) -> list[tuple[bytes, bytes]] | None:
        """The response headers of this answer (None: none besides the usual)."""
        headers = [*self.headers, *self.more_headers]
        return headers or None

    def body(self, id: bytes | None) -> bytes:
        return rpc.error_body(self.code, self.message, self.id if self.id is not None else id)


# -- the client's request ------------------------------------------------------------------


class ParseError(GatewayError):
    status, code, default = 400, rpc.PARSE_ERROR, "Parse error"


class BadRequest(GatewayError):
    status, code, default = 400, rpc.INVALID_REQUEST, "Bad Request"


class InvalidParams(GatewayError):
    status, code, default = 400, rpc.INVALID_PARAMS, "Invalid params"


class HeaderMismatch(GatewayError):
    """2026-07-28: Mcp-Method / Mcp-Name / MCP-Protocol-Version disagree with the body."""

    status, code, default = 400, rpc.HEADER_MISMATCH, "Header does not match the body"


class Forbidden(GatewayError):
    status, code, default = 403, rpc.FORBIDDEN, "Forbidden: Origin or Host not allowed"


class Unauthorized(GatewayError):
    """No access token, or one the gateway does not accept (with ``WWW-Authenticate``)."""

    status, code, default = 401, rpc.UNAUTHORIZED, "Unauthorized"


class InsufficientScope(GatewayError):
    """A valid token without the scopes asked for (``WWW-Authenticate``: which ones)."""

    status, code, default = 403, rpc.FORBIDDEN, "Forbidden: insufficient scope"


class NoCredentials(GatewayError):
    """A backend that takes a credential per principal has none for this one."""

    status, code, default = 403, rpc.FORBIDDEN, "Forbidden: no credentials for this backend"


class RateLimited(GatewayError):
    status, code, default = 429, rpc.RATE_LIMITED, "Too Many Requests: rate limit reached"


class NotAllowed(GatewayError):
    """Policy says no, or the name is unknown: the same answer, so policy leaks nothing."""

    status, code, default = 200, rpc.INVALID_PARAMS, "Not allowed"


class SessionNotFound(GatewayError):
    status, code, default = 404, rpc.SESSION_NOT_FOUND, "Session not found"


class MethodNotAllowed(GatewayError):
    status, code, default = 405, rpc.INVALID_REQUEST, "Method Not Allowed"
    headers = ((b"allow", b"GET, POST, DELETE"),)


class BodyTimeout(GatewayError):
    status, code = 408, rpc.INVALID_REQUEST
    default = "Request Timeout: body not received in time"
    headers = ((b"connection", b"close"),)


class BodyTooLarge(GatewayError):
    status, code, default = 413, rpc.REQUEST_TOO_LARGE, "Request body too large"


class TooManyStreams(GatewayError):
    status, code, default = 429, rpc.INVALID_REQUEST, "Too Many Requests: too many open streams"
    headers = ((b"retry-after", b"1"),)


# -- answered in-band (HTTP 200): the request reached the MCP layer -------------------------


class UnknownName(GatewayError):
    """A tool, prompt or completion reference that no backend offers (federation)."""

    status, code, default = 200, rpc.INVALID_PARAMS, "Unknown name"


class ResourceNotFound(GatewayError):
    """A resource URI that no backend owns (federation): MCP's own code."""

    status, code, default = 200, rpc.RESOURCE_NOT_FOUND, "Resource not found"


class MethodNotFound(GatewayError):
    status, code, default = 200, rpc.METHOD_NOT_FOUND, "Method not found"


# -- upstreams and the session store ---------------------------------------------------------


class BadGateway(GatewayError):
    status, code, default = 502, rpc.UPSTREAM_UNAVAILABLE, "Bad gateway: upstream failed"


class UpstreamUnreachable(GatewayError):
    """The replica holding a session cannot be reached for now (the session is kept)."""

    status, code, default = 503, rpc.UPSTREAM_UNAVAILABLE, "Upstream unreachable; retry"


class UpstreamBusy(GatewayError):
    status, code = 503, rpc.UPSTREAM_UNAVAILABLE
    default = "Upstream busy: no connection came free in time; retry"
    headers = ((b"retry-after", b"1"),)


class StoreDown(GatewayError):
    status, code, default = 503, rpc.STORE_UNAVAILABLE, "Session store unavailable"


class TooManySessions(GatewayError):
    status, code, default = 503, rpc.STORE_UNAVAILABLE, "Too many open sessions; retry later"
    headers = ((b"retry-after", b"5"),)


class GatewayTimeout(GatewayError):
    status, code, default = 504, rpc.UPSTREAM_TIMEOUT, "Upstream timed out"


def upstream_error(
    exc: UpstreamError | HeadInjection, where: str, count: Callable[[str], None]
) -> GatewayError:
    """The answer to what went wrong in an exchange with the upstream `where` (a replica
    URL), counted by kind (`count`: pool, timeout, protocol). ConnectFailed is not for
    this: the relay decides about replicas; a gone client is a cancellation."""
    if isinstance(exc, HeadInjection):
        return BadRequest("Bad Request: invalid header")
    if isinstance(exc, PoolTimeout):
        count("pool")
        logger.warning("upstream %s: %s", where, exc)
        return UpstreamBusy()
    if isinstance(exc, UpstreamTimeout):
        count("timeout")
        return GatewayTimeout()
    count("protocol")  # ProtocolFailure, and anything else that broke
    logger.warning("upstream %s failed: %s", where, exc)
    return BadGateway()
