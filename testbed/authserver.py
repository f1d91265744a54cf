"""A real OAuth 2.1 / OpenID Connect authorization server for the gateway's tests:
node-oidc-provider (``testbed/node/authserver.mjs``, pinned in ``testbed/node/package.json``)
on a free loopback port, and typed methods to drive it over HTTP.

What it issues: JWT access tokens (``typ`` ``at+jwt``, RS256 by default) whose ``aud`` is
the RFC 8707 ``resource`` asked for (any loopback ``http(s)`` URL), by client credentials,
authorization code + PKCE (login and consent automated here, no browser), refresh, and
RFC 8693 token exchange; open dynamic client registration. Test-only endpoints on the
same port rotate the signing keys and sign arbitrary claims with the real keys, for
negative tests. Keys, settings and registered clients outlive :meth:`AuthServer.stop` /
:meth:`AuthServer.start`, as a real provider's would (sessions, codes and refresh tokens
do not: they live in the process).

The official MCP SDK client's OAuth flow (401, protected resource metadata, RFC 8414
metadata, dynamic registration, code + PKCE, token for the resource) runs against it with
:func:`sdk_oauth_provider` (or :func:`sdk_oauth_handlers` for one's own provider)::

    with AuthServer() as server:  # the gateway's resource metadata names server.issuer
        auth = sdk_oauth_provider(server, gateway_mcp_url)
        async with httpx2.AsyncClient(auth=auth) as http:
            async with streamable_http_client(gateway_mcp_url, http_client=http) as streams:
                ...
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import anyio.to_thread
import httpx
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from testbed import node
from testbed.processes import StartupError, free_port, running

__all__ = (
    "DEFAULT_SCOPES",
    "EXCHANGE_GRANT",
    "SDK_REDIRECT_URI",
    "AuthServer",
    "AuthServerError",
    "Authorization",
    "MemoryTokenStorage",
    "OAuthClient",
    "auth_server",
    "claims_of",
    "header_of",
    "pkce_pair",
    "sdk_oauth_handlers",
    "sdk_oauth_provider",
)

SCRIPT: Final = node.NODE_DIR / "authserver.mjs"
DEFAULT_SCOPES: Final = ("mcp:tools", "mcp:admin")
"""Resource scopes the server knows (besides ``openid`` and ``offline_access``)."""
EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
PUBLIC_REDIRECT_URI: Final = "http://127.0.0.1/callback"
"""The pre-registered public client's redirect URI (a native client's loopback URI: any
port is accepted too, RFC 8252). Nothing listens there: the flow stops at the redirect."""
SDK_REDIRECT_URI: Final = "http://127.0.0.1/sdk-callback"
"""The redirect URI an SDK client registers by default in :func:`sdk_oauth_provider`."""
_TIMEOUT: Final = 10.0
_MAX_STEPS: Final = 20


class AuthServerError(RuntimeError):
    """The authorization server refused a request, or a flow went somewhere unexpected."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class OAuthClient:
    """A client registered at the server (statically, or by :meth:`AuthServer.register`)."""

    client_id: str
    client_secret: str | None = None
    redirect_uri: str | None = None

    @property
    def auth(self) -> tuple[str, str] | None:
        """HTTP Basic credentials (``client_secret_basic``), None for a public client."""
        return None if self.client_secret is None else (self.client_id, self.client_secret)


@dataclass(frozen=True)
class Authorization:
    """Where the authorization endpoint finally sent the user agent: the redirect URI with
    a ``code`` (and ``state``, RFC 9207 ``iss``), or with an ``error``."""

    redirect_url: str
    code: str | None
    state: str | None
    iss: str | None
    error: str | None
    error_description: str | None

    @classmethod
    def from_redirect(cls, url: str) -> Authorization:
        query = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}
        return cls(
            redirect_url=url,
            code=query.get("code"),
            state=query.get("state"),
            iss=query.get("iss"),
            error=query.get("error"),
            error_description=query.get("error_description"),
        )


