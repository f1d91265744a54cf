"""The serving process sets the garbage collector for a server once started; an app
mounted in someone else's server leaves it as it was."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from proxy import heap
from proxy.app import ProxyApp
from proxy.config import validate
from testbed.processes import free_port


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector's settings put back after the test."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def app() -> ProxyApp:
    return ProxyApp(validate({"upstream": [f"http://127.0.0.1:{free_port()}/mcp"]}))


async def test_settle_freezes_what_lives_and_collects_the_young_less_often(
    collector: None,
) -> None:
    _, middle, old = gc.get_threshold()
    settled = heap.settle()
    try:
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, middle, old)
        assert gc.get_freeze_count() > 1000  # the imported modules, at least
    finally:
        settled.stop()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_cyclic_garbage_goes_within_a_second_even_when_nothing_allocates(
    collector: None,
) -> None:
    settled = heap.settle()
    try:
        gone = asyncio.Event()
        weakref.finalize(_Cycle(), gone.set)  # garbage at once, but only the collector frees it
        await asyncio.wait_for(gone.wait(), heap.SWEEP_SECONDS * 3)
    finally:
        settled.stop()


async def test_the_serving_process_app_settles_the_heap_once_started(collector: None) -> None:
    served = app()
    served.settle_heap = True  # as app_from_env sets it
    await served.open()
    try:
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
    finally:
        await served.close()


async def test_a_mounted_app_leaves_the_collector_alone(collector: None) -> None:
    before = gc.get_threshold()
    mounted = app()
    await mounted.open()
    try:
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
    finally:
        await mounted.close()
