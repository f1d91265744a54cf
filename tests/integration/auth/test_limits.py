"""Rate limits and session caps through running gateways: one budget shared by two
gateways on one Redis, 429 with Retry-After, the configured behaviour with Redis down,
and a cap on the sessions one principal holds open."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from testbed.authserver import AuthServer
from testbed.redis_server import RedisServer, redis_server
from tests.helpers.clients import ACCEPT, HANDSHAKE, MODERN, MODERN_META
from tests.helpers.gateways import Upstream
from tests.integration.auth.parts import (
    AuthGateway,
    answer,
    bearer,
    counter,
    initialize,
    mint,
    rpc,
    start_auth_gateway,
)

pytestmark = pytest.mark.timeout(120)

BUDGET = 6
SHARED = "http://127.0.0.1:1/limited/mcp"


@dataclass(frozen=True)
class Setup:
    first: AuthGateway
    second: AuthGateway
    """On one Redis, sharing one budget of BUDGET requests a minute per principal."""
    fail_open: AuthGateway
    fail_closed: AuthGateway
    """On a Redis of their own (`flaky`), which the tests stop."""
    flaky: RedisServer
    capped: AuthGateway
    """Memory store, two sessions per principal."""


@pytest.fixture(scope="module")
def setup(
    authserver: AuthServer, replica_a: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("limits")
    issuers = [{"issuer": authserver.issuer}]
    upstreams = [replica_a.url]
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        flaky = stack.enter_context(redis_server())

        def limited(store: RedisServer, on_failure: str, resource: str) -> AuthGateway:
            limit = {"requests": BUDGET, "per": 60, "on_store_failure": on_failure}
            auth: dict[str, Any] = {"issuers": issuers, "resource": resource, "rate_limit": limit}
            options = ["--session-store", store.url(), "--workers", "1"]
            return start_auth_gateway(stack, tmp, auth, upstreams=upstreams, options=options)

        first = limited(redis, "open", SHARED)
        second = limited(redis, "open", SHARED)
        fail_open = limited(flaky, "open", SHARED)
        fail_closed = limited(flaky, "closed", SHARED)
        capped_auth = {"issuers": issuers, "sessions_per_principal": 2}
        capped = start_auth_gateway(stack, tmp, capped_auth, upstreams=upstreams)
        yield Setup(first, second, fail_open, fail_closed, flaky, capped)


def _list(gateway: AuthGateway, token: str, id_: int) -> httpx.Response:
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "tools/list"}
    body = rpc("tools/list", {"_meta": MODERN_META}, id_=id_)
    return httpx.post(gateway.url, headers=headers | bearer(token), json=body, timeout=10)


def _principal(server: AuthServer) -> str:
    """A token for a principal nobody has charged yet."""
    return mint(server, SHARED, sub=f"user-{uuid.uuid4().hex[:8]}")


def test_two_gateways_on_one_redis_share_one_budget(setup: Setup, authserver: AuthServer) -> None:
    token = _principal(authserver)
    gateways = (setup.first, setup.second)
    for n in range(BUDGET):
        assert _list(gateways[n % 2], token, n).status_code == 200, n
    for gateway in gateways:
        refused = _list(gateway, token, 99)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json() == {
            "jsonrpc": "2.0",
            "id": 99,
            "error": refused.json()["error"] | {"code": -32008},
        }
    other = _principal(authserver)  # another principal has its own budget
    assert _list(setup.second, other, 1).status_code == 200
    assert counter(setup.first.metrics(), "proxy_rate_limited_total") >= 1


def test_with_redis_down_the_configured_side_decides(setup: Setup, authserver: AuthServer) -> None:
    token = _principal(authserver)
    assert _list(setup.fail_closed, token, 1).status_code == 200
    setup.flaky.stop()
    try:
        assert _list(setup.fail_open, token, 2).status_code == 200
        closed = _list(setup.fail_closed, token, 3)
        assert closed.status_code == 429
        assert answer(closed)["id"] == 3
    finally:
        setup.flaky.start()
    page = setup.fail_open.metrics()
    assert counter(page, "proxy_rate_limited_total", limit="store_failed_open") >= 1
    page = setup.fail_closed.metrics()
    assert counter(page, "proxy_rate_limited_total", limit="store_failed_closed") >= 1
    for _ in range(50):  # the store is back: closed admits again (its pool reconnects)
        if _list(setup.fail_closed, token, 4).status_code == 200:
            break
    else:
        raise AssertionError("fail-closed kept refusing after Redis came back")


async def test_a_principal_holds_at_most_its_cap_of_sessions(
    setup: Setup, authserver: AuthServer
) -> None:
    gateway = setup.capped
    alice = mint(authserver, gateway.resource, sub="capped-alice")
    async with httpx.AsyncClient(timeout=10) as http:
        opened = [await initialize(http, gateway.url, alice) for _ in range(2)]
        params = {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "one-too-many", "version": "0"},
        }
        headers = {"accept": ACCEPT} | bearer(alice)
        over = await http.post(gateway.url, headers=headers, json=rpc("initialize", params, 8))
        assert over.status_code == 429
        assert answer(over)["error"]["code"] == -32008
        assert answer(over)["id"] == 8
        for session_id in opened:  # nothing open was evicted
            on = headers | {"mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}
            listed = await http.post(gateway.url, headers=on, json=rpc("tools/list"))
            assert listed.status_code == 200
        bob = mint(authserver, gateway.resource, sub="capped-bob")
        await initialize(http, gateway.url, bob)  # a cap per principal, not for everyone
        ended = headers | {"mcp-session-id": opened[0], "mcp-protocol-version": HANDSHAKE}
        assert (await http.delete(gateway.url, headers=ended)).status_code in (200, 204)
        await initialize(http, gateway.url, alice)  # a closed session frees its place