def pkce_pair() -> tuple[str, str]:
    """A PKCE ``(code_verifier, code_challenge)`` for the S256 method (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's claims, NOT verified (for looking; verify with the JWKS where it matters)."""
    return _segment(token, 1)


def header_of(token: str) -> dict[str, Any]:
    """A JWT's protected header, not verified."""
    return _segment(token, 0)


def _answer(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON body of a 2xx answer; AuthServerError (with the server's error) otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if not response.is_success or not isinstance(body, dict):
        detail = body if isinstance(body, str) else json.dumps(body)
        raise AuthServerError(
            f"{what}: HTTP {response.status_code}: {detail[:500]}",
            status=response.status_code,
            body=body,
        )
    return body


class AuthServer:
    """node-oidc-provider on ``127.0.0.1:port``, started on entering (or :meth:`start`).

    Pre-registered clients: :attr:`confidential` (``client_secret_basic``; client
    credentials and token exchange) and :attr:`public` (no secret; authorization code +
    PKCE, refresh, redirect URI :data:`PUBLIC_REDIRECT_URI`).

    `scopes` are the resource scopes (a token for a resource carries those asked for);
    `access_token_ttl` the lifetime of access tokens in seconds (also :meth:`configure`);
    `access_token_alg` the algorithm they are signed with (``RS256``, or ``ES256``: both
    keys exist from the start; others after :meth:`rotate_keys` with that alg);
    `resource_pattern` a JavaScript regular expression for acceptable resources (default:
    any loopback http(s) URL); `default_resource` the resource of a request naming none
    (else such a request gets an opaque token, usable only at the userinfo endpoint);
    `log` a file for the server's stderr (oidc-provider's warnings, server errors), which
    is printed anyway when it fails to start.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        access_token_ttl: int = 300,
        access_token_alg: str = "RS256",  # noqa: S107 - an algorithm name
        resource_pattern: str | None = None,
        default_resource: str | None = None,
        timeout: float = 30.0,
        log: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.scopes = scopes
        self.timeout = timeout
        self.log = log
        self.confidential = OAuthClient("mcp-service", secrets.token_urlsafe(24))
        self.public = OAuthClient("mcp-public", None, PUBLIC_REDIRECT_URI)
        self._config: dict[str, Any] = {
            "scopes": list(scopes),
            "accessTokenTtl": access_token_ttl,
            "accessTokenAlg": access_token_alg,
            "defaultResource": default_resource,
            "clients": [
                {
                    "client_id": self.confidential.client_id,
                    "client_secret": self.confidential.client_secret,
                    "token_endpoint_auth_method": "client_secret_basic",
                    "grant_types": ["client_credentials", EXCHANGE_GRANT],
                    "response_types": [],
                    "redirect_uris": [],
                },
                {
                    "client_id": self.public.client_id,
                    "token_endpoint_auth_method": "none",
                    "application_type": "native",
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "redirect_uris": [PUBLIC_REDIRECT_URI],
                },
            ],
        }
        if resource_pattern is not None:
            self._config["resourcePattern"] = resource_pattern
        self._state_dir: Path | None = None
        self._process: ExitStack | None = None
        self._pid: int | None = None
        self._metadata: dict[str, Any] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def issuer(self) -> str:
        """The issuer identifier, ``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The Node process's id while running."""
        return self._pid

    def start(self) -> None:
        """Start the server (again, after :meth:`stop`: same port, keys and clients)."""
        if self._process is not None:
            return
        _ensure_installed()
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="authserver-"))
        config = self._state_dir / "config.json"
        config.write_text(json.dumps({**self._config, "stateDir": str(self._state_dir)}))
        cmd = [node.node(), str(SCRIPT), "--port", str(self.port), "--config", str(config)]
        stack = ExitStack()
        proc = stack.enter_context(
            running(cmd, f"{self.issuer}/__test__/health", timeout=self.timeout, log=self.log)
        )
        self._process, self._pid, self._metadata = stack, proc.pid, None

    def stop(self) -> None:
        """Stop the server (SIGTERM); :meth:`start` brings it back on the same port."""
        stack, self._process, self._pid = self._process, None, None
        if stack is not None:
            stack.close()

    def close(self) -> None:
        """Stop the server and forget its state (keys, registered clients)."""
        self.stop()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ metadata

    def metadata(self, well_known: str = "openid-configuration") -> dict[str, Any]:
        """``/.well-known/<well_known>`` (``oauth-authorization-server``: RFC 8414)."""
        response = httpx.get(f"{self.issuer}/.well-known/{well_known}", timeout=_TIMEOUT)
        return _answer(response, f"GET /.well-known/{well_known}")

    def endpoint(self, name: str) -> str:
        """An endpoint from the discovery document, e.g. ``token_endpoint``."""
        if self._metadata is None:
            self._metadata = self.metadata()
        value = self._metadata.get(name)
        if not isinstance(value, str):
            raise AuthServerError(f"the discovery document has no {name}")
        return value

    def jwks(self) -> dict[str, Any]:
        """The published JSON Web Key Set (``jwks_uri``)."""
        return _answer(httpx.get(self.endpoint("jwks_uri"), timeout=_TIMEOUT), "GET jwks_uri")

    # ------------------------------------------------------------------ tokens

    def token_request(
        self, form: Mapping[str, str], client: OAuthClient | None = None
    ) -> httpx.Response:
        """POST `form` to the token endpoint as `client` (Basic auth when it has a secret,
        else its ``client_id`` in the form); the raw response, for negative tests."""
        data = dict(form)
        if client is not None and client.client_secret is None:
            data.setdefault("client_id", client.client_id)
        return httpx.post(
            self.endpoint("token_endpoint"),
            data=data,
            auth=None if client is None else client.auth,
            timeout=_TIMEOUT,
        )

    def token_response(
        self, form: Mapping[str, str], client: OAuthClient | None = None
    ) -> dict[str, Any]:
        """The token endpoint's JSON answer; AuthServerError with its error otherwise."""
        return _answer(self.token_request(form, client), f"{form.get('grant_type')} token request")

    def _scope(self, scope: str | None) -> str:
        return " ".join(self.scopes) if scope is None else scope

    def client_credentials_token(
        self,
        *,
        resource: str | None = None,
        scope: str | None = None,
        client: OAuthClient | None = None,
    ) -> str:
        """An access token for `resource` (a JWT with that ``aud``) by client credentials,
        with the asked `scope` (only resource scopes are kept; None: all of
        :attr:`scopes`; ``""``: none, the token has no ``scope``)."""
        form = {"grant_type": "client_credentials"}
        if resource is not None:
            form["resource"] = resource
        scope = self._scope(scope)
        if scope:
            form["scope"] = scope
        token: str = self.token_response(form, client or self.confidential)["access_token"]
        return token

    def authorization_url(
        self,
        *,
        client: OAuthClient | None = None,
        code_challenge: str,
        state: str,
        scope: str | None = None,
        resource: str | None = None,
        redirect_uri: str | None = None,
        **extra: str,
    ) -> str:
        """An authorization request URL (``response_type=code``, PKCE S256)."""
        client = client or self.public
        params = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": redirect_uri or client.redirect_uri or PUBLIC_REDIRECT_URI,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if scope is not None:
            params["scope"] = scope
        if resource is not None:
            params["resource"] = resource
        params.update(extra)
        return f"{self.endpoint('authorization_endpoint')}?{urlencode(params)}"

    def authorize(self, url: str, *, user: str = "alice", deny: bool = False) -> Authorization:
        """Play the user agent for an authorization request `url`: follow the redirects,
        sign in as `user` and consent (or deny, `deny`) until the server redirects to the
        client; that redirect, parsed. A fresh session each time (no cookies kept)."""
        issuer = urlsplit(self.issuer)
        with httpx.Client(timeout=_TIMEOUT) as browser:
            response = browser.get(url)
            for _ in range(_MAX_STEPS):
                if response.is_redirect:
                    location = urljoin(str(response.url), response.headers["location"])
                    target = urlsplit(location)
                    if (target.scheme, target.netloc) != (issuer.scheme, issuer.netloc):
                        return Authorization.from_redirect(location)
                    accept = (
                        "application/json" if target.path.startswith("/interaction/") else "*/*"
                    )
                    response = browser.get(location, headers={"accept": accept})
                    continue
                if response.status_code == 200 and response.url.path.startswith("/interaction/"):
                    prompt = response.json()["prompt"]
                    if deny:
                        form = {"prompt": "abort"}
                    elif prompt == "login":
                        form = {"prompt": "login", "login": user}
                    elif prompt == "consent":
                        form = {"prompt": "consent"}
                    else:
                        raise AuthServerError(f"unexpected interaction prompt {prompt!r}")
                    response = browser.post(response.url, data=form)
                    continue
                _answer(response, f"authorization at {response.url.path}")
                raise AuthServerError(
                    f"authorization stopped at {response.url} (HTTP {response.status_code})",
                    status=response.status_code,
                    body=response.text,
                )
        raise AuthServerError(f"authorization did not reach the client in {_MAX_STEPS} steps")

    def authorization_code_grant(
        self,
        *,
        resource: str | None = None,
        scope: str | None = None,
        user: str = "alice",
        client: OAuthClient | None = None,
        redirect_uri: str | None = None,
    ) -> dict[str, Any]:
        """The whole authorization code + PKCE flow as `user` (login and consent
        automated): the token response (``access_token``, ``refresh_token`` when
        ``offline_access`` was asked for, ``id_token`` for ``openid``, ...).

        `scope` None asks for all of :attr:`scopes` (the server refuses a request that
        asks for nothing: ``access_denied``, there is nothing to consent to).
        """
        client = client or self.public
        scope = self._scope(scope)
        redirect = redirect_uri or client.redirect_uri or PUBLIC_REDIRECT_URI
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        url = self.authorization_url(
            client=client,
            code_challenge=challenge,
            state=state,
            scope=scope or None,
            resource=resource,
            redirect_uri=redirect,
            **({"prompt": "consent"} if "offline_access" in scope.split() else {}),
        )
        outcome = self.authorize(url, user=user)
        if outcome.code is None:
            raise AuthServerError(
                f"authorization refused: {outcome.error}: {outcome.error_description}"
            )
        if outcome.state != state or outcome.iss != self.issuer:
            raise AuthServerError(f"bad authorization response {outcome.redirect_url}")
        form = {
            "grant_type": "authorization_code",
            "code": outcome.code,
            "redirect_uri": redirect,
            "code_verifier": verifier,
        }
        if resource is not None:
            form["resource"] = resource
        return self.token_response(form, client)

    def authorization_code_token(
        self,
        *,
        resource: str | None = None,
        scope: str | None = None,
        user: str = "alice",
        client: OAuthClient | None = None,
    ) -> str:
        """The access token of :meth:`authorization_code_grant` (a JWT whose ``aud`` is
        `resource` and ``sub`` is `user`)."""
        grant = self.authorization_code_grant(
            resource=resource, scope=scope, user=user, client=client
        )
        token: str = grant["access_token"]
        return token

    def refresh(
        self, refresh_token: str, *, resource: str | None = None, client: OAuthClient | None = None
    ) -> dict[str, Any]:
        """The refresh grant's token response."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if resource is not None:
            form["resource"] = resource
        return self.token_response(form, client or self.public)

    def exchange(
        self,
        subject_token: str,
        *,
        resource: str | None = None,
        audience: str | None = None,
        scope: str | None = None,
        client: OAuthClient | None = None,
    ) -> str:
        """RFC 8693 token exchange by the confidential `client`: a JWT for `resource` (or
        the logical `audience`; `resource` wins when both are given) with the subject
        token's ``sub``, its scope or the asked subset, and ``act: {"sub": client_id}``."""
        form = {
            "grant_type": EXCHANGE_GRANT,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
        }
        for name, value in (("resource", resource), ("audience", audience), ("scope", scope)):
            if value is not None:
                form[name] = value
        token: str = self.token_response(form, client or self.confidential)["access_token"]
        return token

    def register(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Dynamic client registration (RFC 7591, open): the server's client record."""
        response = httpx.post(
            self.endpoint("registration_endpoint"), json=dict(metadata), timeout=_TIMEOUT
        )
        return _answer(response, "client registration")

    def register_client(self, metadata: Mapping[str, Any]) -> OAuthClient:
        """:meth:`register`, as an :class:`OAuthClient` (its first redirect URI)."""
        record = self.register(metadata)
        uris = record.get("redirect_uris") or [None]
        return OAuthClient(record["client_id"], record.get("client_secret"), uris[0])

    # ------------------------------------------------------------------ test-only admin

    def _admin(self, method: str, route: str, body: Mapping[str, Any] | None = None) -> Any:
        response = httpx.request(
            method, f"{self.issuer}/__test__/{route}", json=body, timeout=_TIMEOUT
        )
        return _answer(response, f"{method} /__test__/{route}")

    def keys(self) -> dict[str, list[dict[str, str]]]:
        """The kids (with alg and kty) of the ``published`` keys (the JWKS, signing order),
        the ``retired`` ones (rotated out, no longer verifiable) and the ``foreign`` ones
        (never published: an unknown signer)."""
        found: dict[str, list[dict[str, str]]] = self._admin("GET", "keys")
        return found

    def current_kid(self, alg: str = "RS256") -> str:
        """The kid that signs new `alg` tokens."""
        return next(k["kid"] for k in self.keys()["published"] if k["alg"] == alg)

    def rotate_keys(self, *, keep_old: bool = True, alg: str = "RS256") -> str:
        """A new `alg` signing key, first in the JWKS from now on (new tokens carry its
        kid); the previous `alg` keys stay published (`keep_old`: tokens they signed keep
        verifying) or are retired (gone from the JWKS). Returns the new kid."""
        kid: str = self._admin("POST", "rotate", {"alg": alg, "keepOld": keep_old})["kid"]
        return kid

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        alg: str = "RS256",
        key: str = "current",
        kid: str | None = None,
        omit_kid: bool = False,
        header: Mapping[str, Any] | None = None,
        secret: str | None = None,
        defaults: bool = True,
        expires_in: int = 300,
    ) -> str:
        """A JWS over `claims`, signed by the server's real keys, for negative tests.

        With `defaults`, ``iss`` (the issuer), ``iat`` (now), ``exp`` (now + `expires_in`)
        and ``jti`` are added unless `claims` set them; a claim set to None is left out.
        `key`: ``current`` (the key signing `alg` tokens now), a kid (published or
        retired), or ``foreign`` (a key of the same type never published). The header is
        ``{"alg", "typ": "at+jwt", "kid"}``: `kid` overrides the kid, `omit_kid` leaves it
        out, `header` adds or overrides fields (None removes one). ``HS256``/``384``/``512``
        sign with `secret`; ``none`` makes an unsigned token.
        """
        body: dict[str, Any] = {
            "claims": dict(claims),
            "alg": alg,
            "key": key,
            "header": dict(header or {}),
            "defaults": defaults,
            "expiresIn": expires_in,
        }
        if omit_kid:
            body["kid"] = None
        elif kid is not None:
            body["kid"] = kid
        if secret is not None:
            body["secret"] = secret
        token: str = self._admin("POST", "sign", body)["token"]
        return token

    def configure(
        self, *, access_token_ttl: int | None = None, access_token_alg: str | None = None
    ) -> dict[str, Any]:
        """Change the lifetime (seconds) or algorithm of access tokens issued from now on;
        the settings in effect."""
        body: dict[str, Any] = {}
        if access_token_ttl is not None:
            body["accessTokenTtl"] = access_token_ttl
        if access_token_alg is not None:
            body["accessTokenAlg"] = access_token_alg
        settings: dict[str, Any] = self._admin("POST", "settings", body)
        return settings


