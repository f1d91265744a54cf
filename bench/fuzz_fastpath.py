"""Differential fuzzing of the fast-path twins against each other and orjson.

Usage: python bench/fuzz_fastpath.py [N] [--seed S]   (N defaults to 1,000,000)

Every input goes through the compiled twin (when built), the pure-Python twin and
``orjson.loads``. Counted: crashes (anything but EnvelopeError escaping a twin),
twin disagreements (different Envelope, exception type, id or message) and validity
disagreements (ParseError raised but orjson accepts, or the other way round).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from types import ModuleType

import orjson

from proxy import _fastpath_py, fastpath
from proxy.jsonrpc import PROTOCOL_VERSION_META_KEY, InvalidEnvelope, ParseError

SPECIAL = b'{}[]":,\\/ue.E+-019 \t\n\x00\x1f\x7f\x80\xbf\xc2\xc3\xe0\xed\xef\xf0\xf4\xff'
STRINGS = ["", "a", "tools/call", "caf\u00e9", "\U0001f600", 'q"\\', "\n\t", "\u2028", "\x00"]


def twins() -> list[ModuleType]:
    if fastpath.IMPLEMENTATION == "c":
        from proxy import _fastpath  # noqa: PLC0415 - only when built

        return [_fastpath, _fastpath_py]
    return [_fastpath_py]


def value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(
            [
                None,
                True,
                False,
                rng.randint(-(2**70), 2**70),
                rng.uniform(-1e300, 1e300),
                rng.random() * 10 ** rng.randint(-320, 308),
                rng.choice(STRINGS),
            ]
        )
    if roll < 0.75:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(["name", "uri", "x", "_meta", "id"]): value(rng, depth + 1) for _ in range(3)
    }


def message(rng: random.Random) -> dict[str, object]:
    msg: dict[str, object] = {}
    if rng.random() < 0.9:
        msg["jsonrpc"] = "2.0" if rng.random() < 0.9 else value(rng)
    if rng.random() < 0.7:
        msg["id"] = rng.choice([rng.randint(-5, 10**6), rng.choice(STRINGS), value(rng)])
    if rng.random() < 0.8:
        msg["method"] = rng.choice(["tools/call", "ping", "resources/read", value(rng)])
    if rng.random() < 0.7:
        params: dict[str, object] = {"arguments": value(rng)}
        for key in ("name", "uri"):
            if rng.random() < 0.6:
                params[key] = rng.choice(STRINGS) if rng.random() < 0.8 else value(rng)
        if rng.random() < 0.4:
            params["_meta"] = {PROTOCOL_VERSION_META_KEY: rng.choice(["2025-06-18", value(rng)])}
        msg["params"] = params
    if rng.random() < 0.2:
        msg[rng.choice(["result", "error"])] = value(rng)
    return msg


def envelope(rng: random.Random) -> bytes:
    roll = rng.random()
    obj: object = message(rng) if roll < 0.8 else [message(rng) for _ in range(rng.randint(0, 3))]
    if roll > 0.95:
        obj = value(rng)
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 1]))
    if isinstance(obj, dict) and obj and rng.random() < 0.3:  # a shadowed duplicate key
        key = rng.choice(sorted(obj))
        text = json.dumps({key: value(rng)})[:-1] + "," + text[1:]
    return text.encode("utf-8", "surrogatepass")


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(buf))
        byte = rng.choice(SPECIAL) if rng.random() < 0.7 else rng.randint(0, 255)
        action = rng.random()
        if action < 0.4 or not buf:
            buf.insert(at, byte)
        elif action < 0.75:
            buf[min(at, len(buf) - 1)] = byte
        elif action < 0.95:
            del buf[min(at, len(buf) - 1)]
        else:
            del buf[at:]
    return bytes(buf)


def body(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        return envelope(rng)
    if roll < 0.9:
        return mutate(rng, envelope(rng))
    return bytes(rng.choice(SPECIAL) for _ in range(rng.randint(0, 24)))


def outcome(scan: Callable[[bytes], object], data: bytes) -> object:
    try:
        return scan(data)
    except ParseError:
        return ("ParseError",)
    except InvalidEnvelope as exc:
        return ("InvalidEnvelope", exc.id, exc.message)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)  # noqa: S311 - reproducible inputs, not secrets
    impls = twins()
    crashes = twin_diffs = validity_diffs = valid = 0
    started = time.monotonic()
    for i in range(args.n):
        data = body(rng)
        results = []
        for impl in impls:
            try:
                results.append(outcome(impl.scan_envelope, data))
            except Exception as exc:  # counting crashes is the point
                crashes += 1
                print(f"crash in {impl.__name__}: {exc!r} on {data!r}", file=sys.stderr)
                results.append(("crash", type(exc).__name__))
        if any(r != results[0] for r in results):
            twin_diffs += 1
            print(f"twins disagree on {data!r}: {results!r}", file=sys.stderr)
        try:
            orjson.loads(data)
            accepted = True
        except orjson.JSONDecodeError:
            accepted = False
        valid += accepted
        for r in results:
            if (r == ("ParseError",)) == accepted:
                validity_diffs += 1
                print(f"orjson accepted={accepted} but {r!r} on {data!r}", file=sys.stderr)
        if (i + 1) % 100_000 == 0:
            print(f"... {i + 1} inputs, {time.monotonic() - started:.0f}s", file=sys.stderr)
    print(
        f"inputs={args.n} implementations={[m.__name__ for m in impls]} valid_json={valid} "
        f"crashes={crashes} twin_disagreements={twin_diffs} orjson_disagreements={validity_diffs} "
        f"seconds={time.monotonic() - started:.0f}"
    )
    return 1 if crashes or twin_diffs or validity_diffs else 0


if __name__ == "__main__":
    sys.exit(main())
