"""What a federated session keeps of the client's initialize, and whose credentials go where."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from proxy.config import validate
from proxy.errors import InvalidParams
from proxy.fastpath import scan_headers
from proxy.federation.backends import MAX_CAPABILITIES, BackendSessions, kept_initialize
from proxy.federation.names import Namespace
from proxy.metrics import Metrics
from proxy.request import Request
from proxy.sessions.memory import MemorySessionStore
from proxy.sessions.records import Records
from proxy.upstream.registry import Upstreams


def test_only_what_a_backend_needs_is_kept() -> None:
    params = {
        "protocolVersion": "2025-06-18",
        "capabilities": {"roots": {"listChanged": True}, "sampling": {}},
        "clientInfo": {"name": "ide", "version": "1", "title": "An IDE", "icons": ["x" * 9000]},
        "junk": "x" * 100_000,
    }
    assert kept_initialize("2025-11-25", params) == {
        "protocolVersion": "2025-11-25",
        "capabilities": {"roots": {"listChanged": True}, "sampling": {}},
        "clientInfo": {"name": "ide", "title": "An IDE", "version": "1"},
    }


def test_odd_client_info_is_replaced_and_long_strings_cut() -> None:
    kept = kept_initialize("2025-11-25", {"clientInfo": {"name": "n" * 1000, "version": 3}})
    assert kept["clientInfo"] == {"name": "n" * 256, "version": "0"}
    assert kept["capabilities"] == {}


def test_capabilities_over_the_bound_are_refused() -> None:
    huge = {"experimental": {"x": "y" * MAX_CAPABILITIES}}
    assert len(orjson.dumps(huge)) > MAX_CAPABILITIES
    with pytest.raises(InvalidParams, match="capabilities exceed"):
        kept_initialize("2025-11-25", {"capabilities": huge})


async def test_credentials_go_only_to_backends_that_take_them() -> None:
    settings = validate(
        {
            "backends": [
                {
                    "name": "a",
                    "prefix": "a_",
                    "replicas": ["http://a:1/mcp"],
                    "forward_credentials": True,
                },
                {"name": "b", "prefix": "b_", "replicas": ["http://b:1/mcp"]},
            ]
        }
    )
    metrics = Metrics()
    sessions = BackendSessions(
        settings,
        Upstreams(settings),
        Records(MemorySessionStore(settings), metrics),
        Namespace(settings.backends),
        metrics,
    )
    headers = [(b"authorization", b"Bearer t"), (b"cookie", b"c=1"), (b"accept", b"*/*")]
    scope = {"type": "http", "method": "POST", "headers": headers}
    caller = sessions.caller(Request(scope, _receive, _send, scan_headers(headers)))
    assert await sessions.credentials("a", caller) == headers[:2]
    assert await sessions.credentials("b", caller) == []
    assert await sessions.credentials("nobody", caller) == []


async def _receive() -> dict[str, Any]:
    raise AssertionError("not called")


async def _send(_message: MutableMapping[str, Any]) -> None:
    raise AssertionError("not called")
