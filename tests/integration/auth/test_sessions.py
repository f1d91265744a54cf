"""Sessions bound to principals, and the official SDK client's whole OAuth flow through
the gateway: one gateway, two gateways on one Redis, and federation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import mcp.types as types
import pytest

from testbed.authserver import AuthServer, MemoryTokenStorage, claims_of, sdk_oauth_provider
from testbed.redis_server import redis_server
from tests.helpers.clients import ACCEPT, HANDSHAKE, Era, sdk_session
from tests.helpers.gateways import Upstream
from tests.integration.auth.parts import (
    AuthGateway,
    answer,
    bearer,
    initialize,
    mint,
    rpc,
    start_auth_gateway,
)

pytestmark = pytest.mark.timeout(120)

SCOPES = {
    "scopes_supported": ["mcp:tools", "mcp:admin"],
    "required_scopes": ["mcp:tools"],
}


@dataclass(frozen=True)
class Gateways:
    single: AuthGateway
    """Memory store, one upstream."""
    first: AuthGateway
    second: AuthGateway
    """Two gateways on one Redis, in front of the same upstream, as one resource."""
    federated: AuthGateway
    """Two backends (prefixes a_ and b_) behind one endpoint."""


@pytest.fixture(scope="module")
def gateways(
    authserver: AuthServer,
    replica_a: Upstream,
    replica_b: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateways]:
    tmp = tmp_path_factory.mktemp("sessions")
    auth: dict[str, Any] = {"issuers": [{"issuer": authserver.issuer}], **SCOPES}
    with ExitStack() as stack:
        single = start_auth_gateway(stack, tmp, auth, upstreams=[replica_a.url])
        redis = stack.enter_context(redis_server())
        shared = {**auth, "resource": "http://127.0.0.1:1/shared/mcp"}
        store = ["--session-store", redis.url(), "--workers", "1"]
        first = start_auth_gateway(stack, tmp, shared, upstreams=[replica_a.url], options=store)
        second = start_auth_gateway(stack, tmp, shared, upstreams=[replica_a.url], options=store)
        backends = [
            {"name": "a", "prefix": "a_", "replicas": [replica_a.url]},
            {"name": "b", "prefix": "b_", "replicas": [replica_b.url]},
        ]
        federated = start_auth_gateway(stack, tmp, auth, backends=backends)
        yield Gateways(single, first, second, federated)


def _on(session_id: str, token: str | None) -> dict[str, str]:
    headers = {"accept": ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}
    return headers | (bearer(token) if token is not None else {})


async def _list(
    http: httpx.AsyncClient, url: str, session_id: str, token: str | None
) -> httpx.Response:
    return await http.post(url, headers=_on(session_id, token), json=rpc("tools/list", id_=3))


@pytest.mark.parametrize("era", ["handshake", "modern"])
async def test_the_sdk_client_discovers_authorizes_and_calls_through_the_gateway(
    era: Era, gateways: Gateways, authserver: AuthServer
) -> None:
    gateway = gateways.single
    storage = MemoryTokenStorage()
    provider = sdk_oauth_provider(authserver, gateway.url, user="erin", storage=storage)
    async with sdk_session(gateway.url, era, auth=provider) as (session, wire):
        tools = await session.list_tools()
        assert "whoami" in {t.name for t in tools.tools}
        result = await session.call_tool("whoami", {})
        assert not result.is_error
        assert isinstance(result.content[0], types.TextContent)
    assert wire.responses[0].status_code == 401  # the flow began at the gateway's challenge
    assert storage.client_info is not None  # registered dynamically
    assert storage.tokens is not None
    claims = claims_of(storage.tokens.access_token)
    assert claims["aud"] == gateway.url
    assert claims["sub"] == "erin"
    assert "mcp:tools" in claims["scope"].split()


async def _hijack(opened_on: AuthGateway, presented_on: AuthGateway, server: AuthServer) -> None:
    alice = mint(server, opened_on.resource, sub="alice")
    bob = mint(server, presented_on.resource, sub="bob")
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await initialize(http, opened_on.url, alice)
        stolen = await _list(http, presented_on.url, session_id, bob)
        assert stolen.status_code == 404, stolen.text
        unknown = await _list(http, presented_on.url, "no-such-session-id-0000", bob)
        assert (stolen.status_code, stolen.json()["error"]) == (
            unknown.status_code,
            unknown.json()["error"],
        )  # the same answer as for a session that does not exist
        assert (await _list(http, presented_on.url, session_id, None)).status_code == 401
        # Alice's refreshed token (another token, the same principal) keeps the session.
        refreshed = mint(server, presented_on.resource, sub="alice")
        assert refreshed != alice
        owned = await _list(http, presented_on.url, session_id, refreshed)
        assert owned.status_code == 200, owned.text
        assert answer(owned)["result"]["tools"]


async def test_a_session_presented_by_another_principal_is_404(
    gateways: Gateways, authserver: AuthServer
) -> None:
    await _hijack(gateways.single, gateways.single, authserver)


async def test_a_session_presented_by_another_principal_is_404_on_any_replica(
    gateways: Gateways, authserver: AuthServer
) -> None:
    await _hijack(gateways.first, gateways.second, authserver)


async def test_a_federated_session_presented_by_another_principal_is_404(
    gateways: Gateways, authserver: AuthServer
) -> None:
    await _hijack(gateways.federated, gateways.federated, authserver)


async def test_another_client_of_the_same_subject_is_another_principal(
    gateways: Gateways, authserver: AuthServer
) -> None:
    gateway = gateways.single
    mine = mint(authserver, gateway.url, sub="alice", client_id="laptop")
    theirs = mint(authserver, gateway.url, sub="alice", client_id="someone-elses-app")
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await initialize(http, gateway.url, mine)
        assert (await _list(http, gateway.url, session_id, theirs)).status_code == 404
        assert (await _list(http, gateway.url, session_id, mine)).status_code == 200
