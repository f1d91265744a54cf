"""The ``auth:`` section and each backend's ``credentials:``, as frozen dataclasses.

Both are read from YAML (or ``PROXY_AUTH`` / ``PROXY_BACKENDS`` holding the same as YAML or
JSON) by :func:`parse`, which maps a mapping onto a dataclass field by field, checks each
value's type and names what is wrong (``auth.issuers[0].issuer: ...``, with "did you
mean"). Secrets are never values here: a secret setting holds a reference,
``env:NAME`` or ``file:/path``, read when the gateway starts (:func:`secret`), so that
``check`` output, the settings handed to workers and every log line carry the reference
only.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = (
    "ASYMMETRIC",
    "AuditSettings",
    "AuthSettings",
    "IssuerSettings",
    "OutboundSettings",
    "PolicyRule",
    "RateLimit",
    "SettingsError",
    "parse",
    "secret",
)

ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""The signature algorithms accepted by default: public-key ones only (never ``none``,
never an HMAC whose key could be made from a public key)."""

_T = TypeVar("_T")


class SettingsError(ValueError):
    """A value of the auth or credentials settings is wrong; ``where`` names it."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where = where
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass(frozen=True, slots=True)
class IssuerSettings:
    """An authorization server whose access tokens the gateway accepts."""

    issuer: str
    """Its issuer URL; its metadata (RFC 8414, or OpenID discovery) names the JWKS."""
    jwks_uri: str = ""
    """The JWKS URL, to skip discovery."""
    audience: tuple[str, ...] = ()
    """Audiences a token must name one of (default: the gateway's ``resource``)."""
    introspection_endpoint: str = ""
    """RFC 7662 endpoint for opaque (non-JWT) tokens; none: opaque tokens are refused."""
    client_id: str = ""
    """The gateway's client id at the introspection endpoint."""
    client_secret: str = ""
    """A reference (``env:NAME``, ``file:/path``) to the introspection client's secret."""


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One rule: when its CEL expression holds for a request, its effect applies."""

    name: str
    effect: str
    """``allow`` or ``deny``."""
    when: str
    """A CEL expression over ``principal`` (``sub``, ``iss``, ``client_id``, ``scopes``,
    ``claims``) and ``request`` (``method``, ``backend``, ``name``, ``uri``,
    ``arguments``)."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests per principal (and per tool), shared by every replica on Redis."""

    requests: int = 0
    """Requests allowed per ``per`` seconds, with as much burst; 0: no limit."""
    per: float = 60.0
    per_tool: bool = False
    """Count each tool apart (``tools/call``), besides the principal's total."""
    on_store_failure: str = "open"
    """When Redis cannot be asked: ``open`` (let the request through) or ``closed`` (429)."""


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """One structured line per tool call, prompt get, resource read and denied request."""

    target: str = "off"
    """``off``, ``stdout``, ``stderr`` or a file path."""
    arguments: str = "none"
    """``none`` or ``digest`` (a SHA-256 of the call's arguments; never the arguments)."""
    queue: int = 10_000
    """Lines waiting for the writer at most; beyond, lines are dropped and counted."""


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Inbound authentication (the gateway as an OAuth 2.1 resource server) and what
    goes with it: the protected resource metadata, policy, rate limits, audit."""

    issuers: tuple[IssuerSettings, ...]
    resource: str = ""
    """The canonical URL of the MCP endpoint (``https://mcp.example.com/mcp``), advertised
    in the metadata and the default audience; empty: taken from each request (its Host,
    and X-Forwarded-Proto/-Host from trusted proxies only)."""
    authorization_servers: tuple[str, ...] = ()
    """Advertised in the metadata (default: the issuers)."""
    scopes_supported: tuple[str, ...] = ()
    required_scopes: tuple[str, ...] = ()
    """Scopes every token must carry (else 403 ``insufficient_scope``)."""
    algorithms: tuple[str, ...] = ASYMMETRIC
    leeway: float = 60.0
    """Seconds of clock difference allowed on ``exp``, ``nbf`` and ``iat``."""
    jwks_refresh: float = 30.0
    """Least seconds between two fetches of an issuer's JWKS for an unknown ``kid``."""
    http_timeout: float = 5.0
    """Seconds for a fetch from an authorization server (metadata, JWKS, introspection)."""
    max_token_size: int = 8192
    token_cache: int = 10_000
    """Verified tokens remembered (by digest, until they expire)."""
    policy_default: str = "allow"
    """What a request no rule matches gets: ``allow`` or ``deny``."""
    policy: tuple[PolicyRule, ...] = ()
    """Rules in order; the first that matches decides."""
    rate_limit: RateLimit = field(default_factory=RateLimit)
    sessions_per_principal: int = 0
    """Open sessions one principal may hold (0: no bound beyond ``max_sessions``)."""
    audit: AuditSettings = field(default_factory=AuditSettings)


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    """A backend's ``credentials``: what the gateway sends it in place of the client's.

    ``kind``: ``none`` (nothing); ``headers`` (static headers, values from references);
    ``client_credentials`` (an access token from ``token_url`` with the gateway's own
    client, cached until it expires); ``token_exchange`` (RFC 8693: the caller's token
    exchanged at ``token_url`` for one whose audience is the backend, cached per
    principal); ``per_principal`` (a secret per subject, from a JSON file or variable
    mapping subjects to secrets, sent in ``header``); ``passthrough`` (the client's own
    token, allowed with inbound authentication only when ``audience`` names what the
    backend expects: opt-in, and documented as such).
    """

    kind: str = "none"
    headers: tuple[tuple[str, str], ...] = ()
    """``headers`` kind: (name, reference) pairs; YAML: a mapping."""
    token_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    """A reference (``env:NAME``, ``file:/path``)."""
    scope: str = ""
    audience: str = ""
    resource: str = ""
    header: str = "authorization"
    """``per_principal`` kind: the header that carries the secret."""
    scheme: str = "Bearer"
    """``per_principal`` kind: the value is ``<scheme> <secret>`` (empty: the secret alone)."""
    secrets: str = ""
    """``per_principal`` kind: a reference to a JSON object mapping subjects to secrets."""


# -- reading -----------------------------------------------------------------------------------


def parse(cls: type[_T], raw: Any, where: str) -> _T:
    """`raw` (a YAML mapping, or the same as ``dataclasses.asdict`` wrote it) as a `cls`;
    SettingsError names the first wrong key or value."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise SettingsError(where, "expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(str(k) for k in raw if str(k).replace("-", "_") not in fields)
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SettingsError(
            f"{where}.{unknown[0]}", f"unknown key{hint}; known: {', '.join(fields)}"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        values[name] = _value(hints[name], value, f"{where}.{name}")
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SettingsError(f"{where}.{missing[0]}", "required")
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        args = typing.get_args(hint)
        if args == (tuple[str, str], Ellipsis):  # a mapping of names to strings
            if isinstance(value, Mapping):
                value = list(value.items())
            if not isinstance(value, list | tuple) or not all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
                for p in value
            ):
                raise SettingsError(where, "expected a mapping of names to strings")
            return tuple((str(a), str(b)) for a, b in value)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list | tuple):
            raise SettingsError(where, f"expected a list, got {value!r}")
        return tuple(_value(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (types.UnionType, typing.Union):  # pragma: no cover - none declared yet
        raise SettingsError(where, "unsupported")
    if hint is bool:
        if not isinstance(value, bool):
            raise SettingsError(where, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SettingsError(where, f"expected a whole number of 0 or more, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise SettingsError(where, f"expected a number of 0 or more, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SettingsError(where, f"expected a string, got {value!r}")
        return value
    raise SettingsError(where, f"cannot read {hint!r}")  # pragma: no cover - a new type


def secret(reference: str, where: str) -> str:
    """The secret a reference names: ``env:NAME`` (a variable) or ``file:/path`` (its
    contents, without a trailing newline). Raises SettingsError saying which reference
    is missing, never the value."""
    kind, _, name = reference.partition(":")
    if kind == "env" and name:
        value = os.environ.get(name)
        if value is None:
            raise SettingsError(where, f"the variable {name} is not set")
        return value
    if kind == "file" and name:
        try:
            return Path(name).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise SettingsError(where, f"cannot read {name}: {exc.strerror}") from None
    raise SettingsError(where, "a secret must be a reference: env:NAME or file:/path")
