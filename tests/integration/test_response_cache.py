"""The response cache (``proxy/response_cache.py``) in front of the official SDK's server
of the 2026-07-28 era saying its results may be kept (``--cache-ttl-ms``,
``--cache-scope``): ``test://reads`` says how many times the server read it, so an answer
the gateway gave from its cache shows the count of the read it kept.

- ``public``: one result for every caller; in Redis, for every replica; a
  ``list_changed`` that passes through one replica on a ``subscriptions/listen`` stream
  drops the entry at the other.
- ``private``: kept per authorization context, never served to another.
- ``ttlMs: 0``: never kept. A retry carrying ``inputResponses`` is never answered from the
  cache.
- The conformance suite's ``caching`` scenario passes through a caching gateway.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.client.subscriptions import listen
from mcp.shared.subscriptions import PromptsListChanged

from testbed.processes import free_port, running
from testbed.redis_server import redis_server
from tests.conformance.runner import ensure_installed, run_suite_detailed
from tests.helpers.clients import ACCEPT, sdk_session

pytestmark = pytest.mark.timeout(120)

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _server(stack: ExitStack, *options: str) -> str:
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.everything", "--port", str(port), *options]
    stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
    return f"http://127.0.0.1:{port}/mcp"


def _gateway(stack: ExitStack, upstream: str, *options: str) -> str:
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--upstream", upstream]
    cmd += ["--log-level", "warning", *options]
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(running(cmd, f"{base}/healthz"))
    return f"{base}/mcp"


class Gateways:
    def __init__(
        self,
        public: tuple[str, str],
        private: str,
        zero: str,
        off: str,
        federated: tuple[str, str],
    ) -> None:
        self.public = public
        """Two replicas on one Redis, in front of a server whose results are public."""
        self.private = private
        self.zero = zero
        """In front of a server that says ``ttlMs: 0``."""
        self.off = off
        """``response_cache: false``, in front of the public server."""
        self.federated = federated
        """Federations: the public and the private server; the public and the ttl-0."""


def _federation(stack: ExitStack, tmp: Path, *upstreams: str) -> str:
    lines = ["backends:"]
    for n, url in enumerate(upstreams):
        lines += [f"  - name: b{n}", f"    prefix: b{n}_", f"    replicas: [{url}]"]
    lines += ["log_level: warning"]
    config = tmp / f"federation-{len(list(tmp.iterdir()))}.yaml"
    config.write_text("\n".join(lines) + "\n")
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(running(cmd, f"{base}/healthz"))
    return f"{base}/mcp"


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    tmp = tmp_path_factory.mktemp("cache")
    with ExitStack() as stack:
        public = _server(stack, "--cache-ttl-ms", "60000", "--cache-scope", "public")
        private = _server(stack, "--cache-ttl-ms", "60000", "--cache-scope", "private")
        zero = _server(stack, "--cache-ttl-ms", "0")
        redis = stack.enter_context(redis_server())
        # max-answer-size: the most the gateway reads whole (test://large is more).
        shared = ("--session-store", redis.url(), "--workers", "1", "--max-answer-size", "1500000")
        yield Gateways(
            (_gateway(stack, public, *shared), _gateway(stack, public, *shared)),
            _gateway(stack, private),
            _gateway(stack, zero),
            _gateway(stack, public, "--response-cache", "false"),
            (_federation(stack, tmp, public, private), _federation(stack, tmp, public, zero)),
        )


def _request(
    url: str, method: str, params: dict[str, Any], authorization: str | None = None
) -> dict[str, Any]:
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": method}
    if "uri" in params:
        headers["mcp-name"] = params["uri"]
    if authorization is not None:
        headers["authorization"] = authorization
    body = {"jsonrpc": "2.0", "id": "r-1", "method": method, "params": {**params, "_meta": META}}
    answer = httpx.post(url, json=body, headers=headers, timeout=15)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    assert found["id"] == "r-1"
    return found["result"]  # type: ignore[no-any-return]


def _reads(url: str, authorization: str | None = None, **extra: Any) -> tuple[int, dict[str, Any]]:
    """The count ``test://reads`` gave, and the result's caching terms."""
    result = _request(url, "resources/read", {"uri": "test://reads", **extra}, authorization)
    count = int(result["contents"][0]["text"].removeprefix("read "))
    return count, {"ttlMs": result["ttlMs"], "cacheScope": result["cacheScope"]}


