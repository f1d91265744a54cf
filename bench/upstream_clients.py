"""Upstream clients side by side: the cost of one proxied request's upstream leg.

Starts the fixed-JSON nginx of bench/services.py on a free loopback port and sends the
same POST through each client option from one uvloop process at a fixed concurrency,
interleaving the options run by run. Prints, per option, the median requests per second
and the median CPU time per request of this process (the client's cost; nginx runs in
its own process).

    python -m bench.upstream_clients [--requests 20000] [--concurrency 64] [--runs 3]

Options measured:
  httpx          httpx.AsyncClient with its default transport (httpcore pool)
  httpx+lean     httpx.AsyncClient over bench.lean_transport.LeanTransport
  lean           proxy.upstream.http1.Http1Pool directly (what the gateway uses)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import uvloop

from bench.lean_transport import LeanTransport
from bench.services import fixed_nginx
from proxy.upstream.http1 import Http1Pool

BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"test_simple_text","arguments":{}}}'
)
Send = Callable[[], Awaitable[None]]


def options(port: int) -> dict[str, tuple[Send, Callable[[], Awaitable[None]]]]:
    url = f"http://127.0.0.1:{port}/mcp"
    headers = {"content-type": "application/json", "accept": "application/json"}
    timeout = httpx.Timeout(5.0, read=None)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)

    plain = httpx.AsyncClient(timeout=timeout, limits=limits)
    lean_client = httpx.AsyncClient(timeout=timeout, transport=LeanTransport())
    pool = Http1Pool("127.0.0.1", port)
    head = (
        b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
        b"accept: application/json\r\ncontent-length: %d\r\n\r\n" % (port, len(BODY))
    )

    async def via_httpx() -> None:
        response = await plain.post(url, content=BODY, headers=headers)
        assert response.status_code == 200

    async def via_httpx_lean() -> None:
        response = await lean_client.post(url, content=BODY, headers=headers)
        assert response.status_code == 200

    async def via_lean() -> None:
        response = await pool.request(head, BODY)
        assert response.status == 200
        await response.aread()

    return {
        "httpx": (via_httpx, plain.aclose),
        "httpx+lean": (via_httpx_lean, lean_client.aclose),
        "lean": (via_lean, pool.close),
    }


async def measure(
    send: Send, requests: int, concurrency: int, seconds: float
) -> tuple[float, float]:
    """(requests per second, CPU µs per request): ``requests`` sends, or fewer when
    ``seconds`` run out first (a slow client still gets a bounded run)."""
    deadline = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < requests and time.monotonic() < deadline:
            done += 1
            await send()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return done / wall, cpu / done * 1e6


async def main(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        upstream = fixed_nginx(stack)
        clients = options(int(upstream.url.split("/")[2].rpartition(":")[2]))
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        for send, _ in clients.values():  # warm up every pool
            await measure(send, min(2000, args.requests), args.concurrency, args.seconds)
        for _ in range(args.runs):
            for name, (send, _) in clients.items():
                run = await measure(send, args.requests, args.concurrency, args.seconds)
                results[name].append(run)
        for _, close in clients.values():
            await close()
    best = statistics.median(r[0] for r in results["lean"])
    print(f"| client | median req/s | CPU µs/req | vs lean | (c={args.concurrency}) |")
    print("|---|---:|---:|---:|---|")
    for name, rows in results.items():
        rps = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"| {name} | {rps:,.0f} | {cpu:.1f} | {rps / best:.2f}x | |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="cap per measurement")
    uvloop.run(main(parser.parse_args()))
