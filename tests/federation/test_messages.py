"""Messages the federating gateway writes: results, frames, caching terms."""

from __future__ import annotations

import orjson

from proxy.federation.messages import cache_terms, frame, meta_version, result_body


def test_results_and_frames() -> None:
    assert orjson.loads(result_body(b'"x"', {"a": 1})) == {
        "jsonrpc": "2.0",
        "id": "x",
        "result": {"a": 1},
    }
    assert orjson.loads(result_body(None, {}))["id"] is None
    assert frame({"m": 1}) == b'event: message\ndata: {"m":1}\n\n'


def test_the_strictest_caching_terms_win() -> None:
    public = {"cacheScope": "public", "ttlMs": 60_000}
    private = {"cacheScope": "private", "ttlMs": 5_000}
    assert cache_terms([public, public]) == {"cacheScope": "public", "ttlMs": 60_000}
    assert cache_terms([public, private]) == {"cacheScope": "private", "ttlMs": 5_000}
    assert cache_terms([public, {}]) == {"cacheScope": "private", "ttlMs": 60_000}
    assert cache_terms([]) == {"cacheScope": "private", "ttlMs": 0}


def test_the_version_a_request_names_in_its_meta() -> None:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    assert meta_version({"params": {"_meta": meta}}) == "2026-07-28"
    assert meta_version({"params": {"_meta": {}}}) is None
    assert meta_version({"params": "odd"}) is None
