"""Small complete responses the gateway answers itself (errors, health, metrics)."""

from __future__ import annotations

from ._types import Headers, Send
from .jsonrpc import error_body

JSON = b"application/json"


async def send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes = JSON, extra: Headers | None = None
) -> None:
    headers: Headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send,
    status: int,
    code: int,
    message: str,
    id: bytes | None = None,
    extra: Headers | None = None,
) -> None:
    """A JSON-RPC error with an HTTP status; ``id`` is the request's raw id, echoed."""
    await send_bytes(send, status, error_body(code, message, id), extra=extra)
