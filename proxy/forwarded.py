"""X-Forwarded-* toward the upstream, and who the client is, with trusted proxies.

A client can write any ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host``,
``X-Real-IP`` or ``Forwarded`` header it likes, so the gateway believes them only from a
peer listed in ``trusted_proxies`` (addresses or networks, e.g. the nginx in front):

- from any other peer they are dropped, and the gateway writes its own:
  ``X-Forwarded-For: <peer>``, ``X-Forwarded-Proto: <scheme>``,
  ``X-Forwarded-Host: <Host>``;
- from a trusted proxy the chain is kept and extended: ``X-Forwarded-For`` is every copy
  the proxy sent, joined, then ``, <peer>``; its ``X-Forwarded-Proto``, ``-Host``,
  ``X-Real-IP`` and ``Forwarded`` pass unchanged (the gateway's own values fill in what
  it left out).

:meth:`ProxyHeaders.client` names the client for per-client limits: the peer, or behind
trusted proxies the right-most address of the chain that is not one of them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from ._types import Headers

__all__ = ("FORWARDING", "ProxyHeaders")

X_FORWARDED_FOR: Final = b"x-forwarded-for"
X_FORWARDED_PROTO: Final = b"x-forwarded-proto"
X_FORWARDED_HOST: Final = b"x-forwarded-host"
X_REAL_IP: Final = b"x-real-ip"
FORWARDED: Final = b"forwarded"
FORWARDING: Final = frozenset(
    {X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_REAL_IP, FORWARDED}
)
"""Request headers the gateway writes itself (the client's copies are only believed from
a trusted proxy)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks; ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return tuple(networks)


class ProxyHeaders:
    """The forwarding headers of each request; verdicts on peers are cached."""

    __slots__ = ("_networks", "_verdicts")

    def __init__(self, trusted: Iterable[str]) -> None:
        self._networks = parse_networks(trusted)
        self._verdicts: dict[str, bool] = {}

    @property
    def any_trusted(self) -> bool:
        """Whether any proxy is trusted at all (else no forwarding header is believed)."""
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = False
            if self._networks:
                try:
                    ip = ipaddress.ip_address(address)
                except ValueError:
                    ip = None
                verdict = ip is not None and any(ip in n for n in self._networks)
            if len(self._verdicts) < 4096:
                self._verdicts[address] = verdict
        return verdict

    def headers(
        self, peer: str | None, scheme: str, host: bytes | None, sent: Headers | None
    ) -> Headers:
        """The forwarding headers for the upstream; `sent`: the client's own (None when it
        sent none, the usual case)."""
        if peer is None:  # a Unix socket or a test transport: nothing to say who it is
            return [(X_FORWARDED_PROTO, scheme.encode("latin-1"))]
        address = peer.encode("latin-1")
        out: Headers = []
        if sent and self.trusts(peer):
            chain = [v for n, v in sent if n == X_FORWARDED_FOR]
            chain.append(address)
            out.append((X_FORWARDED_FOR, b", ".join(chain)))
            kept = {n for n, _ in sent}
            out.extend((n, v) for n, v in sent if n != X_FORWARDED_FOR)
            if X_FORWARDED_PROTO not in kept:
                out.append((X_FORWARDED_PROTO, scheme.encode("latin-1")))
            if X_FORWARDED_HOST not in kept and host is not None:
                out.append((X_FORWARDED_HOST, host))
            return out
        out.append((X_FORWARDED_FOR, address))
        out.append((X_FORWARDED_PROTO, scheme.encode("latin-1")))
        if host is not None:
            out.append((X_FORWARDED_HOST, host))
        return out

    def client(self, peer: str | None, sent: Headers | None) -> str:
        """Who the client is, for per-client limits."""
        if peer is None:
            return "-"
        if not sent or not self.trusts(peer):
            return peer
        chain = [
            a.strip()
            for n, v in sent
            if n == X_FORWARDED_FOR
            for a in v.decode("latin-1").split(",")
        ]
        for address in reversed(chain):
            if address and not self.trusts(address):
                return address
        return chain[0] if chain and chain[0] else peer
