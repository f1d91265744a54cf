"""Origin and Host validation: the spec's defence against DNS rebinding."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .config import Settings

_MAX_VERDICTS = 1024


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (never a look-alike such as 127.0.0.1.evil)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(authority: str) -> str | None:
    """Host name of an authority (``host[:port]``, ``[v6]:port``), lower-cased."""
    try:
        return urlsplit("//" + authority).hostname
    except ValueError:
        return None


class OriginGuard:
    """Decides, without I/O, whether a request's Origin and Host are acceptable.

    - Origin: allowed when absent (non-browser clients), when listed in
      ``allowed_origins`` (``*`` allows any), or — when the gateway is bound to a
      loopback address — when it names a loopback host.
    - Host: when bound to loopback, it must name a loopback host (a rebinding
      attacker's page arrives with its own domain in Host).
    """

    def __init__(self, settings: Settings) -> None:
        self.loopback = is_loopback(settings.host)
        self.any_origin = "*" in settings.allowed_origins
        self.origins = frozenset(o.rstrip("/").lower() for o in settings.allowed_origins)
        self._verdicts: dict[tuple[bytes | None, bytes | None], bool] = {}

    def origin_allowed(self, origin: bytes | None) -> bool:
        if origin is None or self.any_origin:
            return True
        text = origin.decode("latin-1").strip().rstrip("/").lower()
        if text in self.origins:
            return True
        if self.loopback:
            try:
                parts = urlsplit(text)
                name = parts.hostname
            except ValueError:
                return False
            return parts.scheme in ("http", "https") and name is not None and is_loopback(name)
        return False

    def host_allowed(self, host: bytes | None) -> bool:
        if not self.loopback:
            return True
        if host is None:
            return False
        name = _hostname(host.decode("latin-1"))
        return name is not None and is_loopback(name)

    def allows(self, origin: bytes | None, host: bytes | None) -> bool:
        key = (origin, host)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self.origin_allowed(origin) and self.host_allowed(host)
            if len(self._verdicts) >= _MAX_VERDICTS:  # bounded: clients choose these values
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict
