"""What can go wrong in an exchange with an upstream, as exception types."""

from __future__ import annotations

__all__ = (
    "ClientGone",
    "ConnectFailed",
    "HeadInjection",
    "PoolTimeout",
    "ProtocolFailure",
    "Unanswered",
    "UpstreamError",
    "UpstreamTimeout",
)


class UpstreamError(Exception):
    """The upstream exchange failed; ``sent`` tells whether the request may have arrived."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, unreachable, timed out): nothing was sent.
    ``refused``: the host answered that nothing listens there (the server is gone), as
    opposed to a timeout or another error that may pass."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message, sent=False)
        self.refused = refused


class PoolTimeout(UpstreamError):
    """Every connection the pool may open is busy, and none came free in time: nothing
    was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


class ProtocolFailure(UpstreamError):
    """The connection broke, or the upstream sent something that is not well-formed
    HTTP/1.1 (refused by the strict parser)."""


class Unanswered(ProtocolFailure):
    """A kept-alive connection closed before any byte of the response arrived. The
    request may or may not have been acted on: it is retried only when safe to repeat."""


class UpstreamTimeout(UpstreamError):
    """The response head did not arrive in time."""


class ClientGone(Exception):
    """The caller's cancel token was cancelled: its client went away."""


class HeadInjection(ValueError):
    """A request line, header name or value holds CR, LF or NUL."""
