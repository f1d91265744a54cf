"""Local (stdio) MCP servers behind the gateway, driven by the official Python SDK client:
``mcp-fastproxy serve -- python -m testbed.servers.stdio_tools`` (a server built with the
official SDK, run as a process per client session)."""

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
from urllib.parse import urlsplit

import httpx
import pytest
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CreateMessageResult,
    ElicitResult,
    TextContent,
    ToolListChangedNotification,
)

from testbed import node
from testbed.processes import free_port, running
from testbed.redis_server import redis_server
from tests.helpers.clients import ACCEPT, handshake_headers, raw_initialize, sdk_session
from tests.helpers.gateways import start_upstream

pytestmark = pytest.mark.timeout(120)

STDIO_SERVER = (sys.executable, "-m", "testbed.servers.stdio_tools")


class Gateway:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The gateway serving the SDK stdio server: one process per client session."""
    port = free_port()
    log = tmp_path / "gateway.log"
    cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--log-level", "info"]
    with running([*cmd, "--", *STDIO_SERVER], f"http://127.0.0.1:{port}/healthz", log=log):
        yield Gateway(f"http://127.0.0.1:{port}/mcp", log)


def text(result: Any) -> str:
    assert not result.is_error, result
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (reaped or running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def reaped(pid: int) -> bool:
    """The process ended and was reaped (a zombie still has its /proc entry)."""
    return not os.path.exists(f"/proc/{pid}")


async def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if reaped(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_tools_progress_and_large_answers_through_a_stdio_server(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "handshake") as (session, _):
        names = {t.name for t in (await session.list_tools()).tools}
        assert {"pid", "count_slowly", "big", "echo"} <= names
        assert text(await session.call_tool("echo", {"text": "héllo"})) == "héllo"
        seen: list[tuple[float, float]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((time.monotonic(), progress))

        result = await session.call_tool(
            "count_slowly", {"steps": 4, "interval": 0.3}, progress_callback=on_progress
        )
        assert text(result) == "counted 4"
        assert [done for _, done in seen] == [1, 2, 3, 4]
        assert seen[-1][0] - seen[0][0] > 0.6  # relayed as they came, not at the end
        assert len(text(await session.call_tool("big", {"size": 10_000_000}))) == 10_000_000


async def test_json_written_over_several_lines_reaches_the_process_as_one(
    gateway: Gateway,
) -> None:
    """stdio carries a message a line: a body pretty-printed by its client is sent on one."""
    async with httpx.AsyncClient(timeout=30) as http:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize"}
        init["params"] = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "pretty", "version": "1"},
        }
        headers = {"accept": ACCEPT, "content-type": "application/json"}
        opened = await http.post(gateway.url, content=json.dumps(init, indent=2), headers=headers)
        assert opened.status_code == 200, opened.text
        headers |= handshake_headers(opened.headers["mcp-session-id"])
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        call["params"] = {"name": "echo", "arguments": {"text": "two\r\nlines"}}
        answer = await http.post(gateway.url, content=json.dumps(call, indent=2), headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["content"][0]["text"] == "two\r\nlines"


async def test_each_session_has_a_process_of_its_own_ended_by_delete(gateway: Gateway) -> None:
    async with (
        sdk_session(gateway.url, "handshake") as (one, _),
        sdk_session(gateway.url, "handshake") as (two, _),
    ):
        first = int(text(await one.call_tool("pid", {})))
        second = int(text(await two.call_tool("pid", {})))
        assert first != second
        assert alive(first) and alive(second)
        assert int(text(await one.call_tool("pid", {}))) == first  # the session keeps it
    # Leaving each session sent DELETE: both processes ended and were reaped.
    assert await gone(first) and await gone(second)


async def test_sampling_and_elicitation_reach_the_client_and_back(gateway: Gateway) -> None:
    async def sample(context: ClientRequestContext, params: Any) -> CreateMessageResult:
        asked = params.messages[0].content.text
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text=f"model: {asked}"), model="m"
        )

    async def elicit(context: ClientRequestContext, params: Any) -> ElicitResult:
        return ElicitResult(action="accept", content={"answer": f"user: {params.message}"})

    async with sdk_session(
        gateway.url, "handshake", sampling_callback=sample, elicitation_callback=elicit
    ) as (session, _):
        assert text(await session.call_tool("ask_model", {"prompt": "hi"})) == "model: hi"
        answered = text(await session.call_tool("ask_user", {"question": "name?"}))
        assert answered == "accept: answer='user: name?'"


async def test_a_tool_list_change_reaches_the_clients_stream(gateway: Gateway) -> None:
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(getattr(message, "root", message), ToolListChangedNotification):
            changed.set()

    async with sdk_session(gateway.url, "handshake", message_handler=on_message) as (session, _):
        assert text(await session.call_tool("add_tool", {"name": "fresh"})) == "added"
        await asyncio.wait_for(changed.wait(), 10)
        assert "fresh" in {t.name for t in (await session.list_tools()).tools}


@pytest.mark.scale  # a process's life: the same with either twin
async def test_a_crashed_process_ends_its_session_and_a_new_one_starts(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        sid = await raw_initialize(http, gateway.url)
        headers = {
            "mcp-session-id": sid,
            "mcp-protocol-version": "2025-11-25",
            "accept": "application/json, text/event-stream",
        }
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
        crash = {**call, "params": {"name": "crash", "arguments": {}}}
        crashed = await http.post(gateway.url, json=crash, headers=headers)
        assert crashed.status_code == 200
        assert "the process ended" in crashed.text and '"id":7' in crashed.text.replace(" ", "")
        after = await http.post(
            gateway.url, json={**call, "params": {"name": "pid", "arguments": {}}}, headers=headers
        )
        assert after.status_code == 404  # the client initialises again...
        fresh = await raw_initialize(http, gateway.url)
        assert fresh != sid
    async with sdk_session(gateway.url, "handshake") as (session, _):  # ...and goes on
        assert text(await session.call_tool("echo", {"text": "again"})) == "again"
    log = gateway.log.read_text()
    assert "backend default: stderr: Traceback (most recent call last):" in log
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(gateway.url.replace("/mcp", "/metrics"))).text
    assert 'proxy_stdio_exits_total{backend="default",reason="crashed"} 1' in metrics
    # Three sessions: the crashed one, `fresh` (left open), the SDK's (ended by its DELETE).
    assert 'proxy_stdio_exits_total{backend="default",reason="ended"} 1' in metrics
    assert 'proxy_stdio_spawns_total{backend="default",outcome="started"} 3' in metrics
    assert 'proxy_stdio_processes{backend="default",state="running"} 1' in metrics
    assert 'proxy_stdio_bytes_total{backend="default",direction="out"}' in metrics


async def test_a_flood_on_stderr_is_logged_at_a_bounded_rate(gateway: Gateway) -> None:
    async with sdk_session(gateway.url, "handshake") as (session, _):
        assert text(await session.call_tool("shout", {"lines": 5000})) == "shouted"
        await asyncio.sleep(1.5)  # the next window says how many were dropped
        assert text(await session.call_tool("shout", {"lines": 1})) == "shouted"
    log = gateway.log.read_text()
    assert log.count("stderr: shouting line") < 100
    assert "stderr lines not logged" in log


def test_check_and_serve_name_a_command_that_is_not_there(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "backends:\n"
        "  - name: local\n"
        "    command: no-such-mcp-server\n"
        "    args: [--token, hunter2]\n"
        "    env: {TOKEN: hunter2}\n"
    )
    check = [sys.executable, "-m", "proxy", "check"]
    missing = subprocess.run([*check, str(config)], capture_output=True, text=True, check=False)
    assert missing.returncode != 0
    assert "backend local: the command 'no-such-mcp-server' is not found" in missing.stderr
    assert "hunter2" not in missing.stdout + missing.stderr
    serve = [sys.executable, "-m", "proxy", "serve", "--port", str(free_port())]
    refused = subprocess.run(
        [*serve, "--", "no-such-mcp-server"], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0
    assert "the command 'no-such-mcp-server' is not found" in refused.stderr
    config.write_text(config.read_text().replace("no-such-mcp-server", sys.executable))
    found = subprocess.run([*check, str(config)], capture_output=True, text=True, check=False)
    assert found.returncode == 0, found.stderr
    assert f"backend local: runs {sys.executable} (2 argument(s); variables TOKEN)" in found.stdout
    assert "hunter2" not in found.stdout


@pytest.mark.scale  # a process's life: the same with either twin
def test_the_gateway_stopping_leaves_no_process_behind(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--", *STDIO_SERVER]
    url = f"http://127.0.0.1:{port}/mcp"
    with ExitStack() as stack:
        stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
        pids = asyncio.run(_open_sessions(url, 3))
        assert all(alive(pid) for pid in pids)
    deadline = time.monotonic() + 10
    while not all(reaped(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(reaped(pid) for pid in pids)


async def _open_sessions(url: str, count: int) -> list[int]:
    """Open `count` sessions and leave them open (no DELETE); their processes' ids."""
    pids = []
    for _ in range(count):
        async with sdk_session(url, "handshake", terminate_on_close=False) as (session, _):
            pids.append(int(text(await session.call_tool("pid", {}))))
    return pids


