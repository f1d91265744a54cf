"""The pieces of an InputRequiredResult made from a handshake-era server's questions
(``proxy/input_required.py``): which question is which, what a retry must repeat, and
what a handshake-era server is sent."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.input_required import Exchange, input_responses, request_digest, without_inputs


class _Response:
    """A finished upstream answer (what :class:`Exchange` reads it through)."""

    status = 200

    def header(self, name: bytes) -> bytes | None:
        return b"application/json"

    async def aread(self, limit: int | None = None) -> bytes:
        return b'{"jsonrpc":"2.0","id":"b","result":{}}'

    def close(self) -> None:
        return None


def _question(request_id: int, message: str = "Name?") -> dict[str, Any]:
    params = {"message": message, "requestedSchema": {}, "_meta": {"n": request_id}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "elicitation/create", "params": params}


async def test_a_question_asked_again_is_told_apart_by_its_turn_not_its_id() -> None:
    exchange = Exchange(_Response(), "b", {}, 0, 1 << 20)  # type: ignore[arg-type]
    first, again = exchange.fingerprint(_question(1)), exchange.fingerprint(_question(7))
    other = exchange.fingerprint(_question(2, "Colour?"))
    assert first.split(".")[0] == again.split(".")[0]  # id and _meta do not count
    assert (first.split(".")[1], again.split(".")[1]) == ("1", "2")
    assert other.split(".")[0] != first.split(".")[0]
    replayed = Exchange(_Response(), "c", {}, 0, 1 << 20)  # type: ignore[arg-type]
    assert replayed.fingerprint(_question(9)) == first  # the same call sent again
    await asyncio.sleep(0)
    exchange.close()
    replayed.close()


async def test_keys_given_before_are_kept_and_new_ones_never_repeat() -> None:
    exchange = Exchange(_Response(), "b", {}, 3, 1 << 20, {"aaa.1": "elicitation-2"})  # type: ignore[arg-type]
    exchange.ask(_question(1), "aaa.1")
    exchange.ask({"jsonrpc": "2.0", "id": 2, "method": "roots/list"}, "bbb.1")
    assert exchange.input_requests() == {
        "elicitation-2": {"method": "elicitation/create", "params": _question(1)["params"]},
        "roots-4": {"method": "roots/list", "params": {}},
    }
    exchange.close()


def test_a_retry_repeats_the_request_but_not_its_meta_or_inputs() -> None:
    params: dict[str, Any] = {"name": "t", "arguments": {"a": 1}, "_meta": {"progressToken": 1}}
    call: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    retry = {**call, "id": 2}
    retry["params"] = {**params, "_meta": {}, "inputResponses": {}, "requestState": "s"}
    assert request_digest(call) == request_digest(retry)
    other = {**call, "params": {**params, "arguments": {"a": 2}}}
    assert request_digest(other) != request_digest(call)
    assert without_inputs(retry)["params"] == {"name": "t", "arguments": {"a": 1}, "_meta": {}}
    assert without_inputs(call) is call


def test_input_responses_must_be_an_object_of_objects() -> None:
    assert input_responses({}) == {}
    assert input_responses({"inputResponses": {"k": {"action": "accept"}}}) == {
        "k": {"action": "accept"}
    }
    assert input_responses({"inputResponses": []}) is None
    assert input_responses({"inputResponses": {"k": "yes"}}) is None
