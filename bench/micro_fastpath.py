"""Micro benchmark: both fast-path twins' scan_envelope against orjson.loads.

    python -m bench.micro_fastpath [--repeat 7] [--seconds 0.2]

Bodies: a 200 B tools/call, a 100 KB tools/call whose arguments are structured records,
and a 100 KB tools/call whose arguments hold one big string. For each body and each
function, timeit runs as many calls as fit in about ``--seconds``, ``--repeat`` times;
the table shows the median ns per call and the ratios (orjson.loads is the baseline: it
builds every object, the scanners only find the envelope's members).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from bench.workloads import TOOL, big_arguments

__all__ = ("bodies", "main")


def _call(arguments: dict[str, Any], request_id: int = 7) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": TOOL, "arguments": arguments, "_meta": {"progressToken": 7}},
        }
    )


def bodies() -> dict[str, bytes]:
    small = {"query": "weather in Paris", "units": "metric", "days": 3, "verbose": False}
    text = 'Lorem ipsum dolor sit amet, \u00e9l\u00e8ve "quoted" \\ back\\slash.\n' * 1700
    out = {
        "200 B call": _call(small),
        "100 KB structured": _call(big_arguments()),
        "100 KB one string": _call({"document": text.encode()[:92_000].decode(errors="ignore")}),
    }
    size = len(out["200 B call"])
    assert 150 <= size <= 250, size
    return out


def ns_per_call(func: Callable[[bytes], object], body: bytes, repeat: int, seconds: float) -> float:
    timer = timeit.Timer(lambda: func(body))
    number, took = timer.autorange()  # calls that take at least 0.2 s
    number = max(1, int(number * seconds / max(took, 1e-9)))
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_fastpath", description=__doc__)
    parser.add_argument("--repeat", type=int, default=7, help="timeit repeats [7]")
    parser.add_argument("--seconds", type=float, default=0.2, help="time per repeat [0.2]")
    args = parser.parse_args(argv)

    funcs: dict[str, Callable[[bytes], object]] = {"orjson.loads": orjson.loads}
    for label, module in (("c", "proxy._fastpath"), ("py", "proxy._fastpath_py")):
        try:
            funcs[f"scan_envelope ({label})"] = importlib.import_module(module).scan_envelope
        except ModuleNotFoundError:
            print(f"# {module} is not built: python setup.py build_ext --inplace")

    print("| body | bytes | function | median ns/call | ÷ orjson.loads | py ÷ c |")
    print("|---|--:|---|--:|--:|--:|")
    for name, body in bodies().items():
        results = {
            label: ns_per_call(f, body, args.repeat, args.seconds) for label, f in funcs.items()
        }
        base = results["orjson.loads"]
        c_ns = results.get("scan_envelope (c)")
        for label, ns in results.items():
            twin = f"{ns / c_ns:.1f}" if label.endswith("(py)") and c_ns else ""
            print(f"| {name} | {len(body):,} | {label} | {ns:,.0f} | {ns / base:.2f} | {twin} |")


if __name__ == "__main__":
    main()
