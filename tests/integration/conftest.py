"""Session-scoped processes for the integration tests: SDK upstreams and gateways, each
started on first use, so each costs one start per test run (see tests/helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.helpers.gateways import Gateway, Upstream, start_gateway, start_upstream


@pytest.fixture(scope="session")
def processes() -> Iterator[ExitStack]:
    """Owns every process the fixtures below start; stops them at the end of the run."""
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def replica_a(processes: ExitStack) -> Upstream:
    return start_upstream(processes, "a")


@pytest.fixture(scope="session")
def replica_b(processes: ExitStack) -> Upstream:
    return start_upstream(processes, "b")


@pytest.fixture(scope="session")
def gateway(processes: ExitStack, replica_a: Upstream) -> Gateway:
    """The gateway in front of one upstream, default settings."""
    return start_gateway(processes, (replica_a,))


@pytest.fixture(scope="session")
def short_ttl_gateway(processes: ExitStack, replica_a: Upstream) -> Gateway:
    """A gateway that forgets a session after one idle second."""
    return start_gateway(processes, (replica_a,), "--session-ttl", "1")


@pytest.fixture(scope="session")
def replicated_gateway(processes: ExitStack, replica_a: Upstream, replica_b: Upstream) -> Gateway:
    """A gateway balancing over two replicas of the same server."""
    return start_gateway(processes, (replica_a, replica_b))
