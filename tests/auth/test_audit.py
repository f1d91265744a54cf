"""The audit log: lines written by a thread, never a token, arguments only as a digest,
and a full queue drops (and counts) rather than waits."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson

from proxy.auth.audit import Audit, arguments_digest
from proxy.auth.settings import AuditSettings
from proxy.metrics import Metrics


def test_lines_reach_the_file_as_json_with_a_utc_time(tmp_path: Path) -> None:
    target = tmp_path / "audit.log"
    metrics = Metrics()
    audit = Audit(AuditSettings(target=str(target)), metrics)
    audit.open()
    for n in range(3):
        audit.record({"principal": "alice", "method": "tools/call", "name": f"t{n}"})
    audit.close()
    lines = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert [line["name"] for line in lines] == ["t0", "t1", "t2"]
    assert all(line["time"].endswith("Z") for line in lines)
    assert metrics.audit_lines.values == {("written",): 3.0}


def test_appends_to_what_is_there(tmp_path: Path) -> None:
    target = tmp_path / "audit.log"
    target.write_bytes(b'{"earlier":true}\n')
    audit = Audit(AuditSettings(target=str(target)), Metrics())
    audit.open()
    audit.record({"n": 1})
    audit.close()
    assert target.read_bytes().splitlines()[0] == b'{"earlier":true}'
    assert len(target.read_bytes().splitlines()) == 2


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read: writes block
    metrics = Metrics()
    audit = Audit(AuditSettings(target=str(fifo), queue=10), metrics)
    audit.open()
    try:
        started = time.perf_counter()
        for n in range(200_000):
            audit.record({"n": n, "padding": "x" * 100})
        elapsed = time.perf_counter() - started
        dropped = metrics.audit_lines.values.get(("dropped",), 0.0)
        assert dropped > 0
        assert elapsed < 30  # never waited on the writer (a bound, not a timing claim)
    finally:
        os.close(reader)  # the writer's next write fails; it goes on
        audit.close(timeout=5)
    assert not any(t.name == "audit-writer" for t in threading.enumerate())


def test_off_records_nothing() -> None:
    audit = Audit(AuditSettings(), Metrics())
    audit.open()
    audit.record({"n": 1})
    audit.close()
    assert audit._thread is None


def test_arguments_digest_is_stable_and_hides_the_arguments() -> None:
    one = orjson.dumps({"id": 1, "params": {"name": "t", "arguments": {"b": 2, "a": "secret"}}})
    two = orjson.dumps({"params": {"arguments": {"a": "secret", "b": 2}, "name": "t"}, "id": 9})
    digest = arguments_digest(one)
    assert digest is not None and len(digest) == 64
    assert digest == arguments_digest(two)
    assert "secret" not in digest
    assert arguments_digest(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}') is None
