"""The ``auth`` section and the backends' ``credentials`` checked as a whole, at start-up
and by ``mcp-fastproxy check``: every problem named by where it is, never by a secret."""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .outbound import KINDS
from .policy import compile_rules
from .settings import ASYMMETRIC, AuthSettings, OutboundSettings, SettingsError, secret

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ("check_auth", "check_secrets", "describe")

_AUDIT_TARGETS = ("off", "stdout", "stderr")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(where: str, url: str) -> None:
    """An authorization server's URL: https (http only on a loopback address)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(where, f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise SettingsError(where, f"{url!r} must use https (http only on a loopback address)")
    if parts.fragment or parts.username or parts.password:
        raise SettingsError(where, f"{url!r} must not hold a fragment or credentials")


def _reference(where: str, value: str) -> None:
    kind, _, name = value.partition(":")
    if kind not in ("env", "file") or not name:
        raise SettingsError(where, "a secret must be a reference: env:NAME or file:/path")


def check_auth(settings: Settings) -> None:
    """SettingsError for the first problem of ``auth`` or of a backend's credentials."""
    auth = settings.auth
    if auth is not None:
        _check_inbound(auth)
    for index, backend in enumerate(settings.backends):
        where = f"backends[{index}]"
        _check_outbound(f"{where}.credentials", backend.credentials, auth)
        if auth is not None and backend.forward_credentials:
            raise SettingsError(
                f"{where}.forward_credentials",
                "with auth the client's token never goes to a backend; for a backend that "
                "must see it, set credentials: {kind: passthrough, audience: ...}",
            )


def _check_inbound(auth: AuthSettings) -> None:
    if not auth.issuers:
        raise SettingsError("auth.issuers", "at least one issuer is required")
    seen: set[str] = set()
    for index, issuer in enumerate(auth.issuers):
        where = f"auth.issuers[{index}]"
        check_url(f"{where}.issuer", issuer.issuer)
        if issuer.issuer in seen:
            raise SettingsError(f"{where}.issuer", "the same issuer is listed twice")
        seen.add(issuer.issuer)
        if issuer.jwks_uri:
            check_url(f"{where}.jwks_uri", issuer.jwks_uri)
        if issuer.introspection_endpoint:
            check_url(f"{where}.introspection_endpoint", issuer.introspection_endpoint)
            if not issuer.client_id or not issuer.client_secret:
                raise SettingsError(
                    f"{where}.client_id",
                    "introspection needs the gateway's client_id and client_secret there",
                )
        if issuer.client_secret:
            _reference(f"{where}.client_secret", issuer.client_secret)
        if any(not a for a in issuer.audience):
            raise SettingsError(f"{where}.audience", "an audience must not be empty")
    if auth.resource:
        parts = urlsplit(auth.resource)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise SettingsError(
                "auth.resource",
                f"{auth.resource!r} must be the endpoint's absolute URL (https://host/mcp)",
            )
    for index, server in enumerate(auth.authorization_servers):
        check_url(f"auth.authorization_servers[{index}]", server)
    refused = [a for a in auth.algorithms if a not in ASYMMETRIC]
    if refused:
        raise SettingsError(
            "auth.algorithms",
            f"{refused[0]!r} is not accepted: only public-key algorithms "
            f"({', '.join(ASYMMETRIC)}); never none, never HMAC",
        )
    if not auth.algorithms:
        raise SettingsError("auth.algorithms", "at least one algorithm is required")
    if auth.leeway > 600:
        raise SettingsError("auth.leeway", "more than 600 seconds of clock difference")
    for key in ("jwks_refresh", "http_timeout"):
        if getattr(auth, key) <= 0:
            raise SettingsError(f"auth.{key}", "must be greater than 0")
    if auth.max_token_size < 512:
        raise SettingsError("auth.max_token_size", "must be at least 512 bytes")
    if auth.token_cache < 1:
        raise SettingsError("auth.token_cache", "must be at least 1")
    if auth.policy_default not in ("allow", "deny"):
        raise SettingsError("auth.policy_default", f"{auth.policy_default!r} is not allow or deny")
    names: set[str] = set()
    for index, rule in enumerate(auth.policy):
        if not rule.name or rule.name in names or rule.name in ("default", "unknown", "list"):
            raise SettingsError(
                f"auth.policy[{index}].name",
                f"{rule.name!r}: each rule needs a name of its own (not default, unknown or list)",
            )
        names.add(rule.name)
    compile_rules(auth.policy)
    limit = auth.rate_limit
    if limit.requests and limit.per <= 0:
        raise SettingsError("auth.rate_limit.per", "must be greater than 0")
    if limit.on_store_failure not in ("open", "closed"):
        raise SettingsError(
            "auth.rate_limit.on_store_failure", f"{limit.on_store_failure!r} is not open or closed"
        )
    audit = auth.audit
    if audit.target not in _AUDIT_TARGETS:
        folder = os.path.dirname(os.path.abspath(audit.target))
        if not os.path.isdir(folder):
            raise SettingsError("auth.audit.target", f"the folder {folder!r} does not exist")
    if audit.arguments not in ("none", "digest"):
        raise SettingsError("auth.audit.arguments", f"{audit.arguments!r} is not none or digest")
    if audit.queue < 1:
        raise SettingsError("auth.audit.queue", "must be at least 1")


