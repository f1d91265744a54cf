"""What the gateway checks and answers as a 2026-07-28 server in front of a server that
speaks the handshake era only (a local server's shared process, :mod:`proxy.stdio.shared`;
a handshake-only backend, :mod:`proxy.bridging`): the per-request envelope and routing
headers, the methods that era removed, the HTTP status of each error, ``server/discover``
from an ``initialize`` result, and a request made fit for a handshake-era session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from . import jsonrpc as rpc
from .headers import decode_header_value

__all__ = (
    "ASKED_CAPABILITIES",
    "CAPABILITIES_KEY",
    "CLIENT_INFO_KEY",
    "ERROR_STATUS",
    "LEVEL_KEY",
    "MISSING_CAPABILITY",
    "MODERN_VERSION",
    "NOT_CACHED",
    "REMOVED_METHODS",
    "UNSUPPORTED_VERSION",
    "declared_capabilities",
    "discovered",
    "for_handshake",
    "http_status",
    "refusal",
    "rejection",
    "restore",
)

MODERN_VERSION: Final = "2026-07-28"
"""The stateless era the bridge serves."""
MISSING_CAPABILITY: Final = -32021
UNSUPPORTED_VERSION: Final = -32022
ERROR_STATUS: Final = {
    rpc.PARSE_ERROR: 400,
    rpc.INVALID_REQUEST: 400,
    rpc.INVALID_PARAMS: 400,
    rpc.HEADER_MISMATCH: 400,
    MISSING_CAPABILITY: 400,
    UNSUPPORTED_VERSION: 400,
    rpc.METHOD_NOT_FOUND: 404,
}
"""The HTTP status of an answer that is one of these errors (2026-07-28)."""
REMOVED_METHODS: Final = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
"""Handshake-era methods a 2026-07-28 client must not send (the process would answer)."""
_VERSION_KEY = rpc.PROTOCOL_VERSION_META_KEY
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
LEVEL_KEY = "io.modelcontextprotocol/logLevel"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
_NEEDS = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


ASKED_CAPABILITIES: Final = ("sampling", "elicitation", "roots")
"""The client capabilities a server's requests need (what a backend session offers)."""


def declared_capabilities(params: Mapping[str, Any]) -> dict[str, Any]:
    """What a 2026-07-28 request's client says it can answer (sampling, elicitation,
    roots), from its ``_meta``: a backend session opened for it offers the same."""
    meta = params.get("_meta")
    found = meta.get(CAPABILITIES_KEY) if isinstance(meta, dict) else None
    if not isinstance(found, dict):
        return {}
    return {k: found[k] for k in ASKED_CAPABILITIES if isinstance(found.get(k), dict)}


def rejection(message: dict[str, Any], headers: Mapping[bytes, bytes]) -> dict[str, Any] | None:
    """The error a request gets before it reaches the process, or None: its envelope is
    missing; its MCP-Protocol-Version, Mcp-Method or Mcp-Name header is missing or
    disagrees with the body (`headers`: lower-case names, values without surrounding
    whitespace); it names another version; its method is gone in this era."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(params, dict) or not isinstance(meta, dict):
        meta = None
    if meta is None or _VERSION_KEY not in meta or CAPABILITIES_KEY not in meta:
        return {
            "code": rpc.INVALID_PARAMS,
            "message": f"params._meta must carry {_VERSION_KEY} and {CAPABILITIES_KEY}",
        }
    assert isinstance(params, dict)  # noqa: S101 - meta is one of its values
    version = meta[_VERSION_KEY]
    mismatched = _header_mismatch(message, params, version, headers)
    if mismatched is not None:
        return {"code": rpc.HEADER_MISMATCH, "message": mismatched}
    if not isinstance(version, str):
        return {"code": rpc.INVALID_PARAMS, "message": "the protocol version must be a string"}
    if version != MODERN_VERSION:
        return {
            "code": UNSUPPORTED_VERSION,
            "message": "Unsupported protocol version",
            "data": {"supported": [MODERN_VERSION], "requested": version},
        }
    if message.get("method") in REMOVED_METHODS:
        return {"code": rpc.METHOD_NOT_FOUND, "message": "Method not found"}
    return None


def _header_mismatch(
    message: dict[str, Any], params: dict[str, Any], version: Any, headers: Mapping[bytes, bytes]
) -> str | None:
    """Which routing header is missing or disagrees with the body, in words (or None)."""
    header = headers.get(b"mcp-protocol-version")
    if header is None or header.decode("latin-1") != version:
        return "MCP-Protocol-Version header does not match the request's envelope"
    method = message.get("method")
    header = headers.get(b"mcp-method")
    if header is None or header.decode("latin-1") != method:
        return "Mcp-Method header does not match the request's method"
    key = rpc.NAME_BEARING_METHODS.get(method) if isinstance(method, str) else None
    named = None if key is None else params.get(key)
    if named is not None:
        header = headers.get(b"mcp-name")
        if header is None or decode_header_value(header) != named:
            return f"Mcp-Name header does not match the request's {key}"
    return None


def http_status(answer: Any) -> int:
    """The HTTP status of a 2026-07-28 answer: 200, or the one its error's code has."""
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return ERROR_STATUS.get(code, 200) if isinstance(code, int) else 200


