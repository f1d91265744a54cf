"""The test authorization server (``testbed.authserver``, node-oidc-provider) does what the
gateway's authentication tests will rely on: discovery (OIDC and RFC 8414), JWT access
tokens for an RFC 8707 resource by client credentials, authorization code + PKCE with
login and consent automated, refresh, dynamic registration, RFC 8693 token exchange, key
rotation, tokens signed on demand, a stop and start on the same port, and the official
MCP SDK client's whole OAuth flow against a protected resource that names it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import httpx2
import jwt
import pytest

from testbed.authserver import (
    EXCHANGE_GRANT,
    AuthServer,
    AuthServerError,
    MemoryTokenStorage,
    OAuthClient,
    claims_of,
    header_of,
    pkce_pair,
    sdk_oauth_provider,
)
from testbed.processes import serving_in_thread

pytestmark = pytest.mark.timeout(120)

RESOURCE = "http://127.0.0.1:18080/mcp"
OTHER = "http://127.0.0.1:18081/mcp"


@pytest.fixture(scope="module")
def server() -> Iterator[AuthServer]:
    """One server for the tests that leave its keys alone."""
    with AuthServer() as running:
        yield running


def verify(server: AuthServer, token: str, audience: str | None) -> dict[str, Any]:
    """`token`'s claims, checked with the published JWKS (signature, iss, aud, exp)."""
    header = header_of(token)
    keys = jwt.PyJWKSet.from_dict(server.jwks())
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    options = {"verify_aud": audience is not None}
    claims: dict[str, Any] = jwt.decode(
        token,
        key=key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=server.issuer,
        options=options,  # type: ignore[arg-type]
    )
    return claims


def test_discovery_documents(server: AuthServer) -> None:
    oidc = server.metadata("openid-configuration")
    assert oidc["issuer"] == server.issuer
    assert oidc["jwks_uri"] == f"{server.issuer}/jwks"
    assert oidc["token_endpoint"] == f"{server.issuer}/token"
    assert oidc["registration_endpoint"] == f"{server.issuer}/reg"
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert oidc["response_types_supported"] == ["code"]
    assert oidc["authorization_response_iss_parameter_supported"] is True
    assert {"authorization_code", "refresh_token", "client_credentials", EXCHANGE_GRANT} <= set(
        oidc["grant_types_supported"]
    )
    assert {"openid", "offline_access", "mcp:tools", "mcp:admin"} <= set(oidc["scopes_supported"])
    assert "none" in oidc["token_endpoint_auth_methods_supported"]
    # RFC 8414 metadata is served too (oidc-provider serves both well-known documents).
    assert server.metadata("oauth-authorization-server") == oidc
    jwks = server.jwks()
    assert [k["alg"] for k in jwks["keys"]] == ["RS256", "ES256"]
    assert all("d" not in k for k in jwks["keys"])


