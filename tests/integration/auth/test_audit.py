"""The audit log of a running gateway: a line for each call, get, read and refusal, with
who, what, where and how it ended, never a token; and a writer that cannot keep up (its
stdout a pipe nobody reads) drops and counts lines instead of holding requests back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.auth.audit import session_fingerprint
from testbed.authserver import AuthServer
from testbed.processes import REPO_ROOT, free_port, wait_http
from tests.helpers.clients import ACCEPT, HANDSHAKE
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

DENY_TEXT = {
    "name": "no-simple-text",
    "effect": "deny",
    "when": 'request.name == "test_simple_text"',
}


@pytest.fixture(scope="module")
def audited(
    authserver: AuthServer, replica_a: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AuthGateway, Path]]:
    tmp = tmp_path_factory.mktemp("audit")
    log = tmp / "audit.jsonl"
    auth = {
        "issuers": [{"issuer": authserver.issuer}],
        "policy": [DENY_TEXT],
        "audit": {"target": str(log), "arguments": "digest"},
    }
    with ExitStack() as stack:
        yield start_auth_gateway(stack, tmp, auth, upstreams=[replica_a.url]), log


def _lines(log: Path, at_least: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        text = log.read_text() if log.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


async def test_a_line_for_each_call_get_read_and_refusal_never_a_token(
    audited: tuple[AuthGateway, Path], authserver: AuthServer
) -> None:
    gateway, log = audited
    token = mint(authserver, gateway.resource, sub="audited-alice", client_id="audit-app")
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await initialize(http, gateway.url, token)
        headers = {
            "accept": ACCEPT,
            "mcp-session-id": session_id,
            "mcp-protocol-version": HANDSHAKE,
        }
        headers |= bearer(token)
        prompts = answer(await http.post(gateway.url, headers=headers, json=rpc("prompts/list")))
        resources = answer(
            await http.post(gateway.url, headers=headers, json=rpc("resources/list"))
        )
        prompt = next(p for p in prompts["result"]["prompts"] if not p.get("arguments"))["name"]
        uri = resources["result"]["resources"][0]["uri"]

        assert "result" in answer(
            await call(http, gateway.url, session_id, token, "whoami", id_=11)
        )
        echo = await call(
            http, gateway.url, session_id, token, "echo_mcp_headers", {"region": "eu"}, 12
        )
        assert "result" in answer(echo)
        got = await http.post(
            gateway.url, headers=headers, json=rpc("prompts/get", {"name": prompt}, 13)
        )
        assert "result" in answer(got)
        read = await http.post(
            gateway.url, headers=headers, json=rpc("resources/read", {"uri": uri}, 14)
        )
        assert "result" in answer(read)
        denied = await call(http, gateway.url, session_id, token, "test_simple_text", id_=15)
        assert answer(denied)["error"]["code"] == -32602
        anonymous = {k: v for k, v in headers.items() if k != "authorization"}
        refused = await http.post(gateway.url, headers=anonymous, json=rpc("tools/list", id_=16))
        assert refused.status_code == 401

    lines = _lines(log, 6)
    by_id = {line["request_id"]: line for line in lines if line.get("request_id")}
    for id_, method, name in (
        ("11", "tools/call", "whoami"),
        ("12", "tools/call", "echo_mcp_headers"),
        ("13", "prompts/get", prompt),
        ("14", "resources/read", uri),
    ):
        line = by_id[id_]
        assert (line["method"], line["name"], line["outcome"], line["status"]) == (
            method,
            name,
            "ok",
            200,
        )
        assert line["principal"] == "audited-alice"
        assert line["client_id"] == "audit-app"
        assert line["issuer"] == authserver.issuer
        assert line["session"] == session_fingerprint(session_id.encode())
        assert line["replica"] and line["backend"] is not None
        assert line["latency_ms"] > 0
        assert line["time"].endswith("Z")
    assert by_id["12"]["arguments_sha256"] != by_id["11"]["arguments_sha256"]
    assert len(by_id["12"]["arguments_sha256"]) == 64
    assert "region" not in json.dumps(by_id["12"])  # the digest, never the arguments
    assert (by_id["15"]["outcome"], by_id["15"]["rule"]) == ("denied", "no-simple-text")
    assert (by_id["16"]["outcome"], by_id["16"]["principal"]) == ("unauthenticated", None)
    assert by_id["16"]["status"] == 401
    text = log.read_text()
    assert session_id not in text  # a session id is a credential: only its fingerprint
    assert token not in text
    assert token.split(".")[2][:16] not in text


def test_a_writer_that_cannot_write_drops_lines_and_never_holds_a_request(
    authserver: AuthServer, replica_a: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = {
        "upstream": [replica_a.url],
        "auth": {
            "resource": f"{base}/mcp",
            "issuers": [{"issuer": authserver.issuer}],
            "audit": {"target": "stdout", "queue": 64},
        },
        "log_level": "warning",
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port", str(port)]
    # stdout is a pipe nobody reads: once its buffer is full the writer blocks for good.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"{base}/healthz", 60, proc=proc)
        token = mint(authserver, f"{base}/mcp", sub="loud")
        calls = 800

        async def load() -> list[int]:
            async with httpx.AsyncClient(timeout=10) as http:
                session_id = await initialize(http, f"{base}/mcp", token)
                limit = asyncio.Semaphore(32)

                async def one(n: int) -> int:
                    async with limit:
                        response = await call(
                            http, f"{base}/mcp", session_id, token, "whoami", id_=n
                        )
                        return response.status_code

                return await asyncio.gather(*(one(n) for n in range(calls)))

        started = time.monotonic()
        statuses = asyncio.run(load())
        assert statuses == [200] * calls
        page = httpx.get(f"{base}/metrics", timeout=10).text
        dropped = counter(page, "proxy_audit_lines_total", fate="dropped")
        written = counter(page, "proxy_audit_lines_total", fate="written")
        assert dropped > 0, (written, dropped)
        assert written + dropped <= calls
        assert time.monotonic() - started < 60
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
