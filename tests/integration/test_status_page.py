"""GET /status: the gateway's state as JSON, and as a page a real browser (Debian's
Chromium, headless) renders from it: two backends, one of them down, no secret shown."""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.processes import REPO_ROOT, free_port
from tests.helpers.clients import raw_initialize
from tests.helpers.gateways import Gateway, Upstream, start_gateway

ARTEFACTS = REPO_ROOT / "tests" / "artifacts"
SECRET = "hunter2"  # noqa: S105 - a password in a URL, never to be shown


@pytest.fixture(scope="module")
def gateway(
    processes: ExitStack, replica_a: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Gateway:
    """Two backends: `live` (an SDK server) and `gone` (nothing listens; its URL carries a
    user and password, which must never be shown)."""
    config = tmp_path_factory.mktemp("status") / "gateway.yaml"
    gone = f"http://probe:{SECRET}@127.0.0.1:{free_port()}/mcp"
    config.write_text(
        "backends:\n"
        f"  - {{name: live, prefix: live_, replicas: [{replica_a.url}]}}\n"
        f"  - {{name: gone, prefix: gone_, replicas: ['{gone}']}}\n"
        "probe_interval: 0.2\n"
    )
    return start_gateway(processes, (), "--config", str(config))


def status(gateway: Gateway, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{gateway.base}/status", headers=headers, timeout=10)


def settled(gateway: Gateway) -> dict[str, Any]:
    """The JSON once the dead replica is known to be down and the live lists are held."""
    deadline = time.monotonic() + 15
    while True:
        document: dict[str, Any] = status(gateway).json()
        live, gone = document["backends"]
        if not gone["replicas"][0]["up"] and live["lists"] and live["eras"]:
            return document
        assert time.monotonic() < deadline, document
        time.sleep(0.1)


async def test_the_json_says_how_each_backend_is(gateway: Gateway, replica_a: Upstream) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        await raw_initialize(http, gateway.url)
    answer = status(gateway)
    assert answer.headers["content-type"].startswith("application/json")
    assert SECRET not in answer.text
    document = settled(gateway)
    assert document["session_store"] == "memory" and document["sessions_open"] == 1
    assert document["requests"]["done"] >= 2 and document["requests"]["in_flight"] == 0
    live, gone = document["backends"]
    assert (live["name"], live["prefix"], live["healthy"]) == ("live", "live_", True)
    assert live["replicas"] == [{"url": replica_a.url, "up": True, "in_flight": 0}]
    assert live["lists"]["tools"]["count"] > 0
    assert (gone["name"], gone["healthy"], gone["replicas"][0]["up"]) == ("gone", False, False)
    assert gone["replicas"][0]["url"].startswith("http://127.0.0.1:")  # no user, no password
    # Asked of the live one (server/discover, then initialize); not known of the other.
    assert (live["eras"], live["era_source"]) == (["handshake", "stateless"], "probed")
    assert (gone["eras"], gone["era_source"]) == (None, None)


def test_the_metrics_say_which_eras_each_backend_speaks(gateway: Gateway) -> None:
    settled(gateway)
    metrics = httpx.get(f"{gateway.base}/metrics", timeout=10).text
    assert 'proxy_backend_era{backend="live",era="handshake"} 1' in metrics
    assert 'proxy_backend_era{backend="live",era="stateless"} 1' in metrics
    assert 'proxy_backend_era{backend="gone"' not in metrics


def test_a_page_of_another_origin_may_not_read_it(gateway: Gateway) -> None:
    assert status(gateway, {"origin": "https://evil.example"}).status_code == 403


def test_it_can_be_turned_off(processes: ExitStack, replica_a: Upstream) -> None:
    off = start_gateway(processes, (replica_a,), "--status-page", "false")
    assert status(off).status_code == 404


CHROMIUM = shutil.which("chromium")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's Chromium, headless, on a fresh profile, kept off the (closed) network."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90, check=False
    )


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/test installs Debian's)")
def test_the_page_in_a_browser_shows_both_backends(gateway: Gateway, tmp_path: Path) -> None:
    settled(gateway)
    url = f"{gateway.base}/status"
    page = status(gateway, {"accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    dom = chromium(tmp_path, "--dump-dom", url).stdout
    assert 'data-loaded="yes"' in dom  # the script ran and read the JSON
    assert '<tr data-backend="live"><td>live</td><td>live_</td>' in dom
    assert "<td>handshake, stateless (probed)</td>" in dom
    assert '<td class="up">up</td>' in dom
    assert '<tr data-backend="gone"><td>gone</td><td>gone_</td>' in dom
    assert '<td class="down">down</td>' in dom
    assert "tools " in dom and SECRET not in dom
    assert "(generation 0)" in dom  # the configuration as started, before any reload
    ARTEFACTS.mkdir(exist_ok=True)
    shot = ARTEFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, "--window-size=1100,700", f"--screenshot={shot}", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