def test_client_credentials_token_is_a_jwt_for_the_resource(server: AuthServer) -> None:
    token = server.client_credentials_token(resource=RESOURCE, scope="mcp:tools openid")
    header = header_of(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    assert header["kid"] == server.current_kid()
    claims = verify(server, token, RESOURCE)
    assert claims["aud"] == RESOURCE
    assert claims["iss"] == server.issuer
    assert claims["sub"] == claims["client_id"] == server.confidential.client_id
    assert claims["scope"] == "mcp:tools"  # resource scopes only
    assert claims["exp"] - claims["iat"] == 300


def test_a_resource_elsewhere_is_refused(server: AuthServer) -> None:
    with pytest.raises(AuthServerError) as refused:
        server.client_credentials_token(resource="https://example.com/mcp")
    assert refused.value.status == 400
    assert refused.value.body["error"] == "invalid_target"


def test_wrong_client_secret_is_refused(server: AuthServer) -> None:
    impostor = OAuthClient(server.confidential.client_id, "not-the-secret")
    response = server.token_request({"grant_type": "client_credentials"}, impostor)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_authorization_code_with_pkce(server: AuthServer) -> None:
    grant = server.authorization_code_grant(
        resource=RESOURCE, scope="openid mcp:tools mcp:admin offline_access", user="bob"
    )
    claims = verify(server, grant["access_token"], RESOURCE)
    assert claims["sub"] == "bob"
    assert claims["client_id"] == server.public.client_id
    assert set(claims["scope"].split()) == {"mcp:tools", "mcp:admin"}
    assert {"id_token", "refresh_token"} <= set(grant)

    refreshed = server.refresh(grant["refresh_token"], resource=RESOURCE)
    again = verify(server, refreshed["access_token"], RESOURCE)
    assert again["sub"] == "bob"
    assert again["jti"] != claims["jti"]


def test_authorization_code_without_pkce_or_with_a_wrong_verifier(server: AuthServer) -> None:
    url = server.authorization_url(code_challenge="", state="s", scope="mcp:tools")
    url = url.replace("&code_challenge=&code_challenge_method=S256", "")
    refused = server.authorize(url)
    assert refused.code is None
    assert refused.error == "invalid_request"
    assert "PKCE" in (refused.error_description or "")

    _, challenge = pkce_pair()
    url = server.authorization_url(
        code_challenge=challenge, state="s", scope="mcp:tools", resource=RESOURCE
    )
    outcome = server.authorize(url)
    assert outcome.code is not None
    assert outcome.iss == server.issuer
    wrong_verifier, _ = pkce_pair()
    response = server.token_request(
        {
            "grant_type": "authorization_code",
            "code": outcome.code,
            "redirect_uri": server.public.redirect_uri or "",
            "code_verifier": wrong_verifier,
        },
        server.public,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_denied_consent_redirects_with_access_denied(server: AuthServer) -> None:
    _, challenge = pkce_pair()
    url = server.authorization_url(code_challenge=challenge, state="xyz", scope="mcp:tools")
    outcome = server.authorize(url, deny=True)
    assert outcome.code is None
    assert outcome.error == "access_denied"
    assert outcome.state == "xyz"
    assert outcome.redirect_url.startswith(f"{server.public.redirect_uri}?")


def test_interaction_page_is_a_form_for_people_too(server: AuthServer) -> None:
    _, challenge = pkce_pair()
    url = server.authorization_url(code_challenge=challenge, state="s", scope="mcp:tools")
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        page = browser.get(url)
    assert page.status_code == 200
    assert page.url.path.startswith("/interaction/")
    assert '<input type="hidden" name="prompt" value="login">' in page.text


def test_dynamic_registration(server: AuthServer) -> None:
    public = server.register_client(
        {
            "redirect_uris": ["http://127.0.0.1:7777/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "application_type": "native",
            "client_name": "an MCP client",
            "scope": "mcp:tools offline_access",
        }
    )
    assert public.client_secret is None
    token = server.authorization_code_token(
        resource=RESOURCE, scope="mcp:tools", user="dora", client=public
    )
    claims = verify(server, token, RESOURCE)
    assert claims["client_id"] == public.client_id
    assert claims["sub"] == "dora"

    confidential = server.register(
        {"redirect_uris": ["http://127.0.0.1:7777/callback"], "grant_types": ["authorization_code"]}
    )
    assert confidential["token_endpoint_auth_method"] == "client_secret_basic"  # noqa: S105
    assert confidential["client_secret"]

    with pytest.raises(AuthServerError) as refused:
        server.register({"redirect_uris": ["http://127.0.0.1/cb"], "scope": "mcp:unknown"})
    assert refused.value.body["error"] == "invalid_client_metadata"


def test_token_exchange(server: AuthServer) -> None:
    subject = server.authorization_code_token(
        resource=RESOURCE, scope="mcp:tools mcp:admin", user="erin"
    )
    exchanged = server.exchange(subject, resource=OTHER)
    claims = verify(server, exchanged, OTHER)
    assert claims["sub"] == "erin"
    assert claims["aud"] == OTHER
    assert set(claims["scope"].split()) == {"mcp:tools", "mcp:admin"}
    assert claims["act"] == {"sub": server.confidential.client_id}
    assert claims["client_id"] == server.confidential.client_id

    narrowed = claims_of(server.exchange(subject, audience="backend-x", scope="mcp:tools"))
    assert narrowed["aud"] == "backend-x"
    assert narrowed["scope"] == "mcp:tools"

    twice = claims_of(server.exchange(exchanged, resource=RESOURCE))
    assert twice["act"] == {"sub": server.confidential.client_id, "act": claims["act"]}

    with pytest.raises(AuthServerError) as refused:
        server.exchange(
            server.exchange(subject, resource=OTHER, scope="mcp:tools"),
            resource=RESOURCE,
            scope="mcp:admin",
        )
    assert refused.value.body["error"] == "invalid_scope"

    forged = server.sign({"sub": "mallory", "aud": RESOURCE}, key="foreign")
    with pytest.raises(AuthServerError) as refused:
        server.exchange(forged, resource=OTHER)
    assert refused.value.body["error"] == "invalid_grant"

    expired = server.sign({"sub": "erin", "aud": RESOURCE, "exp": int(time.time()) - 10})
    with pytest.raises(AuthServerError) as refused:
        server.exchange(expired, resource=OTHER)
    assert refused.value.body["error"] == "invalid_grant"

    response = server.token_request(
        {
            "grant_type": EXCHANGE_GRANT,
            "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "resource": OTHER,
        },
        server.public,
    )
    assert response.status_code == 400  # the public client may not use the grant


def test_sign_makes_tokens_with_the_given_claims(server: AuthServer) -> None:
    now = int(time.time())
    token = server.sign({"sub": "frank", "aud": RESOURCE, "scope": "mcp:tools", "nbf": now})
    assert header_of(token) == {"alg": "RS256", "typ": "at+jwt", "kid": server.current_kid()}
    claims = verify(server, token, RESOURCE)
    assert claims["sub"] == "frank"
    assert claims["iss"] == server.issuer
    assert claims["exp"] - claims["iat"] == 300

    bare = claims_of(server.sign({"aud": "x", "iss": "https://evil.example"}, defaults=False))
    assert bare == {"aud": "x", "iss": "https://evil.example"}
    no_exp = claims_of(server.sign({"exp": None}))
    assert "exp" not in no_exp
    assert no_exp["iss"] == server.issuer

    es = server.sign({"aud": RESOURCE}, alg="ES256")
    assert header_of(es)["kid"] == server.current_kid("ES256")
    verify(server, es, RESOURCE)

    assert "kid" not in header_of(server.sign({}, omit_kid=True))
    lying = server.sign({}, kid="made-up", header={"typ": "JWT", "x": 1})
    assert header_of(lying) == {"alg": "RS256", "typ": "JWT", "kid": "made-up", "x": 1}

    foreign = server.sign({"aud": RESOURCE}, key="foreign")
    assert header_of(foreign)["kid"] not in {k["kid"] for k in server.jwks()["keys"]}
    stolen_kid = server.sign({"aud": RESOURCE}, key="foreign", kid=server.current_kid())
    with pytest.raises(jwt.InvalidSignatureError):
        verify(server, stolen_kid, RESOURCE)

    secret = "s" * 32
    hs = server.sign({"aud": RESOURCE}, alg="HS256", secret=secret)
    assert jwt.decode(hs, secret, algorithms=["HS256"], audience=RESOURCE)["iss"] == server.issuer
    unsigned = server.sign({"aud": RESOURCE}, alg="none")
    assert unsigned.endswith(".")
    assert header_of(unsigned)["alg"] == "none"


def test_access_token_lifetime_is_configurable() -> None:
    with AuthServer(access_token_ttl=2) as server:
        grant = server.token_response(
            {"grant_type": "client_credentials", "resource": RESOURCE}, server.confidential
        )
        assert grant["expires_in"] == 2
        claims = claims_of(grant["access_token"])
        assert claims["exp"] - claims["iat"] == 2
        settings = server.configure(access_token_ttl=60, access_token_alg="ES256")  # noqa: S106
        assert settings == {
            "accessTokenTtl": 60,
            "accessTokenAlg": "ES256",
            "defaultResource": None,
        }
        token = server.client_credentials_token(resource=RESOURCE)
        assert header_of(token)["alg"] == "ES256"
        claims = verify(server, token, RESOURCE)
        assert claims["exp"] - claims["iat"] == 60


def test_key_rotation() -> None:
    with AuthServer() as server:
        first = server.current_kid()
        before = server.client_credentials_token(resource=RESOURCE)
        assert header_of(before)["kid"] == first

        second = server.rotate_keys(keep_old=True)
        assert second != first
        assert [k["kid"] for k in server.jwks()["keys"]][:2] == [second, first]
        after = server.client_credentials_token(resource=RESOURCE)
        assert header_of(after)["kid"] == second
        verify(server, after, RESOURCE)
        verify(server, before, RESOURCE)  # the old key is still published

        third = server.rotate_keys(keep_old=False)
        published = [k["kid"] for k in server.jwks()["keys"]]
        assert published[0] == third
        assert first not in published
        assert second not in published
        assert {k["kid"] for k in server.keys()["retired"]} == {first, second}
        assert header_of(server.client_credentials_token(resource=RESOURCE))["kid"] == third
        # Tokens signed with a retired key can still be made, for negative tests.
        assert header_of(server.sign({}, key=first))["kid"] == first

        es = server.rotate_keys(alg="ES256", keep_old=False)
        assert [k["alg"] for k in server.jwks()["keys"]] == ["ES256", "RS256"]
        assert server.current_kid("ES256") == es


def test_stop_and_start_on_the_same_port() -> None:
    with AuthServer() as server:
        issuer, jwks = server.issuer, server.jwks()
        token = server.client_credentials_token(resource=RESOURCE)
        registered = server.register_client(
            {"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"}
        )
        server.stop()
        assert not server.running
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{issuer}/jwks", timeout=2)
        server.start()
        assert server.issuer == issuer
        assert server.jwks() == jwks  # same keys: tokens from before still verify
        verify(server, token, RESOURCE)
        assert (
            claims_of(server.authorization_code_token(resource=RESOURCE, client=registered))[
                "client_id"
            ]
            == registered.client_id
        )


# --------------------------------------------------------------------------- MCP SDK client


class _Resource(BaseHTTPRequestHandler):
    """A protected resource as the gateway will be one: 401 with ``resource_metadata``
    (RFC 9728), the metadata naming the authorization server, and the bearer's claims
    (checked against the JWKS) echoed once the token is good."""

    server: _ResourceServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        home = self.server
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/.well-known/oauth-protected-resource/mcp":
            self._reply(
                200,
                {
                    "resource": home.url,
                    "authorization_servers": [home.auth.issuer],
                    "scopes_supported": ["mcp:tools"],
                    "bearer_methods_supported": ["header"],
                },
            )
        elif self.path == "/mcp":
            token = self.headers.get("authorization", "").removeprefix("Bearer ")
            try:
                claims = verify(home.auth, token, home.url)
            except (jwt.PyJWTError, StopIteration, IndexError, ValueError):
                metadata = f"{home.base}/.well-known/oauth-protected-resource/mcp"
                self._reply(
                    401, {"error": "invalid_token"}, f'Bearer resource_metadata="{metadata}"'
                )
            else:
                home.seen.append(claims)
                self._reply(200, claims)
        else:
            self._reply(404, {})

    def _reply(self, status: int, body: dict[str, Any], challenge: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if challenge is not None:
            self.send_header("www-authenticate", challenge)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ResourceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, auth: AuthServer) -> None:
        super().__init__(("127.0.0.1", 0), _Resource)
        self.auth = auth
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.url = f"{self.base}/mcp"
        self.seen: list[dict[str, Any]] = []


@contextmanager
def protected_resource(auth: AuthServer) -> Iterator[_ResourceServer]:
    resource = _ResourceServer(auth)
    with serving_in_thread(resource):
        yield resource


@pytest.mark.parametrize("auth_method", [None, "none"], ids=["secret_basic", "public"])
async def test_mcp_sdk_client_oauth_flow(server: AuthServer, auth_method: str | None) -> None:
    with protected_resource(server) as resource:
        storage = MemoryTokenStorage()
        auth = sdk_oauth_provider(
            server,
            resource.url,
            user="grace",
            storage=storage,
            token_endpoint_auth_method=auth_method,
        )
        async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
            first = await http.post(
                resource.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
            )
            second = await http.post(
                resource.url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}
            )
    assert first.status_code == second.status_code == 200
    claims = first.json()
    assert claims["sub"] == "grace"
    assert claims["aud"] == resource.url
    assert claims["scope"] == "mcp:tools"
    assert len(resource.seen) == 2  # the second request reused the token
    assert storage.client_info is not None
    assert storage.client_info.client_id == claims["client_id"]
    assert storage.client_info.issuer == server.issuer
    assert (storage.client_info.client_secret is None) == (auth_method == "none")
    assert storage.tokens is not None
    assert storage.tokens.refresh_token  # the SDK asked for offline_access too


async def test_mcp_sdk_client_sees_a_denial(server: AuthServer) -> None:
    with protected_resource(server) as resource:
        auth = sdk_oauth_provider(server, resource.url, deny=True)
        async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
            with pytest.raises(AuthServerError, match="access_denied"):
                await http.get(resource.url)
