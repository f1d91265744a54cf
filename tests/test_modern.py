"""A 2026-07-28 request made fit for a handshake-era session, and its answer made the
client's again (what the stdio bridge and the era bridge both do)."""

from __future__ import annotations

from typing import Any

from proxy.modern import for_handshake, restore

ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def test_the_envelope_goes_and_the_ids_become_the_gateways() -> None:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
    message["params"] = {"name": "t", "_meta": {**ENVELOPE, "progressToken": "p"}}
    sent, original, token = for_handshake(message, "gw-1")
    assert (original, token) == (7, "p")
    assert sent == {
        "jsonrpc": "2.0",
        "id": "gw-1",
        "method": "tools/call",
        "params": {"name": "t", "_meta": {"progressToken": "gw-1"}},
    }
    assert message["id"] == 7  # the client's message is left as it was
    bare, _, none = for_handshake(
        {"id": 1, "method": "tools/list", "params": {"_meta": ENVELOPE}}, "x"
    )
    assert bare["params"] == {} and none is None


def test_the_answer_gets_the_clients_id_and_honest_caching_terms() -> None:
    answer = restore(
        {"jsonrpc": "2.0", "id": "gw-1", "result": {"tools": []}}, 7, None, "tools/list"
    )
    assert answer["id"] == 7
    assert answer["result"] == {
        "tools": [],
        "resultType": "complete",
        "cacheScope": "private",
        "ttlMs": 0,
    }
    call = restore({"id": "gw-1", "result": {"content": []}}, 7, None, "tools/call")
    assert "cacheScope" not in call["result"]
    progress = {"method": "notifications/progress", "params": {"progressToken": "gw-1"}}
    assert restore(progress, 7, "p", "tools/call")["params"]["progressToken"] == "p"
    handshake = restore({"id": "gw-2", "result": {}}, 3, None, "tools/list", modern=False)
    assert handshake == {"id": 3, "result": {}}
