"""The Redis store's invalidation feed: what keeps the in-process cache of session
records safe to serve.

Every change to a session is published on ``<prefix>invalidate`` (from inside the script
that makes it, on the node that holds the key); the feed subscribes and evicts. The
cache serves only while the subscription is confirmed live (heartbeats), and is flushed
and bypassed otherwise. On a cluster the feed subscribes to every node directly, and a
change of the cluster's nodes flushes the cache within a second. The store's own events
channel (``<prefix>events``) is heard on the same subscription and handed to listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .cache import HEARTBEAT_INTERVAL, SessionCache
from .redis_clients import REDIS_ERRORS, RedisClients

__all__ = ("InvalidationFeed", "cancel")

log = logging.getLogger("proxy.sessions.redis")

# Resubscription after a lost subscription: first delay, doubling up to the last.
_RESUBSCRIBE_DELAYS = (0.05, 1.0)
# A subscription unheard for this long is dropped and made anew (a silently dead link).
_SILENCE_LIMIT = 5.0
# Cluster: how often the feed compares the cluster's nodes with the ones it listens to.
_TOPOLOGY_CHECK = 1.0
# CLUSTER NODES flags of nodes that cannot take writes nor be subscribed to.
_GONE_FLAGS = frozenset({"fail", "noaddr", "handshake"})


class _TopologyChanged(Exception):
    """The cluster's nodes differ from those the invalidation feed listens to."""


class _Round:
    """One attempt at the invalidation feed: a subscription per node, all live or none."""

    def __init__(self, size: int, cache: SessionCache, on_live: Callable[[], None]) -> None:
        self.cache = cache
        self.on_live = on_live
        self.confirmed: set[int] = set()
        self.heard = [cache.clock()] * size
        self.stopped = False

    def hear(self, index: int, confirmation: bool) -> None:
        self.heard[index] = self.cache.clock()
        if confirmation:
            self.confirmed.add(index)
            if len(self.confirmed) == len(self.heard):
                self.cache.subscribed()  # flushes whatever was missed before
                self.on_live()
        elif len(self.confirmed) == len(self.heard):
            self.cache.heard(min(self.heard))


class InvalidationFeed:
    """Keeps the subscriptions up while the store is open (:meth:`run`), evicting what
    they announce from `cache` and handing the events channel's messages to `listeners`.

    :param clients: makes the subscription clients; ``data``: the store's data client
        (for the cluster's nodes); ``channel``, ``events``: the two channels' names.
    """

    def __init__(
        self,
        clients: RedisClients,
        data: Callable[[], Any],
        cache: SessionCache,
        channel: str,
        events: str,
        listeners: list[Callable[[str], None]],
    ) -> None:
        self._clients = clients
        self._data = data
        self.cache = cache
        self._channel = channel
        self._events = events
        self._invalidations = {channel, channel.encode()}  # as delivered
        self.event_listeners = listeners
        self._closing = False
        self._feed_delay = _RESUBSCRIBE_DELAYS[0]

    def close(self) -> None:
        """Ask :meth:`run` to end (it also checks this: a cancellation can be swallowed
        inside redis-py's read timeouts)."""
        self._closing = True

    async def run(self) -> None:
        """Keep the invalidation subscriptions up; evict what they announce."""
        self._closing = False
        while not self._closing:
            clients: list[aioredis.Redis] = []
            try:
                clients, nodes = await self._feed_clients()
                await self._follow(clients, nodes)
            except (*REDIS_ERRORS, _TopologyChanged) as exc:
                if self.cache.live():
                    log.warning("session cache bypassed: invalidation feed lost (%s)", exc)
            finally:
                self.cache.unsubscribed()
                for client in clients:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await client.aclose()
            await asyncio.sleep(self._feed_delay)
            self._feed_delay = min(self._feed_delay * 2, _RESUBSCRIBE_DELAYS[1])

    async def _feed_clients(self) -> tuple[list[aioredis.Redis], frozenset[tuple[str, int]]]:
        """The clients to subscribe through, and (cluster) the nodes they stand for."""
        if self._clients.target.shape != "cluster":
            client = self._clients.client(feed=True)
            assert isinstance(client, aioredis.Redis)  # noqa: S101 - not a cluster
            return [client], frozenset()
        nodes = await self._cluster_nodes()
        return [self._clients.node_client(host, port) for host, port in sorted(nodes)], nodes

    async def _cluster_nodes(self) -> frozenset[tuple[str, int]]:
        """Every node of the cluster that can be reached in principle (masters and
        replicas: a replica may be promoted at any moment)."""
        cluster = self._data()
        assert isinstance(cluster, RedisCluster)  # noqa: S101 - cluster shape only
        nodes: dict[str, Any] = await cluster.cluster_nodes()
        out: set[tuple[str, int]] = set()
        for address, info in nodes.items():
            flags = set(str(info.get("flags", "")).split(","))
            if flags & _GONE_FLAGS:
                continue
            host, _, port = address.rpartition(":")
            out.add((host, int(port.partition("@")[0])))
        if not out:
            raise _TopologyChanged("no reachable cluster node")
        return frozenset(out)

    async def _follow(
        self, clients: list[aioredis.Redis], nodes: frozenset[tuple[str, int]]
    ) -> None:
        """Run one subscription per client until one fails (it raises) or we close."""

        def live() -> None:
            self._feed_delay = _RESUBSCRIBE_DELAYS[0]

        attempt = _Round(len(clients), self.cache, live)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._subscribe(c, i, attempt)) for i, c in enumerate(clients)]
        if nodes:
            tasks.append(loop.create_task(self._watch_topology(nodes, attempt)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises what ended it
        finally:
            attempt.stopped = True
            self.cache.unsubscribed()
            await cancel(tasks)

    async def _subscribe(self, client: aioredis.Redis, index: int, attempt: _Round) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel, self._events)
            next_ping = 0.0
            heard = self.cache.clock()
            while not (self._closing or attempt.stopped):
                now = self.cache.clock()
                if now - heard > _SILENCE_LIMIT:
                    raise TimeoutError(f"no answer on the subscription for {now - heard:.1f}s")
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + HEARTBEAT_INTERVAL
                message = await pubsub.get_message(timeout=max(0.0, next_ping - now))
                if message is None:
                    continue
                # Anything received proves the link; the heartbeat's answer is
                # "PONG" or ["pong", ""], depending on the protocol version.
                heard = self.cache.clock()
                kind = message["type"]
                ours = message.get("channel") in self._invalidations
                if kind == "message" and ours:
                    self.cache.invalidate(message["data"])
                elif kind == "message" and index == 0:  # events: heard once, on one feed
                    data = message["data"]
                    for listener in list(self.event_listeners):
                        listener(data.decode() if isinstance(data, bytes) else data)
                attempt.hear(index, kind == "subscribe" and ours)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    async def _watch_topology(self, nodes: frozenset[tuple[str, int]], attempt: _Round) -> None:
        while not (self._closing or attempt.stopped):
            await asyncio.sleep(_TOPOLOGY_CHECK)
            now = await self._cluster_nodes()
            if now != nodes:
                raise _TopologyChanged(f"cluster nodes changed: {sorted(now)}")


async def cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and await tasks; a task that swallows its cancellation is asked again."""
    while tasks:
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=0.5)
        tasks = list(pending)
