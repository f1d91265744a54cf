"""The Dockerfile's runtime command, environment and health check, run outside Docker.

No Docker engine runs here, so this starts exactly what the image would run
(ENTRYPOINT + CMD with the image's ENV) and then runs its HEALTHCHECK command.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import REPO_ROOT, free_port, running

DOCKERFILE = REPO_ROOT / "Dockerfile"
IMAGE_PORT = "8787"


def runtime_stage(text: str) -> list[str]:
    """Instructions of the last stage, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return lines[last_from:]


def instruction(stage: list[str], name: str) -> str:
    found = [ln[len(name) :].strip() for ln in stage if ln.upper().startswith(name + " ")]
    assert found, f"no {name} in the runtime stage"
    return found[-1]


def image_env(stage: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ln in stage:
        if ln.upper().startswith("ENV "):
            for item in shlex.split(ln[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def stage() -> list[str]:
    return runtime_stage(DOCKERFILE.read_text("utf-8"))


@pytest.fixture(scope="module")
def image_gateway(stage: list[str]) -> Iterator[int]:
    """The image's command, on a free port, in front of the everything upstream."""
    up = free_port()
    upstream_cmd = [sys.executable, "-m", "tests.servers.everything", "--port", str(up)]
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
    check = instruction(stage, "HEALTHCHECK")
    exec_form = json.loads(check[check.index("CMD") + 3 :].strip())
    assert IMAGE_PORT in " ".join(exec_form)
    exec_form = [arg.replace(IMAGE_PORT, str(image_gateway)) for arg in exec_form]
    if exec_form[0] == "python":
        exec_form[0] = sys.executable
    assert subprocess.run(exec_form, timeout=10).returncode == 0


def test_the_healthcheck_command_fails_when_nothing_listens(stage: list[str]) -> None:
    check = instruction(stage, "HEALTHCHECK")
    exec_form = json.loads(check[check.index("CMD") + 3 :].strip())
    exec_form = [arg.replace(IMAGE_PORT, str(free_port())) for arg in exec_form]
    if exec_form[0] == "python":
        exec_form[0] = sys.executable
    assert subprocess.run(exec_form, timeout=10, capture_output=True).returncode != 0
