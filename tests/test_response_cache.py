"""The response cache's rules (``proxy/response_cache.py``): what may be kept, under which
key, for how long, and what a kept answer says."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from proxy.metrics import Metrics
from proxy.response_cache import ResponseCache, Stored, cacheable

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "progressToken": 7}


def _answer(**result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "result": result}


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        (_answer(tools=[], ttlMs=1000, cacheScope="public"), ("public", 1000)),
        (_answer(tools=[], ttlMs=5, cacheScope="private", resultType="complete"), ("private", 5)),
        (_answer(tools=[], ttlMs=0, cacheScope="public"), None),
        (_answer(tools=[], ttlMs=1000), None),
        (_answer(tools=[], ttlMs=1000, cacheScope="shared"), None),
        (_answer(tools=[], ttlMs=True, cacheScope="public"), None),
        (_answer(tools=[], ttlMs=1.5, cacheScope="public"), None),
        (_answer(ttlMs=1000, cacheScope="public", resultType="input_required"), None),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "no"}}, None),
    ],
)
def test_only_a_complete_result_with_a_ttl_and_a_scope_is_kept(
    message: dict[str, Any], kept: tuple[str, int] | None
) -> None:
    found = cacheable(message)
    assert (None if found is None else found[1:]) == kept
    if found is not None:
        assert orjson.loads(found[0]) == {
            k: v for k, v in message["result"].items() if k not in ("ttlMs", "cacheScope")
        }


def test_a_kept_answer_carries_the_callers_id_and_the_time_left() -> None:
    stored = Stored(b'{"tools":[]}', "public", expires=10_000, generation=0)
    answer = orjson.loads(stored.answer(b'"abc"', now_ms=7_500))
    assert answer == {
        "jsonrpc": "2.0",
        "id": "abc",
        "result": {"ttlMs": 2500, "cacheScope": "public", "tools": []},
    }
    empty = Stored(b"{}", "private", expires=1, generation=0)
    assert orjson.loads(empty.answer(b"3", now_ms=5))["result"] == {
        "ttlMs": 0,
        "cacheScope": "private",
    }
    assert Stored.decode(stored.encode().decode()) is not None  # as the Redis client gives it
    assert Stored.decode(b"garbage") is None


def test_keys_part_callers_but_not_what_does_not_change_the_answer() -> None:
    cache = ResponseCache(1 << 20, Metrics())
    key = cache.key("b", "tools/list", {"_meta": META}, "alice")
    assert key is not None
    other_meta = cache.key("b", "tools/list", {"_meta": {**META, "progressToken": 8}}, "alice")
    bob = cache.key("b", "tools/list", {"_meta": META}, "bob")
    page = cache.key("b", "tools/list", {"cursor": "2", "_meta": META}, "alice")
    assert other_meta is not None and bob is not None and page is not None
    assert (other_meta.public, other_meta.private) == (key.public, key.private)
    assert bob.public == key.public and bob.private != key.private
    assert page.public != key.public
    assert cache.key("b", "tools/list", {"inputResponses": {}}, "alice") is None
    assert cache.key("b", "tools/list", {"requestState": "s"}, "alice") is None


async def test_entries_lapse_go_on_a_change_and_the_least_recently_used_make_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1_000_000]
    monkeypatch.setattr("proxy.response_cache._now_ms", lambda: now[0])
    metrics = Metrics()
    cache = ResponseCache(30, metrics)
    first = cache.key("b", "tools/list", {}, "a")
    second = cache.key("b", "resources/read", {"uri": "x"}, "a")
    third = cache.key("b", "resources/read", {"uri": "y"}, "a")
    assert first is not None and second is not None and third is not None
    await cache.put(first, b'{"tools":[1]}', "public", 1000)
    await cache.put(second, b'{"c":[2]}', "private", 1000)
    assert await cache.get(first) is not None  # now the most recently used
    await cache.put(third, b'{"c":[3333]}', "public", 1000)  # past 30 bytes: one goes
    assert await cache.get(second) is None
    assert await cache.get(first) is not None
    assert metrics.response_cache_evictions.values == {("resources/read",): 1.0}
    await cache.changed("b", "notifications/tools/list_changed")
    assert await cache.get(first) is None
    assert await cache.get(third) is not None
    now[0] += 1000
    assert await cache.get(third) is None
    assert metrics.response_cache_size.values[()] == 0


async def test_requests_for_an_answer_being_fetched_wait_for_it() -> None:
    metrics = Metrics()
    cache = ResponseCache(1 << 20, metrics)
    key = cache.key("b", "tools/list", {}, "a")
    assert key is not None
    assert await cache.get(key) is None
    assert cache.lead(key)
    assert not cache.lead(key)  # one fetches; the others wait
    waiting = asyncio.ensure_future(cache.get(key))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await cache.put(key, b'{"tools":[]}', "public", 1000)
    cache.release(key)
    found = await asyncio.wait_for(waiting, 1)
    assert found is not None and found.body == b'{"tools":[]}'
    assert metrics.response_cache.values[("tools/list", "hit")] == 1
    assert cache.lead(key)  # released: the next miss may fetch again
    cache.release(key)
