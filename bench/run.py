"""Load benchmark: the gateway against nginx and a real SDK server, in one table.

Starts everything on loopback (nginx, Redis, gateways, the SDK server), drives each
target with wrk, bounded in requests and time, runs interleaved (run i of every target
before run i+1 of any), and prints one markdown table; the full results go to a JSON file.

    python -m bench.run                       # the full matrix, about 10 minutes on 2 cores
    python -m bench.run --quick               # 1 run, 3 workloads, under 2 minutes
    python -m bench.run --targets a,b,c --workloads call,big --concurrency 64 --runs 5

Targets (see bench/README.md):
  a   nginx returning a fixed JSON-RPC result (the upstream of b, c, d, d2)
  b   nginx proxy_pass in front of a
  c   the gateway in front of a, memory session store
  c0  the gateway of another revision (--baseline REV) in front of a, memory store
  ca  the gateway in front of a, memory store, authentication on: a valid (cached) token,
      one policy rule, a rate limit, the audit log to a file
  ct  the gateway in front of a, memory store, authentication off, every request carrying
      a token like ca's (the same bytes on the wire: ca against ct is what checking costs)
  d   the gateway in front of a, Redis session store
  d2  the same with 2 Granian workers
  m   a bare ASGI proxy on Granian over the gateway's pool (bench/ceiling.py): the ceiling
  n   the same over a minimal keep-alive pool written for the bench (bench/minimal.py)
  mr  m through Granian's RSGI interface instead of ASGI (bench/ceiling_rsgi.py)
  e1  the official-SDK everything server, direct
  e2  the gateway (memory store) in front of e1
  e3  nginx proxy_pass in front of e1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import services as svc
from bench.issuer import issuer
from bench.workloads import (
    HANDSHAKE_VERSION,
    ID_MARK,
    WORKLOADS,
    Workload,
    check_answer,
    initialize_body,
    request_headers,
)
from proxy import fastpath
from testbed.redis_server import RedisServer

HERE = Path(__file__).resolve().parent
LUA = HERE / "load" / "mcp.lua"


@dataclass(frozen=True)
class Target:
    key: str
    title: str
    group: str  # "fixed" or "sdk": which upstream serves the answers
    front: str  # whose CPU the table reports: the process the client talks to


TARGETS = {
    t.key: t
    for t in (
        Target("a", "nginx, fixed JSON-RPC answer", "fixed", "nginx"),
        Target("b", "nginx proxy_pass -> a", "fixed", "nginx (proxy)"),
        Target("c", "gateway, memory store -> a", "fixed", "gateway"),
        Target("c0", "gateway at --baseline, memory store -> a", "fixed", "gateway"),
        Target("ca", "gateway, memory store, auth on -> a", "fixed", "gateway"),
        Target("ct", "gateway, memory store, auth off, token sent -> a", "fixed", "gateway"),
        Target("co", "gateway, memory store, traces on (every request) -> a", "fixed", "gateway"),
        Target("cl", "gateway, memory store, access log on (JSON file) -> a", "fixed", "gateway"),
        Target("d", "gateway, Redis store -> a", "fixed", "gateway"),
        Target("d2", "gateway, Redis store, 2 workers -> a", "fixed", "gateway"),
        Target("m", "bare Granian ASGI proxy over the same pool -> a", "fixed", "bare proxy"),
        Target("n", "bare Granian ASGI proxy over a minimal pool -> a", "fixed", "bare proxy"),
        Target("mr", "bare Granian RSGI proxy over the same pool -> a", "fixed", "bare proxy"),
        Target("e1", "SDK everything server (uvicorn)", "sdk", "SDK server"),
        Target("e2", "gateway, memory store -> e1", "sdk", "gateway"),
        Target("e3", "nginx proxy_pass -> e1", "sdk", "nginx (proxy)"),
    )
}
# The two references of every row: "direct" (a) and "nginx" (b), taken on the same
# upstream: for the SDK rows the SDK direct (e1) and through nginx (e3).
REFERENCES = {"fixed": ("a", "b"), "sdk": ("e1", "e3")}


@dataclass
class Run:
    """One wrk run of one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # CPU per request of the target's front process tree
    requests: int
    seconds: float
    errors: int  # socket errors and timeouts
    non200: int
    bad: int  # 200 whose body is not a JSON-RPC result
    sampled: int
    sample_failures: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """The runs of one (workload, concurrency, target)."""

    workload: str
    concurrency: int
    target: str
    runs: list[Run] = field(default_factory=list)

    def median(self, name: str) -> float:
        values = [getattr(r, name) for r in self.runs if r.requests > 0]
        return statistics.median(values) if values else math.nan

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.runs)

    def sample(self) -> tuple[int, int]:
        checked = self.total("sampled")
        return checked - sum(len(r.sample_failures) for r in self.runs), checked


