"""SIGHUP reloads the configuration without respawning the workers (with the memory
store a respawn would lose every session): a valid configuration is applied in the
running worker, a bad one, or one that changes a setting only a restart changes, is
refused as a whole and the running one stays. Under load: a client session keeps calling
while a backend is added, a bad configuration is pushed and the backend is removed again;
no call to the backend that stays fails, and the client hears of each changed catalog
on its stream."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import mcp.types as types
import pytest
from mcp.client.subscriptions import listen
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ToolsListChanged
from mcp.types import TextContent

from testbed.processes import free_port, wait_http
from testbed.redis_server import redis_server
from tests.helpers.clients import handshake_headers, raw_initialize, sdk_session
from tests.helpers.gateways import Upstream, start_upstream

pytestmark = pytest.mark.timeout(120)

PING = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
WHOAMI = {
    "jsonrpc": "2.0",
    "id": 8,
    "method": "tools/call",
    "params": {"name": "whoami", "arguments": {}},
}


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    config: Path
    log: Path

    def worker(self) -> int:
        """The Granian worker's pid (the gateway's one child)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        (pid,) = children.split()
        return int(pid)

    def logged(self, text: str, timeout: float = 15.0) -> str:
        """The log once it holds `text` (AssertionError when it does not in time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log.read_text()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n{self.log.read_text()}")

    async def reload(self, config: str, expect: str) -> str:
        """Write `config`, send SIGHUP, and wait until the log says `expect`."""
        self.config.write_text(config)
        self.proc.send_signal(signal.SIGHUP)
        return await asyncio.to_thread(self.logged, expect)

    def metric(self, line: str) -> float:
        page = httpx.get(self.url.removesuffix("/mcp") + "/metrics").text
        found = re.search(rf"^{re.escape(line)} (\S+)$", page, re.MULTILINE)
        assert found is not None, f"{line} not in /metrics"
        return float(found.group(1))


def serve(stack: ExitStack, config: Path, log: Path) -> Served:
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    stack.callback(stop)
    wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc=proc)
    return Served(f"http://127.0.0.1:{port}/mcp", proc, config, log)


@pytest.fixture
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    with ExitStack() as stack:
        yield start_upstream(stack, "alpha"), start_upstream(stack, "beta")


@pytest.fixture
def served(tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> Iterator[Served]:
    """A gateway in front of one backend, `alpha`."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"upstream: {upstreams[0].url}\nupstream_timeout: 30\n")
    with ExitStack() as stack:
        yield serve(stack, config, tmp_path / "gateway.log")


async def ping(http: httpx.AsyncClient, url: str, session_id: str) -> int:
    answer = await http.post(url, headers=handshake_headers(session_id), json=PING)
    return answer.status_code


async def whoami(http: httpx.AsyncClient, url: str, session_id: str) -> tuple[int, str]:
    answer = await http.post(url, headers=handshake_headers(session_id), json=WHOAMI)
    if answer.status_code != 200:
        return answer.status_code, ""
    text = answer.text
    return 200, "alpha" if "alpha" in text else "beta" if "beta" in text else text


async def test_a_live_setting_is_applied_in_the_running_worker(served: Served) -> None:
    async with httpx.AsyncClient(timeout=15) as http:
        session_id = await raw_initialize(http, served.url)
        worker = served.worker()
        text = served.config.read_text()
        log = await served.reload(
            text.replace("upstream_timeout: 30", "upstream_timeout: 45"),
            "reload: generation 1 applied",
        )
        assert "reload: generation 1: upstream_timeout changed" in log
        assert "respawning" not in log
        assert await ping(http, served.url, session_id) == 200
        assert served.worker() == worker
        status = (await http.get(served.url.removesuffix("/mcp") + "/status")).json()
        assert status["config_generation"] == 1
    assert served.metric("proxy_config_generation") == 1
    assert served.metric('proxy_config_reloads_total{outcome="applied"}') == 1
    assert served.metric('proxy_config_reloads_applied_total{outcome="ok"}') == 1


