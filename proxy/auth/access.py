"""The auth path, entered once per request: who is calling, may they, how often, on the
record, and with which credentials each backend is then asked.

::

    request ─▶ Endpoint ─▶ Access.enter ─────────▶ handler ─▶ Access.admit ─────▶ relay
               (body,       token → principal        (route,    per-tool limit,      (the
                envelope)   (cache: a dict lookup),   session    policy (CEL,         backend's
                            principal's rate limit    bound to   memoised),           own
                                                      it)        known names          credentials)
                                     Access.leave: one audit line (queued, written by a thread)

Without an ``auth`` section and without backend credentials there is no Access and the
request path is the transparent one, unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import jsonrpc as rpc
from .._types import Headers
from ..errors import (
    BadRequest,
    GatewayError,
    InsufficientScope,
    NoCredentials,
    NotAllowed,
    RateLimited,
    Unauthorized,
)
from ..metrics import Metrics
from ..relay import CREDENTIALS
from .audit import AUDITED, Audit
from .fetch import Fetcher
from .gate import Gate
from .outbound import Outbound
from .policy import GOVERNED, LIST_USES, Policy
from .principal import Principal
from .ratelimit import RateLimiter, SessionQuota
from .settings import AuditSettings

if TYPE_CHECKING:
    from ..request import Request
    from ..sessions import SessionStore
    from ..settings import BackendSettings, Settings

__all__ = ("Access", "CallerCredentials", "KnownNames")

logger = logging.getLogger("proxy.auth")

_NAMED = {"tools/call": "tools/list", "prompts/get": "prompts/list"}
"""Methods that name a tool or prompt, and the list that says which exist."""
_COOKIE_ONLY = frozenset({b"cookie"})
_NOTHING: frozenset[bytes] = frozenset()

KnownNames = Callable[[str, str], frozenset[str] | None]
"""(backend, list method) -> the names the backend offers (None: not known now)."""


class Access:
    """Authentication, policy, rate limits, audit and outbound credentials together."""

    def __init__(self, settings: Settings, store: SessionStore, metrics: Metrics) -> None:
        auth = settings.auth
        self.metrics = metrics
        self.fetcher = Fetcher(auth.http_timeout if auth is not None else 5.0)
        self.inbound = auth is not None
        self.gate = None if auth is None else Gate(settings, auth, metrics, self.fetcher)
        self.policy = None if auth is None else Policy(auth, metrics)
        if self.policy is not None and not self.policy.active:
            self.policy = None
        limit = None if auth is None else auth.rate_limit
        self.limiter = (
            RateLimiter(limit, store, metrics) if limit is not None and limit.requests else None
        )
        self.per_tool = self.limiter is not None and self.limiter.limit.per_tool
        cap = 0 if auth is None else auth.sessions_per_principal
        self.quota = SessionQuota(cap, settings.session_ttl, store, metrics) if cap else None
        self.audit = Audit(AuditSettings() if auth is None else auth.audit, metrics)
        self.outbound = Outbound(settings.backends, self.fetcher, metrics)
        self.backends: Mapping[str, BackendSettings] = {}
        self.passed_to: dict[str, str] = {}
        """Backends that get the caller's own token (with inbound authentication), each with
        the audience that token must also name."""
        self.use_backends(settings, self.outbound)
        self.known: KnownNames | None = None
        """Set by the handler when the policy is on: which names exist (an unknown name is
        answered as a denied one, so that policy leaks nothing)."""

    @staticmethod
    def wanted(settings: Settings) -> bool:
        """Whether the settings ask for any of it."""
        return settings.auth is not None or any(
            b.credentials.kind != "none" for b in settings.backends
        )

    def outbound_for(self, settings: Settings) -> Outbound:
        """The outbound credentials of a reloaded configuration's backends, their
        secrets read (SettingsError names one that does not resolve)."""
        outbound = Outbound(settings.backends, self.fetcher, self.metrics)
        outbound.open()
        return outbound

    def use_backends(self, settings: Settings, outbound: Outbound) -> None:
        """A reload: the backends, and their credentials, are `settings`' from now on."""
        auth = settings.auth
        self.outbound = outbound
        self.backends = {b.name: b for b in settings.backends}
        self.passed_to = {
            b.name: b.credentials.audience
            for b in settings.backends
            if auth is not None and b.credentials.kind == "passthrough"
        }

    async def gateway_headers(self, backend: str) -> Headers:
        """The gateway's own credentials at `backend` (for its requests for everyone)."""
        return await self.outbound.gateway_headers(backend)

    def open(self) -> None:
        """Resolve every secret reference and open the audit log (SettingsError, or
        OSError for an audit file, stops the start)."""
        if self.gate is not None:
            self.gate.open()
        self.outbound.open()
        self.audit.open()

    async def close(self) -> None:
        self.audit.close()
        await self.fetcher.close()

    # -- the way in -------------------------------------------------------------------------

    def entered(self, request: Request) -> bool:
        """:meth:`enter` without an await, when it needs none (a token accepted before,
        the rate limit kept in memory); False: await :meth:`enter`."""
        gate = self.gate
        if gate is None:
            return True
        limiter = self.limiter
        if limiter is not None and limiter.redis is not None:
            return False
        principal = gate.known(request)
        if principal is None:
            return False
        request.principal = principal
        if limiter is not None:
            limiter.charge_here(principal)
        if self.policy is not None:
            _refuse_batches(request)
        return True

    async def enter(self, request: Request) -> None:
        """Authenticate the request (401/403) and charge the principal's rate limit
        (429); with a policy, refuse batches that would slip calls past it."""
        gate = self.gate
        if gate is None:
            return
        principal = gate.known(request) or await gate.authenticate(request)
        request.principal = principal
        limiter = self.limiter
        if limiter is not None:
            if limiter.redis is None:
                limiter.charge_here(principal)
            else:
                await limiter.charge(principal)
        if self.policy is not None:
            _refuse_batches(request)

    def admitted(self, request: Request, backend: str, local: str | None = None) -> bool:
        """:meth:`admit` without an await, when it needs none (no per-tool limit); False:
        await :meth:`admit`."""
        if self.per_tool:
            return False
        self._admit(request, backend, local)
        return True

    async def admit(self, request: Request, backend: str, local: str | None = None) -> None:
        """May the request go on to `backend`? (`local`: the backend's own name for what
        it names.) The per-tool rate limit and the policy; NotAllowed for a denied
        request, and, with a policy, for a name the backend does not offer."""
        env = request.env
        principal = request.principal
        calls = env is not None and env.kind == rpc.REQUEST and env.method == "tools/call"
        if self.per_tool and principal is not None and calls:
            assert self.limiter is not None and env is not None  # noqa: S101 - per_tool, calls
            await self.limiter.charge(principal, f"{backend}\n{env.name or ''}")
        self._admit(request, backend, local)

    def _admit(self, request: Request, backend: str, local: str | None) -> None:
        """The admission without the per-tool limit: passthrough's audience, the policy,
        and, with a policy, that the name exists (NotAllowed, NoCredentials)."""
        request.backend = backend
        principal = request.principal
        env = request.env
        if self.passed_to and principal is not None and backend in self.passed_to:
            _check_passed(principal, self.passed_to[backend], backend, env)
        policy = self.policy
        if policy is None or principal is None or env is None or env.kind != rpc.REQUEST:
            return
        method = env.method or ""
        if method not in GOVERNED:
            return
        named = method in _NAMED
        name = (env.name or "") if named else ""
        uri = "" if named else (env.uri or "")
        decision = policy.decide(principal, method, backend, name, uri, request.body)
        if not decision.allowed:
            request.rule = decision.rule
            what = f"{method} {backend} {name or uri}"
            logger.info("denied by %s: %s for %s", decision.rule, what, principal.name)
            raise NotAllowed(id=env.id)
        if named and self.known is not None:
            names = self.known(backend, _NAMED[method])
            if names is not None and (local or name) not in names:
                request.rule = "unknown"
                raise NotAllowed(id=env.id)

    def visible(
        self,
        principal: Principal | None,
        list_method: str,
        items: list[dict[str, Any]],
        backend_of: Callable[[str], str],
    ) -> list[dict[str, Any]]:
        """The entries of a list the principal may use (all, without a policy)."""
        if self.policy is None or principal is None:
            return items
        return self.policy.filter(principal, list_method, items, backend_of)

    # -- credentials ------------------------------------------------------------------------

    def credentials(self, request: Request) -> CallerCredentials:
        return CallerCredentials(request, self)

    def fixed(self, backend: str, transparent: bool) -> tuple[frozenset[bytes], Headers] | None:
        """What `backend` gets in place of the client's credentials when that is the same
        for every request (the client's headers withheld, the backend's own added);
        None when it depends on the caller (token exchange, per principal, client
        credentials, and passthrough with inbound authentication, which depends on the
        token's audience: :meth:`credentials`)."""
        kind = self.outbound.kind(backend)
        if kind not in ("none", "headers", "passthrough") or (
            kind == "passthrough" and self.inbound
        ):
            return None
        caller = CallerCredentials.__new__(CallerCredentials)
        caller.access = self
        return caller.withheld(backend, transparent), self.outbound.static(backend)

    # -- the way out ------------------------------------------------------------------------

    def leave(
        self,
        request: Request,
        status: int,
        error: GatewayError | None,
        started: float,
        ended: float,
    ) -> None:
        """The request's audit line: for every call, get and read, and every refusal.
        Only what the line is made of is queued; the event loop's tick encodes it and a
        thread writes it. (`started` and `ended`: :func:`time.perf_counter` readings.)"""
        audit = self.audit
        if not audit.on:
            return
        env = request.env
        method = (env.method or "") if env is not None else request.verb
        if error is None:
            if method not in AUDITED:
                return
            outcome = "ok" if status < 400 else "error"
        else:
            outcome = _outcome(status, error)
            if method not in AUDITED and outcome == "error":
                return
        digest_of = request.body if audit.digests and method in AUDITED else None
        audit.record(
            (
                request.principal,
                request.hdrs.session_id,
                method,
                None if env is None else (env.name or env.uri),
                request.backend,
                request.replica,
                outcome,
                status,
                ended - started,
                None if env is None else env.id,
                request.rule,
                digest_of,
            ),
            ended,
        )


