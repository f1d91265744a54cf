"""SIGHUP checks the configuration again and never respawns the workers: with the memory
store a respawn would lose every session. A bad configuration is refused, naming why; a
valid one that changes something names what changed (it is applied by a restart)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from testbed.processes import free_port, wait_http
from tests.helpers.clients import handshake_headers, raw_initialize
from tests.helpers.gateways import Upstream, start_upstream

PING = {"jsonrpc": "2.0", "id": 7, "method": "ping"}


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

    def logged(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds `text` (AssertionError when it does not in time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log.read_text()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n{self.log.read_text()}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with ExitStack() as stack:
        upstream: Upstream = start_upstream(stack, "reload-upstream")
        config = tmp_path / "gateway.yaml"
        config.write_text(f"upstream: {upstream.url}\nupstream_timeout: 30\n")
        port = free_port()
        log = tmp_path / "gateway.log"
        cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc=proc)
            yield Served(f"http://127.0.0.1:{port}/mcp", proc, config, log)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def ping(http: httpx.AsyncClient, url: str, session_id: str) -> int:
    answer = await http.post(url, headers=handshake_headers(session_id), json=PING)
    return answer.status_code


async def test_sighup_keeps_the_workers_and_their_sessions(served: Served) -> None:
    async with httpx.AsyncClient(timeout=15) as http:
        session_id = await raw_initialize(http, served.url)
        worker = served.worker()
        text = served.config.read_text()
        served.config.write_text(text.replace("upstream_timeout: 30", "upstream_timeout: 45"))
        served.proc.send_signal(signal.SIGHUP)
        log = served.logged("reload: the configuration is valid, but upstream_timeout")
        assert "respawning" not in log
        assert await ping(http, served.url, session_id) == 200
        assert served.worker() == worker


async def test_a_bad_configuration_is_refused_and_the_running_one_stays(served: Served) -> None:
    async with httpx.AsyncClient(timeout=15) as http:
        session_id = await raw_initialize(http, served.url)
        worker = served.worker()
        served.config.write_text(served.config.read_text() + "upstream_timeout_s: 5\n")
        served.proc.send_signal(signal.SIGHUP)
        log = served.logged("reload refused, the running configuration stays")
        assert "upstream_timeout_s" in log.split("reload refused")[1]
        assert await ping(http, served.url, session_id) == 200
        assert served.worker() == worker


async def test_an_unchanged_configuration_is_said_to_be(served: Served) -> None:
    served.proc.send_signal(signal.SIGHUP)
    served.logged("reload: the configuration is unchanged")
    assert served.proc.poll() is None
