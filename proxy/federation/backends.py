"""Each client session's own sessions with the backends (federation).

A backend's session for a client is opened on the first request that needs it (lazily,
once per process at a time), with what the client's initialize asked for, and recorded
in the client's session record, so that any gateway replica on the same store continues
it. What the client sends that is not routed by name (notifications, answers to a
backend's requests, ``logging/setLevel``) goes to the backends this session uses; a
DELETE ends every one of them. What each backend is shown of the caller's credentials is
:class:`~proxy.auth.access.CallerCredentials`'s to say: without authentication the
client's own, only to backends configured to take them (``forward_credentials``); with
it, the backend's own credentials, never the client's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from .. import jsonrpc as rpc
from ..auth.access import CallerCredentials
from ..errors import BadGateway, GatewayError, InvalidParams
from ..jsonrpc import Envelope
from ..metrics import Metrics
from ..sessions import Binding, SessionRecord
from ..sessions.records import Records
from ..upstream.balance import Backend, Replica
from ..upstream.head import HeadInjection
from ..upstream.http1 import UpstreamResponse
from . import wire
from .names import Namespace
from .streams import unwrap_id

if TYPE_CHECKING:
    from ..auth.access import Access
    from ..config import Settings
    from ..request import Request
    from ..upstream.registry import Upstreams

__all__ = ("MAX_CAPABILITIES", "BackendSessions", "kept_initialize")

logger = logging.getLogger("proxy.federation")

MAX_CAPABILITIES = 8 * 1024
"""Largest ``capabilities`` object of a client's initialize that the session keeps (bytes
of JSON); the rest of its parameters are kept only as far as a backend needs them."""
_INFO_FIELDS = ("name", "title", "version")


def kept_initialize(version: str, params: dict[str, Any]) -> dict[str, Any]:
    """What the session keeps of a client's initialize parameters (what each backend's
    own initialize is later given): the version, the capabilities (at most
    ``MAX_CAPABILITIES`` bytes of JSON, else InvalidParams) and the client's name, title
    and version (short strings); nothing else, so that a session costs little memory."""
    capabilities = params.get("capabilities")
    if not isinstance(capabilities, dict):
        capabilities = {}
    if len(orjson.dumps(capabilities)) > MAX_CAPABILITIES:
        raise InvalidParams(f"Invalid params: capabilities exceed {MAX_CAPABILITIES} bytes")
    info = params.get("clientInfo")
    kept_info: dict[str, str] = {}
    if isinstance(info, dict):
        for key in _INFO_FIELDS:
            value = info.get(key)
            if isinstance(value, str):
                kept_info[key] = value[:256]
    kept_info.setdefault("name", "unknown")
    kept_info.setdefault("version", "0")
    return {"protocolVersion": version, "capabilities": capabilities, "clientInfo": kept_info}


Credentials = list[tuple[bytes, bytes]]
Opened = Callable[[str, str, Binding], None]  # gateway session, backend, its new binding


class BackendSessions:
    """Opens, feeds and ends the backends' sessions of each client session."""

    def __init__(
        self,
        settings: Settings,
        upstreams: Upstreams,
        records: Records,
        namespace: Namespace,
        metrics: Metrics,
        access: Access | None = None,
    ) -> None:
        self.access = access
        self.upstreams = upstreams
        self.records = records
        self.namespace = namespace
        self.metrics = metrics
        self.timeout = settings.upstream_timeout
        self.max_answer = settings.max_answer_size
        self.opened: list[Opened] = []  # told of every backend session opened here
        self._opening: dict[tuple[str, str], asyncio.Future[Binding]] = {}

    def caller(self, request: Request) -> CallerCredentials:
        """What a request's caller lets the backends see."""
        return CallerCredentials(request, self.access)

    def transparent(self, backend: str) -> bool:
        """Whether `backend` takes the client's own credentials (``forward_credentials``)."""
        settings = self.namespace.backends.get(backend)
        return settings is not None and settings.forward_credentials

    async def credentials(self, backend: str, caller: CallerCredentials) -> Credentials:
        """The credential headers `backend` gets for `caller`'s requests."""
        return await caller.for_backend(backend, self.transparent(backend))

    def replica(self, backend: str, binding: Binding) -> Replica | None:
        """The replica a binding names, if it is still configured."""
        return self.upstreams.replica_for(backend, binding.replica)

    # -- lazy opening --------------------------------------------------------------------------

    async def binding(
        self, gateway_sid: str, record: SessionRecord, backend: Backend, credentials: Credentials
    ) -> Binding:
        """This client's session with `backend`, opened now if it has none (once per
        process at a time); recorded in `record` (this exchange's copy) and the store."""
        binding = record.bindings.get(backend.name)
        if binding is not None:
            return binding
        key = (gateway_sid, backend.name)
        pending = self._opening.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                self._initialize(gateway_sid, record, backend, credentials)
            )
            self._opening[key] = pending
            pending.add_done_callback(lambda _f: self._opening.pop(key, None))
        binding = await asyncio.shield(pending)
        record.bindings[backend.name] = binding
        return binding

    async def _initialize(
        self, gateway_sid: str, record: SessionRecord, backend: Backend, credentials: Credentials
    ) -> Binding:
        client = record.client
        params = {} if client is None else client.params
        replica = backend.choose()
        if replica is None:
            raise BadGateway(f"Backend {backend.name} is unreachable")
        try:
            version = None if client is None else client.protocol_version
            answer = await wire.handshake(
                replica,
                params,
                limit=self.timeout,
                version=version,
                extra=credentials,
                max_answer=self.max_answer,
            )
        except wire.CallFailed as exc:
            self.metrics.backend_errors.inc(backend.name, "initialize")
            logger.warning("backend %s: initialize failed: %s", backend.name, exc)
            raise BadGateway(f"Backend {backend.name} failed") from None
        binding = Binding(replica.url, answer.session_id)
        await self.records.bind(gateway_sid, backend.name, binding)
        self.metrics.lazy_inits.inc(backend.name)
        for listener in self.opened:
            listener(gateway_sid, backend.name, binding)
        return binding

    # -- what the client sends all of them -------------------------------------------------------

    async def pass_on(
        self, caller: CallerCredentials, record: SessionRecord, env: Envelope, body: bytes
    ) -> None:
        """A client notification or response: to the backends this session uses (the one
        that asked recognises its request id; the others ignore it)."""
        if env.method == "notifications/initialized":
            return  # each backend session got its own when it was opened
        if env.kind == rpc.RESPONSE:
            message = orjson.loads(body)
            found = unwrap_id(message.get("id"))
            if found is not None and found[0] in record.bindings:
                message["id"] = found[1]
                only = SessionRecord({found[0]: record.bindings[found[0]]}, record.client)
                await self.to_bound(caller, only, orjson.dumps(message))
                return
        method = env.method or ""
        if env.kind == rpc.NOTIFICATION and not method.startswith("notifications/"):
            return
        await self.to_bound(caller, record, body)

    async def to_bound(self, caller: CallerCredentials, record: SessionRecord, body: bytes) -> None:
        """`body` to every backend session of `record`, answers dropped."""
        version = None if record.client is None else record.client.protocol_version
        sends = []
        for name, binding in record.bindings.items():
            replica = self.replica(name, binding)
            if replica is None:
                continue
            try:
                head = wire.request_head(
                    replica,
                    body,
                    session_id=binding.session_id,
                    protocol_version=version,
                    extra=await self.credentials(name, caller),
                )
            except (HeadInjection, GatewayError):  # this backend's; the others go on
                continue
            sends.append(_quietly(replica.pool.request(head, body, head_timeout=10.0)))
        await asyncio.gather(*sends)

    async def end(self, caller: CallerCredentials, record: SessionRecord) -> None:
        """DELETE every backend session of `record` (answers and failures ignored)."""
        ends = []
        for name, binding in record.bindings.items():
            replica = self.replica(name, binding)
            if replica is None or binding.session_id is None:
                continue
            try:
                head = wire.request_head(
                    replica,
                    b"",
                    session_id=binding.session_id,
                    protocol_version=None,
                    method=b"DELETE",
                    extra=await self.credentials(name, caller),
                )
            except (HeadInjection, GatewayError):  # this backend's; the others go on
                continue
            ends.append(_quietly(replica.pool.request(head, None, head_timeout=5.0)))
        await asyncio.gather(*ends)

    # -- a backend session's GET stream ----------------------------------------------------------

    async def stream(
        self,
        name: str,
        binding: Binding,
        version: str | None,
        last_event_id: str | None,
        caller: CallerCredentials,
    ) -> UpstreamResponse | None:
        """Open the GET stream of a backend session (on the replica's stream
        connections); None when the backend is no longer configured."""
        replica = self.replica(name, binding)
        if replica is None:
            return None
        head = wire.request_head(
            replica,
            b"",
            session_id=binding.session_id,
            protocol_version=version,
            method=b"GET",
            last_event_id=last_event_id,
            extra=await self.credentials(name, caller),
        )
        return await replica.streams.request(head, None, head_timeout=30.0)


async def _quietly(request: Awaitable[UpstreamResponse]) -> None:
    with contextlib.suppress(Exception):
        response = await request
        response.close()
