"""The MCP conformance suite passes against the upstream fixture and, identically, via the gateway.

One upstream (`testbed.servers.everything`) and one gateway (``python -m proxy serve``) run on
free loopback ports. The pinned conformance CLI runs ``--suite all`` once per spec version
directly against the upstream and once through the gateway; all four runs go at once (the
scenarios are independent), which keeps the module to a few seconds of wall time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from testbed.processes import StartupError, free_port, running
from tests.conformance.runner import ScenarioResult, SuiteRun, ensure_installed, run_suite_detailed

pytestmark = pytest.mark.timeout(300)

SPEC_VERSIONS = ("2025-11-25", "2026-07-28")
SUITE = "all"
SUITE_TIMEOUT_S = 240.0
STARTUP_TIMEOUT_S = 30.0

# Scenarios each spec version must include, so a suite that silently shrinks (a CLI bump,
# a broken --spec-version filter) cannot pass by running nothing.
REQUIRED = {
    "2025-11-25": {
        "server-initialize",
        "server-session-lifecycle",
        "tools-call-sampling",
        "server-sse-polling",
        "resources-subscribe",
        "dns-rebinding-protection",
    },
    "2026-07-28": {
        "server-stateless",
        "caching",
        "http-header-validation",
        "input-required-result-multi-round",
        "dns-rebinding-protection",
    },
}


@dataclass
class Runs:
    """Suite runs keyed by spec version, plus why the gateway could not be tested (if so)."""

    direct: dict[str, SuiteRun] = field(default_factory=dict)
    gateway: dict[str, SuiteRun] = field(default_factory=dict)
    gateway_error: str | None = None
    wall_s: float = 0.0


def _statuses(run: SuiteRun) -> dict[str, str]:
    return {name: result.status for name, result in run.scenarios.items()}


def _verdicts(run: SuiteRun) -> dict[str, dict[str, int]]:
    """Per scenario, how many checks ended in each state; INFO entries only log traffic."""
    return {
        name: {status: n for status, n in result.checks.items() if status != "INFO" and n}
        for name, result in run.scenarios.items()
    }


def _not_passed(run: SuiteRun) -> dict[str, ScenarioResult]:
    return {name: r for name, r in run.scenarios.items() if r.status != "passed"}


def _run_all(urls: dict[str, str]) -> dict[tuple[str, str], SuiteRun]:
    """Run the suite for every (target, spec version) pair concurrently."""
    jobs = [(target, version) for target in urls for version in SPEC_VERSIONS]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures: dict[tuple[str, str], Future[SuiteRun]] = {
            (target, version): pool.submit(
                run_suite_detailed, urls[target], version, suite=SUITE, timeout_s=SUITE_TIMEOUT_S
            )
            for target, version in jobs
        }
        return {job: future.result() for job, future in futures.items()}


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    ensure_installed()
    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    upstream_cmd = [
        sys.executable,
        "-m",
        "testbed.servers.everything",
        "--host",
        "127.0.0.1",
        "--port",
        str(up_port),
    ]
    gateway_cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--upstream",
        upstream,
        "--host",
        "127.0.0.1",
        "--port",
        str(gw_port),
    ]
    result = Runs()
    with running(upstream_cmd, f"http://127.0.0.1:{up_port}/healthz", timeout=STARTUP_TIMEOUT_S):
        urls = {"direct": upstream}
        try:
            with running(
                gateway_cmd, f"http://127.0.0.1:{gw_port}/healthz", timeout=STARTUP_TIMEOUT_S
            ):
                urls["gateway"] = f"http://127.0.0.1:{gw_port}/mcp"
                started = time.monotonic()
                done = _run_all(urls)
                result.wall_s = time.monotonic() - started
        except StartupError as exc:
            # Keep the direct half meaningful when the gateway cannot start.
            result.gateway_error = f"gateway did not start: {exc}"
            started = time.monotonic()
            done = _run_all(urls)
            result.wall_s = time.monotonic() - started
    for (target, version), run in done.items():
        getattr(result, target)[version] = run
    print(f"conformance: {len(done)} suite runs in {result.wall_s:.1f}s wall", file=sys.stderr)
    yield result


@pytest.mark.parametrize("version", SPEC_VERSIONS)
def test_upstream_passes_every_scenario(runs: Runs, version: str) -> None:
    run = runs.direct[version]
    missing = REQUIRED[version] - run.scenarios.keys()
    assert not missing, f"suite did not run {sorted(missing)}\n{run.output}"
    assert not _not_passed(run), f"upstream failed at {version}: {_not_passed(run)}"
    assert run.returncode == 0, run.output


@pytest.mark.parametrize("version", SPEC_VERSIONS)
def test_gateway_matches_upstream(runs: Runs, version: str) -> None:
    if runs.gateway_error is not None:
        pytest.fail(runs.gateway_error)
    direct, gateway = runs.direct[version], runs.gateway[version]
    assert _statuses(gateway) == _statuses(direct), (
        f"through the gateway at {version}: {_not_passed(gateway)}"
    )
    assert not _not_passed(gateway), f"gateway failed at {version}: {_not_passed(gateway)}"
    # Same checks, same outcomes: a gateway must not make a scenario skip part of itself.
    assert _verdicts(gateway) == _verdicts(direct)
    assert gateway.returncode == 0, gateway.output
