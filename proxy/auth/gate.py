"""The way in when authentication is on: every request to the MCP endpoint shows an
access token, and the protected resource metadata tells clients where to get one.

The MCP authorization spec (2025-11-25, unchanged in 2026-07-28) as the gateway follows
it: OAuth 2.0 Protected Resource Metadata (RFC 9728) at
``/.well-known/oauth-protected-resource`` and, path-scoped, at
``/.well-known/oauth-protected-resource/mcp`` for an endpoint at ``/mcp``; a missing or
invalid token gets 401 with ``WWW-Authenticate: Bearer resource_metadata="…"``; a token
without the required scopes gets 403 with ``error="insufficient_scope"`` and the scopes;
only tokens issued for this resource are accepted. In the 2026-07-28 era every request
carries its token; in the handshake era too (a session id is never authentication).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import orjson

from .._types import Scope
from ..errors import InsufficientScope, Unauthorized
from ..forwarded import X_FORWARDED_HOST, X_FORWARDED_PROTO, ProxyHeaders
from ..metrics import Metrics
from .fetch import Fetcher
from .principal import Principal
from .settings import AuthSettings, secret
from .tokens import TokenRejected, TokenVerifier

if TYPE_CHECKING:
    from ..request import Request
    from ..settings import Settings

__all__ = ("METADATA_PATH", "Gate")

logger = logging.getLogger("proxy.auth")

METADATA_PATH = "/.well-known/oauth-protected-resource"
_RESOURCES_MAX = 1024  # Host values remembered (more are worked out again)
_HOST = b"host"


class Gate:
    """Authenticates requests (``authenticate``) and serves the resource's metadata."""

    def __init__(
        self, settings: Settings, auth: AuthSettings, metrics: Metrics, fetcher: Fetcher
    ) -> None:
        self.auth = auth
        self.path = settings.path
        self.metrics = metrics
        self.proxies = ProxyHeaders(settings.trusted_proxies)
        self.fetcher = fetcher
        self.verifier = TokenVerifier(auth, self.fetcher, metrics, auth.resource)
        self.required = frozenset(auth.required_scopes)
        self.servers = list(auth.authorization_servers) or [i.issuer for i in auth.issuers]
        self._resources: dict[tuple[str, bytes], str] = {}
        self.trust_forwarded = self.proxies.any_trusted
        self.leeway = auth.leeway
        self._max_header = len(b"Bearer ") + auth.max_token_size
        """The longest Authorization value whose token :meth:`known` digests (a longer
        one is refused by :meth:`authenticate`, undigested)."""

    def open(self) -> None:
        """Check that every secret reference resolves (the start fails otherwise, naming
        the reference's setting, never its value)."""
        for index, issuer in enumerate(self.auth.issuers):
            if issuer.client_secret:
                secret(issuer.client_secret, f"auth.issuers[{index}].client_secret")

    # -- the resource --------------------------------------------------------------------------

    def resource(self, scope: Scope, host: bytes | None = None) -> str:
        """The canonical URL of the MCP endpoint as clients reach it: configured, or from
        the request (its Host, `host` when already read; X-Forwarded-Proto/-Host
        believed from trusted proxies only). Worked out once per Host value."""
        if self.auth.resource:
            return self.auth.resource
        client = scope.get("client")
        if self.proxies.any_trusted and client and self.proxies.trusts(str(client[0])):
            forwarded = [
                (n, v) for n, v in scope["headers"] if n in (X_FORWARDED_PROTO, X_FORWARDED_HOST)
            ]
            if forwarded:
                return self._forwarded_resource(scope, forwarded)
        if host is None:
            host = next((v for n, v in scope["headers"] if n == _HOST), b"")
        scheme = scope.get("scheme", "http")
        key = (scheme, host)  # known() looks here first
        found = self._resources.get(key)
        if found is None:
            if len(self._resources) > _RESOURCES_MAX:
                self._resources.clear()
            found = f"{scheme}://{host.decode('latin-1').strip()}{self.path}"
            self._resources[key] = found
        return found

    def _forwarded_resource(self, scope: Scope, forwarded: list[tuple[bytes, bytes]]) -> str:
        scheme = scope.get("scheme", "http")
        host = next((v for n, v in scope["headers"] if n == _HOST), b"").decode("latin-1")
        for name, value in forwarded:
            text = value.decode("latin-1").split(",")[0].strip()
            if name == X_FORWARDED_PROTO:
                scheme = text
            else:
                host = text
        return f"{scheme}://{host.strip()}{self.path}"

    def metadata_url(self, resource: str) -> str:
        """Where the path-scoped protected resource metadata of `resource` is."""
        scheme, _, rest = resource.partition("://")
        host, slash, path = rest.partition("/")
        return f"{scheme}://{host}{METADATA_PATH}{slash}{path}"

    def metadata(self, scope: Scope) -> bytes:
        """The Protected Resource Metadata document (RFC 9728)."""
        document: dict[str, object] = {
            "resource": self.resource(scope),
            "authorization_servers": self.servers,
            "bearer_methods_supported": ["header"],
            "resource_name": "mcp-fastproxy",
        }
        if self.auth.scopes_supported:
            document["scopes_supported"] = list(self.auth.scopes_supported)
        return orjson.dumps(document)

    def metadata_paths(self) -> tuple[str, str]:
        return METADATA_PATH, METADATA_PATH + self.path

    # -- requests ------------------------------------------------------------------------------

    def known(self, request: Request) -> Principal | None:
        """The principal of the request's token when that token was accepted before, is
        still good, was accepted for this resource, and has this gateway's scopes: the
        whole check of a known token (a dict lookup; no await, no signature). None:
        :meth:`authenticate` decides.

        Every request with authentication on passes here, so it is written out in one
        body (what :func:`_bearer` does, inline): each call saved (dict lookups by
        subscript included) is a measurable share of what auth costs a request."""
        value = request.hdrs.authorization
        if value is None or len(value) > self._max_header:
            return None
        scheme, _, token = value.partition(b" ")
        if scheme != b"Bearer" and scheme.lower() != b"bearer":
            return None
        token = token.strip()
        verifier = self.verifier
        try:  # (subscripts, not .get(): a method call each, on every request)
            principal = verifier.known[token]
        except KeyError:
            return None
        expires = principal.expires
        if expires and time.time() > expires + self.leeway:
            return None
        resource = self.auth.resource
        if not resource:
            scope = request.scope
            try:
                resource = self._resources[(scope["scheme"], request.hdrs.host or b"")]
            except KeyError:
                resource = ""
            if not resource or self.trust_forwarded:
                resource = self.resource(scope, request.hdrs.host)
        if principal.audience != resource:
            return None  # accepted for another resource (another Host): checked again
        if self.required and not self.required <= principal.scopes:
            return None
        verifier.hits[0] += 1
        request.token = token
        return principal

    async def authenticate(self, request: Request) -> Principal:
        """The principal of the request's bearer token (also noted as ``request.token``);
        Unauthorized (401) or InsufficientScope (403), each with its
        ``WWW-Authenticate``."""
        token = _bearer(request.hdrs.authorization)
        resource = self.resource(request.scope, request.hdrs.host)
        if token is None:
            self.metrics.auth_outcomes.inc("missing")
            message = "Unauthorized: an access token is required"
            raise Unauthorized(message, headers=self._challenge(resource))
        try:
            principal = await self.verifier.verify(token, resource)
        except TokenRejected as exc:
            self.metrics.auth_outcomes.inc("invalid")
            logger.info("token refused: %s", exc)
            error = f'error="invalid_token", error_description="{exc}"'
            raise Unauthorized(
                f"Unauthorized: {exc}", headers=self._challenge(resource, error)
            ) from None
        missing = self.required - principal.scopes
        if missing:
            self.metrics.auth_outcomes.inc("insufficient_scope")
            needed = " ".join(sorted(self.required))
            raise InsufficientScope(
                f"Forbidden: the token lacks the scope {' '.join(sorted(missing))}",
                headers=self._challenge(resource, f'error="insufficient_scope", scope="{needed}"'),
            )
        request.token = token
        self.metrics.auth_outcomes.inc("ok")
        return principal

    def _challenge(self, resource: str, error: str = "") -> tuple[tuple[bytes, bytes], ...]:
        parts = [error] if error else []
        if not error and self.required:
            parts.append(f'scope="{" ".join(sorted(self.required))}"')
        parts.append(f'resource_metadata="{self.metadata_url(resource)}"')
        return ((b"www-authenticate", ("Bearer " + ", ".join(parts)).encode("latin-1")),)


def _bearer(value: bytes | None) -> bytes | None:
    """The bearer token of an ``Authorization`` value (raw bytes), if it holds one."""
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None
