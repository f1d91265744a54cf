"""The cost of a new token: the first request with a token the gateway has not seen
(signature check, claims, principal) against requests whose token it has cached.

Starts the fixed-JSON nginx (target a), a gateway with auth off (c) and one with auth on
(ca: local JWKS issuer, one policy rule, a rate limit, the audit log), opens a session on
each, then sends tools/call one at a time, interleaved: on ca with a token never seen
before (same subject, a new ``jti``: the session stays the caller's), on ca with the
cached token, and on c. Prints the median latency of each and the differences; then the
token check alone, in process: ``TokenVerifier.verify`` for a new token, and the digest and
cache lookup of a known one.

    python -m bench.auth                 # 400 rounds
    python -m bench.auth --rounds 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench import services as svc
from bench.issuer import Issuer, issuer
from bench.run import open_session
from bench.workloads import HANDSHAKE_VERSION, ID_MARK, WORKLOADS, check_answer, request_headers
from proxy.auth.fetch import Fetcher
from proxy.auth.settings import AuthSettings, IssuerSettings
from proxy.auth.tokens import TokenVerifier
from proxy.metrics import Metrics

CALL = WORKLOADS["call"]
BODY = CALL.body.replace(ID_MARK.encode(), b"1")


def _post(client: httpx.Client, url: str, headers: dict[str, str]) -> float:
    """One tools/call; its latency in microseconds (the answer is checked)."""
    started = time.perf_counter()
    response = client.post(url, content=BODY, headers=headers)
    elapsed = (time.perf_counter() - started) * 1e6
    ctype = response.headers.get("content-type", "")
    problem = check_answer(response.status_code, ctype, response.content, CALL)
    if problem is not None:
        raise SystemExit(f"{url}: {problem}: {response.text[:300]}")
    return elapsed


def over_http(rounds: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        fixed = svc.fixed_nginx(stack)
        plain = svc.gateway(stack, fixed)
        tokens = stack.enter_context(issuer())
        audit = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "audit.log"
        authed = svc.auth_gateway(stack, fixed, tokens, audit)
        on_plain = request_headers(CALL, open_session(plain))
        on_authed = request_headers(CALL, open_session(authed)) | dict(authed.headers)
        on_authed["MCP-Protocol-Version"] = HANDSHAKE_VERSION
        fresh = [f"Bearer {tokens.token(authed.url)}" for _ in range(rounds)]
        new: list[float] = []
        cached: list[float] = []
        off: list[float] = []
        with httpx.Client(timeout=30) as client:
            for _ in range(20):  # warm both, and the connections
                _post(client, authed.url, on_authed)
                _post(client, plain.url, on_plain)
            for token in fresh:
                new.append(_post(client, authed.url, on_authed | {"Authorization": token}))
                cached.append(_post(client, authed.url, on_authed))
                off.append(_post(client, plain.url, on_plain))
        return {
            "new token (auth on)": statistics.median(new),
            "cached token (auth on)": statistics.median(cached),
            "auth off": statistics.median(off),
        }


async def in_process(tokens: Issuer, rounds: int) -> dict[str, float]:
    audience = "http://127.0.0.1:1/mcp"
    settings = AuthSettings(issuers=(IssuerSettings(issuer=tokens.url),))
    fetcher = Fetcher(5.0)
    verifier = TokenVerifier(settings, fetcher, Metrics(), audience)
    fresh = [tokens.token(audience).encode() for _ in range(rounds)]
    await verifier.verify(fresh[0])  # fetches the JWKS
    new: list[float] = []
    for raw in fresh[1:]:
        started = time.perf_counter()
        await verifier.verify(raw)
        new.append((time.perf_counter() - started) * 1e6)
    hit: list[float] = []
    for raw in fresh[1:]:
        started = time.perf_counter()
        verifier.known.get(raw)
        hit.append((time.perf_counter() - started) * 1e6)
    await fetcher.close()
    return {
        "verify, new token": statistics.median(new),
        "lookup, known token": statistics.median(hit),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.auth", description=__doc__)
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args(argv)
    http = over_http(args.rounds)
    with issuer() as tokens:
        local = asyncio.run(in_process(tokens, args.rounds))
    print(f"tools/call one at a time, {args.rounds} rounds interleaved (median latency):")
    for name, value in http.items():
        print(f"  {name:<32} {value:8.0f} µs")
    first = http["new token (auth on)"] - http["cached token (auth on)"]
    print(f"  first request with a new token costs {first:.0f} µs more than a cached one")
    over = http["cached token (auth on)"] - http["auth off"]
    print(f"  a cached token costs {over:.0f} µs over auth off")
    print("token check in process (median):")
    for name, value in local.items():
        print(f"  {name:<32} {value:8.1f} µs")


if __name__ == "__main__":
    main()
