"""The stateless era through the federation: ``server/discover`` and the lists fanned out
to every backend with the caller's own request, and merged (2026-07-28).

Nothing of them is cached by the gateway: a result may be private to its caller. The
merged result carries the strictest caching terms of its parts.

A backend known to speak the handshake era alone (:mod:`proxy.upstream.eras`) is bridged:
its part comes from the gateway's discovery session with it (:mod:`proxy.bridging` serves
the requests routed to it). One not known yet that answers the modern request with "I
don't speak that era" (HTTP 400, 404 or 405, or method not found: what handshake-only
servers answer) is not a failing backend: ``server/discover`` then names only the
versions every backend speaks, handshake ones for it, so that a client falls back to
``initialize`` and the federation serves it whole in the handshake era, as the same
client does direct against such a server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from .. import jsonrpc as rpc
from ..auth.access import CallerCredentials
from ..errors import GatewayError
from ..metrics import Metrics
from ..modern import MODERN_VERSION, NOT_CACHED, declared_capabilities, discovered
from ..upstream.balance import Backend
from ..upstream.eras import HANDSHAKE_ONLY
from . import wire
from .backends import BackendSessions
from .catalog import GATEWAY_INFO, Catalog
from .messages import cache_terms, meta_version
from .names import LIST_KEYS

if TYPE_CHECKING:
    from ..config import Settings
    from ..jsonrpc import Envelope
    from ..tracing import Span, Tracing
    from ..upstream.registry import Upstreams

__all__ = ("FanOut",)

logger = logging.getLogger("proxy.federation")


class FanOut:
    """``server/discover`` and the lists of the stateless era, asked of every backend."""

    def __init__(
        self,
        settings: Settings,
        upstreams: Upstreams,
        catalog: Catalog,
        backends: BackendSessions,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        self.tracing = tracing
        self.upstreams = upstreams
        self.catalog = catalog
        self.namespace = catalog.namespace
        self.backends = backends
        self.metrics = metrics
        self.list_timeout = settings.list_timeout
        self.max_answer = settings.max_answer_size

    async def result(
        self,
        caller: CallerCredentials,
        method: str,
        body: bytes,
        traced: tuple[Span, Envelope] | None = None,
    ) -> dict[str, Any]:
        """The merged result of `method` (``server/discover`` or a list); with tracing
        (`traced`: the request's span and envelope), each backend's exchange is a client
        span under the request's."""
        answers, handshake_only = await self._ask_all(caller, body, traced)
        if method == "server/discover":
            return self._discovered(answers, handshake_only)
        return self._merged_list(method, answers)

    async def _ask_all(
        self, caller: CallerCredentials, body: bytes, traced: tuple[Span, Envelope] | None
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """`body` (a stateless request) sent to one replica of every backend: their
        results, by backend, from those that answered within the list timeout; and the
        backends that answered that they speak only the handshake era."""
        message = orjson.loads(body)
        params = message.get("params") if isinstance(message.get("params"), dict) else None
        method = str(message["method"])
        tracing = self.tracing if traced is not None else None

        handshake_only: set[str] = set()

        async def ask(name: str, backend: Backend) -> tuple[str, dict[str, Any] | None]:
            if backend.eras == HANDSHAKE_ONLY:  # known: answered from its catalog
                return name, await self._bridged(name, method, declared_capabilities(params or {}))
            replica = backend.choose()
            if replica is None:
                return name, None
            span = None
            try:
                extra = await self.backends.credentials(name, caller)
                if tracing is not None and traced is not None:
                    span, carried = tracing.client_span(*traced, replica, name)
                    extra = [*extra, *carried]
                answer = await wire.call(
                    replica,
                    method,
                    params,
                    session_id=None,
                    protocol_version=meta_version(message),
                    limit=self.list_timeout,
                    method_header=True,
                    extra=extra,
                    max_answer=self.max_answer,
                )
                if span is not None:
                    span.status = 200
            except GatewayError as exc:  # no credentials for this backend: left out
                logger.warning("backend %s: %s left out: %s", name, method, exc.message)
                return name, None
            except wire.CallFailed as exc:
                if span is not None:
                    span.status = exc.status or 0
                    span.error = "left_out"
                if refuses_the_era(exc):
                    handshake_only.add(name)
                    logger.info("backend %s speaks only the handshake era (%s)", name, exc)
                    return name, None
                self.metrics.backend_errors.inc(name, "list")
                logger.warning("backend %s: %s left out: %s", name, method, exc)
                return name, None
            finally:
                if span is not None:
                    span.end()
            return name, answer.result if isinstance(answer.result, dict) else None

        asked = await asyncio.gather(
            *(ask(name, backend) for name, backend in self.upstreams.backends.items())
        )
        return {name: result for name, result in asked if result is not None}, handshake_only

    async def _bridged(
        self, name: str, method: str, capabilities: dict[str, Any]
    ) -> dict[str, Any] | None:
        """`method`'s result for a backend of the handshake era alone, from the gateway's
        discovery session with it: what a stateless client is bridged to
        (:mod:`proxy.bridging`), with what the client declared (a server may list some
        tools only to clients that can answer it). Its terms: private, not to be kept (it
        promised none)."""
        view = self.catalog.view(name, capabilities)
        try:
            async with asyncio.timeout(self.list_timeout):
                if method == "server/discover":
                    await view.session()
                    result = discovered(view.info or {})
                    versions = {MODERN_VERSION, *self._handshake_versions(name)}
                    result["supportedVersions"] = sorted(versions)
                    return result
                items = view.cached(method)
                if items is None:
                    items = await asyncio.shield(view.fetch(method, self.metrics))
                return {LIST_KEYS[method]: items, **NOT_CACHED}
        except (TimeoutError, wire.CallFailed) as exc:
            logger.warning("backend %s: %s left out: %s", name, method, exc)
            return None

    def _discovered(
        self, answers: dict[str, dict[str, Any]], handshake_only: set[str]
    ) -> dict[str, Any]:
        """server/discover of the federation: the versions every answering backend
        supports (so that whichever backend a request reaches speaks the version the
        client chose; a handshake-only backend speaks its handshake versions), the
        capabilities merged, never cached by the client beyond the strictest backend's
        terms."""
        offers = [
            {v for v in result.get("supportedVersions", ()) if isinstance(v, str)}
            for result in answers.values()
        ]
        offers += [self._handshake_versions(name) for name in handshake_only]
        versions: set[str] | None = None
        for offered in offers:
            versions = offered if versions is None else versions & offered
        caps = self.catalog.capabilities()
        for result in answers.values():
            backend_caps = result.get("capabilities")
            if isinstance(backend_caps, dict):
                for key in ("logging", "completions"):
                    if key in backend_caps:
                        caps[key] = {}
        return {
            "supportedVersions": sorted(versions or ()),
            "capabilities": caps,
            **cache_terms(answers.values()),
            "resultType": "complete",
            "_meta": {"io.modelcontextprotocol/serverInfo": GATEWAY_INFO},
        }

    def _handshake_versions(self, backend: str) -> set[str]:
        """The handshake versions a backend speaks: the one its discovery session agreed
        on (and the older ones), or all of them when that is not known yet."""
        known = sorted(v.decode() for v in rpc.HANDSHAKE_VERSIONS)
        info = self.catalog.backends[backend].info
        agreed = None if info is None else info.get("protocolVersion")
        if isinstance(agreed, str) and agreed in known:
            return set(known[: known.index(agreed) + 1])
        return set(known)

    def _merged_list(self, method: str, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        key = LIST_KEYS[method]
        lists = {
            name: [i for i in answers[name].get(key, ()) if isinstance(i, dict)]
            for name in self.upstreams.backends
            if name in answers
        }
        merged, collisions = self.namespace.merge(method, lists)
        for problem in collisions:
            logger.warning("name collision: %s", problem)
        return {key: merged, **cache_terms(answers.values()), "resultType": "complete"}


def refuses_the_era(failure: wire.CallFailed) -> bool:
    """Whether a backend's answer to a 2026-07-28 request says it does not speak that era
    (what handshake-only servers answer: HTTP 400, 404 or 405, or method not found)."""
    return failure.status in (400, 404, 405) or failure.code == rpc.METHOD_NOT_FOUND
