"""The configuration templates per topology (deploy/examples/, the Kubernetes ConfigMap and
the compose file's gateway.yaml) pass ``mcp-fastproxy check`` as users would run it, and
say what each topology is about; a broken one does not pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.processes import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
EXAMPLES = DEPLOY / "examples"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    """`mcp-fastproxy check PATH`, with no PROXY_* variables of this process."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def kubernetes_config(tmp_path: Path) -> Path:
    """The gateway.yaml the Kubernetes ConfigMap mounts into every pod."""
    configmap = yaml.safe_load((DEPLOY / "k8s" / "base" / "configmap.yaml").read_text())
    path = tmp_path / "gateway.yaml"
    path.write_text(configmap["data"]["gateway.yaml"])
    return path


# What `check` says of each topology: its last line, and the backends it lists.
TOPOLOGIES = {
    "laptop": ("1 worker(s), session store memory", 1),
    "workers": ("4 worker(s), session store redis", 1),
    "replicas": ("2 worker(s), session store redis", 1),
    "federation": ("1 worker(s), session store memory", 3),
    "kubernetes": ("2 worker(s), session store redis", 1),
    "compose": ("2 worker(s), session store redis", 1),
}


def test_every_example_is_a_topology_checked_here() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.yaml")} == set(TOPOLOGIES) - {
        "kubernetes",
        "compose",
    }


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_the_template_passes_check(topology: str, tmp_path: Path) -> None:
    if topology == "kubernetes":
        path = kubernetes_config(tmp_path)
    elif topology == "compose":
        path = DEPLOY / "compose" / "gateway.yaml"
    else:
        path = EXAMPLES / f"{topology}.yaml"
    done = check(path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    said, backends = TOPOLOGIES[topology]
    assert lines[-1].startswith("ok: ") and said in lines[-1]
    assert sum(line.startswith("backend ") for line in lines) == backends


def test_federation_without_a_prefix_does_not_pass(tmp_path: Path) -> None:
    broken = tmp_path / "federation.yaml"
    broken.write_text((EXAMPLES / "federation.yaml").read_text().replace("prefix: files_", ""))
    done = check(broken)
    assert done.returncode != 0
    assert "prefix" in done.stderr and "files" in done.stderr


def test_the_deploy_readme_names_every_example() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in EXAMPLES.glob("*.yaml"):
        assert f"examples/{path.name}" in readme
