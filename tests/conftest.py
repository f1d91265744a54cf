"""Shared pytest fixtures."""

from __future__ import annotations

import importlib
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
