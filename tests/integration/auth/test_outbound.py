"""What reaches a backend with auth on: never the client's token; the backend's own
credentials instead (RFC 8693 token exchange, client credentials, static headers from
the environment), each for the backend's own audience, from the real provider."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.authserver import AuthServer, claims_of
from testbed.processes import REPO_ROOT
from tests.helpers.gateways import Upstream, start_upstream
from tests.integration.auth.parts import (
    AuthGateway,
    answer,
    call,
    initialize,
    mint,
    start_auth_gateway,
)

pytestmark = pytest.mark.timeout(120)

STATIC_KEY = "Bearer static-key-from-the-environment-4f1c9a"
PER_PRINCIPAL_KEY = "frank-own-key-5d2e"


@dataclass(frozen=True)
class Setup:
    plain: AuthGateway
    """One upstream (`plain_upstream`), no outbound credentials."""
    plain_upstream: Upstream
    federated: AuthGateway
    """Backends ex_ (token exchange), cc_ (client credentials), st_ (static header), pp_
    (a key per principal), pt_ (the caller's own token, when issued for it too)."""
    upstreams: dict[str, Upstream]
    config: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def setup(authserver: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("outbound")
    token_url = authserver.endpoint("token_endpoint")
    client = authserver.confidential
    env = {"GATEWAY_CLIENT_SECRET": str(client.client_secret), "STATIC_KEY": STATIC_KEY}
    auth: dict[str, Any] = {"issuers": [{"issuer": authserver.issuer}]}
    with ExitStack() as stack:
        plain_upstream = start_upstream(stack, "plain")
        plain = start_auth_gateway(stack, tmp, auth, upstreams=[plain_upstream.url])
        upstreams = {name: start_upstream(stack, name) for name in ("ex", "cc", "st", "pp", "pt")}
        keys = tmp / "keys.json"
        keys.write_text(json.dumps({"frank": PER_PRINCIPAL_KEY}))
        client_auth = {
            "token_url": token_url,
            "client_id": client.client_id,
            "client_secret": "env:GATEWAY_CLIENT_SECRET",
        }
        credentials: dict[str, dict[str, Any]] = {
            "ex": {"kind": "token_exchange", **client_auth, "resource": upstreams["ex"].url},
            "cc": {"kind": "client_credentials", **client_auth, "resource": upstreams["cc"].url},
            "st": {"kind": "headers", "headers": {"Authorization": "env:STATIC_KEY"}},
            "pp": {"kind": "per_principal", "secrets": f"file:{keys}"},
            "pt": {"kind": "passthrough", "audience": upstreams["pt"].url},
        }
        backends = [
            {
                "name": name,
                "prefix": f"{name}_",
                "replicas": [upstream.url],
                "credentials": credentials[name],
            }
            for name, upstream in upstreams.items()
        ]
        federated = start_auth_gateway(stack, tmp, auth, backends=backends, env=env)
        config = next(tmp.glob(f"gateway-{federated.base.rsplit(':', 1)[1]}.yaml"))
        yield Setup(plain, plain_upstream, federated, upstreams, config, env)


def _seen(upstream: Upstream) -> list[str]:
    """Every Authorization value the upstream received, in order."""
    requests = httpx.get(f"{upstream.base}/seen-headers", timeout=10).json()["requests"]
    return [value for r in requests for value in r["headers"].get("authorization", [])]


async def test_the_clients_token_never_reaches_the_upstream(
    setup: Setup, authserver: AuthServer
) -> None:
    token = authserver.client_credentials_token(resource=setup.plain.resource)
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await initialize(http, setup.plain.url, token)
        called = await call(http, setup.plain.url, session_id, token, "whoami")
        assert called.status_code == 200
        assert "result" in answer(called)
        seen = await http.get(f"{setup.plain_upstream.base}/seen-headers")
    requests = seen.json()["requests"]
    assert len(requests) >= 3  # initialize, initialized, the call
    assert all("authorization" not in r["headers"] for r in requests)
    assert token not in seen.text


async def test_each_backend_gets_its_own_credentials_for_its_own_audience(
    setup: Setup, authserver: AuthServer
) -> None:
    token = authserver.authorization_code_token(resource=setup.federated.resource, user="frank")
    async with httpx.AsyncClient(timeout=20) as http:
        session_id = await initialize(http, setup.federated.url, token)
        for name in ("ex", "cc", "st"):
            called = await call(http, setup.federated.url, session_id, token, f"{name}_whoami")
            assert called.status_code == 200, called.text
            assert "result" in answer(called), called.text
        again = await call(http, setup.federated.url, session_id, token, "ex_whoami", id_=2)
        assert again.status_code == 200

    # The caller's requests carry the caller's exchanged token (exchanged once, then
    # cached); the gateway's own requests (its catalog of names) its client's token.
    seen = [claims_of(v.removeprefix("Bearer ")) for v in _seen(setup.upstreams["ex"])]
    callers = {c["jti"] for c in seen if c["sub"] == "frank"}
    assert len(callers) == 1, seen
    for claims in seen:
        assert claims["aud"] == setup.upstreams["ex"].url
        assert claims["sub"] in ("frank", authserver.confidential.client_id)
    exchanged = next(c for c in seen if c["sub"] == "frank")
    assert exchanged["act"] == {"sub": authserver.confidential.client_id}

    service = _seen(setup.upstreams["cc"])
    assert service
    claims = claims_of(service[0].removeprefix("Bearer "))
    assert claims["aud"] == setup.upstreams["cc"].url
    assert claims["client_id"] == authserver.confidential.client_id
    assert claims["sub"] == authserver.confidential.client_id

    assert set(_seen(setup.upstreams["st"])) == {STATIC_KEY}
    for upstream in setup.upstreams.values():
        assert all(token not in value for value in _seen(upstream))


def test_check_describes_the_credentials_without_their_secrets(setup: Setup) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "proxy", "check", str(setup.config)],
        capture_output=True,
        text=True,
        env={**setup.env, "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    output = shown.stdout + shown.stderr
    assert "token_exchange" in output
    for secret in setup.env.values():
        assert secret not in output
    assert "static-key" not in output


async def _served_then_refused(
    http: httpx.AsyncClient, setup: Setup, served: str, refused: str, tool: str
) -> tuple[str, httpx.Response]:
    """A session for each token on the federated gateway and a call of `tool` in each:
    the first answered, the second refused with 403; the second session and answer."""
    url = setup.federated.url
    called = await call(http, url, await initialize(http, url, served), served, tool)
    assert "result" in answer(called), called.text
    other = await initialize(http, url, refused)
    refusal = await call(http, url, other, refused, tool)
    assert refusal.status_code == 403, refusal.text
    return other, refusal


async def test_a_key_per_principal_and_none_for_a_principal_without_one(
    setup: Setup, authserver: AuthServer
) -> None:
    frank = mint(authserver, setup.federated.resource, sub="frank")
    gina = mint(authserver, setup.federated.resource, sub="gina")
    async with httpx.AsyncClient(timeout=20) as http:
        ginas, refused = await _served_then_refused(http, setup, frank, gina, "pp_whoami")
        assert "error" in refused.json()
        assert "result" in answer(await call(http, setup.federated.url, ginas, gina, "st_whoami"))
    seen = _seen(setup.upstreams["pp"])
    assert f"Bearer {PER_PRINCIPAL_KEY}" in seen
    assert all(PER_PRINCIPAL_KEY in value for value in seen)  # nothing else, ever


async def test_passthrough_only_with_a_token_issued_for_the_backend_too(
    setup: Setup, authserver: AuthServer
) -> None:
    backend = setup.upstreams["pt"].url
    both = mint(
        authserver, setup.federated.resource, sub="hal", aud=[setup.federated.resource, backend]
    )
    ours = mint(authserver, setup.federated.resource, sub="ida")
    async with httpx.AsyncClient(timeout=20) as http:
        await _served_then_refused(http, setup, both, ours, "pt_whoami")
    seen = _seen(setup.upstreams["pt"])
    assert f"Bearer {both}" in seen
    assert all(ours not in value for value in seen)
