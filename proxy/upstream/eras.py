"""Which protocol eras each backend speaks: the handshake era (``initialize`` and
``Mcp-Session-Id``, 2024-11-05 to 2025-11-25) and the stateless era (2026-07-28).

A backend's ``era`` setting says it, or (``auto``, the default) the gateway asks: the
probe of :class:`proxy.upstream.registry.Upstreams` sends ``server/discover``, then
``initialize`` (as the SDKs' era detection does), to a replica that answers as an MCP
server: once per configuration (a reload asks again), and again when a replica of the
backend answers after it was down (it may have been upgraded). A local (stdio) server
speaks both through its bridge.
What was found is on ``/metrics`` (``proxy_backend_era``) and the status page.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..jsonrpc import HANDSHAKE_VERSIONS
from ..settings import BackendSettings

__all__ = (
    "ERAS",
    "HANDSHAKE",
    "HANDSHAKE_ONLY",
    "STATELESS",
    "STATELESS_ONLY",
    "configured",
    "of_versions",
)

HANDSHAKE: Final = "handshake"
STATELESS: Final = "stateless"
ERAS: Final = (HANDSHAKE, STATELESS)
HANDSHAKE_ONLY: Final = frozenset({HANDSHAKE})
"""A backend that speaks the handshake era alone (a stateless client is bridged to it)."""
STATELESS_ONLY: Final = frozenset({STATELESS})
"""A backend that speaks the stateless era alone (a handshake client is bridged to it)."""
_CONFIGURED: Final = {
    HANDSHAKE: HANDSHAKE_ONLY,
    STATELESS: STATELESS_ONLY,
    "both": frozenset(ERAS),
}


def configured(backend: BackendSettings) -> frozenset[str] | None:
    """The eras `backend` is configured to speak (a local server: both); None when they
    are to be asked."""
    if backend.stdio is not None:
        return frozenset(ERAS)
    return _CONFIGURED.get(backend.era)


def of_versions(versions: Iterable[str]) -> frozenset[str]:
    """The eras of the protocol versions a server named (``supportedVersions`` of its
    ``server/discover``, the version its ``initialize`` agreed on)."""
    handshake = {v.decode() for v in HANDSHAKE_VERSIONS}
    return frozenset(HANDSHAKE if v in handshake else STATELESS for v in versions)
