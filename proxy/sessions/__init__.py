"""Session records and the SessionStore interface; one module per backend."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

import orjson

if TYPE_CHECKING:  # proxy.config imports this package (redis_url): no cycle at run time
    from ..config import Settings

__all__ = (
    "STORES",
    "Binding",
    "ClientInit",
    "SessionRecord",
    "SessionStore",
    "StoreFull",
    "StoreUnavailable",
    "create_store",
)

# Session store backends: the kind of --session-store picks the module, imported only
# when chosen (uvicorn's HTTP_PROTOCOLS idiom).
STORES: Final[Mapping[str, str]] = {
    "memory": "proxy.sessions.memory:MemorySessionStore",
    "redis": "proxy.sessions.redis:RedisSessionStore",
}


class Binding(NamedTuple):
    """Where one backend's side of a gateway session lives."""

    replica: str
    """The replica's URL, as configured."""
    session_id: str | None
    """The backend's own Mcp-Session-Id (None: the backend keeps no session)."""


class ClientInit(NamedTuple):
    """What a client's ``initialize`` asked for, kept by a federated session so that each
    backend's own session can be opened later with it (the gateway answered the
    client's initialize itself)."""

    protocol_version: str
    """The handshake-era version the gateway agreed with the client."""
    params: dict[str, Any]
    """The initialize parameters a backend is given (trimmed: see
    ``proxy.federation.dispatch.kept_initialize``)."""


@dataclass(slots=True)
class SessionRecord:
    """One gateway session, as the store keeps it."""

    bindings: dict[str, Binding] = field(default_factory=dict)
    """Backend name -> where that backend's session for this client lives."""
    client: ClientInit | None = None
    """Federation: what the client's initialize asked for (None with one backend, where
    the backend itself answered the initialize)."""
    principal: str | None = None
    """With authentication: who opened the session (issuer, subject and client id, as
    :attr:`proxy.auth.principal.Principal.key`); only that principal may use it. Never a
    token's digest: a refreshed token names the same principal."""

    def copy(self) -> SessionRecord:
        """A copy whose bindings can change without touching this one."""
        return SessionRecord(dict(self.bindings), self.client, self.principal)


class StoreUnavailable(Exception):
    """The store cannot be reached; requests that need it get 503."""


class StoreFull(Exception):
    """The store holds as many sessions as it may (``max_sessions``); a new one gets 503."""


class SessionStore(Protocol):
    """Maps gateway session ids to their backend bindings, with an idle TTL."""

    async def open(self) -> None:
        """Connect (called once from the app's lifespan)."""

    async def close(self) -> None:
        """Release connections."""

    async def create(self, session_id: str, record: SessionRecord) -> None:
        """Store a new session record; StoreFull when no more may be kept."""

    async def resolve(self, session_id: str) -> SessionRecord | None:
        """The record, with its TTL renewed; None when unknown or expired."""

    async def bind(self, session_id: str, backend: str, binding: Binding) -> None:
        """Add or replace one backend's binding in an existing record."""

    async def delete(self, session_id: str) -> SessionRecord | None:
        """Remove the session; return what it held."""

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    async def count(self) -> int:
        """Number of open sessions (may be approximate for shared stores)."""

    event_listeners: list[Callable[[str], None]]
    """Called with every event any gateway process sharing this store published."""

    async def publish_event(self, text: str) -> None:
        """Tell every gateway process sharing this store (this one included) `text`."""


CLIENT_FIELD = "@client"
"""The hash field (Redis) that holds a record's ClientInit; never a backend's name."""
PRINCIPAL_FIELD = "@principal"
"""The hash field (Redis) that holds the principal a session is bound to."""


def encode_binding(binding: Binding) -> str:
    """One string per backend: the replica URL and the backend session id."""
    return f"{binding.replica}\n{binding.session_id or ''}"


def decode_binding(value: str) -> Binding:
    replica, _, session_id = value.partition("\n")
    return Binding(replica, session_id or None)


def encode_record(record: SessionRecord) -> dict[str, str]:
    """A record as string fields (backend name -> binding, and the client's initialize)."""
    fields = {name: encode_binding(b) for name, b in record.bindings.items()}
    if record.client is not None:
        version, params = record.client
        fields[CLIENT_FIELD] = f"{version}\n{orjson.dumps(params).decode()}"
    if record.principal is not None:
        fields[PRINCIPAL_FIELD] = record.principal
    return fields


def decode_record(fields: Mapping[str, str]) -> SessionRecord:
    record = SessionRecord()
    for name, value in fields.items():
        if name == CLIENT_FIELD:
            version, _, params = value.partition("\n")
            record.client = ClientInit(version, orjson.loads(params) if params else {})
        elif name == PRINCIPAL_FIELD:
            record.principal = value
        else:
            record.bindings[name] = decode_binding(value)
    return record


def create_store(settings: Settings) -> SessionStore:
    """The store named by ``settings.session_store``, imported only when chosen."""
    module_name, _, class_name = STORES[settings.store_kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    store: SessionStore = cls(settings)
    return store
