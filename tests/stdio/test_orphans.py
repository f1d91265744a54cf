"""Process groups a gateway killed outright left behind are killed by the next gateway
that starts (proxy.stdio.orphans); a running gateway's are never touched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.stdio import orphans

PREFIX = "mcp-fastproxy-stdio-"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process in a group of its own, as the gateway starts a local server."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    yield process
    process.kill()
    process.wait()


def _gone_owner(directory: Path) -> None:
    """`directory` owned by a process that has ended."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    since = orphans.started_at(ended.pid)
    ended.wait()
    (directory / orphans.OWNER).write_text(f"{ended.pid} {since}")


def test_a_gone_owners_groups_are_killed_and_its_directory_removed(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    left = tmp_path / f"{PREFIX}left"
    left.mkdir()
    _gone_owner(left)
    orphans.record(left, sleeper.pid)
    assert orphans.sweep(tmp_path, PREFIX) == 1
    assert sleeper.wait(10) == -9
    assert not left.exists()


def test_a_running_owners_groups_and_a_recycled_pid_are_left_alone(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    mine = tmp_path / f"{PREFIX}mine"
    mine.mkdir()
    orphans.owner(mine)
    recycled = tmp_path / f"{PREFIX}recycled"
    recycled.mkdir()
    _gone_owner(recycled)
    orphans.record(mine, sleeper.pid)
    # The same pid, but a process that started at another time: not the one recorded.
    (recycled / f"{orphans.GROUP_PREFIX}{sleeper.pid}").write_text("1")
    assert orphans.sweep(tmp_path, PREFIX) == 0
    time.sleep(0.1)
    assert sleeper.poll() is None
    assert mine.exists() and not recycled.exists()
    orphans.forget(mine, sleeper.pid)
    assert not list(mine.glob(f"{orphans.GROUP_PREFIX}*"))


def test_this_processs_start_time_is_read_from_proc() -> None:
    assert orphans.started_at(os.getpid())
    assert orphans.started_at(2**22 + 7) is None
