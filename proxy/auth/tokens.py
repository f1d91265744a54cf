"""Access tokens checked: JWTs against their issuer's published keys, opaque tokens by
introspection (RFC 7662); what was verified is remembered until the token expires.

For a JWT: the header's ``alg`` must be one of the allowed (public-key) algorithms, the
``iss`` one of the configured issuers, whose JWKS must hold the ``kid`` (an unknown
``kid`` fetches the JWKS again, at most once per ``jwks_refresh`` seconds per issuer, so
made-up ``kid`` s cannot turn into a flood of fetches; keys already known keep working
while the issuer is down); then the signature, ``aud`` (the gateway's resource, or the
issuer's configured audiences), ``exp``, ``nbf`` and ``iat`` within ``leeway``. A token
seen before costs one dict lookup, by the token itself: the process keeps each accepted
token (as it holds every request's token while it runs) until the token expires or the
bounded cache lets it go. (A salted SHA-256 of the token as the key cost 0.75 µs more per
request, for an 800-byte token with the CPU's SHA extensions, and kept nothing from
anyone who can read the process's memory, where the tokens of the requests in flight
are anyway.) The lookup compares a token only with those of equal hash (SipHash, keyed
per process), so its timing tells nothing about a cached token.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..metrics import Metrics
from .fetch import Fetcher, FetchFailed
from .principal import Principal
from .settings import AuthSettings, IssuerSettings, secret

__all__ = ("TokenRejected", "TokenVerifier")

logger = logging.getLogger("proxy.auth")


class TokenRejected(Exception):
    """The token is not accepted; the message says why (no secret in it)."""


class IssuerKeys:
    """One issuer's signing keys: its metadata found once, its JWKS fetched when first
    needed and again for an unknown ``kid`` (at most once per ``refresh`` seconds)."""

    def __init__(
        self, settings: IssuerSettings, fetcher: Fetcher, refresh: float, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.refresh = refresh
        self.metrics = metrics
        self.jwks_uri = settings.jwks_uri
        self.introspection = settings.introspection_endpoint
        self._keys: KeySet | None = None
        self._fetched = float("-inf")
        self._fetching: asyncio.Future[None] | None = None

    async def key(self, kid: str | None) -> Any:
        """The key for `kid` (the only key, when the token names none and there is one)."""
        found = self._find(kid)
        if found is None and time.monotonic() - self._fetched >= self.refresh:
            await self._fetch()
            found = self._find(kid)
        return found

    def _find(self, kid: str | None) -> Any:
        keys = self._keys
        if keys is None:
            return None
        if kid is None:
            return keys.keys[0] if len(keys.keys) == 1 else None
        try:
            return keys.get_by_kid(kid)
        except JoseError:
            return None

    async def _fetch(self) -> None:
        """Fetch the JWKS (one fetch at a time; others wait for it)."""
        if self._fetching is not None:
            await asyncio.shield(self._fetching)
            return
        self._fetching = asyncio.get_running_loop().create_future()
        self._fetched = time.monotonic()
        issuer = self.settings.issuer
        try:
            if not self.jwks_uri:
                await self._discover()
            document = await self.fetcher.get_json(self.jwks_uri)
            self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            self.metrics.auth_jwks.inc(issuer, "ok")
        except (FetchFailed, JoseError, ValueError) as exc:
            self.metrics.auth_jwks.inc(issuer, "failed")
            logger.warning("keys of issuer %s not fetched (known keys kept): %s", issuer, exc)
        finally:
            self._fetching.set_result(None)
            self._fetching = None

    async def _discover(self) -> None:
        """The issuer's metadata: RFC 8414 (``/.well-known/oauth-authorization-server``,
        inserted before the issuer's path), else OpenID discovery."""
        issuer = self.settings.issuer.rstrip("/")
        scheme, _, rest = issuer.partition("://")
        host, slash, path = rest.partition("/")
        candidates = [
            f"{scheme}://{host}/.well-known/oauth-authorization-server{slash}{path}",
            f"{issuer}/.well-known/openid-configuration",
        ]
        problem: Exception | None = None
        for url in candidates:
            try:
                document = await self.fetcher.get_json(url)
            except FetchFailed as exc:
                problem = exc
                continue
            if isinstance(document.get("jwks_uri"), str):
                self.jwks_uri = document["jwks_uri"]
                endpoint = document.get("introspection_endpoint")
                if not self.introspection and isinstance(endpoint, str) and self.settings.client_id:
                    self.introspection = endpoint
                return
        raise FetchFailed(f"no metadata with a jwks_uri for issuer {issuer}: {problem}")