# -- starting the targets ---------------------------------------------------------------


def start(
    stack: contextlib.ExitStack, keys: list[str], baseline: str | None = None
) -> dict[str, svc.Service]:
    """Start what the chosen targets need; returns target key -> service."""
    out: dict[str, svc.Service] = {}
    if {"a", "b", "c", "c0", "ca", "cl", "co", "ct", "d", "d2", "m", "n", "mr"} & set(keys):
        fixed = svc.fixed_nginx(stack)
        out["a"] = fixed
        if "b" in keys:
            out["b"] = svc.proxy_nginx(stack, fixed, "/")
        if "c" in keys:
            out["c"] = svc.gateway(stack, fixed)
        if "c0" in keys:
            if baseline is None:
                raise SystemExit("target c0 needs --baseline REV")
            source = svc.checkout(stack, baseline)
            out["c0"] = svc.gateway(stack, fixed, source=source)
        tokens = stack.enter_context(issuer()) if {"ca", "ct"} & set(keys) else None
        if "ca" in keys:
            assert tokens is not None
            audit = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "audit.log"
            out["ca"] = svc.auth_gateway(stack, fixed, tokens, audit)
        if "ct" in keys:
            assert tokens is not None
            out["ct"] = svc.token_gateway(stack, fixed, tokens)
        if "cl" in keys:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "access.log"
            out["cl"] = svc.gateway(stack, fixed, options=("--access-log", str(log)))
        if "co" in keys:  # spans exported to nginx, which answers 200 and keeps nothing
            sink = fixed.url.removesuffix("/mcp") + "/v1/traces"
            out["co"] = svc.gateway(stack, fixed, options=("--trace-endpoint", sink))
        if "m" in keys:
            out["m"] = svc.ceiling(stack, fixed)
        if "n" in keys:
            out["n"] = svc.ceiling(stack, fixed, "minimal")
        if "mr" in keys:
            out["mr"] = svc.ceiling(stack, fixed, "ceiling_rsgi")
        if {"d", "d2"} & set(keys):
            redis = RedisServer()
            stack.callback(redis.close)
            redis.start()
            if "d" in keys:
                out["d"] = svc.gateway(stack, fixed, redis.url())
            if "d2" in keys:
                out["d2"] = svc.gateway(stack, fixed, redis.url(1), workers=2)
    if {"e1", "e2", "e3"} & set(keys):
        sdk = svc.sdk_upstream(stack)
        out["e1"] = sdk
        if "e2" in keys:
            out["e2"] = svc.gateway(stack, sdk)
        if "e3" in keys:
            out["e3"] = svc.proxy_nginx(stack, sdk, "/healthz")
    return {k: out[k] for k in keys}


_INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


