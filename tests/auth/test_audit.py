"""The audit log: lines written by a thread, never a token, arguments only as a digest,
and a full queue drops (and counts) rather than waits."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson

from proxy.auth.audit import Audit, Line, arguments_digest, session_fingerprint
from proxy.auth.principal import Principal
from proxy.auth.settings import AuditSettings
from proxy.metrics import Metrics

ALICE = Principal("https://idp.example", "alice", "cli")


def line(name: str, body: bytes | None = None, principal: Principal | None = ALICE) -> Line:
    """What a request queues: a call of tool `name`."""
    where = ("files", "http://f/mcp")
    return (principal, b"sid", "tools/call", name, *where, "ok", 200, 0.0012, b"7", None, body)


def test_lines_reach_the_file_as_json_with_a_utc_time(tmp_path: Path) -> None:
    target = tmp_path / "audit.log"
    metrics = Metrics()
    audit = Audit(AuditSettings(target=str(target)), metrics)
    audit.open()
    for n in range(3):
        audit.record(line(f"t{n}"))
    audit.close()
    written = [orjson.loads(text) for text in target.read_bytes().splitlines()]
    assert [w["name"] for w in written] == ["t0", "t1", "t2"]
    assert written[0] == {
        "time": written[0]["time"],
        "principal": "alice",
        "issuer": "https://idp.example",
        "client_id": "cli",
        "session": session_fingerprint(b"sid"),
        "method": "tools/call",
        "name": "t0",
        "backend": "files",
        "replica": "http://f/mcp",
        "outcome": "ok",
        "status": 200,
        "latency_ms": 1.2,
        "request_id": "7",
    }
    assert all(w["time"].endswith("Z") and "T" in w["time"] for w in written)
    assert metrics.audit_lines.values == {("written",): 3.0}


def test_the_request_id_is_written_as_sent_in_a_json_string(tmp_path: Path) -> None:
    target = tmp_path / "audit.log"
    audit = Audit(AuditSettings(target=str(target)), Metrics())
    audit.open()
    sent = [b"7", b'"a\\"b"', b"-1", None]  # a number, a string with an escape, ..., none
    for request_id in sent:
        audit.record((*line("t")[:9], request_id, 'r"1', None))
    audit.close()
    written = [orjson.loads(text) for text in target.read_bytes().splitlines()]
    assert [w["request_id"] for w in written] == ["7", '"a\\"b"', "-1", None]
    assert {w["rule"] for w in written} == {'r"1'}


def test_the_arguments_appear_only_as_a_digest(tmp_path: Path) -> None:
    target = tmp_path / "audit.log"
    audit = Audit(AuditSettings(target=str(target), arguments="digest"), Metrics())
    audit.open()
    body = orjson.dumps({"params": {"name": "t", "arguments": {"password": "hunter2"}}})
    audit.record(line("t", body))
    audit.close()
    text = target.read_text()
    assert "hunter2" not in text
    assert orjson.loads(text)["arguments_sha256"] == arguments_digest(body)


def test_appends_to_what_is_there(tmp_path: Path) -> None:
    target = tmp_path / "audit.log"
    target.write_bytes(b'{"earlier":true}\n')
    audit = Audit(AuditSettings(target=str(target)), Metrics())
    audit.open()
    audit.record(line("t"))
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
            audit.record(line(f"t{n}"))
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
    audit.record(line("t"))
    audit.close()
    assert audit.log.queued == []
    assert not any(t.name == "audit-writer" for t in threading.enumerate())


def test_arguments_digest_is_stable_and_hides_the_arguments() -> None:
    one = orjson.dumps({"id": 1, "params": {"name": "t", "arguments": {"b": 2, "a": "secret"}}})
    two = orjson.dumps({"params": {"arguments": {"a": "secret", "b": 2}, "name": "t"}, "id": 9})
    digest = arguments_digest(one)
    assert digest is not None and len(digest) == 64
    assert digest == arguments_digest(two)
    assert "secret" not in digest
    assert arguments_digest(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}') is None


def test_a_session_appears_as_a_fingerprint_never_as_its_id() -> None:
    session_id = b"QfhDv6Xt9nfR7cmjbfKC7DRI-C2Fy3bJ"
    fingerprint = session_fingerprint(session_id)
    assert len(fingerprint) == 16
    assert fingerprint == session_fingerprint(session_id)  # lines of a session go together
    assert fingerprint != session_fingerprint(b"another-session-id-0000000000000")
    assert session_id.decode() not in fingerprint
