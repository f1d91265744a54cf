"""Open streams per session and per client."""

from __future__ import annotations

from proxy.limits import StreamLimits


def test_per_session_then_per_client() -> None:
    limits = StreamLimits(per_session=2, per_client=3)
    assert [limits.take(b"s1", "c") for _ in range(3)] == [None, None, "session"]
    assert [limits.take(b"s2", "c") for _ in range(2)] == [None, "client"]
    assert limits.take(None, "other") is None  # a stream without a session counts by client
    limits.give_back(b"s1", "c")
    assert limits.take(b"s2", "c") is None
    for session in (b"s1", b"s2", b"s2", None):
        limits.give_back(session, "c" if session else "other")
    assert repr(limits) == "<StreamLimits sessions=0 clients=0>"