def open_session(service: svc.Service) -> str:
    """initialize + notifications/initialized; returns the session id."""
    url = service.url
    init = WORKLOADS["init"]
    headers = headers_for(service, init, None)
    body = initialize_body().replace(ID_MARK.encode(), b"1")
    with httpx.Client(timeout=30) as client:
        response = client.post(url, content=body, headers=headers)
        ctype = response.headers.get("content-type", "")
        problem = check_answer(response.status_code, ctype, response.content, init)
        if problem is not None:
            raise SystemExit(f"initialize at {url} failed: {problem}: {response.text[:300]}")
        session_id: str | None = response.headers.get("mcp-session-id")
        if session_id is None:
            raise SystemExit(f"initialize at {url} returned no Mcp-Session-Id")
        headers |= {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": HANDSHAKE_VERSION}
        note = client.post(url, content=_INITIALIZED, headers=headers)
        if note.status_code >= 300:
            raise SystemExit(f"notifications/initialized at {url}: HTTP {note.status_code}")
    return session_id


# -- one measurement ---------------------------------------------------------------------


_WRKJSON = re.compile(r"^WRKJSON (\{.*\})$", re.MULTILINE)


def wrk(
    url: str,
    body_file: Path,
    headers: dict[str, str],
    concurrency: int,
    args: argparse.Namespace,
    seconds: float,
) -> dict[str, Any]:
    threads = max(1, min(concurrency, args.threads))
    per_thread = max(200, math.ceil(args.requests / threads))
    return run_wrk(url, body_file, headers, concurrency, threads, per_thread, seconds)


def run_wrk(
    url: str,
    body_file: Path,
    headers: dict[str, str],
    concurrency: int,
    threads: int,
    per_thread: int,
    seconds: float,
) -> dict[str, Any]:
    """One wrk run with ``bench/load/mcp.lua`` (`per_thread`: answers per thread at most,
    0 for no bound; `seconds`: the run's length): the script's counts and latencies."""
    hard = math.ceil(seconds) + 2  # wrk's -d takes whole seconds; the script stops sooner
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{hard}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(body_file),
        str(per_thread),
        f"{seconds:g}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    problem = ""
    for _attempt in range(2):  # a wrk that died before its first tick gets a second chance
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=hard + 30)
        found = _WRKJSON.search(done.stdout)
        if found:
            result: dict[str, Any] = json.loads(found.group(1))
            return result
        problem = f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}"
    raise RuntimeError(problem)


def headers_for(service: svc.Service, workload: Workload, session_id: str | None) -> dict[str, str]:
    """The headers of one request of `workload` to `service`."""
    return request_headers(workload, session_id) | dict(service.headers)


def sample(url: str, workload: Workload, headers: dict[str, str], count: int) -> list[str]:
    """Send `count` requests (id 1) on one new connection and check every answer;
    returns the failures."""
    body = workload.body.replace(ID_MARK.encode(), b"1")
    failures = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            try:
                r = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            ctype = r.headers.get("content-type", "")
            problem = check_answer(r.status_code, ctype, r.content, workload)
            if problem is not None:
                failures.append(problem)
    return failures


def measure(
    service: svc.Service,
    workload: Workload,
    body_file: Path,
    session_id: str | None,
    concurrency: int,
    args: argparse.Namespace,
) -> Run:
    headers = headers_for(service, workload, session_id)
    cpu = svc.tree_cpu_seconds(service.pid)
    result = wrk(service.url, body_file, headers, concurrency, args, args.seconds)
    cpu = svc.tree_cpu_seconds(service.pid) - cpu
    failures = sample(service.url, workload, headers, args.sample)
    done = result["requests"]
    seconds = result["duration_us"] / 1e6
    return Run(
        rps=done / seconds if seconds else 0.0,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        cpu_us=cpu / done * 1e6 if done else math.nan,
        requests=done,
        seconds=seconds,
        errors=sum(result[k] for k in ("connect", "read", "write", "timeout")),
        non200=result["non200"],
        bad=result["bad"],
        sampled=args.sample,
        sample_failures=failures,
    )


# -- the table ---------------------------------------------------------------------------


def _num(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float, ref: float | None) -> str:
    if ref is None or math.isnan(ref) or ref == 0 or math.isnan(value):
        return "-"
    return f"{value / ref:.2f}"


