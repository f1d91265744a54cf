"""What the gateway sends each backend in place of the client's credentials.

Per backend (``credentials.kind``):

- ``none``: nothing;
- ``headers``: static headers, each value read once at start-up from its reference
  (``env:NAME``, ``file:/path``);
- ``client_credentials``: an access token of the gateway's own client at the backend's
  authorization server (``token_url``), cached until shortly before it expires;
- ``token_exchange``: RFC 8693, the caller's token exchanged at ``token_url`` for one
  whose audience (or resource) is the backend, cached per principal and backend;
- ``per_principal``: a secret per subject (a JSON object of subject → secret, from its
  reference), in ``header``; a subject without one is refused (403);
- ``passthrough``: the client's own ``Authorization`` (an explicit opt-in; with inbound
  authentication only where ``audience`` says what the backend expects).

The gateway's own requests to a backend (the federation's discovery sessions, which
serve every client) use the backend's own identity: its headers, its client credentials
token, or for ``token_exchange`` a client credentials token of the same client.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson

from .._types import Headers
from ..errors import BadGateway, NoCredentials
from ..metrics import Metrics
from .fetch import Fetcher, FetchFailed
from .principal import Principal
from .settings import OutboundSettings, SettingsError, secret

if TYPE_CHECKING:
    from ..settings import BackendSettings

__all__ = ("KINDS", "Outbound")

logger = logging.getLogger("proxy.auth")

KINDS = ("none", "headers", "client_credentials", "token_exchange", "per_principal", "passthrough")
_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a type name
_CLIENT_CREDENTIALS = {"grant_type": "client_credentials"}
_EARLY = 30.0  # a cached token is renewed this many seconds before it expires
_EXCHANGED_MAX = 10_000


class _Tokens:
    """Access tokens from one token endpoint, cached by key until shortly before expiry;
    one request per key at a time."""

    def __init__(self, settings: OutboundSettings, backend: str, fetcher: Fetcher) -> None:
        self.settings = settings
        self.backend = backend
        self.fetcher = fetcher
        self.basic = b""
        self._cache: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    def open(self, where: str) -> None:
        s = self.settings
        secret_value = secret(s.client_secret, f"{where}.client_secret") if s.client_secret else ""
        self.basic = b"Basic " + base64.b64encode(f"{s.client_id}:{secret_value}".encode())

    async def get(self, key: str, form: Mapping[str, str]) -> bytes:
        """An ``Authorization`` value (``Bearer …``) for `key`, from the cache or asked
        for with `form`."""
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            self._cache.move_to_end(key)
            return cached[0]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._ask(key, form))
            self._pending[key] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _ask(self, key: str, asked: Mapping[str, str]) -> bytes:
        s = self.settings
        form = dict(asked)
        for name in ("scope", "audience", "resource"):
            value = getattr(s, name)
            if value:
                form[name] = value
        try:
            status, answer = await self.fetcher.post_form(
                s.token_url, form, [(b"authorization", self.basic)]
            )
        except FetchFailed as exc:
            logger.warning("backend %s: no token from %s: %s", self.backend, s.token_url, exc)
            raise BadGateway(f"Bad gateway: no credentials for backend {self.backend}") from None
        token = answer.get("access_token")
        if status != 200 or not isinstance(token, str) or not token.isprintable():
            error = str(answer.get("error", f"HTTP {status}"))[:100]
            logger.warning("backend %s: token request refused: %s", self.backend, error)
            raise BadGateway(f"Bad gateway: no credentials for backend {self.backend}")
        lifetime = answer.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else 300.0
        value = b"Bearer " + token.encode("latin-1")
        self._cache[key] = (value, time.monotonic() + max(0.0, seconds - _EARLY))
        while len(self._cache) > _EXCHANGED_MAX:
            self._cache.popitem(last=False)
        return value


class _Backend:
    """One backend's outbound credentials."""

    def __init__(self, backend: BackendSettings, fetcher: Fetcher) -> None:
        self.name = backend.name
        self.settings = backend.credentials
        self.kind = backend.credentials.kind
        self.static: Headers = []
        self.tokens = (
            _Tokens(self.settings, self.name, fetcher)
            if self.kind in ("client_credentials", "token_exchange")
            else None
        )
        self.secrets: dict[str, str] = {}

    def open(self, where: str) -> None:
        s = self.settings
        if self.kind == "headers":
            self.static = [
                (name.lower().encode("latin-1"), secret(ref, f"{where}.headers.{name}").encode())
                for name, ref in s.headers
            ]
            for name, value in self.static:
                if not value.isascii() or b"\r" in value or b"\n" in value:
                    raise SettingsError(
                        f"{where}.headers.{name.decode()}", "the value is not a header value"
                    )
        elif self.kind == "per_principal":
            text = secret(s.secrets, f"{where}.secrets")
            try:
                mapping = orjson.loads(text)
            except orjson.JSONDecodeError:
                mapping = None
            if not isinstance(mapping, dict) or not all(
                isinstance(v, str) for v in mapping.values()
            ):
                raise SettingsError(
                    f"{where}.secrets", "must hold a JSON object of subjects to secrets"
                )
            self.secrets = mapping
        if self.tokens is not None:
            self.tokens.open(where)

    async def for_request(self, principal: Principal | None, token: bytes | None) -> Headers:
        kind = self.kind
        if kind == "headers":
            return self.static
        if kind == "client_credentials":
            assert self.tokens is not None  # noqa: S101 - made with the kind
            return [(b"authorization", await self.tokens.get("", _CLIENT_CREDENTIALS))]
        if kind == "token_exchange":
            assert self.tokens is not None  # noqa: S101 - made with the kind
            if principal is None or token is None:
                raise NoCredentials()
            form = {
                "grant_type": _EXCHANGE,
                "subject_token": token.decode("ascii"),  # the gate read it as ASCII
                "subject_token_type": _ACCESS_TOKEN,
            }
            return [(b"authorization", await self.tokens.get(principal.key, form))]
        if kind == "per_principal":
            key = None if principal is None else self.secrets.get(principal.subject)
            if key is None:
                raise NoCredentials()
            scheme = self.settings.scheme
            text = f"{scheme} {key}" if scheme else key
            return [(self.settings.header.lower().encode("latin-1"), text.encode("latin-1"))]
        return []

    async def for_gateway(self) -> Headers:
        """The backend's own identity, for the gateway's requests that serve every client."""
        if self.kind == "headers":
            return self.static
        if self.tokens is not None:
            return [(b"authorization", await self.tokens.get("", _CLIENT_CREDENTIALS))]
        return []


