"""The garbage collector, set for a long-running server once it has started.

CPython collects its youngest generation every 700 net allocations of container objects,
and each collection walks what is young, each tenth one the middle generation, and now
and then everything: under load that is thousands of collections a second. Measured on
the request path (tools/call at c=64, the fixed-JSON nginx upstream, `bench/README.md`),
the collector took 6-7 µs of a 68 µs request; with the young generation collected every
10,000 allocations the gateway answered 1.09-1.12 times the requests a second. What is alive
when the server has started (modules, settings, pools: most of the heap) is also frozen
(`gc.freeze`): no collection walks it again.

A request's garbage is almost never cyclic (it is freed when its last reference goes),
so collecting less often holds no more than a few thousand young objects longer.
"""

from __future__ import annotations

import gc

__all__ = ("YOUNG_THRESHOLD", "settle")

YOUNG_THRESHOLD = 10_000
"""Net allocations between two collections of the youngest generation (CPython: 700)."""


def settle() -> None:
    """Collect once, freeze what survives, and collect the young generation less often.
    Called by the serving process's app once it has started, never by a library user's."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
