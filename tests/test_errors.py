"""Each error the gateway answers knows its HTTP status, JSON-RPC code and message."""

from __future__ import annotations

import orjson
import pytest

from proxy import errors
from proxy.upstream.errors import PoolTimeout, ProtocolFailure, UpstreamError, UpstreamTimeout
from proxy.upstream.head import HeadInjection


def test_an_error_body_echoes_the_request_id_byte_for_byte() -> None:
    body = orjson.loads(errors.SessionNotFound().body(b'"abc"'))
    assert body == {
        "jsonrpc": "2.0",
        "id": "abc",
        "error": {"code": -32001, "message": "Session not found"},
    }


def test_an_id_known_before_the_envelope_wins() -> None:
    error = errors.ParseError("Parse error: x", id=b"7")
    assert orjson.loads(error.body(None))["id"] == 7
    assert orjson.loads(errors.BadRequest().body(None))["id"] is None


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.ParseError, 400, -32700),
        (errors.BadRequest, 400, -32600),
        (errors.InvalidParams, 400, -32602),
        (errors.HeaderMismatch, 400, -32020),
        (errors.Forbidden, 403, -32006),
        (errors.SessionNotFound, 404, -32001),
        (errors.MethodNotAllowed, 405, -32600),
        (errors.BodyTimeout, 408, -32600),
        (errors.BodyTooLarge, 413, -32005),
        (errors.TooManyStreams, 429, -32600),
        (errors.UnknownName, 200, -32602),
        (errors.ResourceNotFound, 200, -32002),
        (errors.MethodNotFound, 200, -32601),
        (errors.BadGateway, 502, -32002),
        (errors.UpstreamUnreachable, 503, -32002),
        (errors.UpstreamBusy, 503, -32002),
        (errors.StoreDown, 503, -32004),
        (errors.TooManySessions, 503, -32004),
        (errors.GatewayTimeout, 504, -32003),
    ],
)
def test_status_and_code(error: type[errors.GatewayError], status: int, code: int) -> None:
    assert (error.status, error.code) == (status, code)
    assert error().message == error.default


def test_headers_that_go_with_an_answer() -> None:
    assert errors.MethodNotAllowed.headers == ((b"allow", b"GET, POST, DELETE"),)
    assert errors.UpstreamBusy.headers == ((b"retry-after", b"1"),)
    assert errors.BodyTimeout.headers == ((b"connection", b"close"),)


@pytest.mark.parametrize(
    ("raised", "answered", "kind"),
    [
        (PoolTimeout("busy"), errors.UpstreamBusy, "pool"),
        (UpstreamTimeout("late"), errors.GatewayTimeout, "timeout"),
        (ProtocolFailure("broken"), errors.BadGateway, "protocol"),
        (HeadInjection("crlf"), errors.BadRequest, None),
    ],
)
def test_upstream_failures_become_answers_and_are_counted(
    raised: UpstreamError | HeadInjection, answered: type[errors.GatewayError], kind: str | None
) -> None:
    counted: list[str] = []
    assert isinstance(errors.upstream_error(raised, "http://u/mcp", counted.append), answered)
    assert counted == ([kind] if kind else [])