async def test_a_bad_configuration_is_refused_and_the_running_one_stays(served: Served) -> None:
    async with httpx.AsyncClient(timeout=15) as http:
        session_id = await raw_initialize(http, served.url)
        worker = served.worker()
        log = await served.reload(
            served.config.read_text() + "upstream_timeout_s: 5\n",
            "reload refused, the running configuration stays",
        )
        assert "upstream_timeout_s" in log.split("reload refused")[1]
        assert await ping(http, served.url, session_id) == 200
        assert served.worker() == worker
    assert served.metric('proxy_config_reloads_total{outcome="refused"}') == 1
    assert served.metric("proxy_config_generation") == 0


async def test_a_setting_only_a_restart_changes_refuses_the_whole_reload(
    served: Served, upstreams: tuple[Upstream, Upstream]
) -> None:
    """The sessions' TTL cannot change while the gateway runs (the store holds it): the
    log names it, and the other change in the same file (a second replica) is not
    applied either."""
    alpha, beta = upstreams
    async with httpx.AsyncClient(timeout=15) as http:
        session_id = await raw_initialize(http, served.url)
        config = f"upstream: [{alpha.url}, {beta.url}]\nupstream_timeout: 30\nsession_ttl: 60\n"
        log = await served.reload(config, "reload refused")
        refusal = log.split("reload refused")[1].splitlines()[0]
        assert "session_ttl cannot change while the gateway runs" in refusal
        assert "upstream" not in refusal
        for _ in range(6):  # both replicas would answer, were the change applied
            assert await whoami(http, served.url, session_id) == (200, "alpha")
        fresh = await raw_initialize(http, served.url)
        assert await whoami(http, served.url, fresh) == (200, "alpha")


async def test_an_unchanged_configuration_is_said_to_be(served: Served) -> None:
    served.proc.send_signal(signal.SIGHUP)
    await asyncio.to_thread(served.logged, "reload: the configuration is unchanged")
    assert served.proc.poll() is None


async def test_replicas_added_and_removed_keep_the_sessions_of_those_that_stay(
    served: Served, upstreams: tuple[Upstream, Upstream]
) -> None:
    """A replica added takes new sessions; one removed ends its sessions cleanly (404:
    the client initialises again) while the other's go on."""
    alpha, beta = upstreams
    async with httpx.AsyncClient(timeout=15) as http:
        on_alpha = await raw_initialize(http, served.url)
        await served.reload(f"upstream: [{alpha.url}, {beta.url}]\n", "generation 1 applied")
        sessions = {}
        for _ in range(8):
            session_id = await raw_initialize(http, served.url)
            sessions[(await whoami(http, served.url, session_id))[1]] = session_id
        assert set(sessions) == {"alpha", "beta"}
        assert await whoami(http, served.url, on_alpha) == (200, "alpha")
        await served.reload(f"upstream: [{beta.url}]\n", "generation 2 applied")
        assert await whoami(http, served.url, on_alpha) == (404, "")
        assert await whoami(http, served.url, sessions["alpha"]) == (404, "")
        assert await whoami(http, served.url, sessions["beta"]) == (200, "beta")
        again = await raw_initialize(http, served.url)
        assert await whoami(http, served.url, again) == (200, "beta")