def _metric(url: str, series: str) -> float:
    text = httpx.get(url.removesuffix("/mcp") + "/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_public_result_is_served_to_every_caller_from_every_replica(gateways: Gateways) -> None:
    one, other = gateways.public
    first, terms = _reads(one, "Bearer alice")
    assert terms == {"ttlMs": 60000, "cacheScope": "public"}
    again, kept_terms = _reads(other, "Bearer bob")  # another caller, the other replica
    assert again == first
    assert kept_terms["cacheScope"] == "public"
    assert 0 < kept_terms["ttlMs"] <= 60000  # what is left of it, not more
    hit = 'proxy_response_cache_total{method="resources/read",outcome="hit"}'
    assert _metric(other, hit) >= 1
    # Without the cache, every read reaches the server.
    unkept = _reads(gateways.off)[0]
    assert unkept > first
    assert _reads(gateways.off)[0] == unkept + 1


def test_a_result_too_large_to_keep_is_relayed_whole_and_not_kept(gateways: Gateways) -> None:
    """Larger than the gateway reads whole (``max_answer_size``): relayed as it comes."""
    url = gateways.public[0]
    counts = []
    for _ in range(2):
        result = _request(url, "resources/read", {"uri": "test://large"})
        text = result["contents"][0]["text"]
        assert text.endswith("x" * 1000) and len(text) > 2_000_000
        counts.append(int(text.split()[1]))
    assert counts[1] == counts[0] + 1  # both reached the server


def test_a_private_result_is_kept_for_its_caller_only(gateways: Gateways) -> None:
    url = gateways.private
    alice, terms = _reads(url, "Bearer alice")
    assert terms["cacheScope"] == "private"
    assert _reads(url, "Bearer alice")[0] == alice
    bob = _reads(url, "Bearer bob")[0]
    assert bob != alice  # the server read it again for bob
    assert _reads(url, "Bearer bob")[0] == bob
    assert _reads(url)[0] not in (alice, bob)  # no credentials: a context of its own


def test_a_result_of_ttl_zero_is_never_kept(gateways: Gateways) -> None:
    first, terms = _reads(gateways.zero)
    assert terms["ttlMs"] == 0
    assert _reads(gateways.zero)[0] == first + 1
    stored = 'proxy_response_cache_total{method="resources/read",outcome="stored"}'
    assert _metric(gateways.zero, stored) == 0
    # After an answer that may not be kept, the next ones are not looked up (nor read
    # whole): relayed as they come.
    miss = 'proxy_response_cache_total{method="resources/read",outcome="miss"}'
    assert _metric(gateways.zero, miss) == 1


def test_an_input_required_retry_is_never_answered_from_the_cache(gateways: Gateways) -> None:
    url = gateways.private
    kept, _ = _reads(url, "Bearer carol")
    assert _reads(url, "Bearer carol")[0] == kept
    retried, _ = _reads(url, "Bearer carol", inputResponses={})
    assert retried > kept  # it went to the server
    assert _reads(url, "Bearer carol")[0] == kept  # and what it got was not kept


async def test_a_list_change_heard_at_one_replica_drops_the_list_at_the_other(
    gateways: Gateways,
) -> None:
    one, other = gateways.public
    miss = 'proxy_response_cache_total{method="prompts/list",outcome="miss"}'
    _request(other, "prompts/list", {})
    _request(other, "prompts/list", {})
    misses = _metric(other, miss)
    _request(other, "prompts/list", {})
    assert _metric(other, miss) == misses  # kept
    async with (
        sdk_session(one, "modern") as (client, _),
        listen(client, prompts_list_changed=True) as subscription,
    ):
        assert subscription.honored.prompts_list_changed is True
        await client.call_tool("test_trigger_prompt_change", {})
        event = await asyncio.wait_for(anext(aiter(subscription)), 10)
        assert isinstance(event, PromptsListChanged)
    for _ in range(50):  # the change is noted as the notification passes
        _request(other, "prompts/list", {})
        if _metric(other, miss) > misses:
            break
        await asyncio.sleep(0.1)
    assert _metric(other, miss) == misses + 1


def test_a_merged_list_is_kept_on_the_strictest_terms_of_its_parts(gateways: Gateways) -> None:
    """public + private: the merged list is private (kept per caller); public + ttl 0:
    not kept at all."""
    mixed, unkept = gateways.federated
    hit = 'proxy_response_cache_total{method="tools/list",outcome="hit"}'
    stored = 'proxy_response_cache_total{method="tools/list",outcome="stored"}'
    first = _request(mixed, "tools/list", {}, "Bearer alice")
    assert (first["cacheScope"], first["ttlMs"]) == ("private", 60000)
    assert {t["name"] for t in first["tools"]} >= {"b0_test_simple_text", "b1_test_simple_text"}
    again = _request(mixed, "tools/list", {}, "Bearer alice")
    assert again["tools"] == first["tools"]
    assert _metric(mixed, hit) == 1
    _request(mixed, "tools/list", {}, "Bearer bob")  # another context: not alice's entry
    assert _metric(mixed, hit) == 1
    assert _metric(mixed, stored) == 2
    for _ in range(2):
        assert _request(unkept, "tools/list", {})["ttlMs"] == 0
    assert _metric(unkept, stored) == 0


def test_the_conformance_caching_scenario_passes_through_a_caching_gateway(
    gateways: Gateways,
) -> None:
    ensure_installed()
    run = run_suite_detailed(gateways.public[0], MODERN, scenario="caching", timeout_s=100)
    assert run.scenarios["caching"].status == "passed", run.scenarios["caching"]
    stored = 'proxy_response_cache_total{method="tools/list",outcome="stored"}'
    assert _metric(gateways.public[0], stored) >= 1
