"""The bench's fixed upstream stands in for a server of both eras: the gateway in front of
it passes each workload on as it came (a stateless call is not bridged to a handshake
session), so every workload's answer is the one the load table checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from bench import services as svc
from bench.run import headers_for, open_session, sample
from bench.workloads import WORKLOADS


@pytest.fixture(scope="module")
def gateway() -> Iterator[svc.Service]:
    with contextlib.ExitStack() as stack:
        yield svc.gateway(stack, svc.fixed_nginx(stack))


@pytest.mark.parametrize("workload", ["call", "list", "stateless", "sse"])
def test_every_workload_is_answered_as_the_table_checks(
    gateway: svc.Service, workload: str
) -> None:
    work = WORKLOADS[workload]
    session = None if workload == "stateless" else open_session(gateway)
    assert sample(gateway.url, work, headers_for(gateway, work, session), 3) == []
