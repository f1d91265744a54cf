"""Local servers across hosts: a stdio backend's bridge reachable by the other gateway
replicas over TCP, with the secret they share (``peer_address``, ``peer_secret``).

A session's process lives in one worker of one gateway. With ``peer_address`` set, that
worker's bridge also listens on a port of its own at that address, and the session's
record names it: ``http://<peer_address>:<port>/stdio/<backend>/<tag>/mcp``. Any replica
that takes a request of the session relays it there, as to any HTTP replica, with the
header :data:`HEADER` carrying a key derived from the secret. The bridge answers nothing
without it (403).

The ``<tag>`` is a MAC of the backend and the address under the same secret: a replica
sends the header only to a URL whose tag it can verify, so a session record written by
anyone without the secret cannot make a replica hand its key to some other host.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from .. import headers as H
from ..auth.settings import secret
from ..settings import Settings

__all__ = ("HEADER", "Peers")

HEADER = H.PEER
"""The request header that carries a replica's key to another replica's bridge. The
gateway drops it from the requests of clients."""


class Peers:
    """What the replicas of one gateway share to reach each other's bridges."""

    __slots__ = ("_secret", "address", "headers", "key")

    def __init__(self, address: str, shared_secret: str) -> None:
        self.address = address
        self._secret = shared_secret.encode()
        self.key = self._mac(b"mcp-fastproxy peer key").encode("ascii")
        """What the header carries (never the configured secret itself)."""
        self.headers = ((HEADER, self.key),)

    @classmethod
    def of(cls, settings: Settings) -> Peers | None:
        """The peers of `settings` (None without ``peer_address``); the secret is read
        from its reference (validated by ``check``: it resolves)."""
        if not settings.peer_address:
            return None
        return cls(settings.peer_address, secret(settings.peer_secret, "peer_secret"))

    def _mac(self, data: bytes) -> str:
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def _tag(self, backend: str, netloc: str) -> str:
        return self._mac(f"bridge {backend} {netloc}".encode())[:32]

    def url(self, backend: str, port: int) -> str:
        """The URL of a bridge of `backend` listening on `port` at this gateway's address."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        netloc = f"{host}:{port}"
        return f"http://{netloc}{self.path(backend, netloc)}"

    def path(self, backend: str, netloc: str) -> str:
        return f"/stdio/{backend}/{self._tag(backend, netloc)}/mcp"

    def is_bridge(self, backend: str, url: str) -> bool:
        """Whether `url` (from a session record) is a bridge of `backend` at some replica
        of this gateway: its tag was made with the same secret."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.scheme != "http" or parts.query or parts.fragment or not parts.netloc:
            return False
        expected = self.path(backend, parts.netloc)
        return hmac.compare_digest(parts.path.encode(), expected.encode())

    def allows(self, key: bytes | None) -> bool:
        """Whether a request's :data:`HEADER` value is this gateway's key."""
        return key is not None and hmac.compare_digest(key, self.key)