def table(cells: dict[tuple[str, int, str], Cell]) -> str:
    lines = [
        "| workload | c | target | RPS (÷a ÷b) | p50 ms (÷a ÷b) | p99 ms (÷a ÷b) "
        "| CPU µs/req (÷a ÷b) | n/run | errors | non-200 | bad body | sample ok |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (workload, conc, key), cell in cells.items():
        refs = [cells.get((workload, conc, r)) for r in REFERENCES[TARGETS[key].group]]

        def show(name: str, digits: int, cell: Cell = cell, refs: list[Cell | None] = refs) -> str:
            value = cell.median(name)
            ratios = " ".join(_ratio(value, None if r is None else r.median(name)) for r in refs)
            return f"{_num(value, digits)} ({ratios})"

        ok, checked = cell.sample()
        lines.append(
            f"| {workload} | {conc} | {key} | {show('rps', 0)} | {show('p50_ms', 2)} "
            f"| {show('p99_ms', 2)} | {show('cpu_us', 0)} | {_num(cell.median('requests'), 0)} "
            f"| {cell.total('errors')} "
            f"| {cell.total('non200')} | {cell.total('bad')} | {ok}/{checked} |"
        )
    return "\n".join(lines)


def workers_line(cells: dict[tuple[str, int, str], Cell]) -> str | None:
    """RPS of the Redis-store gateway with 2 workers over 1 worker (d2 ÷ d), per cell."""
    parts = []
    for (workload, conc, key), cell in cells.items():
        one = cells.get((workload, conc, "d"))
        if key == "d2" and one is not None:
            two_rps, one_rps = cell.median("rps"), one.median("rps")
            parts.append(
                f"{workload} c={conc}: {_num(one_rps, 0)} -> {_num(two_rps, 0)} "
                f"({_ratio(two_rps, one_rps)})"
            )
    return "Redis store, RPS with 1 -> 2 workers (d -> d2): " + "; ".join(parts) if parts else None


def ratios(cells: dict[tuple[str, int, str], Cell]) -> dict[str, dict[str, float | None]]:
    """For the JSON: every metric of every cell divided by (a), (b) and its own references."""
    out: dict[str, dict[str, float | None]] = {}
    for (workload, conc, key), cell in cells.items():
        row: dict[str, float | None] = {}
        group_refs = REFERENCES[TARGETS[key].group]
        for label, ref_key in (
            ("a", "a"),
            ("b", "b"),
            ("direct", group_refs[0]),
            ("nginx", group_refs[1]),
        ):
            ref = cells.get((workload, conc, ref_key))
            for name in ("rps", "p50_ms", "p99_ms", "cpu_us"):
                base = None if ref is None else ref.median(name)
                value = cell.median(name)
                ok = base is not None and base > 0 and not math.isnan(base + value)
                row[f"{name}/{label}"] = value / base if ok and base else None
        out[f"{workload}/c{conc}/{key}"] = row
    return out


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "fastpath": fastpath.IMPLEMENTATION,
        "nginx": svc.nginx_version(),
        "wrk": (wrk_version.stdout or wrk_version.stderr).split("\n", 1)[0].strip(),
    }


# -- main --------------------------------------------------------------------------------


