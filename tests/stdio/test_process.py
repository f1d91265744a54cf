"""One stdio server process: messages line by line with a real server nobody here wrote
(server-everything over stdio), a 10 MB message, a command that does not exist, a server
that ignores SIGTERM, one that floods stderr; never a zombie or an open pipe left."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import orjson
import pytest

from proxy.stdio.process import ProcessEnded, StdioProcess
from testbed import node

ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"
STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "time.sleep(60)\n"
)
FLOOD = (
    "import sys\n"
    "for n in range(1000):\n"
    "    print(f'noise {n}', file=sys.stderr)\n"
    "print('done', flush=True)\n"
)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def gone(pid: int) -> bool:
    """No such process, not even a zombie."""
    return not Path(f"/proc/{pid}").exists()


async def call(process: StdioProcess, message: dict[str, object]) -> dict[str, object]:
    """Send a request; its answer (what else the server says meanwhile is passed over)."""
    await process.send(orjson.dumps(message))
    while True:
        answer: dict[str, object] = orjson.loads(await asyncio.wait_for(process.receive(), 30))
        if answer.get("id") == message["id"] and "method" not in answer:
            return answer


async def test_a_session_with_server_everything_over_stdio() -> None:
    before = open_fds()
    command = [node.node(), node.package_bin("mcp-server-everything"), "stdio"]
    process = StdioProcess("everything", command)
    await process.start()
    assert process.pid is not None
    pid = process.pid
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    }
    init = await call(
        process, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    )
    assert init["id"] == 1 and "serverInfo" in init["result"]  # type: ignore[operator]
    await process.send(orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    echo = {"name": "echo", "arguments": {"message": "through a pipe"}}
    answer = await call(
        process, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": echo}
    )
    assert "through a pipe" in orjson.dumps(answer["result"]).decode()
    await process.stop()
    assert gone(pid)
    assert open_fds() <= before


async def test_a_10_mb_message_goes_both_ways() -> None:
    process = StdioProcess("echo", [sys.executable, "-c", ECHO])
    await process.start()
    big = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"blob": "x" * 10_000_000}})
    await process.send(big)
    assert await asyncio.wait_for(process.receive(), 30) == big
    await process.stop()


async def test_a_message_with_a_line_break_is_refused() -> None:
    process = StdioProcess("echo", [sys.executable, "-c", ECHO])
    await process.start()
    with pytest.raises(ValueError, match="line break"):
        await process.send(b'{"a":\n1}')
    await process.stop()


async def test_a_command_that_does_not_exist_is_named() -> None:
    process = StdioProcess("ghost", ["/nonexistent/mcp-server"])
    with pytest.raises(OSError, match="backend ghost: cannot run /nonexistent/mcp-server"):
        await process.start()


async def test_a_server_that_ignores_sigterm_is_killed_and_reaped() -> None:
    process = StdioProcess("stubborn", [sys.executable, "-c", STUBBORN], stop_grace=0.3)
    await process.start()
    assert await asyncio.wait_for(process.receive(), 10) == b"ready"
    pid = process.pid
    assert pid is not None
    assert await process.stop() == -9
    assert gone(pid)


async def test_the_end_of_the_process_ends_receiving() -> None:
    process = StdioProcess("brief", [sys.executable, "-c", "print('bye')"])
    await process.start()
    assert await process.receive() == b"bye"
    with pytest.raises(ProcessEnded, match="closed its stdout"):
        await asyncio.wait_for(process.receive(), 10)
    assert await process.stop() == 0


async def test_a_flood_on_stderr_is_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.stdio")
    process = StdioProcess("noisy", [sys.executable, "-c", FLOOD], stderr_lines_per_second=5)
    await process.start()
    assert await asyncio.wait_for(process.receive(), 10) == b"done"
    await asyncio.sleep(0.2)  # the stderr reader catches up
    await process.stop()
    logged = [r.getMessage() for r in caplog.records if "stderr: noise" in r.getMessage()]
    assert 5 <= len(logged) <= 10  # one window, perhaps two
    assert logged[0] == "backend noisy: stderr: noise 0"
    assert process.stderr_dropped > 900
