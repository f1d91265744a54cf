"""The MCP conformance suite through the gateway in front of the conformance fixture
server run as a local (stdio) process: ``serve -- python -m testbed.servers.everything
--stdio``. Handshake-era clients get a process per session; 2026-07-28 clients reach one
shared process the gateway initialised. Every scenario passes as it does over HTTP direct
(tests/integration/test_conformance.py), except those listed in ``NOT_BRIDGED`` (the
README's "Local (stdio) servers" says why)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from testbed.processes import free_port, running
from tests.conformance.runner import (
    INPUT_REQUIRED,
    SuiteRun,
    ensure_installed,
    run_suite_detailed,
)

# The bridge's own answers; what the gateway in front parses is the conformance run of
# tests/integration/test_conformance.py, in both passes: this one runs in the compiled pass.
pytestmark = [pytest.mark.timeout(300), pytest.mark.scale]

NOT_BRIDGED: dict[str, frozenset[str]] = {
    "2025-11-25": frozenset(),
    # Over stdio the fixture serves the handshake era, and asks the client where it would
    # answer a stateless one InputRequiredResult (see INPUT_REQUIRED).
    "2026-07-28": INPUT_REQUIRED,
}


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, SuiteRun]]:
    ensure_installed()
    port = free_port()
    server = [sys.executable, "-m", "testbed.servers.everything", "--stdio"]
    cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--", *server]
    url = f"http://127.0.0.1:{port}/mcp"
    with running(cmd, f"http://127.0.0.1:{port}/healthz", timeout=30), ThreadPoolExecutor() as pool:
        futures = {
            version: pool.submit(run_suite_detailed, url, version, timeout_s=280)
            for version in NOT_BRIDGED
        }
        yield {version: future.result() for version, future in futures.items()}


@pytest.mark.parametrize("version", sorted(NOT_BRIDGED))
def test_the_conformance_suite_passes_through_a_stdio_server(
    runs: dict[str, SuiteRun], version: str
) -> None:
    run = runs[version]
    required = {
        "2025-11-25": {"server-initialize", "tools-call-sampling", "resources-subscribe"},
        "2026-07-28": {"server-stateless", "caching", "tools-call-simple-text"},
    }
    assert required[version] <= set(run.scenarios), run.output
    not_passed = {name for name, result in run.scenarios.items() if result.status != "passed"}
    expected = NOT_BRIDGED[version]
    assert not_passed == expected, {n: run.scenarios[n] for n in not_passed ^ expected}
