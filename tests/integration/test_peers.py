"""Clients and servers nobody here wrote, through the gateway, as a new user runs them.

The reference ``@modelcontextprotocol/server-everything`` (Streamable HTTP, handshake era
only), a FastMCP 4 server (both eras), ``fastmcp.Client`` (which tries the 2026-07-28
era first) and the official SDK client; and the gateway's own command line, in a
terminal and beside another gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import signal
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
from fastmcp import Client
from fastmcp.exceptions import ToolError

from testbed import peers
from testbed.processes import free_port, running
from testbed.redis_server import redis_server
from tests.helpers.clients import ACCEPT, HANDSHAKE, handshake_headers, raw_initialize

pytestmark = [pytest.mark.scale, pytest.mark.timeout(120)]

EVERYTHING_TOOLS = 13  # what server-everything lists to a client with no capabilities
FAST_TOOLS = 2


@dataclass(frozen=True)
class Setup:
    everything: peers.Peer
    fast: peers.Peer
    federated: str  # gateway base URL: everything as ev_, fast as fast_
    single: str  # gateway base URL: everything alone
    single_log: Path


def _gateway(
    stack: ExitStack, *options: str, log: Path | None = None, env: dict[str, str] | None = None
) -> str:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *options,
    ]
    stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz", env, log=log))
    return f"http://127.0.0.1:{port}"


def _config(tmp: Path, everything: str, fast: str, **more: Any) -> str:
    backends = [
        {"name": "everything", "prefix": "ev_", "replicas": [everything]},
        {"name": "fast", "prefix": "fast_", "replicas": [fast]},
    ]
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps({"backends": backends, **more}))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("peers")
    with ExitStack() as stack:
        everything, fast = peers.everything(stack), peers.fast(stack)
        federated = _gateway(stack, "--config", _config(tmp, everything.url, fast.url))
        log = tmp / "single.log"
        single = _gateway(stack, "--upstream", everything.url, log=log)
        yield Setup(everything, fast, federated, single, log)


def _names(tools: list[Any]) -> set[str]:
    return {tool.name for tool in tools}


# -- 1. a modern client and a handshake-only backend ------------------------------------------


async def test_a_modern_client_sees_every_backend_of_a_mixed_federation(setup: Setup) -> None:
    async with Client(f"{setup.federated}/mcp") as client:
        tools = _names(await client.list_tools())
        assert len(tools) == EVERYTHING_TOOLS + FAST_TOOLS, sorted(tools)
        assert {"ev_echo", "ev_trigger-long-running-operation", "fast_add"} <= tools
        echoed = await client.call_tool("ev_echo", {"message": "hi"})
        assert echoed.content[0].text == "Echo: hi"
        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        await client.call_tool(
            "ev_trigger-long-running-operation",
            {"duration": 1, "steps": 3},
            progress_handler=on_progress,
        )
        assert len(progress) == 3
        assert (await client.call_tool("fast_add", {"a": 2, "b": 3})).data == 5


# -- 3. resource URIs in what a backend sends ------------------------------------------------


async def test_resource_uris_in_results_and_prompts_are_the_gateways(setup: Setup) -> None:
    async with Client(f"{setup.federated}/mcp") as client:
        result = await client.call_tool("ev_get-resource-links", {"count": 2})
        links = [str(b.uri) for b in result.content if b.type == "resource_link"]
        assert links and all(link.startswith("everything+demo://") for link in links), links
        read = await client.read_resource(links[0])
        assert str(read[0].uri) == links[0]
        prompt = await client.get_prompt(
            "ev_resource-prompt", {"resourceType": "Text", "resourceId": "1"}
        )
        embedded = [m.content for m in prompt.messages if m.content.type == "resource"]
        assert embedded, prompt.messages
        assert str(embedded[0].resource.uri).startswith("everything+demo://")


# -- 7. a backend that restarted ---------------------------------------------------------------


async def test_a_backend_that_restarted_gets_a_new_session_unnoticed(tmp_path: Path) -> None:
    with ExitStack() as stack:
        port = free_port()
        first = ExitStack()
        everything = peers.everything(first, port)
        fast = peers.fast(stack)
        gateway = _gateway(stack, "--config", _config(tmp_path, everything.url, fast.url))
        async with Client(f"{gateway}/mcp") as client:
            assert (await client.call_tool("ev_echo", {"message": "1"})).content
            first.close()  # server-everything stops, and comes back with no sessions
            peers.everything(stack, port)
            again = await client.call_tool("ev_echo", {"message": "2"})
            assert again.content[0].text == "Echo: 2"


# -- 8. lists that depend on the client's capabilities ---------------------------------------


async def test_federated_lists_follow_the_clients_capabilities(setup: Setup) -> None:
    async def sample(messages: Any, params: Any, context: Any) -> str:
        return "sampled"

    async def elicit(message: Any, response_type: Any, params: Any, context: Any) -> dict[str, Any]:
        return {}

    capable = Client(
        f"{setup.federated}/mcp",
        sampling_handler=sample,
        elicitation_handler=elicit,
        roots=["file:///tmp"],
    )
    async with capable as client:
        tools = _names(await client.list_tools())
    direct = Client(
        setup.everything.url,
        sampling_handler=sample,
        elicitation_handler=elicit,
        roots=["file:///tmp"],
    )
    async with direct as client:
        everything_direct = _names(await client.list_tools())
    assert len(everything_direct) > EVERYTHING_TOOLS  # the capability-dependent tools
    assert {t for t in tools if t.startswith("ev_")} == {f"ev_{t}" for t in everything_direct}
    assert "ev_trigger-sampling-request" in tools
    async with Client(f"{setup.federated}/mcp") as plain:
        assert "ev_trigger-sampling-request" not in _names(await plain.list_tools())


# -- 12. an unknown tool is named as the client named it ---------------------------------------


@pytest.mark.parametrize("tool", ["ev_nosuch", "fast_nosuch"])
async def test_an_unknown_tool_is_named_as_the_client_named_it(setup: Setup, tool: str) -> None:
    async with Client(f"{setup.federated}/mcp") as client:
        with pytest.raises(Exception, match=tool) as failure:
            await client.call_tool(tool, {})
        assert isinstance(failure.value, ToolError | Exception)


# -- 4, 5. a wrong path, and what serve and check say -----------------------------------------


async def test_a_path_that_is_not_an_mcp_endpoint_is_not_ready(
    setup: Setup, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    with ExitStack() as stack:
        gateway = _gateway(stack, "--upstream", f"{setup.everything.base}/sse", log=log)
        async with httpx.AsyncClient(timeout=10) as http:
            ready = await http.get(f"{gateway}/readyz")
            assert ready.status_code == 503
            assert ready.json()["problems"] == ["backend default: no healthy replica"]
            body = {
                "jsonrpc": "2.0",
                "id": 41,
                "method": "initialize",
                "params": {
                    "protocolVersion": HANDSHAKE,
                    "capabilities": {},
                    "clientInfo": {"name": "x", "version": "0"},
                },
            }
            answer = await http.post(f"{gateway}/mcp", json=body, headers={"accept": ACCEPT})
            assert answer.status_code == 502
            assert answer.json()["id"] == 41
            assert answer.headers["content-type"] == "application/json"
        await asyncio.sleep(0.2)
        assert f"{setup.everything.base}/sse marked down: not an MCP endpoint" in log.read_text()


def test_check_probe_says_what_answers_at_each_replica(setup: Setup) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "check",
            "--probe",
            "--upstream",
            setup.everything.url,
            "--upstream",
            setup.fast.url,
            "--upstream",
            f"{setup.everything.base}/sse",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(setup.everything.url in ln and "MCP" in ln and "2025-11-25" in ln for ln in lines)
    assert any(setup.fast.url in ln and "2026-07-28" in ln for ln in lines)
    assert any("/sse: not an MCP endpoint (HTTP 404, text/html)" in ln for ln in lines)
    helped = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--help"], capture_output=True, text=True
    )
    assert "Without --probe nothing is contacted" in helped.stdout


def test_serve_says_what_it_serves(setup: Setup) -> None:
    log = setup.single_log.read_text()
    assert "MCP endpoint http://127.0.0.1:" in log
    assert "session store memory, 1 worker(s), fast path" in log
    assert f"backend default: {setup.everything.url}" in log


def test_a_bad_variable_is_named_as_the_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--upstream", "http://127.0.0.1:9/mcp"],
        capture_output=True,
        text=True,
        env={**os.environ, "PROXY_PORT": "abc"},
    )
    assert done.returncode == 1
    assert "PROXY_PORT: expected a whole number, got 'abc'" in done.stderr


# -- 2. two gateways on one port ---------------------------------------------------------------


def test_a_second_gateway_on_a_port_in_use_does_not_start(setup: Setup) -> None:
    port = setup.single.rsplit(":", 1)[1]
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--upstream",
        setup.everything.url,
        "--port",
        port,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in done.stderr
    with ExitStack() as stack:  # sharing, when asked for
        proc = stack.enter_context(
            running([*cmd, "--reuse-port", "true"], f"{setup.single}/healthz")
        )
        assert proc.poll() is None


# -- 6, 11. at a terminal: Ctrl-C, and logs a person can read ---------------------------------


def test_ctrl_c_at_a_terminal_stops_at_once_and_cleanly() -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--upstream",
        "http://127.0.0.1:9/mcp",
        "--port",
        str(port),
    ]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(Path(__file__).resolve().parents[2])
        os.execv(sys.executable, cmd)  # noqa: S606 - our own command line
    out = b""

    def read(seconds: float) -> None:
        nonlocal out
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    return

    try:
        deadline = time.monotonic() + 30
        while b"Started worker" not in out:
            assert time.monotonic() < deadline, out.decode(errors="replace")
            read(0.1)
        os.write(fd, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground process group
        started = time.monotonic()
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() - started < 3, "still running 3 s after Ctrl-C"
            read(0.05)
        read(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.close(fd)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(done[1]) == 0, text
    assert "Unexpected exit" not in text and "ERROR" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("^C")]
    assert lines and all(ln[:4].isdigit() and ln[10] == "T" for ln in lines), text


def test_json_logs_and_recovery_at_info(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    upstream_port = free_port()
    with ExitStack() as stack:
        _gateway(
            stack,
            "--upstream",
            f"http://127.0.0.1:{upstream_port}/mcp",
            "--probe-interval",
            "0.2",
            "--log-format",
            "json",
            log=log,
        )
        peers.everything(stack, upstream_port)
        deadline = time.monotonic() + 10
        while "answers again" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    recovered = [r for r in records if "answers again" in r["message"]]
    assert recovered[0]["level"] == "info"
    assert {"time", "level", "logger", "message"} <= set(records[0])


# -- 9. CORS -----------------------------------------------------------------------------------


async def test_a_browser_origin_that_is_allowed_gets_cors(setup: Setup) -> None:
    origin = "http://localhost:5173"  # a dev web app: a loopback origin, allowed on loopback
    async with httpx.AsyncClient(timeout=10) as http:
        preflight = await http.options(
            f"{setup.single}/mcp",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, mcp-protocol-version",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "mcp-protocol-version" in preflight.headers["access-control-allow-headers"]
        sid = await raw_initialize(http, f"{setup.single}/mcp")
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        answer = await http.post(
            f"{setup.single}/mcp", json=ping, headers=handshake_headers(sid) | {"origin": origin}
        )
        assert answer.headers["access-control-allow-origin"] == origin  # not server-everything's *
        assert "mcp-session-id" in answer.headers["access-control-expose-headers"]
        refused = await http.options(
            f"{setup.single}/mcp",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers


# -- 10. /metrics over several workers ---------------------------------------------------------


async def test_metrics_add_up_every_worker(setup: Setup) -> None:
    with redis_server() as redis, ExitStack() as stack:
        gateway = _gateway(
            stack,
            "--upstream",
            setup.everything.url,
            "--workers",
            "2",
            "--session-store",
            redis.url(),
        )
        for _ in range(12):
            async with httpx.AsyncClient(timeout=10) as http:  # a new connection each time
                await raw_initialize(http, f"{gateway}/mcp")
        await asyncio.sleep(1.2)  # every worker has written its figures since
        seen = set()
        for _ in range(6):
            async with httpx.AsyncClient(timeout=10) as http:
                page = (await http.get(f"{gateway}/metrics")).text
            created = [ln for ln in page.splitlines() if ln.startswith("proxy_sessions_created")]
            seen.add((created[0], "proxy_workers 2" in page))
        assert seen == {("proxy_sessions_created_total 12", True)}
