"""tools/list through a federating gateway: 10 backends, one of them dead.

    python -m bench.federation                   # 9 SDK servers + 1 that never answers
    python -m bench.federation --backends 5 --requests 200 --list-timeout 1

Starts N-1 official-SDK servers (``testbed.servers.streaming``) and one "dead" backend: a
TCP listener that accepts connections and never answers (the worst kind: no quick
connection refusal), then one gateway (memory store) with all N as prefixed backends.
Measures, for one client session:

- the fastest backend's own tools/list latency, direct (the floor);
- merged tools/list once the live backends' lists are cached (medians over
  ``--requests``): the dead backend, left out recently, is not waited for again;
- the worst case: a list after ``ABSENT_SECONDS``, when the dead backend is retried and
  waited for, at most ``--list-timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from proxy.federation.catalog import ABSENT_SECONDS
from testbed.processes import black_hole, free_port, running

ACCEPT = {"accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    },
}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


async def session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    answer = await http.post(url, json=INIT, headers=ACCEPT)
    answer.raise_for_status()
    headers = ACCEPT | {
        "mcp-session-id": answer.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await http.post(url, json=note, headers=headers)
    return headers


async def timed_list(
    http: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[float, int]:
    started = time.perf_counter()
    answer = await http.post(url, json=LIST, headers=headers)
    took = time.perf_counter() - started
    answer.raise_for_status()
    body = answer.text
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        body = next(
            line[5:] for line in body.splitlines() if line.startswith("data:") and line[5:].strip()
        )
    tools = orjson.loads(body)["result"]["tools"]
    return took * 1000, len(tools)


async def measure(args: argparse.Namespace, direct: str, gateway: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        direct_headers = await session(http, direct)
        floor = [(await timed_list(http, direct, direct_headers))[0] for _ in range(args.requests)]
        headers = await session(http, gateway)
        cached = []
        for _ in range(args.requests):
            took, count = await timed_list(http, gateway, headers)
            cached.append(took)
        # The dead backend was left out at start-up (the gateway's first fetch of every
        # list waited for it once); once ABSENT_SECONDS pass, the next list waits again.
        await asyncio.sleep(ABSENT_SECONDS + 1)
        retried, count = await timed_list(http, gateway, headers)
    n = args.backends
    print("| what | tools/list latency, ms |")
    print("|---|--:|")
    floor_ms = statistics.median(floor)
    print(f"| one live backend, direct (median of {args.requests}) | {floor_ms:.2f} |")
    print(
        f"| gateway, {n} backends, cached (median of {args.requests}) | "
        f"{statistics.median(cached):.2f} |"
    )
    print(
        f"| gateway, {n} backends, cached (p99) | "
        f"{sorted(cached)[max(0, int(len(cached) * 0.99) - 1)]:.2f} |"
    )
    print(
        f"| gateway, {n} backends, a list that retries the dead backend (worst case) | "
        f"{retried:.2f} |"
    )
    print(
        f"\nlist_timeout {args.list_timeout:g} s; {count} tools in the merged list from "
        f"{n - 1} live backends; the dead backend accepts connections and never answers."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--list-timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        urls = {}
        for i in range(args.backends - 1):
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "testbed.servers.streaming",
                "--port",
                str(port),
                "--name",
                f"b{i}",
            ]
            stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz", timeout=60))
            urls[f"b{i}"] = f"http://127.0.0.1:{port}/mcp"
        urls["dead"] = stack.enter_context(black_hole())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fed-")))
        config = tmp / "gateway.yaml"
        config.write_text(
            "backends:\n"
            + "".join(
                f"  - name: {name}\n    prefix: {name}_\n    replicas: [{url}]\n"
                for name, url in urls.items()
            )
            + f"list_timeout: {args.list_timeout}\nlog_level: error\n"
        )
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz", timeout=120))
        asyncio.run(measure(args, urls["b0"], f"http://127.0.0.1:{port}/mcp"))


if __name__ == "__main__":
    main()
