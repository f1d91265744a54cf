"""Waiting, in tests, for something to become true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(predicate: Callable[[], bool], within: float = 2.0) -> float:
    """Wait until ``predicate()`` holds; return how long that took (fail after `within`)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, "condition not met in time"
        await asyncio.sleep(0.002)
    return time.monotonic() - started
