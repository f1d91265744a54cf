"""The parts of the auth tests: gateways with an ``auth`` section in front of SDK upstreams,
tokens from the real authorization server (``testbed.authserver``), and metric readings."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from testbed.authserver import AuthServer
from testbed.processes import free_port, running
from tests.helpers.clients import ACCEPT, HANDSHAKE

__all__ = (
    "AuthGateway",
    "answer",
    "bearer",
    "call",
    "counter",
    "initialize",
    "mint",
    "rpc",
    "start_auth_gateway",
)

SCOPE: Final = "mcp:tools"


@dataclass(frozen=True)
class AuthGateway:
    """A gateway process with auth on; tokens for it carry its `resource` as audience."""

    base: str
    resource: str

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text


def start_auth_gateway(
    stack: ExitStack,
    tmp: Path,
    auth: Mapping[str, Any],
    *,
    upstreams: Sequence[str] = (),
    backends: Sequence[Mapping[str, Any]] = (),
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> AuthGateway:
    """`auth` (its ``resource`` defaults to the gateway's own URL) in a config file with
    the `upstreams` or the federated `backends`; `options` are more flags."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    config: dict[str, Any] = {"auth": {"resource": f"{base}/mcp", **auth}}
    resource: str = config["auth"]["resource"]
    if upstreams:
        config["upstream"] = list(upstreams)
    if backends:
        config["backends"] = [dict(b) for b in backends]
    path = tmp / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(path)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *options]
    stack.enter_context(running(cmd, f"{base}/healthz", env=env, timeout=60))
    return AuthGateway(base, resource)


def mint(
    server: AuthServer,
    audience: str,
    *,
    sub: str = "alice",
    scope: str | None = SCOPE,
    client_id: str = "tests",
    **claims: Any,
) -> str:
    """A token for `audience` signed by the server's current key, as it would issue one
    to `client_id` for `sub`; `claims` add or override (None leaves one out)."""
    body: dict[str, Any] = {"sub": sub, "aud": audience, "client_id": client_id, "scope": scope}
    body.update(claims)
    return server.sign(body)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def rpc(method: str, params: Mapping[str, Any] | None = None, id_: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        body["params"] = dict(params)
    return body


async def initialize(http: httpx.AsyncClient, url: str, token: str) -> str:
    """A handshake-era session opened with `token`; its session id."""
    params = {
        "protocolVersion": HANDSHAKE,
        "capabilities": {},
        "clientInfo": {"name": "auth-tests", "version": "0"},
    }
    headers = {"accept": ACCEPT, **bearer(token)}
    response = await http.post(url, headers=headers, json=rpc("initialize", params, 0))
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    headers |= {"mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}
    ack = await http.post(url, headers=headers, json=done)
    assert ack.status_code == 202, ack.text
    return session_id


_SAMPLE: Final = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
_LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def counter(page: str, name: str, **labels: str) -> float:
    """The sum of the `name` samples in a /metrics page whose labels include `labels`."""
    total = 0.0
    for line in page.splitlines():
        sample = _SAMPLE.match(line)
        if sample is None or sample.group(1) != name:
            continue
        found = dict(_LABEL.findall(sample.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(sample.group(3))
    return total


def answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer in a response (JSON or one SSE event carrying it)."""
    if response.headers.get("content-type", "").startswith("application/json"):
        found: dict[str, Any] = response.json()
        return found
    for line in response.text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message: dict[str, Any] = json.loads(line[5:])
            if "id" in message and ("result" in message or "error" in message):
                return message
    raise AssertionError(f"no JSON-RPC answer in {response.text!r}")


async def call(
    http: httpx.AsyncClient,
    url: str,
    session_id: str,
    token: str,
    name: str,
    arguments: Mapping[str, Any] | None = None,
    id_: int = 1,
) -> httpx.Response:
    """tools/call `name` on a handshake-era session, with `token`."""
    headers = {"accept": ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": HANDSHAKE}
    params = {"name": name, "arguments": dict(arguments or {})}
    return await http.post(
        url, headers=headers | bearer(token), json=rpc("tools/call", params, id_)
    )
