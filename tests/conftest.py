"""Shared pytest fixtures."""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import pytest

from proxy import fastpath


@pytest.fixture(
    scope="session",
    params=[
        pytest.param(
            "proxy._fastpath",
            id="c",
            marks=pytest.mark.skipif(fastpath.IMPLEMENTATION != "c", reason="extension not built"),
        ),
        pytest.param("proxy._fastpath_py", id="py"),
    ],
)
def fastpath_impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each fast-path twin in turn: the compiled one (when built) and the pure-Python one."""
    return importlib.import_module(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With the twin forced while the extension exists (the second pass of
    ``scripts/test``), skip the ``scale`` tests: the compiled pass already ran them."""
    if os.environ.get("PROXY_NO_EXTENSIONS") != "1":
        return
    if importlib.util.find_spec("proxy._fastpath") is None:
        return  # no compiled build at all: this is the only pass
    skip = pytest.mark.skip(reason="scale tests run once, in the compiled pass")
    for item in items:
        if "scale" in item.keywords:
            item.add_marker(skip)
