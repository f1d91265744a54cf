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
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .. import jsonrpc as rpc
from .._types import Headers
from ..errors import (
    BadRequest,
    GatewayError,
    InsufficientScope,
    NotAllowed,
    RateLimited,
    Unauthorized,
)
from ..metrics import Metrics
from ..relay import CREDENTIALS
from .audit import AUDITED, Audit, arguments_digest
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

_COOKIE_ONLY = frozenset({b"cookie"})
_NOTHING: frozenset[bytes] = frozenset()

KnownNames = Callable[[str, str], Awaitable[frozenset[str] | None]]
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
        cap = 0 if auth is None else auth.sessions_per_principal
        self.quota = SessionQuota(cap, settings.session_ttl, store, metrics) if cap else None
        self.audit = Audit(AuditSettings() if auth is None else auth.audit, metrics)
        self.outbound = Outbound(settings.backends, self.fetcher, metrics)
        self.backends: Mapping[str, BackendSettings] = {b.name: b for b in settings.backends}
        self.known: KnownNames | None = None
        """Set by the handler when the policy is on: which names exist (an unknown name is
        answered as a denied one, so that policy leaks nothing)."""

    @staticmethod
    def wanted(settings: Settings) -> bool:
        """Whether the settings ask for any of it."""
        return settings.auth is not None or any(
            b.credentials.kind != "none" for b in settings.backends
        )

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

    async def enter(self, request: Request) -> None:
        """Authenticate the request (401/403) and charge the principal's rate limit
        (429); with a policy, refuse batches that would slip calls past it."""
        gate = self.gate
        if gate is None:
            return
        principal, token = await gate.authenticate(request.scope)
        request.principal = principal
        request.token = token
        if self.limiter is not None:
            await self.limiter.charge(principal)
        env = request.env
        if self.policy is not None and env is not None and env.kind == rpc.BATCH:
            methods = env.methods or ()
            if any(m in GOVERNED or m in LIST_USES for m in methods if m is not None):
                raise BadRequest(
                    "Invalid Request: batches of calls, gets, reads or lists are not "
                    "accepted where policy rules apply",
                    id=None,
                )

    async def admit(self, request: Request, backend: str, local: str | None = None) -> None:
        """May the request go on to `backend`? (`local`: the backend's own name for what
        it names.) The per-tool rate limit and the policy; NotAllowed for a denied
        request, and, with a policy, for a name the backend does not offer."""
        request.backend = backend
        principal = request.principal
        env = request.env
        if principal is None or env is None or env.kind != rpc.REQUEST:
            return
        method = env.method or ""
        if self.limiter is not None and method == "tools/call" and self.limiter.limit.per_tool:
            await self.limiter.charge(principal, f"{backend}\n{env.name or ''}")
        policy = self.policy
        if policy is None or method not in GOVERNED:
            return
        named = method in ("tools/call", "prompts/get")
        name = (env.name or "") if named else ""
        uri = "" if named else (env.uri or "")
        body = request.body or b""
        decision = policy.decide(principal, method, backend, name, uri, lambda: _arguments(body))
        if not decision.allowed:
            request.rule = decision.rule
            what = f"{method} {backend} {name or uri}"
            logger.info("denied by %s: %s for %s", decision.rule, what, principal.name)
            raise NotAllowed(id=env.id)
        if name and self.known is not None:
            list_method = "tools/list" if method == "tools/call" else "prompts/list"
            names = await self.known(backend, list_method)
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

    # -- the way out ------------------------------------------------------------------------

    def leave(
        self, request: Request, status: int, error: GatewayError | None, started: float
    ) -> None:
        """The request's audit line: for every call, get and read, and every refusal."""
        audit = self.audit
        if not audit.on:
            return
        env = request.env
        method = (env.method or "") if env is not None else request.verb
        outcome = _outcome(status, error)
        if method not in AUDITED and outcome in ("ok", "error"):
            return
        principal = request.principal
        line: dict[str, Any] = {
            "principal": None if principal is None else principal.subject,
            "issuer": None if principal is None else principal.issuer,
            "client_id": None if principal is None else principal.client_id,
            "session": _text(request.hdrs.session_id),
            "method": method,
            "name": None if env is None else (env.name or env.uri),
            "backend": request.backend,
            "replica": request.replica,
            "outcome": outcome,
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "request_id": None if env is None or env.id is None else env.id.decode("latin-1"),
        }
        if request.rule is not None:
            line["rule"] = request.rule
        if audit.digests and method in AUDITED and request.body is not None:
            line["arguments_sha256"] = arguments_digest(request.body)
        audit.record(line)


class CallerCredentials:
    """What one request's caller lets each backend see: with inbound authentication, never
    the client's token (only a ``passthrough`` backend gets its ``Authorization``) and
    the backend's own credentials instead; without it, the client's ``Authorization``
    and ``Cookie`` as before (``forward_credentials`` in federation), unless the backend
    has credentials of its own."""

    __slots__ = ("access", "client", "principal", "token")

    def __init__(self, request: Request, access: Access | None) -> None:
        self.access = access
        headers = request.scope["headers"]
        self.client: Headers = [(n, v) for n, v in headers if n in CREDENTIALS]
        self.principal = request.principal
        self.token = request.token

    def withheld(self, backend: str, transparent: bool) -> frozenset[bytes]:
        """The client's credential headers `backend` must not get (`transparent`: the
        client's credentials go along unless something says otherwise)."""
        access = self.access
        if access is None:
            return _NOTHING if transparent else CREDENTIALS
        if access.outbound.passthrough(backend):
            return _COOKIE_ONLY if access.inbound else _NOTHING
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
        passed = [(n, v) for n, v in self.client if n not in withheld]
        return [*passed, *await self.added(backend)]


def _arguments(body: bytes) -> Mapping[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    params = message.get("params") if isinstance(message, dict) else None
    arguments = params.get("arguments") if isinstance(params, dict) else None
    return arguments if isinstance(arguments, dict) else {}


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


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