class CallerCredentials:
    """What one request's caller lets each backend see: with inbound authentication, never
    the client's token (only a ``passthrough`` backend gets its ``Authorization``) and
    the backend's own credentials instead; without it, the client's ``Authorization``
    and ``Cookie`` as before (``forward_credentials`` in federation), unless the backend
    has credentials of its own."""

    __slots__ = ("access", "headers", "principal", "token")

    def __init__(self, request: Request, access: Access | None) -> None:
        self.access = access
        self.headers = request.scope["headers"]
        self.principal = request.principal
        self.token = request.token

    def withheld(self, backend: str, transparent: bool) -> frozenset[bytes]:
        """The client's credential headers `backend` must not get (`transparent`: the
        client's credentials go along unless something says otherwise)."""
        access = self.access
        if access is None:
            return _NOTHING if transparent else CREDENTIALS
        if access.outbound.passthrough(backend):
            if not access.inbound:
                return _NOTHING
            audience = access.passed_to.get(backend, "")
            principal = self.principal
            if principal is not None and _issued_for(principal, audience):
                return _COOKIE_ONLY
            return CREDENTIALS  # a token not issued for the backend never goes there
        if access.inbound or access.outbound.configured(backend):
            return CREDENTIALS
        return _NOTHING if transparent else CREDENTIALS

    async def added(self, backend: str) -> Headers:
        """The backend's own credentials for this caller."""
        if self.access is None:
            return []
        return await self.access.outbound.headers(backend, self.principal, self.token)

    async def for_backend(self, backend: str, transparent: bool = False) -> Headers:
        """Every credential header a request of the gateway's own making (federation) sends
        `backend` for this caller: the client's not withheld, and the backend's own."""
        withheld = self.withheld(backend, transparent)
        passed = [(n, v) for n, v in self.headers if n in CREDENTIALS and n not in withheld]
        return [*passed, *await self.added(backend)]


