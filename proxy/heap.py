"""The garbage collector, set for a long-running server once it has started.

CPython collects its youngest generation every 700 net allocations of container objects,
and each collection walks what is young, each tenth one the middle generation, and now
and then everything: under load that is thousands of collections a second. Measured on
the request path (tools/call at c=64, the fixed-JSON nginx upstream, `bench/README.md`),
the collector took 6-7 µs of a 68 µs request; with the young generation collected every
10,000 allocations the gateway answered 1.09-1.12 times the requests a second. What is
alive when the server has started (modules, settings, pools: most of the heap) is also
frozen (`gc.freeze`): no collection walks it again.

Counting allocations alone, a quiet server would hardly ever collect: garbage in
reference cycles (a refused request's exception, its traceback and the frames that hold
it) would then keep what it holds (its connection's slot in the server, its buffers) for
as long as nothing else allocates. So the young generations are also collected every
second, whatever was allocated (about a millisecond of work; under load the threshold
comes first anyway).
"""

from __future__ import annotations

import asyncio
import gc

__all__ = ("SWEEP_SECONDS", "YOUNG_THRESHOLD", "Settled", "settle")

YOUNG_THRESHOLD = 10_000
"""Net allocations between two collections of the youngest generation (CPython: 700)."""

SWEEP_SECONDS = 1.0
"""Longest time between two collections of the young generations."""


class Settled:
    """The collector as :func:`settle` left it, and its once-a-second sweep."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle = loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        gc.collect(1)
        self._handle = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    def stop(self) -> None:
        self._handle.cancel()


def settle() -> Settled:
    """Collect once, freeze what survives, collect the young generation less often, and
    sweep the young generations every second (on the running loop). Called by the serving
    process's app once it has started, never by a library user's."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return Settled(asyncio.get_running_loop())
