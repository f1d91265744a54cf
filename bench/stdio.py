"""A local (stdio) server behind the gateway, side by side with the same server over HTTP
and with the other ways people put a stdio server on HTTP.

    python -m bench.stdio                       # 3 interleaved rounds of 4 s, c=8
    python -m bench.stdio --rounds 5 --seconds 3 --concurrency 16
    python -m bench.stdio --server node --targets stdio,fastmcp,mcp-proxy

The server is one built with the official Python SDK (``testbed.servers.stdio_tools``),
run the same way for every target:

- ``http``: over Streamable HTTP (uvicorn), the gateway in front of it;
- ``stdio``: as a stdio process, the gateway in front (``serve -- python -m ... --stdio``);
- ``fastmcp``: FastMCP's proxy (``create_proxy`` over an ``mcpServers`` entry) in front of
  the stdio process, served over HTTP;
- ``relayed``: as ``stdio``, but two gateways on one Redis with ``peer_address``: the
  session starts at one, and every call goes to the other, which relays it to the first's
  bridge over TCP (the extra hop a replica without the session's process pays);
- ``mcp-proxy``: sparfenyuk's ``mcp-proxy --port N -- python -m ... --stdio`` (installed
  into a virtual environment of its own under ``~/.cache``: it needs the SDK 1.x).

Each target gets one client session and tools/call ``echo`` from
``--concurrency`` tasks for ``--seconds``; rounds are interleaved (round i of every target
before round i+1 of any). Printed: requests a second and CPU per request of the target's
processes (gateway or proxy and the server it runs), medians over the rounds, with ratios
to ``stdio``; then the time from initialize to a first answer of a new session through
the gateway, median over ``--starts``: with a process started for it (cold), and with one
started ahead of demand (``min_idle: 1``, a gateway of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.run import run_wrk
from testbed import node
from testbed.processes import cpu_seconds, free_port, running
from testbed.redis_server import redis_server

SERVER = [sys.executable, "-m", "testbed.servers.stdio_tools"]
NODE_CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"message": "hello"}},
}
HANDSHAKE = "2025-11-25"
ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": HANDSHAKE,
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    },
}
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "hello"}},
}
FASTMCP_PROXY = """
import sys
from fastmcp.server import create_proxy
config = {"mcpServers": {"local": {"command": sys.argv[2], "args": sys.argv[3:]}}}
create_proxy(config).run(transport="http", host="127.0.0.1", port=int(sys.argv[1]),
                         show_banner=False, log_level="warning")
"""


MCP_PROXY = "mcp-proxy==0.13.0"
"""sparfenyuk's mcp-proxy needs the official SDK 1.x: it gets a virtual environment of its own."""


def mcp_proxy() -> str:
    """The mcp-proxy program, installed from PyPI into a cached environment once."""
    venv = Path.home() / ".cache" / "mcp-fastproxy-bench" / MCP_PROXY.replace("==", "-")
    program = venv / "bin" / "mcp-proxy"
    if not program.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", MCP_PROXY]
        subprocess.run(pip, check=True)
    return str(program)


