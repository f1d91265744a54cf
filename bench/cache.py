"""The response cache, on and off, side by side: stateless (2026-07-28) ``tools/list`` in
front of the official SDK's server saying its lists may be kept ``--ttl-ms`` (public).

    python -m bench.cache                       # 3 interleaved rounds of 4 s, c=32
    python -m bench.cache --rounds 5 --seconds 3 --concurrency 64 --ttl-ms 500

Targets, each driven by wrk (``bench/load/mcp.lua``: every answer checked):

- ``direct``: the server itself;
- ``off``: the gateway with ``response_cache: false``;
- ``on``: the gateway, cache in memory;
- ``redis``: the gateway on the Redis store (the cache in Redis), one worker.

Printed per target, medians over the interleaved rounds: lists a second, the ratio to
``off`` (paired by round), requests that reached the server per 1,000 lists the clients
got (the server counts what it is sent), and CPU per list of the gateway and the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.run import run_wrk
from testbed.processes import cpu_seconds, free_port, running
from testbed.redis_server import redis_server

MODERN = "2026-07-28"
LIST = {
    "jsonrpc": "2.0",
    "id": "@@ID@@",
    "method": "tools/list",
    "params": {
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    },
}
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": MODERN,
    "mcp-method": "tools/list",
}


@contextlib.contextmanager
def targets(
    names: list[str], ttl_ms: int
) -> Iterator[tuple[str, dict[str, tuple[str, list[int]]]]]:
    """The server's base URL, and each target's MCP URL with the processes it costs."""
    with contextlib.ExitStack() as stack:
        port = free_port()
        cmd = [sys.executable, "-m", "testbed.servers.everything", "--port", str(port)]
        cmd += ["--cache-ttl-ms", str(ttl_ms), "--cache-scope", "public"]
        server = stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz"))
        base = f"http://127.0.0.1:{port}"
        found: dict[str, tuple[str, list[int]]] = {}
        gateway = [sys.executable, "-m", "proxy", "serve", "--log-level", "warning"]
        gateway += ["--upstream", f"{base}/mcp", "--workers", "1"]
        options = {"off": ["--response-cache", "false"], "on": [], "redis": []}
        if "redis" in names:
            redis = stack.enter_context(redis_server())
            options["redis"] = ["--session-store", redis.url()]
        for name in names:
            if name == "direct":
                found[name] = (f"{base}/mcp", [server.pid])
                continue
            up = free_port()
            proc = stack.enter_context(
                running(
                    [*gateway, "--port", str(up), *options[name]], f"http://127.0.0.1:{up}/healthz"
                )
            )
            found[name] = (f"http://127.0.0.1:{up}/mcp", [proc.pid, server.pid])
        yield base, found


def load(
    url: str, server: str, pids: list[int], concurrency: int, seconds: float
) -> tuple[float, float, float]:
    """Lists a second, server requests per 1,000 lists, and CPU seconds per list."""
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.json"
        body.write_bytes(json.dumps(LIST).replace('"@@ID@@"', "@@ID@@").encode())
        httpx.post(url, content=body.read_bytes().replace(b"@@ID@@", b"0"), headers=HEADERS)
        before = httpx.get(f"{server}/requests").json().get("tools/list", 0)
        cpu = sum(cpu_seconds(pid) for pid in pids)
        result = run_wrk(url, body, HEADERS, concurrency, 2, 0, seconds)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
        reached = httpx.get(f"{server}/requests").json().get("tools/list", 0) - before
    if result["non200"] or result["bad"] or result["timeout"]:
        raise SystemExit(f"{url}: failed answers: {result}")
    count = max(result["responses"], 1)
    return count / (result["duration_us"] / 1e6), reached * 1000 / count, cpu / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__)
    parser.add_argument("--targets", default="direct,off,on,redis")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--ttl-ms", type=int, default=1000)
    args = parser.parse_args(argv)
    names = args.targets.split(",")
    results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    with targets(names, args.ttl_ms) as (server, found):
        for round_ in range(1, args.rounds + 1):
            for name in names:
                url, pids = found[name]
                rps, reached, cpu = load(url, server, pids, args.concurrency, args.seconds)
                results[name].append((rps, reached, cpu))
                print(
                    f"# round {round_}/{args.rounds} {name}: {rps:,.0f} lists/s, "
                    f"{reached:,.1f} server requests per 1,000, {cpu * 1e6:,.0f} µs CPU/list",
                    flush=True,
                )
    base = results.get("off", [])
    print(
        f"\n| target | lists/s | ÷ off (paired) | server requests per 1,000 lists | "
        f"CPU µs/list | (c={args.concurrency}, ttlMs {args.ttl_ms}, medians of "
        f"{args.rounds} rounds of {args.seconds:g} s) |"
    )
    print("|---|--:|--:|--:|--:|---|")
    for name in names:
        rounds = results[name]
        rps = statistics.median(r for r, _, _ in rounds)
        reached = statistics.median(b for _, b, _ in rounds)
        cpu = statistics.median(c for _, _, c in rounds)
        pairs = [r / b for (r, _, _), (b, _, _) in zip(rounds, base, strict=False)]
        ratio = f"{statistics.median(pairs):.2f}" if pairs else "-"
        print(f"| {name} | {rps:,.0f} | {ratio} | {reached:,.1f} | {cpu * 1e6:,.0f} | |")


if __name__ == "__main__":
    main()
