"""bench.instructions drives every target it offers in process (without valgrind here):
a session opens and each call is answered 200, or the child stops with the status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import uvloop

from bench import services as svc
from bench.instructions import AUDIENCE, TARGETS, _drive
from bench.issuer import Issuer, issuer


@pytest.fixture(scope="module")
def parts() -> Iterator[tuple[svc.Service, Issuer]]:
    with contextlib.ExitStack() as stack:
        yield svc.fixed_nginx(stack), stack.enter_context(issuer())


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_is_driven_through(target: str, parts: tuple[svc.Service, Issuer]) -> None:
    fixed, tokens = parts
    uvloop.run(
        _drive(target, 32, fixed.url, tokens.url, tokens.token(AUDIENCE), warm=2, settle=False)
    )


def test_a_refused_call_stops_the_child(parts: tuple[svc.Service, Issuer]) -> None:
    fixed, tokens = parts
    with pytest.raises(SystemExit, match="ca: initialize: HTTP 401"):
        uvloop.run(_drive("ca", 32, fixed.url, tokens.url, "not-a-token", warm=2, settle=False))
