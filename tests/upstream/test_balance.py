"""Replica choice: fewest requests in flight among healthy replicas, ties rotate."""

from __future__ import annotations

from proxy.config import validate
from proxy.upstream.balance import Backend
from proxy.upstream.registry import SESSION_GRACE, Upstreams

URLS = ("http://127.0.0.1:9001/mcp", "http://127.0.0.1:9002/mcp", "http://127.0.0.1:9003/mcp")


def test_choose_prefers_the_replica_with_fewest_requests_in_flight() -> None:
    backend = Backend("b", URLS)
    backend.replicas[0].inflight = 3
    backend.replicas[1].inflight = 1
    backend.replicas[2].inflight = 2
    for _ in range(5):
        choice = backend.choose()
        assert choice is backend.replicas[1]


def test_ties_rotate_over_idle_replicas() -> None:
    backend = Backend("b", URLS)
    chosen = {backend.choose() for _ in range(3)}
    assert chosen == set(backend.replicas)


def test_down_replicas_are_skipped_and_none_when_all_down() -> None:
    backend = Backend("b", URLS)
    backend.replicas[0].up = False
    backend.replicas[1].up = False
    assert all(backend.choose() is backend.replicas[2] for _ in range(4))
    backend.replicas[2].up = False
    assert backend.choose() is None
    assert not backend.healthy()


def test_single_replica_backend() -> None:
    backend = Backend("b", URLS[:1])
    assert backend.choose() is backend.replicas[0]
    backend.replicas[0].up = False
    assert backend.choose() is None


def test_replica_keeps_the_upstream_authority_for_host() -> None:
    backend = Backend(
        "b", ("http://user:pw@example.internal:8000/mcp", "https://secure.example/mcp")
    )
    assert backend.replicas[0].host_header == b"example.internal:8000"
    assert backend.replicas[0].netloc == ("example.internal", 8000)
    assert backend.replicas[1].netloc == ("secure.example", 443)
    assert "up" in repr(backend.replicas[0])


def test_a_replica_that_refuses_loses_its_sessions_at_once_one_that_times_out_later() -> None:
    """A refused connection means nothing listens there (sessions lost: clients get 404
    and re-initialise); a timeout may pass (a briefly overloaded server), so its sessions
    are kept for SESSION_GRACE seconds of unreachability."""
    upstreams = Upstreams(validate({"upstream": ["http://127.0.0.1:1/a", "http://127.0.0.1:2/b"]}))
    slow, dead = upstreams.default.replicas
    assert not upstreams.lost(slow)
    upstreams.mark_down(slow, "connect timed out")
    upstreams.mark_down(dead, "connection refused", gone=True)
    assert not upstreams.lost(slow)
    assert upstreams.lost(dead)
    slow.down_since -= SESSION_GRACE
    assert upstreams.lost(slow)