def _check_outbound(where: str, outbound: OutboundSettings, auth: AuthSettings | None) -> None:
    kind = outbound.kind
    if kind not in KINDS:
        raise SettingsError(f"{where}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    if kind == "headers":
        if not outbound.headers:
            raise SettingsError(f"{where}.headers", "the headers kind needs headers")
        for name, ref in outbound.headers:
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise SettingsError(f"{where}.headers", f"{name!r} is not a header name")
            if name.lower() in ("host", "content-length", "mcp-session-id", "connection"):
                raise SettingsError(f"{where}.headers", f"{name!r} is the gateway's to set")
            _reference(f"{where}.headers.{name}", ref)
    if kind in ("client_credentials", "token_exchange"):
        if not outbound.token_url:
            raise SettingsError(f"{where}.token_url", f"the {kind} kind needs a token_url")
        check_url(f"{where}.token_url", outbound.token_url)
        if not outbound.client_id:
            raise SettingsError(f"{where}.client_id", f"the {kind} kind needs a client_id")
        if outbound.client_secret:
            _reference(f"{where}.client_secret", outbound.client_secret)
    if kind in ("token_exchange", "per_principal") and auth is None:
        raise SettingsError(
            f"{where}.kind", f"the {kind} kind needs inbound authentication (an auth section)"
        )
    if kind == "token_exchange" and not (outbound.audience or outbound.resource):
        raise SettingsError(
            f"{where}.audience", "token exchange needs the backend's audience or resource"
        )
    if kind == "per_principal":
        if not outbound.secrets:
            raise SettingsError(f"{where}.secrets", "the per_principal kind needs secrets")
        _reference(f"{where}.secrets", outbound.secrets)
        if not outbound.header or not all(c.isalnum() or c in "-_" for c in outbound.header):
            raise SettingsError(f"{where}.header", f"{outbound.header!r} is not a header name")
    if kind == "passthrough" and auth is not None and not outbound.audience:
        raise SettingsError(
            f"{where}.audience",
            "passing the client's token through, with auth on, is refused unless audience "
            "names what the backend expects (the token must have been issued for it too)",
        )


def check_secrets(settings: Settings) -> None:
    """Every secret reference resolves (SettingsError names the one that does not)."""
    auth = settings.auth
    if auth is not None:
        for index, issuer in enumerate(auth.issuers):
            if issuer.client_secret:
                secret(issuer.client_secret, f"auth.issuers[{index}].client_secret")
    if settings.peer_secret and len(secret(settings.peer_secret, "peer_secret")) < 16:
        raise SettingsError("peer_secret", "must be at least 16 characters long")
    if settings.state_secret and len(secret(settings.state_secret, "state_secret")) < 16:
        raise SettingsError("state_secret", "must be at least 16 characters long")
    for index, backend in enumerate(settings.backends):
        c = backend.credentials
        where = f"backends[{index}].credentials"
        for name, ref in c.headers:
            secret(ref, f"{where}.headers.{name}")
        if c.client_secret:
            secret(c.client_secret, f"{where}.client_secret")
        if c.secrets:
            secret(c.secrets, f"{where}.secrets")


def describe(settings: Settings) -> list[str]:
    """What ``check`` and the start-up say of identity and access (no secret in it)."""
    lines: list[str] = []
    auth = settings.auth
    if auth is not None:
        issuers = ", ".join(i.issuer for i in auth.issuers)
        lines.append(f"auth: tokens from {issuers}; resource {auth.resource or '(from Host)'}")
        if auth.policy or auth.policy_default == "deny":
            lines.append(f"policy: {len(auth.policy)} rule(s), otherwise {auth.policy_default}")
        limit = auth.rate_limit
        if limit.requests:
            tool = ", and per tool" if limit.per_tool else ""
            lines.append(
                f"rate limit: {limit.requests} per {limit.per:g}s per principal{tool} "
                f"(store down: {limit.on_store_failure})"
            )
        if auth.audit.target != "off":
            lines.append(f"audit: {auth.audit.target}")
    for backend in settings.backends:
        if backend.credentials.kind != "none":
            lines.append(f"backend {backend.name}: credentials {backend.credentials.kind}")
    return lines