@contextlib.contextmanager
def targets(names: list[str], stdio: list[str]) -> Iterator[dict[str, tuple[str, list[int], str]]]:
    """Each target's MCP URL, the processes whose trees are measured, and the URL that
    starts the session."""
    with contextlib.ExitStack() as stack:
        found: dict[str, tuple[str, list[int], str]] = {}
        gateway = [sys.executable, "-m", "proxy", "serve", "--log-level", "warning"]
        if "http" in names:
            port = free_port()
            server = stack.enter_context(
                running([*SERVER, "--port", str(port)], f"tcp://127.0.0.1:{port}")
            )
            up = free_port()
            cmd = [*gateway, "--port", str(up), "--upstream", f"http://127.0.0.1:{port}/mcp"]
            proc = stack.enter_context(running(cmd, f"http://127.0.0.1:{up}/healthz"))
            mcp = f"http://127.0.0.1:{up}/mcp"
            found["http"] = (mcp, [proc.pid, server.pid], mcp)
        if "stdio" in names:
            port = free_port()
            cmd = [*gateway, "--port", str(port), "--", *stdio]
            proc = stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
            mcp = f"http://127.0.0.1:{port}/mcp"
            found["stdio"] = (mcp, [proc.pid], mcp)
        if "relayed" in names:
            redis = stack.enter_context(redis_server())
            peers = ["--session-store", redis.url(), "--peer-address", "127.0.0.1"]
            peers += ["--peer-secret", "env:BENCH_PEER_SECRET"]
            urls, pids = [], []
            for _ in range(2):
                port = free_port()
                cmd = [*gateway, "--port", str(port), *peers, "--", *stdio]
                env = {**os.environ, "BENCH_PEER_SECRET": "bench-peer-secret-0123456789"}
                proc = stack.enter_context(
                    running(cmd, f"http://127.0.0.1:{port}/healthz", env=env)
                )
                urls.append(f"http://127.0.0.1:{port}/mcp")
                pids.append(proc.pid)
            found["relayed"] = (urls[1], pids, urls[0])
        if "fastmcp" in names:
            port = free_port()
            script = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "proxy.py"
            script.write_text(FASTMCP_PROXY)
            cmd = [sys.executable, str(script), str(port), *stdio]
            proc = stack.enter_context(running(cmd, f"tcp://127.0.0.1:{port}", timeout=60))
            mcp = f"http://127.0.0.1:{port}/mcp"
            found["fastmcp"] = (mcp, [proc.pid], mcp)
        if "mcp-proxy" in names:
            port = free_port()
            cmd = [mcp_proxy(), "--port", str(port), "--host", "127.0.0.1", "--", *stdio]
            proc = stack.enter_context(running(cmd, f"tcp://127.0.0.1:{port}", timeout=60))
            mcp = f"http://127.0.0.1:{port}/mcp"
            found["mcp-proxy"] = (mcp, [proc.pid], mcp)
        yield found


