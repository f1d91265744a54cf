"""Bounds on long-lived streams: per gateway session and per client, in this process."""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ("StreamLimits",)


class StreamLimits:
    """Counts the GET streams (and other held-open exchanges) open in this process.

    A session may hold ``per_session`` of them and a client (``ProxyHeaders.client``)
    ``per_client``; :meth:`take` refuses one more. With several workers or replicas each
    process counts its own, so the bounds hold per process.
    """

    __slots__ = ("_clients", "_sessions", "per_client", "per_session")

    def __init__(self, per_session: int, per_client: int) -> None:
        self.per_session = per_session
        self.per_client = per_client
        self._sessions: dict[Hashable, int] = {}
        self._clients: dict[Hashable, int] = {}

    def __repr__(self) -> str:
        return f"<StreamLimits sessions={len(self._sessions)} clients={len(self._clients)}>"

    def take(self, session: Hashable | None, client: str) -> str | None:
        """Count one more stream; None when taken, else which bound refused it."""
        held = self._sessions.get(session, 0) if session is not None else 0
        if session is not None and held >= self.per_session:
            return "session"
        by_client = self._clients.get(client, 0)
        if by_client >= self.per_client:
            return "client"
        if session is not None:
            self._sessions[session] = held + 1
        self._clients[client] = by_client + 1
        return None

    def give_back(self, session: Hashable | None, client: str) -> None:
        """One stream that :meth:`take` counted has ended."""
        if session is not None:
            _drop(self._sessions, session)
        _drop(self._clients, client)


def _drop(counts: dict[Hashable, int], key: Hashable) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