async def test_an_mcp_servers_file_serves_local_and_remote_servers_together(
    tmp_path: Path,
) -> None:
    """The file Claude Desktop and Cursor write: the reference server-everything (npm) and
    an official-SDK server as stdio, an SDK server over HTTP, each name a prefix."""
    with ExitStack() as stack:
        remote = start_upstream(stack, "remote")
        servers = {
            "mcpServers": {
                "Everything": {
                    "command": node.node(),
                    "args": [node.package_bin("mcp-server-everything"), "stdio"],
                },
                "tools": {"command": STDIO_SERVER[0], "args": list(STDIO_SERVER[1:])},
                "remote": {"url": remote.url},
                "old": {"command": "no-such-program", "disabled": True},
            }
        }
        config = tmp_path / "claude_desktop_config.json"
        config.write_text(json.dumps(servers))
        port = free_port()
        cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--config", str(config)]
        stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz", timeout=60))
        url = f"http://127.0.0.1:{port}/mcp"
        async with sdk_session(url, "handshake") as (session, _):
            names = {t.name for t in (await session.list_tools()).tools}
            assert {"everything_echo", "tools_pid", "remote_whoami"} <= names
            echoed = text(await session.call_tool("everything_echo", {"message": "hi"}))
            assert "hi" in echoed
            assert text(await session.call_tool("tools_echo", {"text": "local"})) == "local"
            assert '"replica": "remote"' in text(await session.call_tool("remote_whoami", {}))


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def _fresh(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request on a connection of its own, so that any worker may accept it."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(method, url, **kwargs)


@pytest.mark.scale
async def test_a_session_is_served_by_its_process_whichever_worker_takes_the_request() -> None:
    """Two workers on Redis: a request that lands on the worker without the session's
    process goes to the other worker's bridge, and DELETE ends the process from either."""
    with redis_server() as redis, ExitStack() as stack:
        port = free_port()
        cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
        cmd += ["--session-store", redis.url(), "--workers", "2", "--", *STDIO_SERVER]
        gateway = stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
        url = f"http://127.0.0.1:{port}/mcp"
        workers = _children(gateway.pid)
        assert len(workers) == 2
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        pid_call = {**call, "params": {"name": "pid", "arguments": {}}}

        async def one_session() -> tuple[int, set[int]]:
            async with httpx.AsyncClient(timeout=30) as http:
                sid = await raw_initialize(http, url)
            seen = set()
            for _ in range(6):
                answer = await _fresh("POST", url, json=pid_call, headers=handshake_headers(sid))
                assert answer.status_code == 200, answer.text
                seen.add(int(answer.json()["result"]["content"][0]["text"]))
            (pid,) = seen  # one process served every request of the session
            owner = _parent(pid)
            ended = await _fresh("DELETE", url, headers=handshake_headers(sid))
            assert ended.status_code == 200
            return owner, {pid}

        results = await asyncio.gather(*(one_session() for _ in range(12)))
        owners = {owner for owner, _ in results}
        assert owners == set(workers)  # both workers started processes...
        pids = set().union(*(pids for _, pids in results))
        assert len(pids) == 12
        for pid in pids:  # ...and each ended with its session, wherever DELETE landed
            assert await gone(pid), pid


@pytest.mark.scale
async def test_another_replica_serves_a_session_until_its_owner_dies_then_404() -> None:
    """Two gateways on one host and one Redis (as behind nginx without stickiness): B
    serves a session A started, through A's bridge; A killed, the session is not found
    at B at once, and a new one starts there."""
    with redis_server() as redis, ExitStack() as stack:
        urls, procs = [], []
        for _ in range(2):
            port = free_port()
            cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
            cmd += ["--session-store", redis.url(), "--", *STDIO_SERVER]
            procs.append(stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz")))
            urls.append(f"http://127.0.0.1:{port}/mcp")
        a, b = urls
        pid_call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        pid_call["params"] = {"name": "pid", "arguments": {}}
        async with httpx.AsyncClient(timeout=30) as http:
            sid = await raw_initialize(http, a)
            headers = handshake_headers(sid)
            at_a = await http.post(a, json=pid_call, headers=headers)
            at_b = await http.post(b, json=pid_call, headers=headers)
            assert at_a.json()["result"] == at_b.json()["result"]  # the same process
            os.killpg(procs[0].pid, signal.SIGKILL)
            started = time.monotonic()
            statuses: list[int] = []
            while not statuses or statuses[-1] != 404:
                lost = await http.post(b, json=pid_call, headers=headers)
                statuses.append(lost.status_code)
                assert len(statuses) <= 4, statuses
            # A kept-alive connection to A, written to before B saw it close, gets a 502
            # (as with any backend that dies); then nothing listens there: 404.
            assert set(statuses) <= {502, 404}, statuses
            assert time.monotonic() - started < 10
            assert await raw_initialize(http, b)


async def _events(response: httpx.Response) -> Any:
    """The SSE events of `response` as {"id", "data"} (data parsed, None when empty)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        if fields:
            data = fields.get("data", "")
            yield {"id": fields.get("id"), "data": json.loads(data) if data else None}
        fields = {}


async def test_a_stream_cut_mid_call_resumes_from_its_last_event(gateway: Gateway) -> None:
    """A POST stream lost mid-call (the client's connection cut after two progress
    notifications): a GET with the last event id it got goes on where it stopped, with
    what came meanwhile, to the call's answer; nothing is lost, nothing comes twice."""
    async with httpx.AsyncClient(timeout=30) as http:
        sid = await raw_initialize(http, gateway.url)
        headers = handshake_headers(sid)
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
        call["params"] = {
            "name": "count_slowly",
            "arguments": {"steps": 6, "interval": 0.3},
            "_meta": {"progressToken": "p"},
        }
        seen: list[dict[str, Any]] = []
        async with http.stream("POST", gateway.url, json=call, headers=headers) as cut:
            assert cut.headers["content-type"].startswith("text/event-stream")
            async for event in _events(cut):
                seen.append(event)
                if sum(e["data"] is not None for e in seen) == 2:
                    break  # the connection is dropped here
        priming = seen[0]
        assert priming["id"] and priming["data"] is None  # resumable from the start
        last = seen[-1]["id"]
        assert last
        await asyncio.sleep(0.8)  # progress goes on while nobody reads
        resumed = {**headers, "last-event-id": last}
        async with http.stream("GET", gateway.url, headers=resumed) as rest:
            assert rest.status_code == 200
            async for event in _events(rest):
                seen.append(event)
        messages = [e["data"] for e in seen if e["data"] is not None]
        steps = [m["params"]["progress"] for m in messages if m.get("method")]
        assert steps == [1, 2, 3, 4, 5, 6]
        assert messages[-1]["id"] == 7
        assert messages[-1]["result"]["content"][0]["text"] == "counted 6"
        ids = [e["id"] for e in seen]
        assert len(set(ids)) == len(ids)  # every event once, each its own id
        # What was taken over is gone: the same id now opens a plain GET stream.
        async with http.stream("GET", gateway.url, headers=resumed) as fresh:
            async for event in _events(fresh):
                assert event["data"] is None  # a priming event, no replay
                break


async def test_a_get_stream_resumed_gets_what_came_while_it_was_away(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        sid = await raw_initialize(http, gateway.url)
        headers = handshake_headers(sid)
        add = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        add["params"] = {"name": "add_tool", "arguments": {"name": "one"}}
        last = None
        async with http.stream("GET", gateway.url, headers=headers) as first:
            async for event in _events(first):
                if event["data"] is None:  # primed: the stream is open
                    assert (await http.post(gateway.url, json=add, headers=headers)).is_success
                    continue
                assert event["data"]["method"] == "notifications/tools/list_changed"
                last = event["id"]
                break
        assert last is not None
        add["params"] = {"name": "add_tool", "arguments": {"name": "two"}}
        assert (await http.post(gateway.url, json=add, headers=headers)).is_success
        resumed = {**headers, "last-event-id": last}
        async with http.stream("GET", gateway.url, headers=resumed) as again:
            async for event in _events(again):
                if event["data"] is None:  # primed where it stopped: nothing to replay
                    assert event["id"] == last
                    continue
                assert event["data"]["method"] == "notifications/tools/list_changed"
                number, sequence = last.split("-")
                assert event["id"] == f"{number}-{int(sequence) + 1}"  # the same stream
                break


PEER_SECRET = "a-secret-the-replicas-share-0123"  # noqa: S105 - the test's own


async def _list_changed(http: httpx.AsyncClient, url: str, sid: str, seen: asyncio.Event) -> None:
    """Hold the session's GET stream at `url` until a tools/list_changed arrives on it."""
    async with http.stream("GET", url, headers=handshake_headers(sid)) as stream:
        assert stream.status_code == 200
        seen.set()  # the stream is open
        async for line in stream.aiter_lines():
            if "notifications/tools/list_changed" in line:
                return


@pytest.mark.scale
async def test_replicas_on_other_hosts_serve_a_session_through_its_owners_bridge() -> None:
    """Two gateways on one Redis behind nginx, with ``peer_address``: a session's records
    name its owner's bridge by a TCP address (as another host would reach it), every
    request of the session is served by its one process whichever replica nginx picks,
    the GET stream at the other replica carries what the process says; that bridge
    answers nothing without the replicas' key; the owner killed, the session is not
    found and a new one starts."""
    from testbed.cluster import LocalCluster  # noqa: PLC0415 - loads deploy/local by path

    args = ("--peer-address", "127.0.0.1", "--peer-secret", "env:MCPFP_TEST_PEER_SECRET")
    env = {"MCPFP_TEST_PEER_SECRET": PEER_SECRET}
    with LocalCluster([], 2, gateway_args=args, env=env, command=STDIO_SERVER) as cluster:
        owner, other = (g.url for g in cluster.gateways)
        pid_call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        pid_call["params"] = {"name": "pid", "arguments": {}}
        async with httpx.AsyncClient(timeout=30) as http:
            sid = await raw_initialize(http, owner)
            headers = handshake_headers(sid)
            pids = set()
            for url in (owner, other, *[cluster.url] * 6):
                answer = await _fresh("POST", url, json=pid_call, headers=headers)
                assert answer.status_code == 200, answer.text
                pids.add(answer.json()["result"]["content"][0]["text"])
            assert len(pids) == 1  # one process served the session everywhere

            status = (await http.get(cluster.gateways[0].base + "/status")).json()
            (bridge,) = (r["url"] for b in status["backends"] for r in b["replicas"])
            assert bridge.startswith("http://127.0.0.1:") and "/stdio/default/" in bridge
            refused = await http.post(bridge, json=pid_call, headers=headers)
            assert refused.status_code == 403
            forged = {**headers, "mcp-fastproxy-peer": "0" * 64}
            refused = await http.post(bridge, json=pid_call, headers=forged)
            assert refused.status_code == 403
            # Refused on its head: a stranger cannot make the bridge read a body first.
            parts = urlsplit(bridge)
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(f"POST {parts.path} HTTP/1.1\r\nhost: x\r\n".encode())
            writer.write(b"content-length: 50000000\r\n\r\n")
            head = await asyncio.wait_for(reader.readline(), 5)
            assert head.startswith(b"HTTP/1.1 403"), head
            writer.close()
            # A client's own copy of the header is dropped, not relayed to a bridge.
            through = await _fresh("POST", other, json=pid_call, headers=forged)
            assert through.status_code == 200, through.text

            opened = asyncio.Event()
            listening = asyncio.create_task(_list_changed(http, other, sid, opened))
            await asyncio.wait_for(opened.wait(), 10)
            add = {**pid_call, "params": {"name": "add_tool", "arguments": {"name": "x"}}}
            added = await _fresh("POST", owner, json=add, headers=headers)
            assert added.status_code == 200, added.text
            await asyncio.wait_for(listening, 10)

            cluster.kill(0)
            statuses: list[int] = []
            while not statuses or statuses[-1] != 404:
                lost = await _fresh("POST", other, json=pid_call, headers=headers)
                statuses.append(lost.status_code)
                assert len(statuses) <= 4, statuses
            assert set(statuses) <= {502, 404}, statuses
            assert await raw_initialize(http, cluster.url)


async def test_stateless_clients_share_one_initialised_process(gateway: Gateway) -> None:
    """2026-07-28 clients: server/discover answered from the process's initialize, every
    request served by one process the gateway initialised, two clients' equal ids never
    crossed, progress relayed; a round trip the client cannot be asked for fails fast."""
    async with (
        sdk_session(gateway.url, "modern") as (one, _),
        sdk_session(gateway.url, "modern") as (two, _),
    ):
        assert "echo" in {t.name for t in (await one.list_tools()).tools}
        answers = await asyncio.gather(
            *(
                session.call_tool("echo", {"text": f"{name}-{n}"})
                for n in range(5)
                for name, session in (("one", one), ("two", two))
            )
        )
        assert [text(a) for a in answers] == [
            f"{name}-{n}" for n in range(5) for name in ("one", "two")
        ]
        pids = {text(await s.call_tool("pid", {})) for s in (one, two)}
        assert len(pids) == 1  # one shared process
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        counted = await one.call_tool(
            "count_slowly", {"steps": 3, "interval": 0.1}, progress_callback=on_progress
        )
        assert text(counted) == "counted 3" and seen == [1, 2, 3]
        with pytest.raises(MCPError, match="sampling/createMessage is not available"):
            await asyncio.wait_for(one.call_tool("ask_model", {"prompt": "hi"}), 10)
    async with sdk_session(gateway.url, "handshake") as (session, _):
        assert text(await session.call_tool("pid", {})) not in pids  # a session's own


def _serve_config(stack: ExitStack, tmp_path: Path, backend: str) -> str:
    """A gateway whose one backend is the YAML mapping `backend`; its MCP URL."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"backends:\n  - {backend}\n")
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--config", str(config)]
    stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
    return f"http://127.0.0.1:{port}/mcp"


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}},
}


@pytest.mark.scale  # a process's life: the same with either twin
async def test_a_process_that_never_answers_initialize_is_given_up(tmp_path: Path) -> None:
    silent = [sys.executable, "-c", "import time; time.sleep(300)"]
    backend = json.dumps(
        {"name": "mute", "command": silent[0], "args": silent[1:], "start_timeout": 1}
    )
    with ExitStack() as stack:
        url = _serve_config(stack, tmp_path, backend)
        async with httpx.AsyncClient(timeout=30) as http:
            started = time.monotonic()
            answer = await http.post(url, json=INITIALIZE, headers={"accept": ACCEPT})
            assert answer.status_code == 504, answer.text
            assert "the server did not start" in answer.text
            assert time.monotonic() - started < 10
            metrics = (await http.get(url.replace("/mcp", "/metrics"))).text
    assert 'proxy_stdio_spawns_total{backend="mute",outcome="unanswered"} 1' in metrics
    assert 'proxy_stdio_processes{backend="mute",state="starting"} 0' in metrics
    assert not [p for p in _python_children() if "time.sleep(300)" in p]  # reaped


@pytest.mark.scale  # a process's life: the same with either twin
async def test_a_server_that_keeps_failing_at_start_is_started_again_later(
    tmp_path: Path,
) -> None:
    """A program that exits before it answers initialize: the next session's start waits
    (503 and Retry-After, 1 s, then 2 s...) instead of spawning it again at once."""
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    backend = json.dumps({"name": "broken", "command": failing[0], "args": failing[1:]})
    with ExitStack() as stack:
        url = _serve_config(stack, tmp_path, backend)
        async with httpx.AsyncClient(timeout=30) as http:

            async def start() -> httpx.Response:
                return await http.post(url, json=INITIALIZE, headers={"accept": ACCEPT})

            first = await start()
            assert first.status_code in (502, 504), first.text
            await asyncio.sleep(0.3)  # the process's end is noticed
            held = await start()
            assert held.status_code == 503, held.text
            assert held.headers["retry-after"] == "1"
            assert "keep ending at start" in held.json()["error"]["message"]
            await asyncio.sleep(1.2)
            again = await start()  # waited enough: tried, and it fails again
            assert again.status_code in (502, 504), again.text
            await asyncio.sleep(0.3)
            longer = await start()
            assert longer.status_code == 503 and longer.headers["retry-after"] == "2"
            metrics = (await http.get(url.replace("/mcp", "/metrics"))).text
    assert 'proxy_stdio_spawns_total{backend="broken",outcome="refused"} 2' in metrics


def _python_children() -> list[str]:
    """The command lines of every process on the machine (to find a left-over one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return found


@pytest.mark.scale  # a process's life: the same with either twin
async def test_beyond_max_processes_a_new_session_gets_503(tmp_path: Path) -> None:
    backend = json.dumps(
        {"name": "few", "command": STDIO_SERVER[0], "args": STDIO_SERVER[1:], "max_processes": 2}
    )
    with ExitStack() as stack:
        url = _serve_config(stack, tmp_path, backend)
        async with httpx.AsyncClient(timeout=30) as http:
            first = await raw_initialize(http, url)
            await raw_initialize(http, url)
            refused = await http.post(url, json=INITIALIZE, headers={"accept": ACCEPT})
            assert refused.status_code == 503, refused.text
            assert "all 2 processes are in use" in refused.text
            ended = await http.delete(url, headers=handshake_headers(first))
            assert ended.status_code == 200
            assert await raw_initialize(http, url)  # a slot came free
            metrics = (await http.get(url.replace("/mcp", "/metrics"))).text
    assert 'proxy_stdio_spawns_total{backend="few",outcome="refused"} 1' in metrics


@pytest.mark.scale  # a process's life: the same with either twin
async def test_processes_started_ahead_of_demand_serve_new_sessions(tmp_path: Path) -> None:
    backend = json.dumps(
        {"name": "warm", "command": STDIO_SERVER[0], "args": STDIO_SERVER[1:], "min_idle": 2}
    )
    with ExitStack() as stack:
        url = _serve_config(stack, tmp_path, backend)
        metrics_url = url.replace("/mcp", "/metrics")
        async with httpx.AsyncClient(timeout=30) as http:

            async def idle() -> bool:
                page = (await http.get(metrics_url)).text
                return 'proxy_stdio_processes{backend="warm",state="idle"} 2' in page

            deadline = time.monotonic() + 30
            while not await idle():
                assert time.monotonic() < deadline, "no process was started ahead of demand"
                await asyncio.sleep(0.1)
        async with sdk_session(url, "handshake") as (session, _):
            assert text(await session.call_tool("echo", {"text": "warm"})) == "warm"
        async with httpx.AsyncClient(timeout=30) as http:
            deadline = time.monotonic() + 30
            while not await idle():  # the pool is filled up again
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            page = (await http.get(metrics_url)).text
    assert 'proxy_stdio_session_starts_total{backend="warm",pool="warm"} 1' in page
    assert 'pool="cold"' not in page


def _running_with(marker: str) -> list[int]:
    """The processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.scale
def test_after_kill_9_of_the_gateway_its_next_start_ends_what_was_left(tmp_path: Path) -> None:
    """A server that outlives its stdin (here: the SDK server, then a long sleep in the
    same group) is left running by a gateway killed with -9; the gateway's next start
    kills that group."""
    marker = f"left-behind-{os.getpid()}-{time.monotonic_ns()}"
    server = " ".join(STDIO_SERVER)
    after = f'exec {sys.executable} -c "import time; time.sleep(600)" {marker}'
    command = ["/bin/sh", "-c", f"{server}; {after}"]
    port = free_port()
    serve = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--", *command]
    url = f"http://127.0.0.1:{port}/mcp"
    with running(serve, f"http://127.0.0.1:{port}/healthz") as gateway:
        asyncio.run(_open_sessions(url, 1))
        os.killpg(gateway.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not (left := _running_with(marker)):  # the server saw EOF and ended; the sleep runs
            assert time.monotonic() < deadline, "nothing was left running"
            time.sleep(0.1)
    with running(serve, f"http://127.0.0.1:{port}/healthz"):  # (its command holds the marker too)
        deadline = time.monotonic() + 10
        while not all(reaped(pid) or not alive(pid) for pid in left):
            assert time.monotonic() < deadline, "the left-over group still runs"
            time.sleep(0.1)


async def test_a_shared_process_serves_many_sessions_apart(tmp_path: Path) -> None:
    """shared: true: sessions of one process, their equal request ids kept apart, a list
    change heard on every session's GET stream, a DELETE ending the session only."""
    backend = json.dumps(
        {"name": "one", "command": STDIO_SERVER[0], "args": STDIO_SERVER[1:], "shared": True}
    )
    changed = [asyncio.Event(), asyncio.Event()]

    def on_message(n: int) -> Any:
        async def handle(message: Any) -> None:
            if isinstance(getattr(message, "root", message), ToolListChangedNotification):
                changed[n].set()

        return handle

    with ExitStack() as stack:
        url = _serve_config(stack, tmp_path, backend)
        async with (
            sdk_session(url, "handshake", message_handler=on_message(0)) as (one, _),
            sdk_session(url, "handshake", message_handler=on_message(1)) as (two, _),
        ):
            pids = {text(await s.call_tool("pid", {})) for s in (one, two)}
            assert len(pids) == 1
            answers = await asyncio.gather(
                *(
                    s.call_tool("echo", {"text": f"{n}-{i}"})
                    for i in range(4)
                    for n, s in enumerate((one, two))
                )
            )
            assert [text(a) for a in answers] == [f"{n}-{i}" for i in range(4) for n in (0, 1)]
            assert text(await one.call_tool("add_tool", {"name": "fresh"})) == "added"
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in changed)), 10)
            assert "fresh" in {t.name for t in (await two.list_tools()).tools}
        async with sdk_session(url, "handshake") as (three, _):  # the others' DELETEs
            assert text(await three.call_tool("pid", {})) in pids  # left the process be
            async with httpx.AsyncClient(timeout=30) as http:
                page = (await http.get(url.replace("/mcp", "/metrics"))).text
    assert 'proxy_stdio_session_starts_total{backend="one",pool="shared"} 3' in page