def _refuse_batches(request: Request) -> None:
    """Where policy rules apply, a batch must not slip calls, gets, reads or lists past
    them."""
    env = request.env
    if env is not None and env.kind == rpc.BATCH:
        methods = env.methods or ()
        if any(m in GOVERNED or m in LIST_USES for m in methods if m is not None):
            raise BadRequest(
                "Invalid Request: batches of calls, gets, reads or lists are not "
                "accepted where policy rules apply",
                id=None,
            )


def _issued_for(principal: Principal, audience: str) -> bool:
    """Whether the principal's token names `audience` in its ``aud``."""
    issued_for = principal.claims.get("aud")
    return issued_for == audience or (isinstance(issued_for, list) and audience in issued_for)


def _check_passed(
    principal: Principal, audience: str, backend: str, env: rpc.Envelope | None
) -> None:
    """A token passed through to `backend` must have been issued for it too (its ``aud``
    names `audience`); NoCredentials (403) otherwise: it would be refused there, or worse,
    accepted for what it was not meant for."""
    if _issued_for(principal, audience):
        return
    logger.info(
        "token of %s not passed to %s: not issued for %s", principal.name, backend, audience
    )
    message = "Forbidden: the access token was not issued for this backend"
    raise NoCredentials(message, id=None if env is None else env.id)


def _outcome(status: int, error: GatewayError | None) -> str:
    if isinstance(error, Unauthorized):
        return "unauthenticated"
    if isinstance(error, InsufficientScope):
        return "insufficient_scope"
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, NotAllowed):
        return "denied"
    return "ok" if error is None and status < 400 else "error"