class TokenVerifier:
    """Checks access tokens; see the module docstring."""

    def __init__(
        self, settings: AuthSettings, fetcher: Fetcher, metrics: Metrics, audience: str
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.fetcher = fetcher
        self.default_audience = audience
        self.algorithms = frozenset(settings.algorithms)
        self.issuers = {
            i.issuer: IssuerKeys(i, fetcher, settings.jwks_refresh, metrics)
            for i in settings.issuers
        }
        # token -> principal (whose audience is what the token was checked against)
        self.known: dict[bytes, Principal] = {}
        self.hits = metrics.auth_token_cache.cell("hit")
        self.misses = metrics.auth_token_cache.cell("miss")

    async def verify(self, raw: bytes, audience: str | None = None) -> Principal:
        """The principal the token `raw` names, checked for `audience` (the resource URL
        of this request, when none is configured); TokenRejected otherwise."""
        if len(raw) > self.settings.max_token_size:
            raise TokenRejected("token too large")
        audience = audience or self.default_audience
        principal = self.known.get(raw)
        now = time.time()
        if principal is not None and principal.audience == audience:
            if principal.expires and now > principal.expires + self.settings.leeway:
                del self.known[raw]
                raise TokenRejected("token expired")
            self.hits[0] += 1
            return principal
        self.misses[0] += 1
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            raise TokenRejected("malformed token") from None
        if token.count(".") == 2:
            principal = await self._jwt(token, audience, now)
        else:
            principal = await self._introspect(token, audience, now)
        object.__setattr__(principal, "audience", audience)  # frozen: set once, here
        known = self.known
        if len(known) >= self.settings.token_cache:  # the oldest go first
            for old in list(known)[: max(1, len(known) // 8)]:
                del known[old]
        known[raw] = principal
        return principal

    async def _jwt(self, token: str, audience: str, now: float) -> Principal:
        try:
            parsed = jws.extract_compact(token.encode("ascii"))
            claims = orjson.loads(parsed.payload)
        except (JoseError, ValueError, UnicodeEncodeError):
            raise TokenRejected("malformed token") from None
        header = parsed.protected
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenRejected(f"signature algorithm {str(alg)[:20]!r} not accepted")
        if not isinstance(claims, dict):
            raise TokenRejected("malformed token")
        issuer = self.issuers.get(str(claims.get("iss")))
        if issuer is None:
            raise TokenRejected("token from an issuer not trusted here")
        kid = header.get("kid")
        key = await issuer.key(kid if isinstance(kid, str) else None)
        if key is None:
            raise TokenRejected("token signed with an unknown key")
        try:
            jws.deserialize_compact(token, key, algorithms=[alg])
        except (JoseError, ValueError):
            raise TokenRejected("bad signature") from None
        self._check_claims(claims, issuer.settings, audience, now)
        return _principal(claims)

    def _check_claims(
        self, claims: dict[str, Any], issuer: IssuerSettings, audience: str, now: float
    ) -> None:
        leeway = self.settings.leeway
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not isinstance(exp, int | float):
            raise TokenRejected("token without an expiry")
        if now > exp + leeway:
            raise TokenRejected("token expired")
        if isinstance(nbf, int | float) and now + leeway < nbf:
            raise TokenRejected("token not valid yet")
        if isinstance(iat, int | float) and now + leeway < iat:
            raise TokenRejected("token issued in the future")
        wanted = set(issuer.audience) or {audience}
        aud = claims.get("aud")
        given = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        if not wanted & given:
            raise TokenRejected("token for another audience")

    async def _introspect(self, token: str, audience: str, now: float) -> Principal:
        for issuer in self.issuers.values():
            if not issuer.introspection:
                if issuer.settings.client_id and issuer.jwks_uri == "":
                    await issuer.key(None)  # discovery may name the endpoint
                if not issuer.introspection:
                    continue
            settings = issuer.settings
            credentials = f"{settings.client_id}:{secret(settings.client_secret, 'auth')}"
            basic = b"Basic " + base64.b64encode(credentials.encode())
            try:
                status, answer = await self.fetcher.post_form(
                    issuer.introspection,
                    {"token": token, "token_type_hint": "access_token"},
                    [(b"authorization", basic)],
                )
            except FetchFailed as exc:
                logger.warning("introspection at %s failed: %s", settings.issuer, exc)
                continue
            if status != 200 or answer.get("active") is not True:
                continue
            answer.setdefault("iss", settings.issuer)
            if "exp" not in answer:
                answer["exp"] = now + 60  # remembered for a minute at most
            self._check_claims(answer, settings, audience, now)
            return _principal(answer)
        raise TokenRejected("token not recognised")


def _principal(claims: dict[str, Any]) -> Principal:
    scope = claims.get("scope")
    scopes = scope.split() if isinstance(scope, str) else []
    scp = claims.get("scp")
    if isinstance(scp, list):
        scopes += [s for s in scp if isinstance(s, str)]
    client = claims.get("client_id") or claims.get("azp") or ""
    exp = claims.get("exp")
    return Principal(
        issuer=str(claims.get("iss", "")),
        subject=str(claims.get("sub", "")),
        client_id=str(client),
        scopes=frozenset(scopes),
        claims=claims,
        expires=float(exp) if isinstance(exp, int | float) else 0.0,
    )
