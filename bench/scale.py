"""Scale-out benchmarks: N gateway replicas behind nginx ``least_conn`` on one Redis.

    python -m bench.scale throughput            # 1, 2, 3 replicas, interleaved, ratios to 1
    python -m bench.scale soak --minutes 10     # moderate steady load; RSS and fds sampled

Both start everything on loopback: the fixed-JSON nginx upstream (`bench.services`), a
Redis, N gateways (``--session-store redis://``, one Granian worker each) and nginx in
front of them, configured as ``deploy/nginx`` (least_conn, keep-alive, unbuffered).

``throughput`` drives tools/call in one session through nginx with wrk, for 1, 2 and 3
replicas (each setup running side by side, runs interleaved), and prints RPS, p99 and
the gateways' CPU per request, with ratios to one replica.

``soak`` keeps a steady, moderate mix going for ``--minutes``: clients that initialize a
session, make ``--calls`` tool calls in it, and DELETE it, at ``--rate`` requests per
second in all. Every ``--every`` seconds it samples each replica's resident memory (its
whole process tree) and open file descriptors, and counts answers by status. It ends
with the samples, the growth from the first minute to the last, and the 5xx count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import services as svc
from bench.run import LUA, open_session
from bench.workloads import HANDSHAKE_VERSION, WORKLOADS, initialize_body, request_headers
from testbed.redis_server import RedisServer

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
            todo += [int(c) for c in children.split()]
    return out


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants (Granian main + workers), MiB."""
    pages = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            pages += int(Path(f"/proc/{p}/statm").read_text().split()[1])
    return pages * _PAGE / 2**20


def tree_fds(pid: int) -> int:
    """Open file descriptors of `pid` and its descendants."""
    count = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{p}/fd"))
    return count


def cluster(
    stack: contextlib.ExitStack, upstream: svc.Service, redis_url: str, replicas: int
) -> tuple[svc.Service, list[svc.Service]]:
    """N gateways on one Redis database and nginx least_conn in front of them."""
    gateways = [svc.gateway(stack, upstream, redis_url, workers=1) for _ in range(replicas)]
    front = svc.balancer_nginx(stack, gateways, "/healthz")
    return front, gateways


# -- throughput ----------------------------------------------------------------------------


def throughput(args: argparse.Namespace) -> None:
    import subprocess  # noqa: PLC0415

    workload = WORKLOADS["call"]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        body = tmp / "call.json"
        body.write_bytes(workload.body)
        upstream = svc.fixed_nginx(stack)
        redis = RedisServer()
        stack.callback(redis.close)
        redis.start()
        setups = {n: cluster(stack, upstream, redis.url(n), n) for n in args.replicas}
        sessions = {n: open_session(front) for n, (front, _) in setups.items()}
        results: dict[int, list[dict[str, float]]] = {n: [] for n in setups}
        for run in range(args.runs + 1):  # run 0 warms up
            for n, (front, gateways) in setups.items():
                cpu = sum(svc.tree_cpu_seconds(g.pid) for g in gateways)
                cmd = [
                    "wrk",
                    "-t",
                    "2",
                    "-c",
                    str(args.concurrency),
                    "-d",
                    f"{int(args.seconds) + 2}s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(LUA),
                    front.url,
                    "--",
                    str(body),
                    str(args.requests),
                    f"{args.seconds:g}",
                    *(f"{k}: {v}" for k, v in request_headers(workload, sessions[n]).items()),
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                line = next(x for x in done.stdout.splitlines() if x.startswith("WRKJSON "))
                result = json.loads(line.removeprefix("WRKJSON "))
                cpu = sum(svc.tree_cpu_seconds(g.pid) for g in gateways) - cpu
                requests = result["requests"]
                failed = (
                    result["non200"]
                    + result["bad"]
                    + sum(result[k] for k in ("connect", "read", "write", "timeout"))
                )
                row = {
                    "rps": requests / (result["duration_us"] / 1e6),
                    "p99_ms": result["p99_us"] / 1000,
                    "cpu_us": cpu / requests * 1e6 if requests else float("nan"),
                    "failed": failed,
                }
                if run:
                    results[n].append(row)
                    print(f"# run {run} replicas={n}: {row['rps']:,.0f} req/s", file=sys.stderr)
    base = statistics.median(r["rps"] for r in results[min(results)])
    print("| replicas | RPS (÷1) | p99 ms | gateway CPU µs/req | failed |")
    print("|--:|--:|--:|--:|--:|")
    for n, rows in results.items():
        rps = statistics.median(r["rps"] for r in rows)
        p99 = statistics.median(r["p99_ms"] for r in rows)
        cpu = statistics.median(r["cpu_us"] for r in rows)
        failed = sum(int(r["failed"]) for r in rows)
        print(f"| {n} | {rps:,.0f} ({rps / base:.2f}) | {p99:.2f} | {cpu:.0f} | {failed} |")
    print(
        f"\ntools/call in one session through nginx least_conn, c={args.concurrency}; "
        f"medians of {args.runs} interleaved runs of ≤ {args.seconds:g} s; every replica "
        f"one Granian worker, sessions in one Redis; {os.cpu_count()} cores shared by "
        "wrk, nginx, Redis, the upstream and every replica."
    )


# -- soak ----------------------------------------------------------------------------------


class _Stopped(Exception):
    pass


async def _client(
    http: httpx.AsyncClient,
    url: str,
    calls: int,
    tokens: asyncio.Queue[None],
    statuses: Counter[int],
    stop: asyncio.Event,
) -> None:
    call = WORKLOADS["call"].body
    init = initialize_body()
    headers = request_headers(WORKLOADS["init"], None)
    n = 0

    async def take() -> None:
        """Wait for the pacer's next token; raise _Stopped once the soak is over."""
        await tokens.get()
        if stop.is_set():
            raise _Stopped

    while not stop.is_set():
        try:
            await take()
            answer = await http.post(url, content=init.replace(b"@@ID@@", b"1"), headers=headers)
            statuses[answer.status_code] += 1
            sid = answer.headers.get("mcp-session-id")
            if sid is None:
                continue
            session = headers | {"Mcp-Session-Id": sid, "MCP-Protocol-Version": HANDSHAKE_VERSION}
            for _ in range(calls):
                await take()
                n += 1
                body = call.replace(b"@@ID@@", str(n).encode())
                answer = await http.post(url, content=body, headers=session)
                statuses[answer.status_code] += 1
            await take()
            answer = await http.delete(url, headers=session)
            statuses[answer.status_code] += 1
        except _Stopped:
            return
        except httpx.HTTPError as exc:
            statuses[-1] += 1
            print(f"# transport error: {exc!r}", file=sys.stderr)


async def _soak(
    args: argparse.Namespace, front: svc.Service, gateways: list[svc.Service]
) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    tokens: asyncio.Queue[None] = asyncio.Queue(maxsize=args.rate)
    stop = asyncio.Event()
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + args.minutes * 60

    async def pace() -> None:
        interval = 1 / args.rate
        next_at = time.monotonic()
        while time.monotonic() < end:
            next_at += interval
            with contextlib.suppress(asyncio.QueueFull):
                tokens.put_nowait(None)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        stop.set()
        for _ in range(args.clients):
            with contextlib.suppress(asyncio.QueueFull):
                tokens.put_nowait(None)

    async def sample() -> None:
        while not stop.is_set():
            samples.append(
                {
                    "t": round(time.monotonic() - started),
                    "rss_mib": [round(tree_rss_mib(g.pid), 1) for g in gateways],
                    "fds": [tree_fds(g.pid) for g in gateways],
                    "answers": sum(statuses.values()),
                    "5xx": sum(v for k, v in statuses.items() if k >= 500),
                }
            )
            print(f"# {samples[-1]}", file=sys.stderr)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.every)

    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        clients = [
            _client(http, front.url, args.calls, tokens, statuses, stop)
            for _ in range(args.clients)
        ]
        await asyncio.gather(pace(), sample(), *clients)
    return {"samples": samples, "statuses": dict(statuses)}