class Outbound:
    """Every backend's outbound credentials (see the module docstring)."""

    def __init__(
        self, backends: tuple[BackendSettings, ...], fetcher: Fetcher, metrics: Metrics
    ) -> None:
        self.metrics = metrics
        self.backends = {b.name: _Backend(b, fetcher) for b in backends}

    def open(self) -> None:
        """Read every secret reference; SettingsError names one that does not resolve."""
        for index, backend in enumerate(self.backends.values()):
            backend.open(f"backends[{index}].credentials")

    def kind(self, backend: str) -> str:
        found = self.backends.get(backend)
        return "none" if found is None else found.kind

    def static(self, backend: str) -> Headers:
        """The headers of a ``headers`` backend (none for the other kinds)."""
        found = self.backends.get(backend)
        return [] if found is None or found.kind != "headers" else found.static

    def passthrough(self, backend: str) -> bool:
        found = self.backends.get(backend)
        return found is not None and found.kind == "passthrough"

    def configured(self, backend: str) -> bool:
        """Whether `backend` has credentials of its own (any kind but none)."""
        found = self.backends.get(backend)
        return found is not None and found.kind != "none"

    async def headers(
        self, backend: str, principal: Principal | None, token: bytes | None
    ) -> Headers:
        """The headers to send `backend` for a request of `principal` (bearing `token`)."""
        found = self.backends.get(backend)
        if found is None or found.kind in ("none", "passthrough"):
            return []
        return await found.for_request(principal, token)

    async def gateway_headers(self, backend: str) -> Headers:
        found = self.backends.get(backend)
        if found is None:
            return []
        return await found.for_gateway()
