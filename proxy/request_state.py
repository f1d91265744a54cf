"""The ``requestState`` the gateway gives a stateless client with an InputRequiredResult
(:mod:`proxy.bridging`), sealed so that only a gateway holding the key can read it back.

A state is ``v1.<payload>.<mac>``: the payload is JSON in URL-safe base64, the MAC an
HMAC-SHA256 of it under the key. The key is ``state_secret`` when configured (every
replica that shares it accepts the state); otherwise one made at random for this gateway's
run and shared by its workers through a file only they read (``PROXY_STATE_KEY_FILE``).
A state names when it lapses; one that is altered, lapsed or sealed under another key is
refused, and the refusal never says which."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    from .config import Settings

__all__ = ("KEY_FILE_ENV", "Seal", "write_key_file")

KEY_FILE_ENV: Final = "PROXY_STATE_KEY_FILE"
"""Where a gateway's workers find the key made for its run (no ``state_secret``)."""
LIFETIME: Final = 3600.0
"""Seconds a sealed state stays good: a person may take a while to answer."""
_VERSION: Final = "v1"


class Seal:
    """Seals and opens request states under one key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"mcp-fastproxy request state\0" + key).digest()

    @classmethod
    def from_settings(cls, settings: Settings) -> Seal:
        if settings.state_secret:
            from .auth.settings import secret  # noqa: PLC0415 - auth is optional here

            return cls(secret(settings.state_secret, "state_secret").encode())
        path = os.environ.get(KEY_FILE_ENV)
        if path:
            try:
                return cls(Path(path).read_bytes())
            except OSError:
                pass
        return cls(secrets.token_bytes(32))

    def seal(self, payload: dict[str, Any], now: float | None = None) -> str:
        """`payload` sealed, good for :data:`LIFETIME` seconds."""
        stamped = {**payload, "exp": int((time.time() if now is None else now) + LIFETIME)}
        body = _b64(orjson.dumps(stamped))
        return f"{_VERSION}.{body}.{_b64(self._mac(body))}"

    def open(self, state: object, now: float | None = None) -> dict[str, Any] | None:
        """What `state` holds, or None: not one of ours, altered, or lapsed."""
        if not isinstance(state, str) or len(state) > 1 << 20:
            return None
        version, _, rest = state.partition(".")
        body, _, mac = rest.partition(".")
        if version != _VERSION or not body or not mac:
            return None
        try:
            given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
            if not hmac.compare_digest(given, self._mac(body)):
                return None
            payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError):
            return None
        expires = payload.get("exp") if isinstance(payload, dict) else None
        if not isinstance(expires, int) or expires < (time.time() if now is None else now):
            return None
        return payload  # type: ignore[no-any-return]

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()


def write_key_file(directory: Path) -> Path:
    """A key for this run's workers, in a file only this user reads."""
    path = directory / "state.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
