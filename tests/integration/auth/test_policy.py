"""Per-tool policy (CEL rules) through a running gateway, single backend and federated:
allowed and denied calls, rules over arguments, lists that show each principal only what
it may use, and a rule that does not compile stopping the start."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from testbed.authserver import AuthServer
from testbed.processes import REPO_ROOT, free_port, running
from tests.helpers.clients import ACCEPT, HANDSHAKE, linger_state
from tests.helpers.gateways import Upstream
from tests.integration.auth.parts import (
    AuthGateway,
    answer,
    bearer,
    call,
    counter,
    initialize,
    mint,
    rpc,
    start_auth_gateway,
)

pytestmark = pytest.mark.timeout(120)

MODERN = "2026-07-28"

RULES: list[dict[str, str]] = [
    {"name": "admins", "effect": "allow", "when": '"mcp:admin" in principal.scopes'},
    {"name": "no-bob", "effect": "deny", "when": 'principal.sub == "bob"'},
    {
        "name": "whoami-for-tool-users",
        "effect": "allow",
        "when": '"mcp:tools" in principal.scopes && request.name.endsWith("whoami")',
    },
    {
        "name": "echo-in-eu-only",
        "effect": "allow",
        "when": 'request.name.endsWith("echo_mcp_headers") && request.arguments.region == "eu"',
    },
]
AUTH: dict[str, Any] = {"policy_default": "deny", "policy": RULES}
USER_TOOLS = {"whoami", "echo_mcp_headers"}


@dataclass(frozen=True)
class Setup:
    single: AuthGateway
    federated: AuthGateway
    upstream: Upstream


@pytest.fixture(scope="module")
def setup(
    authserver: AuthServer,
    replica_a: Upstream,
    replica_b: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("policy")
    auth = {"issuers": [{"issuer": authserver.issuer}], **AUTH}
    backends = [
        {"name": "a", "prefix": "a_", "replicas": [replica_a.url]},
        {"name": "b", "prefix": "b_", "replicas": [replica_b.url]},
    ]
    with ExitStack() as stack:
        single = start_auth_gateway(stack, tmp, auth, upstreams=[replica_a.url])
        federated = start_auth_gateway(stack, tmp, auth, backends=backends)
        yield Setup(single, federated, replica_a)


async def _session(http: httpx.AsyncClient, gateway: AuthGateway, token: str) -> str:
    return await initialize(http, gateway.url, token)


async def _names(
    http: httpx.AsyncClient, gateway: AuthGateway, session_id: str, token: str, kind: str
) -> set[str]:
    headers = {"accept": ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}
    listed = await http.post(
        gateway.url, headers=headers | bearer(token), json=rpc(f"{kind}/list", id_=5)
    )
    assert listed.status_code == 200, listed.text
    return {entry["name"] for entry in answer(listed)["result"][kind]}


def _not_allowed(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    error: dict[str, Any] = answer(response)["error"]
    assert error["code"] == -32602
    return error


async def test_allowed_and_denied_calls(setup: Setup, authserver: AuthServer) -> None:
    gateway = setup.single
    alice = mint(authserver, gateway.resource, sub="alice")
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await _session(http, gateway, alice)
        allowed = await call(http, gateway.url, session_id, alice, "whoami")
        assert "result" in answer(allowed)

        denied = _not_allowed(await call(http, gateway.url, session_id, alice, "test_simple_text"))
        missing = _not_allowed(await call(http, gateway.url, session_id, alice, "no_such_tool"))
        assert denied == missing  # a denied tool and an absent one look the same
        assert "rule" not in json.dumps(denied) and "admins" not in json.dumps(denied)

        marker = "denied-linger"
        arguments = {"marker": marker, "seconds": 0.1}
        _not_allowed(await call(http, gateway.url, session_id, alice, "linger", arguments))
        assert await linger_state(http, setup.upstream, marker) is None  # never reached it

        bob = mint(authserver, gateway.resource, sub="bob")
        bobs = await _session(http, gateway, bob)
        _not_allowed(await call(http, gateway.url, bobs, bob, "whoami"))  # a deny rule first

        admin = mint(authserver, gateway.resource, sub="root", scope="mcp:tools mcp:admin")
        admins = await _session(http, gateway, admin)
        granted = await call(http, gateway.url, admins, admin, "test_simple_text")
        assert "result" in answer(granted)


async def test_every_decision_is_counted_remembered_ones_too(
    setup: Setup, authserver: AuthServer
) -> None:
    gateway = setup.single
    carol = mint(authserver, gateway.resource, sub="carol")
    labels = {"rule": "whoami-for-tool-users", "outcome": "allow"}
    before = counter(gateway.metrics(), "proxy_policy_decisions_total", **labels)
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await _session(http, gateway, carol)
        for _ in range(3):  # decided once, then remembered for carol
            assert "result" in answer(await call(http, gateway.url, session_id, carol, "whoami"))
    after = counter(gateway.metrics(), "proxy_policy_decisions_total", **labels)
    assert after - before == 3


async def test_a_rule_over_arguments_decides_each_call(
    setup: Setup, authserver: AuthServer
) -> None:
    gateway = setup.single
    alice = mint(authserver, gateway.resource, sub="alice")
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await _session(http, gateway, alice)
        for region, allowed in (("eu", True), ("us", False), ("eu", True), ("us", False)):
            response = await call(
                http, gateway.url, session_id, alice, "echo_mcp_headers", {"region": region}
            )
            if allowed:
                assert (
                    json.loads(answer(response)["result"]["content"][0]["text"])["region"] == "eu"
                )
            else:
                _not_allowed(response)


@pytest.mark.parametrize("where", ["single", "federated"])
async def test_lists_show_each_principal_only_what_it_may_use(
    where: str, setup: Setup, authserver: AuthServer
) -> None:
    gateway: AuthGateway = getattr(setup, where)
    expected = USER_TOOLS if where == "single" else {f"{p}_{t}" for p in "ab" for t in USER_TOOLS}
    alice = mint(authserver, gateway.resource, sub="alice")
    admin = mint(authserver, gateway.resource, sub="root", scope="mcp:tools mcp:admin")
    async with httpx.AsyncClient(timeout=10) as http:
        alices = await _session(http, gateway, alice)
        assert await _names(http, gateway, alices, alice, "tools") == expected
        assert await _names(http, gateway, alices, alice, "prompts") == set()
        admins = await _session(http, gateway, admin)
        everything = await _names(http, gateway, admins, admin, "tools")
        assert expected < everything
        assert await _names(http, gateway, admins, admin, "prompts")
        if where == "federated":
            called = await call(http, gateway.url, alices, alice, "b_whoami")
            assert "result" in answer(called)
            _not_allowed(await call(http, gateway.url, alices, alice, "b_test_simple_text"))


def _with_rule(tmp: Path, upstream: Upstream, when: str) -> Path:
    config = {
        "upstream": [upstream.url],
        "auth": {
            "issuers": [{"issuer": "http://127.0.0.1:9/issuer"}],
            "policy": [{"name": "broken-rule", "effect": "allow", "when": when}],
        },
    }
    path = tmp / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_rule_that_does_not_compile_stops_the_start_naming_it(
    command: str, replica_a: Upstream, tmp_path: Path
) -> None:
    config = _with_rule(tmp_path, replica_a, 'request.name == "x" &&& true')
    args = [sys.executable, "-m", "proxy", command]
    args += (
        [str(config)]
        if command == "check"
        else ["--config", str(config), "--port", str(free_port())]
    )
    finished = subprocess.run(
        args, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False
    )
    assert finished.returncode != 0
    assert "broken-rule" in finished.stdout + finished.stderr


def _eras_known(base: str) -> None:
    deadline = time.monotonic() + 15
    while httpx.get(f"{base}/status", timeout=10).json()["backends"][0]["eras"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)


async def test_a_bridged_list_shows_each_principal_only_what_it_may_use(
    authserver: AuthServer, tmp_path: Path
) -> None:
    """A stateless client in front of a backend of the handshake era only (the era
    bridge, proxy/bridging.py): its lists are filtered by the policy as any other."""
    auth = {"issuers": [{"issuer": authserver.issuer}], **AUTH}
    with ExitStack() as stack:
        port = free_port()
        server = [sys.executable, "-m", "testbed.servers.everything", "--port", str(port)]
        server += ["--handshake-only"]
        stack.enter_context(running(server, f"http://127.0.0.1:{port}/healthz"))
        upstream = f"http://127.0.0.1:{port}/mcp"
        gateway = start_auth_gateway(
            stack, tmp_path, auth, upstreams=[upstream], options=["--probe-interval", "0.2"]
        )
        await asyncio.to_thread(_eras_known, gateway.url.removesuffix("/mcp"))
        envelope = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "tools/list"}

        async def names(token: str) -> set[str]:
            body = rpc("tools/list", {"_meta": envelope}, id_=9)
            async with httpx.AsyncClient(timeout=10) as http:
                listed = await http.post(gateway.url, headers=headers | bearer(token), json=body)
            assert listed.status_code == 200, listed.text
            return {tool["name"] for tool in answer(listed)["result"]["tools"]}

        alice = mint(authserver, gateway.resource, sub="alice")
        admin = mint(authserver, gateway.resource, sub="root", scope="mcp:tools mcp:admin")
        everything = await names(admin)
        assert "test_simple_text" in everything
        assert await names(alice) == set()  # no rule lets her use any of its tools
        body = rpc("tools/call", {"name": "test_simple_text", "_meta": envelope}, id_=10)
        sent = (
            headers | bearer(alice) | {"mcp-method": "tools/call", "mcp-name": "test_simple_text"}
        )
        async with httpx.AsyncClient(timeout=10) as http:
            refused = await http.post(gateway.url, headers=sent, json=body)
        assert answer(refused)["error"]["code"] == -32602, refused.text