def _names(value: str, known: Iterable[str], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown) or value!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=(__doc__ or "").split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 run of call, stateless and big for 1 s each (< 2 minutes)",
    )
    parser.add_argument("--runs", type=int, help="runs per cell; the table shows medians [3]")
    parser.add_argument(
        "--targets",
        type=lambda v: _names(v, TARGETS, "target"),
        default=[t for t in TARGETS if t != "c0"],
        help="comma-separated [a,b,c,ca,ct,d,d2,m,n,e1,e2,e3; c0 with --baseline]",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the gateway of git revision REV, side by side (target c0)",
    )
    parser.add_argument(
        "--workloads",
        type=lambda v: _names(v, WORKLOADS, "workload"),
        help=f"comma-separated [{','.join(WORKLOADS)}]",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda v: [int(c) for c in v.split(",")],
        default=[1, 64],
        help="comma-separated connection counts [1,64]",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=20_000,
        help="bound on the requests of one run (about) [20000]",
    )
    parser.add_argument(
        "--seconds", type=float, help="bound on the duration of one run [1.5; 1 with --quick]"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (at most c) [2]")
    parser.add_argument(
        "--sample",
        type=int,
        default=5,
        help="requests per run whose answer is parsed and checked [5]",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results.json", help="JSON results [bench/results.json]"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = args.runs or 1
        args.workloads = args.workloads or ["call", "stateless", "big"]
        args.seconds = args.seconds or 1.0
    args.runs = args.runs or 3
    args.workloads = args.workloads or list(WORKLOADS)
    args.seconds = args.seconds or 1.5
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (Debian/Ubuntu: apt-get install wrk)")
    started = time.monotonic()
    info = machine()
    print(
        f"# {info['cpu']}, {info['cores']} cores, load {info['loadavg_at_start'][0]:.2f}; "
        f"Python {info['python']}, fast path {info['fastpath']}; nginx {info['nginx']}; "
        f"{info['wrk']}",
        file=sys.stderr,
    )
    cells: dict[tuple[str, int, str], Cell] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        if args.baseline and "c0" not in args.targets:
            args.targets.insert(args.targets.index("c") + 1 if "c" in args.targets else 0, "c0")
        targets = start(stack, args.targets, args.baseline)
        needs_session = any(WORKLOADS[w].session for w in args.workloads)
        sessions = {k: open_session(s) if needs_session else None for k, s in targets.items()}
        bodies = {}
        for name in args.workloads:
            bodies[name] = tmp / f"{name}.json"
            bodies[name].write_bytes(WORKLOADS[name].body)
        print(
            f"# started {len(targets)} targets in {time.monotonic() - started:.1f}s; warming up",
            file=sys.stderr,
        )
        for key, service in targets.items():  # connections, pools, caches
            first = WORKLOADS[args.workloads[0]]
            wrk(
                service.url,
                bodies[first.name],
                headers_for(service, first, sessions[key]),
                max(args.concurrency),
                args,
                0.5,
            )
        for name in args.workloads:
            workload = WORKLOADS[name]
            for conc in args.concurrency:
                for key in targets:
                    cells[(name, conc, key)] = Cell(name, conc, key)
                for i in range(args.runs):
                    for key, service in targets.items():
                        run = measure(service, workload, bodies[name], sessions[key], conc, args)
                        cells[(name, conc, key)].runs.append(run)
                        print(
                            f"# {name} c={conc} run {i + 1}/{args.runs} {key}: "
                            f"{run.rps:,.0f} req/s, p99 {run.p99_ms:.2f} ms, "
                            f"{run.cpu_us:.0f} µs CPU/req",
                            file=sys.stderr,
                        )
    wall = time.monotonic() - started
    text = table(cells)
    print(text)
    legend = ", ".join(f"{k} = {t.title}" for k, t in TARGETS.items() if k in args.targets)
    print(
        f"\n{legend}. Medians of {args.runs} interleaved run(s), each bounded by "
        f"~{args.requests} requests and {args.seconds:g} s; ÷a ÷b: ratio to target a and "
        f"b (SDK rows: to e1 and e3) in the same run. Wall time {wall:.0f} s."
    )
    workers = workers_line(cells)
    if workers is not None:
        print(f"\n{workers}.")
    report = {
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets": {k: asdict(TARGETS[k]) for k in targets},
        "wall_seconds": wall,
        "cells": [
            {
                "workload": c.workload,
                "concurrency": c.concurrency,
                "target": c.target,
                "median": {n: c.median(n) for n in ("rps", "p50_ms", "p99_ms", "cpu_us")},
                "runs": [asdict(r) for r in c.runs],
            }
            for c in cells.values()
        ],
        "ratios": ratios(cells),
        "workers": workers,
        "table": text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"# results written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
