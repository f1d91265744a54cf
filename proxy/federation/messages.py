"""JSON-RPC messages the federating gateway writes itself."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from .. import jsonrpc as rpc
from ..sse import frame

__all__ = ("cache_terms", "frame", "meta_version", "result_body")


def result_body(id: bytes | None, result: Any) -> bytes:
    """A JSON-RPC result for the request with raw id `id`."""
    return b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (id or rpc.NULL_ID, orjson.dumps(result))


def meta_version(message: dict[str, Any]) -> str | None:
    """The protocol version a 2026-07-28 request names in its ``_meta``."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(rpc.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def cache_terms(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The strictest caching terms among backend results: private if any is private,
    the shortest ttlMs."""
    results = list(results)
    scopes = [r.get("cacheScope") for r in results]
    ttls = [r["ttlMs"] for r in results if isinstance(r.get("ttlMs"), int)]
    scope = "public" if scopes and all(s == "public" for s in scopes) else "private"
    return {"cacheScope": scope, "ttlMs": min(ttls) if ttls else 0}
