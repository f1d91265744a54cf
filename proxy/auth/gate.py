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
from typing import TYPE_CHECKING

import orjson

from .._types import Headers, Scope
from ..errors import InsufficientScope, Unauthorized
from ..forwarded import X_FORWARDED_HOST, X_FORWARDED_PROTO, ProxyHeaders
from ..metrics import Metrics
from .fetch import Fetcher
from .principal import Principal
from .settings import AuthSettings, secret
from .tokens import TokenRejected, TokenVerifier

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ("METADATA_PATH", "Gate")

logger = logging.getLogger("proxy.auth")

METADATA_PATH = "/.well-known/oauth-protected-resource"
_AUTHORIZATION = b"authorization"
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

    def open(self) -> None:
        """Check that every secret reference resolves (the start fails otherwise, naming
        the reference's setting, never its value)."""
        for index, issuer in enumerate(self.auth.issuers):
            if issuer.client_secret:
                secret(issuer.client_secret, f"auth.issuers[{index}].client_secret")

    # -- the resource --------------------------------------------------------------------------

    def resource(self, scope: Scope) -> str:
        """The canonical URL of the MCP endpoint as clients reach it: configured, or from
        the request (X-Forwarded-Proto/-Host believed from trusted proxies only)."""
        if self.auth.resource:
            return self.auth.resource
        scheme = scope.get("scheme", "http")
        host = ""
        forwarded: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name == _HOST:
                host = value.decode("latin-1")
            elif name in (X_FORWARDED_PROTO, X_FORWARDED_HOST):
                forwarded.setdefault(name, value)
        client = scope.get("client")
        if forwarded and client and self.proxies.trusts(str(client[0])):
            scheme = forwarded.get(X_FORWARDED_PROTO, scheme.encode()).decode("latin-1")
            host = forwarded.get(X_FORWARDED_HOST, host.encode()).decode("latin-1")
        return f"{scheme.split(',')[0].strip()}://{host.split(',')[0].strip()}{self.path}"

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

    async def authenticate(self, scope: Scope) -> tuple[Principal, str]:
        """The principal of a request's bearer token, and the token; Unauthorized (401)
        or InsufficientScope (403), each with its ``WWW-Authenticate``."""
        token = _bearer(scope["headers"])
        resource = self.resource(scope)
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
        self.metrics.auth_outcomes.inc("ok")
        return principal, token

    def _challenge(self, resource: str, error: str = "") -> tuple[tuple[bytes, bytes], ...]:
        parts = [error] if error else []
        if not error and self.required:
            parts.append(f'scope="{" ".join(sorted(self.required))}"')
        parts.append(f'resource_metadata="{self.metadata_url(resource)}"')
        return ((b"www-authenticate", ("Bearer " + ", ".join(parts)).encode("latin-1")),)


def _bearer(headers: Headers) -> str | None:
    for name, value in headers:
        if name == _AUTHORIZATION:
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
