"""Every module imports on its own in a fresh interpreter with warnings as errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import proxy

PACKAGE = Path(proxy.__file__).parent
MODULES = [
    "proxy",
    "proxy.sessions",
    "proxy.upstream",
    *sorted(
        "proxy." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    ),
]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_cleanly(module: str) -> None:
    subprocess.run([sys.executable, "-W", "error", "-c", f"import {module}"], check=True)
