"""The gateway as an OAuth resource server: its metadata, and every kind of token it must
refuse, each with its status and ``WWW-Authenticate`` (a real oidc-provider signs them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest
from joserfc.jwk import RSAKey

from testbed.authserver import AuthServer
from tests.helpers.clients import ACCEPT, MODERN
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


@pytest.fixture(scope="module")
def gateway(
    authserver: AuthServer, replica_a: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthGateway]:
    auth = {
        "issuers": [{"issuer": authserver.issuer}],
        "scopes_supported": ["mcp:tools", "mcp:admin"],
        "required_scopes": ["mcp:tools"],
        "jwks_refresh": 1,
    }
    with ExitStack() as stack:
        yield start_auth_gateway(
            stack, tmp_path_factory.mktemp("tokens"), auth, upstreams=[replica_a.url]
        )


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _list(gateway: AuthGateway, token: str | None) -> httpx.Response:
    """A 2026-07-28 tools/list (no session: the token is all the gateway has to go on)."""
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "tools/list"}
    headers |= bearer(token) if token is not None else {}
    body = rpc("tools/list", {"_meta": MODERN_META}, id_=7)
    return httpx.post(gateway.url, headers=headers, json=body, timeout=10)


def _metadata_url(gateway: AuthGateway) -> str:
    return f"{gateway.base}/.well-known/oauth-protected-resource/mcp"


def test_both_metadata_documents_name_the_resource_and_the_issuer(
    gateway: AuthGateway, authserver: AuthServer
) -> None:
    for path in (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ):
        document = httpx.get(f"{gateway.base}{path}", timeout=10).json()
        assert document["resource"] == gateway.url
        assert document["authorization_servers"] == [authserver.issuer]
        assert document["scopes_supported"] == ["mcp:tools", "mcp:admin"]


def test_no_token_is_401_pointing_at_the_metadata(gateway: AuthGateway) -> None:
    response = _list(gateway, None)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{_metadata_url(gateway)}"' in challenge
    assert "error=" not in challenge  # no token is not an invalid one (RFC 6750 3.1)
    assert response.json()["error"]["code"] == -32007
    assert response.json()["id"] == 7


def test_a_token_issued_for_the_gateway_is_accepted(
    gateway: AuthGateway, authserver: AuthServer
) -> None:
    token = authserver.client_credentials_token(resource=gateway.url)
    response = _list(gateway, token)
    assert response.status_code == 200, response.text
    listed = answer(response)
    assert listed["id"] == 7
    assert any(t["name"] == "whoami" for t in listed["result"]["tools"])


def _public_pem(server: AuthServer) -> str:
    jwk = next(k for k in server.jwks()["keys"] if k["kty"] == "RSA")
    pem: bytes = RSAKey.import_key(jwk).as_pem(private=False)
    return pem.decode()


def _tampered(server: AuthServer, audience: str) -> str:
    head, payload, signature = mint(server, audience).split(".")
    flipped = "A" if signature[10] != "A" else "B"
    return ".".join((head, payload, signature[:10] + flipped + signature[11:]))


BadToken = Callable[[AuthServer, str], str]
BAD_TOKENS: dict[str, BadToken] = {
    "expired": lambda s, aud: mint(
        s, aud, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200
    ),
    "not yet valid": lambda s, aud: mint(s, aud, nbf=int(time.time()) + 3600),
    "wrong issuer": lambda s, aud: mint(s, aud, iss="http://127.0.0.1:1/other"),
    "wrong audience": lambda s, aud: mint(s, aud, aud="https://somewhere.else/mcp"),
    "another resource": lambda s, aud: s.client_credentials_token(
        resource=aud.replace("/mcp", "/other")
    ),
    "alg none": lambda s, aud: s.sign(
        {"sub": "alice", "aud": aud, "scope": "mcp:tools"}, alg="none"
    ),
    "HS256 with the public key": lambda s, aud: s.sign(
        {"sub": "alice", "aud": aud, "scope": "mcp:tools"}, alg="HS256", secret=_public_pem(s)
    ),
    "tampered signature": _tampered,
    "unknown kid": lambda s, aud: s.sign(
        {"sub": "alice", "aud": aud, "scope": "mcp:tools"}, key="foreign"
    ),
    "oversized": lambda s, aud: mint(s, aud, padding="x" * 9000),
    "not a JWT": lambda s, aud: "opaque-token-nobody-issued",
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
def test_a_bad_token_is_401_invalid_token(
    kind: str, gateway: AuthGateway, authserver: AuthServer
) -> None:
    token = BAD_TOKENS[kind](authserver, gateway.url)
    response = _list(gateway, token)
    assert response.status_code == 401, (kind, response.text)
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{_metadata_url(gateway)}"' in challenge
    assert response.json()["error"]["code"] == -32007
    assert token not in response.text
    assert token[-20:] not in challenge


def test_a_token_without_the_required_scope_is_403_with_the_scope_to_ask_for(
    gateway: AuthGateway, authserver: AuthServer
) -> None:
    token = authserver.client_credentials_token(resource=gateway.url, scope="mcp:admin")
    response = _list(gateway, token)
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="mcp:tools"' in challenge
    assert f'resource_metadata="{_metadata_url(gateway)}"' in challenge


def test_a_rotated_key_is_accepted_without_a_restart(
    gateway: AuthGateway, authserver: AuthServer
) -> None:
    assert _list(gateway, mint(authserver, gateway.url)).status_code == 200
    time.sleep(1.1)  # past jwks_refresh since the last fetch
    new_kid = authserver.rotate_keys(keep_old=True)
    token = authserver.client_credentials_token(resource=gateway.url)
    assert authserver.current_kid() == new_kid
    assert _list(gateway, token).status_code == 200


def test_a_storm_of_unknown_kids_costs_at_most_a_fetch_per_interval(
    gateway: AuthGateway, authserver: AuthServer
) -> None:
    tokens = [
        authserver.sign({"sub": "mallory", "aud": gateway.url}, key="foreign", kid=f"made-up-{n}")
        for n in range(60)
    ]
    before = counter(gateway.metrics(), "proxy_auth_jwks_fetches_total")
    started = time.monotonic()

    async def storm() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as http:
            sent = [
                http.post(
                    gateway.url, headers={"accept": ACCEPT, **bearer(t)}, json=rpc("tools/list")
                )
                for t in tokens
            ]
            return [r.status_code for r in await asyncio.gather(*sent)]

    assert set(asyncio.run(storm())) == {401}
    elapsed = time.monotonic() - started
    fetched = counter(gateway.metrics(), "proxy_auth_jwks_fetches_total") - before
    assert 0 < fetched <= elapsed / 1.0 + 2, (fetched, elapsed)


def test_the_provider_down_cached_keys_keep_working_new_keys_fail_closed(
    gateway: AuthGateway, authserver: AuthServer
) -> None:
    assert _list(gateway, mint(authserver, gateway.url)).status_code == 200  # keys cached
    known_key = mint(authserver, gateway.url, sub="carol")  # never shown to the gateway
    authserver.rotate_keys(keep_old=True)
    unseen_key = mint(authserver, gateway.url, sub="dave")
    authserver.stop()
    try:
        time.sleep(1.1)  # past jwks_refresh: the unknown kid makes the gateway try
        assert _list(gateway, known_key).status_code == 200
        refused = _list(gateway, unseen_key)
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        failed = counter(gateway.metrics(), "proxy_auth_jwks_fetches_total", outcome="failed")
        assert failed >= 1
    finally:
        authserver.start()
    time.sleep(1.1)
    assert _list(gateway, unseen_key).status_code == 200  # and the issuer is back


async def test_both_eras_need_the_token_on_every_request(
    gateway: AuthGateway, authserver: AuthServer
) -> None:
    token = authserver.client_credentials_token(resource=gateway.url)
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await initialize(http, gateway.url, token)
        headers = {
            "accept": ACCEPT,
            "mcp-session-id": session_id,
            "mcp-protocol-version": "2025-11-25",
        }
        without = await http.post(gateway.url, headers=headers, json=rpc("tools/list"))
        assert without.status_code == 401
        listed = await http.post(
            gateway.url, headers=headers | bearer(token), json=rpc("tools/list")
        )
        assert listed.status_code == 200
        assert any(t["name"] == "whoami" for t in answer(listed)["result"]["tools"])
        modern = {
            "accept": ACCEPT,
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/list",
        }
        params = {"_meta": MODERN_META}
        stateless = await http.post(gateway.url, headers=modern, json=rpc("tools/list", params))
        assert stateless.status_code == 401
        stateless = await http.post(
            gateway.url, headers=modern | bearer(token), json=rpc("tools/list", params)
        )
        assert stateless.status_code == 200, stateless.text
        assert any(t["name"] == "whoami" for t in answer(stateless)["result"]["tools"])


OPAQUE_RESOURCE = "http://127.0.0.1:1/opaque/mcp"


@pytest.fixture(scope="module")
def introspecting(
    authserver: AuthServer, replica_a: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthGateway]:
    """A gateway whose tokens are opaque (the provider issues opaque tokens for a resource
    with an ``/opaque/`` segment), checked by RFC 7662 introspection as its own client."""
    client = authserver.confidential
    issuer = {
        "issuer": authserver.issuer,
        "client_id": client.client_id,
        "client_secret": "env:INTROSPECTION_SECRET",
    }
    auth = {"issuers": [issuer], "resource": OPAQUE_RESOURCE}
    env = {"INTROSPECTION_SECRET": str(client.client_secret)}
    with ExitStack() as stack:
        tmp = tmp_path_factory.mktemp("introspection")
        yield start_auth_gateway(stack, tmp, auth, upstreams=[replica_a.url], env=env)


def test_an_opaque_token_is_introspected_once_then_cached(
    introspecting: AuthGateway, authserver: AuthServer
) -> None:
    token = authserver.authorization_code_token(resource=OPAQUE_RESOURCE, user="olga")
    assert token.count(".") == 0  # opaque, not a JWT
    before = counter(introspecting.metrics(), "proxy_auth_token_cache_total", result="miss")
    assert _list(introspecting, token).status_code == 200
    assert _list(introspecting, token).status_code == 200
    page = introspecting.metrics()
    assert counter(page, "proxy_auth_token_cache_total", result="miss") - before == 1
    assert counter(page, "proxy_auth_token_cache_total", result="hit") >= 1
    refused = _list(introspecting, "a-made-up-opaque-token-0123456789")
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    jwt_for_elsewhere = authserver.client_credentials_token(resource=OPAQUE_RESOURCE + "x/")
    assert _list(introspecting, jwt_for_elsewhere).status_code == 401