def _federation(*backends: Upstream) -> str:
    lines = ["backends:"]
    for upstream in backends:
        lines += [
            f"  - name: {upstream.name}",
            f"    prefix: {upstream.name}_",
            f"    replicas: [{upstream.url}]",
        ]
    return "\n".join([*lines, "list_timeout: 5", ""])


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def test_reload_under_load_backends_added_and_removed(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    alpha, beta = upstreams
    config = tmp_path / "gateway.yaml"
    config.write_text(_federation(alpha))
    changed = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    with ExitStack() as stack:
        served = serve(stack, config, tmp_path / "gateway.log")
        worker = served.worker()
        async with (
            sdk_session(served.url, "handshake", message_handler=on_message) as (client, wire),
            sdk_session(served.url, "handshake") as (other, _),
        ):
            for _ in range(50):  # the client's GET stream is open once answered
                if 200 in wire.statuses("GET"):
                    break
                await asyncio.sleep(0.1)
            calls: list[str] = []
            failures: list[BaseException] = []
            stop = asyncio.Event()

            async def keep_calling() -> None:
                while not stop.is_set():
                    try:
                        calls.append(_text(await other.call_tool("alpha_whoami", {})))
                    except Exception as exc:  # what this test counts
                        failures.append(exc)

            async def calls_go_on() -> None:
                done = len(calls)
                for _ in range(100):
                    if len(calls) > done + 3:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("the calls stopped")

            load = [asyncio.create_task(keep_calling()) for _ in range(3)]
            await calls_go_on()
            await served.reload(_federation(alpha, beta), "generation 1 applied")
            await asyncio.wait_for(changed.wait(), 10)
            changed.clear()
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"alpha_whoami", "beta_whoami"} <= tools
            assert "beta" in _text(await client.call_tool("beta_whoami", {}))

            await calls_go_on()
            await served.reload(_federation(alpha, beta) + "bogus: 1\n", "reload refused")
            assert "beta" in _text(await client.call_tool("beta_whoami", {}))

            await calls_go_on()
            await served.reload(_federation(alpha), "generation 2 applied")
            await asyncio.wait_for(changed.wait(), 10)
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "alpha_whoami" in tools and "beta_whoami" not in tools
            with pytest.raises(MCPError):
                await client.call_tool("beta_whoami", {})
            assert "alpha" in _text(await client.call_tool("alpha_whoami", {}))
            await calls_go_on()
            stop.set()
            await asyncio.gather(*load)
        assert failures == []
        assert all("alpha" in text for text in calls)
        assert served.worker() == worker
        assert served.metric('proxy_config_reloads_total{outcome="applied"}') == 2
        assert served.metric('proxy_config_reloads_total{outcome="refused"}') == 1


async def test_a_listening_2026_client_hears_that_the_tools_changed(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    """A stateless client's `subscriptions/listen` stream is told when a reload adds a
    backend, and its next list has the new backend's tools."""
    alpha, beta = upstreams
    config = tmp_path / "gateway.yaml"
    config.write_text(_federation(alpha))
    with ExitStack() as stack:
        served = serve(stack, config, tmp_path / "gateway.log")
        async with (
            sdk_session(served.url, "modern") as (client, _),
            listen(client, tools_list_changed=True) as subscription,
        ):
            assert subscription.honored.tools_list_changed is True
            await served.reload(_federation(alpha, beta), "generation 1 applied")
            event = await asyncio.wait_for(anext(aiter(subscription)), 10)
            assert isinstance(event, ToolsListChanged)
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"alpha_whoami", "beta_whoami"} <= tools


@pytest.mark.scale
async def test_every_worker_applies_a_reload(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    """Two workers on Redis: each applies the new generation, and the sessions opened
    before it go on in both."""
    alpha, beta = upstreams
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        config = tmp_path / "gateway.yaml"
        config.write_text(f"upstream: [{alpha.url}]\nworkers: 2\nsession_store: {redis.url()}\n")
        served = serve(stack, config, tmp_path / "gateway.log")
        async with httpx.AsyncClient(timeout=15) as http:
            before = [await raw_initialize(http, served.url) for _ in range(4)]
            config.write_text(
                config.read_text().replace(f"[{alpha.url}]", f"[{alpha.url}, {beta.url}]")
            )
            served.proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                if served.log.read_text().count("reload: generation 1 applied") == 2:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"not applied by both workers:\n{served.log.read_text()}")
            for session_id in before:
                for _ in range(4):
                    assert await whoami(http, served.url, session_id) == (200, "alpha")
            seen = set()
            for _ in range(12):
                session_id = await raw_initialize(http, served.url)
                seen.add((await whoami(http, served.url, session_id))[1])
            assert seen == {"alpha", "beta"}