def soak(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        upstream = svc.fixed_nginx(stack)
        redis = RedisServer()
        stack.callback(redis.close)
        redis.start()
        front, gateways = cluster(stack, upstream, redis.url(), args.replicas)
        report = asyncio.run(_soak(args, front, gateways))
    samples = report["samples"]
    per_minute = max(1, round(60 / args.every))
    first, last = samples[1 : 1 + per_minute], samples[-per_minute:]  # past the warm-up
    print("| t s | RSS MiB per replica | open fds per replica | answers | 5xx |")
    print("|--:|---|---|--:|--:|")
    for s in samples:
        rss = " / ".join(f"{v:.1f}" for v in s["rss_mib"])
        fds = " / ".join(str(v) for v in s["fds"])
        print(f"| {s['t']} | {rss} | {fds} | {s['answers']:,} | {s['5xx']} |")
    for i in range(args.replicas):
        a = statistics.median(s["rss_mib"][i] for s in first)
        b = statistics.median(s["rss_mib"][i] for s in last)
        fa = statistics.median(s["fds"][i] for s in first)
        fb = statistics.median(s["fds"][i] for s in last)
        print(
            f"\nreplica {i + 1}: RSS {a:.1f} -> {b:.1f} MiB ({b - a:+.1f}), "
            f"fds {fa:.0f} -> {fb:.0f} (first minute -> last minute, medians)",
            end="",
        )
    statuses = report["statuses"]
    print(
        f"\n\nanswers by status: {dict(sorted(statuses.items()))} "
        f"(-1: transport errors); 5xx: {sum(v for k, v in statuses.items() if k >= 500)}"
    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput", help="1, 2, 3 replicas side by side")
    t.add_argument("--replicas", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 3])
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--concurrency", type=int, default=64)
    t.add_argument("--seconds", type=float, default=2.0)
    t.add_argument("--requests", type=int, default=20_000, help="bound per wrk thread")
    s = sub.add_parser("soak", help="steady load; RSS and fds sampled")
    s.add_argument("--minutes", type=float, default=10.0)
    s.add_argument("--replicas", type=int, default=3)
    s.add_argument("--rate", type=int, default=200, help="requests per second in all")
    s.add_argument("--clients", type=int, default=16)
    s.add_argument("--calls", type=int, default=20, help="tool calls per session")
    s.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    s.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    throughput(args) if args.mode == "throughput" else soak(args)


if __name__ == "__main__":
    main()
