"""Instructions per request: the gateway's ASGI app driven in process under callgrind.

Timings on a shared 2-core machine drift by a third within minutes; instruction counts do
not. For each target this runs the gateway in process (no Granian: the app is called
directly, 16 requests at a time, against the fixed-JSON nginx upstream) twice under
``valgrind --tool=callgrind``, with a few and with many tools/call requests in one
session, and prints the difference per request: start-up, warm-up and the JWKS fetch
cancel out.

    python -m bench.instructions                     # c, ct, ca
    python -m bench.instructions --targets ca,ca-audit,ca-policy,ca-rate

Targets: ``c`` auth off; ``ct`` auth off, every request carrying a token; ``ca`` auth on as
bench target ca (a cached token, one policy rule, a rate limit, the audit log);
``ca-audit``, ``ca-policy``, ``ca-rate``: ca without that part (ca minus one of them is
what that part costs); ``co`` as c with traces on (every request sampled, spans exported
to the upstream nginx, which keeps nothing); ``m`` and ``n``, the bare proxies of
``bench.run`` (over the gateway's pool, over a minimal pool), driven alike.

Valgrind runs the process about 50 times slower than the wall clock, so work done every
so often (the audit log's encoding tick, the refresh of cached lists) would come 50 times
more often per request: the child stretches both to about what a request sees at full
speed (the audit tick to 1 s, the list cache to an hour). Needs valgrind
(``apt-get install valgrind``) and nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import services as svc
from bench.ceiling import CeilingProxy
from bench.issuer import issuer
from bench.minimal import MinimalProxy
from bench.workloads import HANDSHAKE_VERSION, ID_MARK, WORKLOADS, initialize_body

TARGETS = ("c", "ct", "ca", "ca-audit", "ca-policy", "ca-rate", "co", "m", "n")
BARE = {"m": CeilingProxy, "n": MinimalProxy}  # the bare proxies of bench.run
AUDIENCE = "http://127.0.0.1:8080/mcp"  # the Host the in-process requests name
CONCURRENCY = 16


def _settings(target: str, upstream: str, issuer_url: str, audit: Path) -> Any:
    from proxy.config import Origin, load  # noqa: PLC0415 - in the child only

    values: dict[str, tuple[Origin, Any]] = {
        "upstream": ("flag", upstream),
        "list_cache_seconds": ("flag", 3600.0),
    }
    if target.startswith("ca"):
        auth: dict[str, Any] = {"issuers": [{"issuer": issuer_url}]}
        if target != "ca-policy":
            auth["policy"] = [svc.AUTH_RULE]
        if target != "ca-rate":
            auth["rate_limit"] = {"requests": 100_000_000, "per": 1}
        if target != "ca-audit":
            auth["audit"] = {"target": str(audit)}
        values["auth"] = ("flag", orjson.dumps(auth).decode())
    if target == "co":  # spans exported to the upstream nginx, which answers and keeps nothing
        values["trace_endpoint"] = ("flag", upstream.rsplit("/", 1)[0] + "/v1/traces")
    return load(None, values)


async def _post(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
    """One POST to the app, as Granian would hand it over; the answer's start message."""
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError

    started: dict[str, Any] = {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    await app(scope, receive, send)
    return started


async def _drive(
    target: str,
    requests: int,
    upstream: str,
    issuer_url: str,
    token: str,
    warm: int = 200,
    settle: bool = True,
) -> None:
    """Open a session and make `requests` calls in it, after `warm` calls per task (and,
    with `settle`, the garbage collector set as the serving process sets it)."""
    import proxy.linelog  # noqa: PLC0415 - in the child only
    from proxy.app import ProxyApp  # noqa: PLC0415

    proxy.linelog.TICK = 1.0  # see the module docstring
    if target in BARE:
        bare = BARE[target](upstream.split("/")[2])
        try:
            await _calls(bare, target, requests, token, warm, settle)
        finally:
            await bare.close()
        return
    with tempfile.TemporaryDirectory() as tmp:
        app = ProxyApp(_settings(target, upstream, issuer_url, Path(tmp) / "audit.log"))
        await app.open()
        try:
            await _calls(app, target, requests, token, warm, settle)
        finally:
            await app.close()


async def _calls(app: Any, target: str, requests: int, token: str, warm: int, settle: bool) -> None:
    from proxy import heap  # noqa: PLC0415 - in the child only

    headers = [
        (b"host", b"127.0.0.1:8080"),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
    ]
    if target not in ("c", "co"):
        headers.append((b"authorization", b"Bearer " + token.encode()))
    init = initialize_body().replace(ID_MARK.encode(), b"1")
    opened = await _post(app, headers, init)
    if opened["status"] != 200:
        raise SystemExit(f"{target}: initialize: HTTP {opened['status']}")
    sid = dict(opened["headers"])[b"mcp-session-id"]
    headers += [
        (b"mcp-session-id", sid),
        (b"mcp-protocol-version", HANDSHAKE_VERSION.encode()),
        (b"x-bench-reply", b"call"),
    ]
    body = WORKLOADS["call"].body.replace(ID_MARK.encode(), b"7")

    async def calls(count: int) -> None:
        for _ in range(count):
            answer = await _post(app, headers, body)
            if answer["status"] != 200:
                raise SystemExit(f"{target}: HTTP {answer['status']}")

    await asyncio.gather(*(calls(warm) for _ in range(CONCURRENCY)))
    settled = heap.settle() if settle else None
    await asyncio.gather(*(calls(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
    if settled is not None:
        settled.stop()


def _count(target: str, requests: int, upstream: str, issuer_url: str, token: Path) -> int:
    """Instructions of one child process driving `requests` calls, under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={tmp}/out",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            target,
            str(requests),
            upstream,
            issuer_url,
            str(token),
        ]
        env = dict(os.environ, PYTHONMALLOC="malloc")
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or found is None:
        raise SystemExit(f"{target}: the child failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--targets", default="c,ct,ca")
    parser.add_argument("--requests", default="800,2400", help="the two runs' request counts")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        target, requests, upstream, issuer_url, token = args.child
        text = Path(token).read_text().strip()
        uvloop.run(_drive(target, int(requests), upstream, issuer_url, text))  # as served
        return
    targets = args.targets.split(",")
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))}")
    few, many = (int(n) for n in args.requests.split(","))
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        fixed = svc.fixed_nginx(stack)
        tokens = stack.enter_context(issuer())
        token = Path(tmp) / "token"
        token.write_text(tokens.token(AUDIENCE))
        counted: dict[str, float] = {}
        for target in targets:
            low = _count(target, few, fixed.url, tokens.url, token)
            high = _count(target, many, fixed.url, tokens.url, token)
            counted[target] = (high - low) / (many - few)
            base = counted.get("c")
            ratio = f"  ({counted[target] / base:.3f} of c)" if base else ""
            print(f"{target:<10} {counted[target]:>10,.0f} instructions per request{ratio}")


if __name__ == "__main__":
    main()
