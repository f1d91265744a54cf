"""The stdio backends of one worker: a bridge each (:mod:`proxy.stdio.bridge`), whose
Unix socket is that backend's one replica; and the check that their programs exist."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import unquote

from ..metrics import Metrics
from ..settings import Settings
from . import orphans
from .bridge import StdioBridge
from .peers import Peers
from .process import process_environment

__all__ = ("Bridges", "is_bridge_url", "missing_commands")

_DIRECTORY_PREFIX = "mcp-fastproxy-stdio-"


class Bridges:
    """A bridge per stdio backend of `settings`, in a directory of this process's own.

    `running`: the bridges of the configuration a reload replaces; a backend whose
    process settings stay keeps its bridge, with its sessions and processes."""

    def __init__(
        self, settings: Settings, running: Bridges | None = None, metrics: Metrics | None = None
    ) -> None:
        self.directory: Path | None = None if running is None else running.directory
        self._names: Iterator[int] = itertools.count() if running is None else running._names
        self.peers: Peers | None = Peers.of(settings) if running is None else running.peers
        """The other gateway replicas' way in (``peer_address``; a restart changes it)."""
        self.bridges: dict[str, StdioBridge] = {}
        for backend in settings.backends:
            if backend.stdio is None:
                continue
            kept = None if running is None else running.bridges.get(backend.name)
            if kept is not None and kept.settings == backend.stdio:
                self.bridges[backend.name] = kept
                continue
            if self.directory is None:  # 0700: only this user may reach the sockets
                parent = Path(tempfile.gettempdir())
                orphans.sweep(parent, _DIRECTORY_PREFIX)  # after a gateway killed outright
                self.directory = Path(tempfile.mkdtemp(prefix=_DIRECTORY_PREFIX))
                orphans.owner(self.directory)
            self.bridges[backend.name] = StdioBridge(
                backend.name,
                backend.stdio,
                self.directory / f"{backend.name}-{next(self._names)}.sock",
                max_body=settings.max_body_size,
                idle_seconds=settings.session_ttl,
                metrics=metrics,
                peers=self.peers,
            )
        self._opened: set[int] = set() if running is None else running._opened

    @property
    def urls(self) -> Mapping[str, str]:
        """The replica URL of each stdio backend, by name."""
        return {name: bridge.url for name, bridge in self.bridges.items()}

    async def open(self) -> None:
        """Open the bridges not open yet."""
        for bridge in self.bridges.values():
            if id(bridge) not in self._opened:
                await bridge.open()
                self._opened.add(id(bridge))

    async def retire(self, successor: Bridges | None) -> None:
        """Close the bridges `successor` does not keep (their processes end)."""
        staying = set() if successor is None else {id(b) for b in successor.bridges.values()}
        for bridge in self.bridges.values():
            if id(bridge) not in staying:  # opened or not: a peer listener is bound at once
                self._opened.discard(id(bridge))
                await bridge.close()
        if successor is None and self.directory is not None:
            with contextlib.suppress(OSError):
                (self.directory / orphans.OWNER).unlink()
                self.directory.rmdir()

    async def close(self) -> None:
        await self.retire(None)


def is_bridge_url(backend: str, url: str) -> bool:
    """Whether `url` (from a session record) is the socket of a bridge of `backend` made
    by a worker of this host (:class:`Bridges`): never any other path."""
    if not url.startswith("http+unix://") or not url.endswith("/mcp"):
        return False
    path = Path(unquote(url.removeprefix("http+unix://").removesuffix("/mcp")))
    return (
        path.parent.parent == Path(tempfile.gettempdir())
        and path.parent.name.startswith(_DIRECTORY_PREFIX)
        and re.fullmatch(re.escape(backend) + r"-\d+\.sock", path.name) is not None
    )


def missing_commands(settings: Settings) -> list[str]:
    """A line for each stdio backend whose program is not found (on the PATH it runs
    with, or as the path given)."""
    problems = []
    for backend in settings.backends:
        stdio = backend.stdio
        if stdio is None:
            continue
        path = process_environment(stdio).get("PATH", os.defpath)
        if os.sep in stdio.command:
            cwd = Path(stdio.cwd or ".")
            found = os.access(cwd / stdio.command, os.X_OK)
        else:
            found = shutil.which(stdio.command, path=path) is not None
        if not found:
            problems.append(
                f"backend {backend.name}: the command {stdio.command!r} is not found "
                f"(or not executable) on the PATH it runs with"
            )
        if stdio.cwd and not Path(stdio.cwd).is_dir():
            problems.append(f"backend {backend.name}: cwd {stdio.cwd!r} is not a directory")
    return problems
