"""The configured backends, their replicas' connection pools and health probes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from ..config import Settings
from ..metrics import Metrics
from ..stdio.peers import Peers
from ..stdio.registry import is_bridge_url
from . import eras
from .balance import Backend, Replica

logger = logging.getLogger("proxy.upstream")

ASK_AGAIN = 30.0
"""Seconds before a backend that did not say which eras it speaks is asked again."""
RECHECK_AFTER = 5.0
"""Seconds between two askings of a backend's eras after it refused a version."""
SESSION_GRACE = 30.0
"""Seconds a replica may stay unreachable without refusing connections before the
sessions it holds are given up (clients then get 404 and re-initialise)."""


class Upstreams:
    """The configured backends (each replica with its keep-alive pool) and the probe."""

    backends: dict[str, Backend]
    _settings: Settings

    def __init__(
        self,
        settings: Settings,
        running: Upstreams | None = None,
        local: Mapping[str, str] | None = None,
        peers: Peers | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`running`: the upstreams of the configuration a reload replaces; a replica
        whose URL stays (in the same backend, with the same pool settings) is kept with
        its pool, its health and its load. `local`: the replica URL of each stdio
        backend (its bridge's socket, :mod:`proxy.stdio.registry`), by name. `peers`:
        the way to the other gateway replicas' bridges (``peer_address``). `metrics`:
        where the eras each backend speaks are shown."""
        local = local or {}
        kept: dict[str, dict[str, Replica]] = {}
        if running is not None and _pools(running._settings) == _pools(settings):
            kept = {name: b.by_url for name, b in running.backends.items()}
        self.backends = {
            b.name: Backend(
                b.name,
                b.replicas or (local[b.name],),
                max_connections=settings.max_connections,
                max_streams=settings.max_streams,
                connect_timeout=settings.connect_timeout,
                pool_timeout=settings.pool_timeout,
                kept=kept.get(b.name),
            )
            for b in settings.backends
        }
        self.default = next(iter(self.backends.values()))
        self._metrics = metrics
        self._unasked = frozenset(b.name for b in settings.backends if b.credentials.kind != "none")
        """Backends that take credentials: not asked without them (``era`` says it)."""
        self._asked: dict[str, float] = {}
        self._rechecks: set[asyncio.Task[None]] = set()
        self._rechecked: dict[str, float] = {}
        """When each backend's eras were last asked (a server that cannot say is asked
        again after ``ASK_AGAIN`` seconds, not on every probe)."""
        for b in settings.backends:
            found = eras.configured(b)
            if found is not None:
                self._know(self.backends[b.name], found, "configured")
        self._local = frozenset(b.name for b in settings.backends if b.stdio is not None)
        self._peers = peers
        self.peers: dict[str, Replica] = {}
        """Other workers' bridges of stdio backends, by URL: a session whose process
        another worker (of this host, or of another replica with ``peer_address``)
        started is served by that worker's bridge."""
        self._settings = settings
        if peers is not None:
            for name in self._local:
                for replica in self.backends[name].replicas:
                    replica.peer_headers = peers.headers
        self._probe: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Upstreams {list(self.backends.values())}>"

    def replicas(self) -> list[Replica]:
        return [r for b in self.backends.values() for r in b.replicas]

    def replica_for(self, backend: str, url: str) -> Replica | None:
        """The replica of `backend` at `url` (a session's binding names it), if it is
        still configured, or, for a stdio backend, the bridge of the worker of this host
        that holds the session's process."""
        found = self.backends.get(backend)
        if found is None:
            return None
        replica = found.by_url.get(url)
        if replica is not None or backend not in self._local:
            return replica
        replica = self.peers.get(url)
        if replica is not None:
            return replica
        peers = self._peers
        if peers is not None and peers.is_bridge(backend, url):
            replica = self.peers[url] = self._replica(url)
            replica.peer_headers = peers.headers
        elif is_bridge_url(backend, url):
            replica = self.peers[url] = self._replica(url)
        return replica

    def _replica(self, url: str) -> Replica:
        """A replica with the pool settings of the configured ones."""
        settings = self._settings
        return Replica(
            url,
            max_connections=settings.max_connections,
            max_streams=settings.max_streams,
            connect_timeout=settings.connect_timeout,
            pool_timeout=settings.pool_timeout,
        )

    async def open(self) -> None:
        self._probe = asyncio.create_task(self._probe_loop(), name="proxy-probe")

    async def close(self) -> None:
        await self.retire(None, 0.0)

    async def retire(self, successor: Upstreams | None, grace: float) -> None:
        """Stop probing, and close the pools of the replicas `successor` does not keep:
        their long-lived streams at once (a GET stream of a removed backend ends; its
        client's next request gets 404), their exchanges once none is in flight or
        after `grace` seconds."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        for task in list(self._rechecks):
            task.cancel()
        if self._metrics is not None:
            names = set() if successor is None else set(successor.backends)
            for name in set(self.backends) - names:
                for era in eras.ERAS:
                    self._metrics.backend_eras.forget(name, era)
        staying = set() if successor is None else {id(r) for r in successor.replicas()}
        leaving = [r for r in self.replicas() if id(r) not in staying]
        leaving += self.peers.values()  # a successor makes its own
        try:
            for replica in leaving:
                await replica.streams.close()
            deadline = time.monotonic() + grace
            # A plain count of requests in flight: no event to wait on.
            while any(r.inflight for r in leaving) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        finally:  # cancelled (the app stops): closed all the same
            for replica in leaving:
                await replica.pool.close()

    def mark_down(self, replica: Replica, reason: str, *, gone: bool = False) -> None:
        """Skip `replica` for new work until a probe reaches it. `gone`: it refused the
        connection (nothing listens there), so the sessions it held are lost."""
        if replica.up:
            logger.warning("replica %s marked down: %s", replica.url, reason)
            replica.down_since = time.monotonic()
        replica.up = False
        replica.gone = replica.gone or gone

    @staticmethod
    def lost(replica: Replica) -> bool:
        """Whether the sessions held by `replica` are to be given up: it refused
        connections, or has not been reachable for ``SESSION_GRACE`` seconds. A replica
        that merely timed out (say, briefly overloaded) keeps its sessions until then."""
        if replica.up:
            return False
        return replica.gone or time.monotonic() - replica.down_since >= SESSION_GRACE

    def healthy(self) -> bool:
        return all(b.healthy() for b in self.backends.values())

    async def _probe_loop(self) -> None:
        """Probe every replica now and then every interval: a replica that refuses
        connections is marked down (and skipped) until it accepts them again."""
        replicas = self.replicas()
        while True:
            await asyncio.gather(*(self._probe_one(r) for r in replicas))
            unknown = [b for b in self.backends.values() if b.eras is None and self.asks(b.name)]
            await asyncio.gather(*(self._ask_eras(b) for b in unknown))
            await asyncio.sleep(self._settings.probe_interval)

    def asks(self, backend: str) -> bool:
        """Whether `backend`'s eras are asked of it (not configured, and it takes no
        credentials the question would go without)."""
        found = self.backends.get(backend)
        return (
            found is not None
            and found.era_source != "configured"
            and (backend not in self._unasked)
        )

    def recheck_eras(self, name: str) -> None:
        """`name` refused a request for the protocol version the gateway chose after its
        eras (it may have been upgraded in place): ask it again, in the background, at
        most every :data:`ASK_AGAIN` seconds; what it was known to speak holds until then."""
        backend = self.backends.get(name)
        now = time.monotonic()
        if backend is None or not self.asks(name):
            return
        if now - self._rechecked.get(name, -RECHECK_AFTER) < RECHECK_AFTER:
            return
        self._rechecked[name] = now
        task = asyncio.get_running_loop().create_task(self._ask_eras(backend, again=True))
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def _ask_eras(self, backend: Backend, again: bool = False) -> None:
        """Ask a replica of `backend` that answers as an MCP server which eras it speaks
        (:mod:`proxy.upstream.eras`); left unknown while none does. `again`: asked by
        :meth:`recheck_eras`, which keeps its own pace."""
        from ..probe import probe_eras  # noqa: PLC0415 - probe imports this package

        replica = next((r for r in backend.replicas if r.up and r.verified), None)
        now = time.monotonic()
        if replica is None:
            return
        if not again and now - self._asked.get(backend.name, -ASK_AGAIN) < ASK_AGAIN:
            return
        self._asked[backend.name] = now
        found = await probe_eras(replica, self._settings.connect_timeout)
        spoken = eras.of_versions(found.eras)
        if found.problem is None and spoken:
            self._know(backend, spoken, "probed")
            logger.info("backend %s speaks: %s", backend.name, ", ".join(sorted(spoken)))

    def _know(self, backend: Backend, spoken: frozenset[str], source: str) -> None:
        backend.eras, backend.era_source = spoken, source
        if self._metrics is not None:
            for era in eras.ERAS:
                self._metrics.backend_eras.set(backend.name, era, value=float(era in spoken))

    def _forget_eras(self, replica: Replica) -> None:
        """A replica answers again: the eras of its backend, if asked, are asked again."""
        for backend in self.backends.values():
            if replica in backend.replicas and backend.era_source == "probed":
                backend.eras, backend.era_source = None, ""
                self._asked.pop(backend.name, None)

    async def _probe_one(self, replica: Replica) -> None:
        """A replica is up when it accepts connections and, once (and again after it was
        down), when an MCP server answers there: a wrong path that serves a web page or a
        404 keeps it down, and /readyz says so."""
        host, port = replica.netloc
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                if replica.unix_path is not None:
                    _, writer = await asyncio.open_unix_connection(replica.unix_path)
                else:
                    _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            refused = isinstance(exc, ConnectionRefusedError | FileNotFoundError)
            self.mark_down(replica, f"probe failed: {exc!r}", gone=refused)
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if replica.up and replica.verified:
            return
        from ..probe import answers_mcp  # noqa: PLC0415 - probe imports this package

        problem = await answers_mcp(replica, self._settings.connect_timeout)
        if problem is not None:
            self.mark_down(replica, problem)
            replica.verified = False
            return
        replica.verified = True
        if not replica.up:
            logger.info("replica %s answers again: marked up", replica.url)
            replica.up = True
            replica.gone = False
            self._forget_eras(replica)


def _pools(settings: Settings) -> tuple[int, int, float, float]:
    """What a replica's pools are made with: when it changes, a reload makes new ones."""
    return (
        settings.max_connections,
        settings.max_streams,
        settings.connect_timeout,
        settings.pool_timeout,
    )
