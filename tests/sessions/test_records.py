"""Store calls as the request path makes them: failures answered and counted once."""

from __future__ import annotations

import pytest

from proxy.config import validate
from proxy.errors import StoreDown, TooManySessions
from proxy.metrics import Metrics
from proxy.sessions import Binding, SessionRecord, create_store
from proxy.sessions.records import Records
from testbed.processes import free_port

UP = "http://127.0.0.1:9/mcp"
RECORD = SessionRecord({"default": Binding(UP, "b-1")})


async def test_calls_are_timed_and_a_creation_counted() -> None:
    metrics = Metrics()
    records = Records(create_store(validate({"upstream": [UP]})), metrics)
    await records.create("s1", RECORD)
    assert await records.resolve("s1") == RECORD
    await records.bind("s1", "other", Binding(UP, "o-1"))
    await records.forget("s1")
    assert await records.resolve("s1") is None
    assert metrics.sessions_created.values == {(): 1}
    assert set(metrics.store_latency.series) == {
        ("create",),
        ("resolve",),
        ("bind",),
    }


async def test_a_full_store_is_too_many_sessions() -> None:
    metrics = Metrics()
    settings = validate({"upstream": [UP], "max_sessions": 1})
    records = Records(create_store(settings), metrics)
    await records.create("s1", RECORD)
    with pytest.raises(TooManySessions):
        await records.create("s2", RECORD)
    assert metrics.refused.values == {("sessions_full",): 1}


async def test_an_unreachable_store_is_503_and_counted() -> None:
    metrics = Metrics()
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = create_store(validate({"upstream": [UP], "session_store": url}))
    await store.open()  # an unreachable Redis at start is not fatal
    records = Records(store, metrics)
    try:
        with pytest.raises(StoreDown):
            await records.resolve("s1")
        with pytest.raises(StoreDown):
            await records.create("s1", RECORD)
        await records.forget("s1")  # quietly: the record expires by itself
    finally:
        await store.close()
    assert metrics.store_errors.values == {("resolve",): 1, ("create",): 1}
