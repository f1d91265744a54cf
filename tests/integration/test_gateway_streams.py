"""Streams through the gateway: unbuffered SSE, the standalone GET stream, disconnects."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from contextlib import aclosing

import httpx
import mcp.types as types
import pytest
from mcp.client.session import IncomingMessage

from tests.helpers.clients import (
    MODERN_META,
    Era,
    handshake_headers,
    linger_state,
    messages,
    modern_headers,
    raw_initialize,
    sdk_session,
)
from tests.helpers.gateways import Gateway, Upstream

pytestmark = pytest.mark.timeout(20)

STEPS = 4
INTERVAL = 0.3  # the tool reports a step, then sleeps this long: 1.2 s in all


async def _settled(http: httpx.AsyncClient, upstream: Upstream, marker: str) -> str | None:
    """The `linger` call's state once it is no longer running (or after 5 s)."""
    deadline = time.monotonic() + 5.0
    state = await linger_state(http, upstream, marker)
    while state == "started" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        state = await linger_state(http, upstream, marker)
    return state


# --------------------------------------------------------------------------- unbuffered SSE


@pytest.mark.parametrize("era", ["handshake", "modern"])
async def test_progress_notifications_arrive_as_they_are_sent(gateway: Gateway, era: Era) -> None:
    arrivals: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append(time.monotonic())

    async with sdk_session(gateway.url, era) as (session, _):
        started = time.monotonic()
        result = await session.call_tool(
            "count_slowly", {"steps": STEPS, "interval": INTERVAL}, progress_callback=on_progress
        )
        finished = time.monotonic()

    assert not result.is_error
    assert len(arrivals) == STEPS
    offsets = [round(t - started, 2) for t in arrivals]
    # The first step left the upstream at ~0 s; the call ends at ~1.2 s. A buffering hop
    # would deliver every notification together with the result.
    assert arrivals[0] - started < 0.3, offsets
    assert finished - arrivals[0] > 0.8, offsets
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > INTERVAL / 2, offsets


# --------------------------------------------------------------------------- GET stream


async def test_server_notification_reaches_the_client_over_the_get_stream(
    gateway: Gateway,
) -> None:
    updated = asyncio.Event()
    uri = f"test://ticker/{uuid.uuid4().hex}"

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification) and message.params.uri == uri:
            updated.set()

    async with sdk_session(gateway.url, "handshake", message_handler=on_message) as (session, wire):
        # Sent 0.2 s after the call returned: the call's own stream is closed by then.
        # Retried because the client opens its GET stream asynchronously after initialize.
        for _ in range(5):
            await session.call_tool("announce_later", {"uri": uri, "delay": 0.2})
            try:
                await asyncio.wait_for(updated.wait(), timeout=1.0)
                break
            except TimeoutError:
                continue
        get_streams = [
            r
            for r in wire.responses
            if r.request.method == "GET"
            and r.headers.get("content-type", "").startswith("text/event-stream")
        ]

    assert updated.is_set(), "notifications/resources/updated never reached the client"
    assert [r.status_code for r in get_streams] == [200]


async def test_get_stream_can_be_reopened_after_the_client_dropped_it(gateway: Gateway) -> None:
    """The upstream allows one GET stream per session (409 otherwise): when the client drops
    its stream, the gateway must drop its upstream stream too, or the client cannot resume."""
    async with httpx.AsyncClient(timeout=10) as http:
        sid = await raw_initialize(http, gateway.url)
        headers = handshake_headers(sid)
        statuses = []
        for _ in range(2):
            async with http.stream("GET", gateway.url, headers=headers) as stream:
                statuses.append(stream.status_code)
            await asyncio.sleep(0.3)  # closed unread: the client went away
    assert statuses == [200, 200]


# --------------------------------------------------------------------------- disconnects


def _linger_call(marker: str, seconds: float, *, meta: dict[str, object]) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "linger",
            "arguments": {"marker": marker, "seconds": seconds},
            "_meta": meta,
        },
    }


async def test_handshake_era_disconnect_does_not_cancel_the_call(
    gateway: Gateway, replica_a: Upstream
) -> None:
    """Before 2026-07-28 a dropped connection is not a cancellation (the spec says so)."""
    marker = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as http:
        sid = await raw_initialize(http, gateway.url)
        body = _linger_call(marker, 1.0, meta={"progressToken": marker})
        async with (
            http.stream("POST", gateway.url, headers=handshake_headers(sid), json=body) as resp,
            aclosing(messages(resp)) as stream,
        ):
            first = await anext(stream)
            assert first["method"] == "notifications/progress"
        # The response is closed unread: the connection is gone.
        assert await linger_state(http, replica_a, marker) == "started"
        assert await _settled(http, replica_a, marker) == "completed"


async def test_modern_era_disconnect_cancels_the_upstream_call(
    gateway: Gateway, replica_a: Upstream
) -> None:
    """2026-07-28: closing the response stream is the cancellation signal."""
    marker = uuid.uuid4().hex
    headers = modern_headers("tools/call", "linger")
    async with httpx.AsyncClient(timeout=10) as http:
        body = _linger_call(marker, 3.0, meta={**MODERN_META, "progressToken": marker})
        async with (
            http.stream("POST", gateway.url, headers=headers, json=body) as resp,
            aclosing(messages(resp)) as stream,
        ):
            first = await anext(stream)
            assert first["method"] == "notifications/progress"
        assert await _settled(http, replica_a, marker) == "cancelled"


async def test_modern_era_disconnect_before_response_headers_cancels_the_upstream_call(
    gateway: Gateway, replica_a: Upstream
) -> None:
    """A silent call has no response headers yet (the SDK defers them up to 15 s); a client
    that gives up in that window must still cancel it upstream."""
    marker = uuid.uuid4().hex
    headers = modern_headers("tools/call", "linger")
    async with httpx.AsyncClient(timeout=10) as http:
        body = _linger_call(marker, 4.0, meta=MODERN_META)  # no progress token: no early event
        sent = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await http.post(gateway.url, headers=headers, json=body)
        state = await _settled(http, replica_a, marker)  # None: the call never got there
        assert state == "cancelled", f"{state} {time.monotonic() - sent:.1f} s after it was sent"


async def test_modern_era_sdk_cancellation_reaches_the_upstream(
    gateway: Gateway, replica_a: Upstream
) -> None:
    """The SDK cancels a 2026-07-28 call by aborting its POST; the gateway passes that on."""
    marker = uuid.uuid4().hex
    progressed = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.set()

    async with sdk_session(gateway.url, "modern") as (session, _):
        call = asyncio.create_task(
            session.call_tool(
                "linger", {"marker": marker, "seconds": 3.0}, progress_callback=on_progress
            )
        )
        await asyncio.wait_for(progressed.wait(), timeout=5.0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    async with httpx.AsyncClient(timeout=10) as http:
        assert await _settled(http, replica_a, marker) == "cancelled"