def auth_server(stack: ExitStack | None = None, **options: Any) -> AuthServer:
    """An :class:`AuthServer` (`options`: its keyword arguments): with a `stack`, started
    now and closed with the stack; without, started by ``with auth_server() as server:``."""
    server = AuthServer(**options)
    return server if stack is None else stack.enter_context(server)


def _ensure_installed() -> None:
    """The pinned Node packages, oidc-provider among them (an older ``node_modules``
    may predate it: then ``npm ci`` again)."""
    node.ensure_installed()
    if (node.NODE_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise StartupError("npm is required to install oidc-provider (testbed/node)")
    subprocess.run(
        [npm, "ci", "--prefix", str(node.NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
        check=True,
    )


# --------------------------------------------------------------------------- MCP SDK client


class MemoryTokenStorage:
    """The SDK's ``TokenStorage`` in memory: what the flow registered and obtained."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


RedirectHandler = Callable[[str], Awaitable[None]]
CallbackHandler = Callable[[], Awaitable[AuthorizationCodeResult]]


def sdk_oauth_handlers(
    server: AuthServer, *, user: str = "alice", deny: bool = False
) -> tuple[RedirectHandler, CallbackHandler]:
    """The SDK's ``redirect_handler`` and ``callback_handler`` for `server`, with no
    browser: the first plays the user agent (:meth:`AuthServer.authorize`, in a thread)
    as `user`, the second hands the SDK the code, state and ``iss`` it ended with (or
    raises AuthServerError when authorization was refused, e.g. with `deny`)."""
    outcomes: list[Authorization] = []

    async def redirect_handler(authorization_url: str) -> None:
        play = functools.partial(server.authorize, authorization_url, user=user, deny=deny)
        outcomes.append(await anyio.to_thread.run_sync(play))

    async def callback_handler() -> AuthorizationCodeResult:
        if not outcomes:
            raise AuthServerError("the SDK asked for the callback before redirecting")
        outcome = outcomes.pop()
        if outcome.code is None:
            raise AuthServerError(
                f"authorization refused: {outcome.error}: {outcome.error_description}"
            )
        return AuthorizationCodeResult(code=outcome.code, state=outcome.state, iss=outcome.iss)

    return redirect_handler, callback_handler


def sdk_oauth_provider(
    server: AuthServer,
    server_url: str,
    *,
    user: str = "alice",
    deny: bool = False,
    storage: MemoryTokenStorage | None = None,
    client_name: str = "mcp-fastproxy tests",
    redirect_uri: str = SDK_REDIRECT_URI,
    token_endpoint_auth_method: str | None = None,
    scope: str | None = None,
) -> OAuthClientProvider:
    """The SDK's ``OAuthClientProvider`` (an ``httpx2.Auth``) for the MCP endpoint
    `server_url`, completing its authorization at `server` as `user` with no browser.

    The SDK discovers everything itself from the 401 of `server_url` (protected resource
    metadata naming ``server.issuer``, then RFC 8414 metadata), registers dynamically
    (``token_endpoint_auth_method`` None: the server's default, ``client_secret_basic``;
    ``"none"``: a public client), and asks for the resource's token with PKCE. `scope` is
    only the registration's starting value: the SDK picks the scope from the 401 or the
    metadata. `storage` (given, or read back as ``provider.context.storage``) holds the
    registration and tokens.
    """
    redirect_handler, callback_handler = sdk_oauth_handlers(server, user=user, deny=deny)
    metadata: dict[str, Any] = {"redirect_uris": [redirect_uri], "client_name": client_name}
    if token_endpoint_auth_method is not None:
        metadata["token_endpoint_auth_method"] = token_endpoint_auth_method
    if scope is not None:
        metadata["scope"] = scope
    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata.model_validate(metadata),
        storage=storage or MemoryTokenStorage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
