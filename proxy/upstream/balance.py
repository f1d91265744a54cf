"""Replica state and the choice of a replica: pure decisions, no I/O."""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

from .http1 import Http1Pool


class Replica:
    """One URL of a backend, with the gateway's view of its load and health."""

    __slots__ = (
        "down_since",
        "gone",
        "host_header",
        "inflight",
        "netloc",
        "peer_headers",
        "pool",
        "streams",
        "target",
        "unix_path",
        "up",
        "url",
        "verified",
    )

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 512,
        max_streams: int = 512,
        connect_timeout: float = 5.0,
        pool_timeout: float = 10.0,
    ):
        parts = urlsplit(url)
        self.url = url
        # http+unix://<quoted socket path>/mcp: a local server of the gateway's own (a stdio
        # backend's bridge, proxy.stdio.bridge), on a Unix socket.
        self.unix_path = unquote(parts.netloc) if parts.scheme == "http+unix" else None
        default_port = 443 if parts.scheme == "https" else 80
        if self.unix_path is not None:
            self.netloc = (self.unix_path, 0)
            self.host_header = b"localhost"
        else:
            self.netloc = (parts.hostname or "", parts.port or default_port)
            # The Host the upstream expects: its own authority, not the gateway's.
            self.host_header = parts.netloc.rpartition("@")[2].encode("ascii")
        # The request target: path and query, as sent on the request line.
        target = parts.path or "/"
        self.target = (target + ("?" + parts.query if parts.query else "")).encode("ascii")
        tls = ssl.create_default_context() if parts.scheme == "https" else None
        # Request/response exchanges, and apart from them the long-lived streams (GET
        # streams, listens), so that held-open streams can never starve the exchanges.
        self.pool = Http1Pool(
            self.netloc[0],
            self.netloc[1],
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            pool_timeout=pool_timeout,
            ssl_context=tls,
            unix_path=self.unix_path,
        )
        self.streams = Http1Pool(
            self.netloc[0],
            self.netloc[1],
            max_connections=max_streams,
            connect_timeout=connect_timeout,
            pool_timeout=pool_timeout,
            ssl_context=tls,
            unix_path=self.unix_path,
        )
        self.inflight = 0
        self.up = True
        self.gone = False  # down because it refused connections: nothing listens there
        self.down_since = 0.0  # monotonic time it was marked down
        self.verified = False  # an MCP server answered there (since it was last down)
        # Sent with every request: another gateway replica's key, where the replica is a
        # local server's bridge reached over the network (proxy.stdio.peers).
        self.peer_headers: tuple[tuple[bytes, bytes], ...] = ()

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<Replica {self.url} {state} inflight={self.inflight}>"


class Backend:
    """A named upstream MCP server and its replicas."""

    __slots__ = ("_next", "by_url", "era_source", "eras", "name", "replicas")

    def __init__(
        self,
        name: str,
        urls: Sequence[str],
        *,
        max_connections: int = 512,
        max_streams: int = 512,
        connect_timeout: float = 5.0,
        pool_timeout: float = 10.0,
        kept: Mapping[str, Replica] | None = None,
    ) -> None:
        """`kept`: replicas of the running configuration to go on with, by URL (a
        reload keeps their pools, health and load)."""
        self.name = name
        kept = kept or {}
        self.replicas = tuple(
            kept.get(u)
            or Replica(
                u,
                max_connections=max_connections,
                max_streams=max_streams,
                connect_timeout=connect_timeout,
                pool_timeout=pool_timeout,
            )
            for u in urls
        )
        self.by_url = {r.url: r for r in self.replicas}
        self._next = 0
        self.eras: frozenset[str] | None = None
        """The protocol eras it speaks (:mod:`proxy.upstream.eras`); None: not known yet."""
        self.era_source = ""
        """How they are known: ``configured`` or ``probed`` (empty: not yet)."""

    def __repr__(self) -> str:
        return f"<Backend {self.name} {list(self.replicas)}>"

    def choose(self) -> Replica | None:
        """The healthy replica with the fewest requests in flight; ties rotate."""
        replicas = self.replicas
        n = len(replicas)
        if n == 1:
            only = replicas[0]
            return only if only.up else None
        start = self._next
        self._next = (start + 1) % n
        best: Replica | None = None
        for i in range(n):
            replica = replicas[(start + i) % n]
            if replica.up and (best is None or replica.inflight < best.inflight):
                best = replica
        return best

    def healthy(self) -> bool:
        return any(r.up for r in self.replicas)