@contextlib.contextmanager
def warm_gateway(stdio: list[str]) -> Iterator[str]:
    """The gateway with the stdio server as a backend keeping one process started ahead
    of demand; its MCP URL."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gateway.yaml"
        entry = {"name": "local", "command": stdio[0], "args": stdio[1:], "min_idle": 1}
        config.write_text(f"backends:\n  - {json.dumps(entry)}\n")
        port = free_port()
        cmd = [sys.executable, "-m", "proxy", "serve", "--log-level", "warning"]
        cmd += ["--port", str(port), "--config", str(config)]
        with running(cmd, f"http://127.0.0.1:{port}/healthz"):
            yield f"http://127.0.0.1:{port}/mcp"


async def open_session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    answer = await http.post(url, json=INIT, headers={"accept": ACCEPT})
    answer.raise_for_status()
    headers = {"accept": ACCEPT, "mcp-protocol-version": HANDSHAKE}
    if "mcp-session-id" in answer.headers:
        headers["mcp-session-id"] = answer.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await http.post(url, json=note, headers=headers)
    return headers


async def load(
    url: str, pids: list[int], concurrency: int, seconds: float, opener: str, call: Any
) -> tuple[float, float]:
    """Requests a second and CPU seconds per request of the process trees of `pids`,
    from wrk (``bench/load/mcp.lua``: a request id of its own for each request, every
    answer checked); the session is started at `opener`."""
    async with httpx.AsyncClient(timeout=60) as http:
        headers = await open_session(http, opener)
        await http.post(url, json=call, headers=headers)  # warm
        with tempfile.TemporaryDirectory() as tmp:
            body = Path(tmp) / "body.json"
            body.write_bytes(
                json.dumps({**call, "id": 0}).replace('"id": 0', '"id": @@ID@@').encode()
            )
            sent = {**headers, "content-type": "application/json"}
            cpu = sum(cpu_seconds(pid) for pid in pids)  # each with its descendants
            result = await asyncio.to_thread(run_wrk, url, body, sent, concurrency, 2, 0, seconds)
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
        with contextlib.suppress(httpx.HTTPError):
            await http.delete(url, headers=headers)
    if result["non200"] or result["bad"] or result["timeout"]:
        raise SystemExit(f"{url}: failed answers: {result}")
    count = result["responses"]
    return count / (result["duration_us"] / 1e6), cpu / max(count, 1)


async def starts(url: str, count: int, call: Any, pause: float = 0.0) -> float:
    """Median seconds from initialize to the first answer of a new session (`pause`
    seconds between two: time for processes started ahead of demand to be there again)."""
    times = []
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(count):
            await asyncio.sleep(pause)
            started = time.monotonic()
            headers = await open_session(http, url)
            await http.post(url, json=call, headers=headers)
            times.append(time.monotonic() - started)
            await http.delete(url, headers=headers)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stdio", description=__doc__)
    parser.add_argument("--targets", default="http,stdio,fastmcp,mcp-proxy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument(
        "--server",
        choices=("sdk", "node"),
        default="sdk",
        help="sdk: the Python SDK server (also over HTTP); node: the reference "
        "server-everything (npm) as stdio only, a server that costs little per call",
    )
    args = parser.parse_args(argv)
    names = args.targets.split(",")
    stdio, call = SERVER, CALL
    if args.server == "node":
        stdio = [node.node(), node.package_bin("mcp-server-everything"), "stdio"]
        call = NODE_CALL
        if "http" in names:
            parser.error("--server node runs stdio only: leave out the http target")
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    failed: dict[str, str] = {}
    with targets(names, stdio) as found:
        for round_ in range(1, args.rounds + 1):
            for name in names:
                if name in failed:
                    continue
                url, pids, opener = found[name]
                try:
                    rps, cpu = asyncio.run(
                        load(url, pids, args.concurrency, args.seconds, opener, call)
                    )
                except (
                    SystemExit,
                    RuntimeError,
                    httpx.HTTPError,
                    OSError,
                ) as exc:  # the target broke
                    failed[name] = f"failed in round {round_}: {str(exc)[:160]}"
                    print(f"# round {round_}/{args.rounds} {name}: {failed[name]}", flush=True)
                    continue
                results[name].append((rps, cpu))
                print(
                    f"# round {round_}/{args.rounds} {name}: {rps:,.0f} req/s, "
                    f"{cpu * 1e6:,.0f} µs CPU/req",
                    flush=True,
                )
        start = warm = None
        if "stdio" in found and "stdio" not in failed:
            start = asyncio.run(starts(found["stdio"][0], args.starts, call))
            with warm_gateway(stdio) as url:
                warm = asyncio.run(starts(url, args.starts, call, pause=3.0))
    base = results.get("stdio", [])
    print(
        f"\n| target | RPS | ÷ stdio (paired) | CPU µs/req | (c={args.concurrency}, medians "
        f"of {args.rounds} rounds of {args.seconds:g} s) |"
    )
    print("|---|--:|--:|--:|---|")
    for name in names:
        rounds = results[name]
        if not rounds:
            print(f"| {name} | - | - | - | {failed.get(name, '')} |")
            continue
        rps = statistics.median(r for r, _ in rounds)
        cpu = statistics.median(c for _, c in rounds)
        pairs = [r / b for (r, _), (b, _) in zip(rounds, base, strict=False)]
        ratio = f"{statistics.median(pairs):.2f}" if pairs else "-"
        print(f"| {name} | {rps:,.0f} | {ratio} | {cpu * 1e6:,.0f} | {failed.get(name, '')} |")
    if start is not None and warm is not None:
        print(
            f"\nsession start through the gateway, median of {args.starts}: "
            f"{start * 1000:.0f} ms with a process started for it (cold), "
            f"{warm * 1000:.0f} ms with one started ahead of demand (min_idle: 1)"
        )


if __name__ == "__main__":
    main()