def refusal(method: str) -> dict[str, Any]:
    """The error the process gets for a request of its own to a stateless client, which
    cannot be asked: the capability it needs is missing."""
    needed = _NEEDS.get(method)
    if needed is None:
        return {"code": rpc.METHOD_NOT_FOUND, "message": f"{method} is not available"}
    return {
        "code": MISSING_CAPABILITY,
        "message": f"{method} is not available to this client",
        "data": {"requiredCapabilities": {needed: {}}},
    }


def discovered(initialized: dict[str, Any]) -> dict[str, Any]:
    """server/discover from a process's initialize result. Its list-change and
    subscription flags are left out: a stateless client hears nothing from the process
    beyond its answers."""
    capabilities: dict[str, Any] = {}
    for name, value in (initialized.get("capabilities") or {}).items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("listChanged", "subscribe")}
        capabilities[name] = value
    result: dict[str, Any] = {
        "supportedVersions": [MODERN_VERSION],
        "capabilities": capabilities,
        "resultType": "complete",
        "cacheScope": "private",
        "ttlMs": 0,
    }
    if isinstance(initialized.get("instructions"), str):
        result["instructions"] = initialized["instructions"]
    if isinstance(initialized.get("serverInfo"), dict):
        result["_meta"] = {"io.modelcontextprotocol/serverInfo": initialized["serverInfo"]}
    return result


ENVELOPE_PREFIX: Final = "io.modelcontextprotocol/"
"""The keys of a 2026-07-28 request's ``params._meta`` that make its envelope."""


def for_handshake(message: dict[str, Any], new_id: str) -> tuple[dict[str, Any], Any, Any]:
    """A 2026-07-28 request made fit for a handshake-era session shared by many clients:
    under `new_id` (and its progress token too), without the envelope (a handshake-era
    server refuses it); with the client's id and progress token, to :func:`restore`."""
    original_id = message.get("id")
    message = {**message, "id": new_id}
    token = None
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(params, dict) and isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if not k.startswith(ENVELOPE_PREFIX)}
        if "progressToken" in meta:
            token = meta["progressToken"]
            meta["progressToken"] = new_id
        if meta:
            message["params"] = {**params, "_meta": meta}
        else:
            message["params"] = {k: v for k, v in params.items() if k != "_meta"}
    return message, original_id, token


CACHED_METHODS: Final = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)
"""What a 2026-07-28 result must say its caching terms for."""
NOT_CACHED: Final = {"cacheScope": "private", "ttlMs": 0}
"""The terms of a handshake-era server's results: it promises nothing about them."""


def restore(message: Any, original_id: Any, token: Any, method: str, modern: bool = True) -> Any:
    """A message of the server's for one client's request (of `method`), with the
    client's own id (or progress token) back in place; for a 2026-07-28 client (`modern`)
    a result says it is complete, and its caching terms where that era asks for them."""
    if not isinstance(message, dict):
        return message
    if "method" not in message:
        message["id"] = original_id
        result = message.get("result")
        if modern and isinstance(result, dict):
            result.setdefault("resultType", "complete")
            if method in CACHED_METHODS:
                for key, value in NOT_CACHED.items():
                    result.setdefault(key, value)
    elif message.get("method") == "notifications/progress":
        params = message.get("params")
        if isinstance(params, dict):
            params["progressToken"] = token
    return message
