"""Where the gateway's time goes: py-spy samples of its worker under wrk load.

Starts the fixed-JSON nginx upstream and one gateway (memory store) on loopback, opens a
session, drives tools/call at c=64 with wrk for ``--seconds`` and samples the Granian
worker with py-spy meanwhile. Prints the share of samples per thread, the functions with
the largest inclusive share, and the self share of each line of the gateway's own code
(the deepest ``proxy/`` frame of every sample).

    python -m bench.profile                  # 10 s of load, 500 samples/s
    python -m bench.profile --seconds 20 --top 30 --raw /tmp/gateway.txt

Needs wrk, nginx and py-spy (``pip install -e '.[bench]'``); py-spy needs ptrace rights
(root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import services as svc
from bench.issuer import issuer
from bench.run import LUA, headers_for, open_session
from bench.workloads import WORKLOADS


def worker_pid(root: int) -> int:
    """The Granian worker: the gateway's first child process."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise SystemExit("the gateway has no worker process")


_ENTRY = ("proxy/server.py", "proxy/cli.py", "proxy/__main__.py")


def _ours(frame: str) -> bool:
    """A frame of the gateway's request handling (not of its start-up stack)."""
    return "proxy/" in frame and not any(entry in frame for entry in _ENTRY)


def _frame(frame: str) -> str:
    """``func (path:line)`` -> ``func (path)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarise(raw: Path, top: int) -> str:
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        for name in {_frame(f) for f in frames[1:] if _ours(f)}:
            inclusive[name] += n
        deepest = next((f for f in reversed(frames) if _ours(f)), None)
        own[deepest or "(none: event loop, Granian, its other threads)"] += n
    out = [f"{total} samples"]
    out += ["", "## threads"] + [f"{100 * v / total:5.1f}%  {k}" for k, v in threads.most_common()]
    out += ["", "## inclusive, the gateway's own functions"]
    out += [f"{100 * v / total:5.1f}%  {k}" for k, v in inclusive.most_common(top)]
    out += ["", "## self, by the deepest line of the gateway's own code"]
    out += [f"{100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    parser.add_argument(
        "--auth", action="store_true", help="authentication on (as target ca of bench.run)"
    )
    parser.add_argument(
        "--traces", action="store_true", help="traces on (as target co of bench.run)"
    )
    args = parser.parse_args(argv)
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (see bench/README.md)")
    workload = WORKLOADS["call"]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-profile-")))
        upstream = svc.fixed_nginx(stack)
        if args.auth:
            tokens = stack.enter_context(issuer())
            gateway = svc.auth_gateway(stack, upstream, tokens, tmp / "audit.log")
        elif args.traces:
            sink = upstream.url.removesuffix("/mcp") + "/v1/traces"
            gateway = svc.gateway(stack, upstream, options=("--trace-endpoint", sink))
        else:
            gateway = svc.gateway(stack, upstream)
        headers = headers_for(gateway, workload, open_session(gateway))
        body = tmp / "call.json"
        body.write_bytes(workload.body)
        raw = args.raw or tmp / "raw.txt"
        hard = int(args.seconds) + 4
        cmd = [
            "wrk",
            "-t",
            "2",
            "-c",
            "64",
            "-d",
            f"{hard}s",
            "-s",
            str(LUA),
            gateway.url,
            "--",
            str(body),
            "0",
            f"{args.seconds + 2:g}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        try:
            time.sleep(1)  # past the warm-up
            subprocess.run(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(worker_pid(gateway.pid)),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--threads",
                    "--nonblocking",
                    "--output",
                    str(raw),
                ],
                check=True,
                capture_output=True,
            )
        finally:
            load.wait(timeout=hard + 10)
        print(summarise(raw, args.top))


if __name__ == "__main__":
    main()
