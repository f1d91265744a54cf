"""No local server outlives its gateway for good: each worker writes down the process
groups it starts, and a gateway that starts sweeps up after one that died without
stopping them (kill -9, a crash, the machine's OOM killer).

A process runs in a process group of its own (:mod:`proxy.stdio.process`), so it does not
die with the worker that started it. Most stdio servers end when their stdin closes,
which it does when the worker dies; one that does not (or something it started) is found
at the next start: every worker's stdio directory holds an ``owner`` file (its pid and
start time) and a file per process group it started (named by the group's id, holding
the leader's start time). A directory whose owner is gone has its groups that still run
(the same pid with the same start time: never a recycled pid) killed, then is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

__all__ = ("forget", "owner", "record", "started_at", "sweep")

logger = logging.getLogger("proxy.stdio")

OWNER = "owner"
GROUP_PREFIX = "group-"


def started_at(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None when no
    such process runs (a zombie counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def owner(directory: Path) -> None:
    """Mark `directory` as this process's."""
    (directory / OWNER).write_text(f"{os.getpid()} {started_at(os.getpid())}")


def record(directory: Path, pid: int) -> None:
    """A process group this process started (its leader `pid`)."""
    with contextlib.suppress(OSError):
        (directory / f"{GROUP_PREFIX}{pid}").write_text(started_at(pid) or "")


def forget(directory: Path, pid: int) -> None:
    """The group of `pid` ended (reaped)."""
    with contextlib.suppress(OSError):
        (directory / f"{GROUP_PREFIX}{pid}").unlink()


def sweep(parent: Path, prefix: str) -> int:
    """Kill the process groups left by gone owners of `parent`/`prefix`* directories and
    remove those directories; how many groups were killed."""
    killed = 0
    for directory in parent.glob(f"{prefix}*"):
        try:
            pid_text, _, since = (directory / OWNER).read_text().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            continue  # not ours, or being made right now
        if pid == os.getpid() or started_at(pid) == since:
            continue  # its owner runs
        for group in directory.glob(f"{GROUP_PREFIX}*"):
            try:
                leader = int(group.name.removeprefix(GROUP_PREFIX))
                leader_since = group.read_text()
            except (OSError, ValueError):
                continue
            if leader_since and started_at(leader) == leader_since:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(leader, signal.SIGKILL)
                    killed += 1
        shutil.rmtree(directory, ignore_errors=True)
    if killed:
        logger.warning("killed %d local server process group(s) a stopped gateway left", killed)
    return killed
