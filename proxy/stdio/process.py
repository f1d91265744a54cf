"""One local MCP server process, spoken to as the MCP stdio transport says: JSON-RPC
messages on stdin and stdout, one per line (UTF-8, no embedded newlines), and whatever
the server writes on stderr is its log.

The process gets exactly the command, arguments, environment and working directory it
was configured with (never anything from a request; no shell). It runs in a process
group of its own, so that stopping it stops what it started too: :meth:`stop` closes its
stdin, waits, sends SIGTERM to the group, waits again, then SIGKILL, and always reaps it
(no zombie, no open pipe left behind). Lines on stderr go to the log with the backend's
name, at most ``stderr_lines_per_second`` a second (the rest are counted and said once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..settings import StdioSettings
from . import orphans

__all__ = ("INHERITED", "ProcessEnded", "StdioProcess", "process_environment")

logger = logging.getLogger("proxy.stdio")

MAX_LINE = 64 * 1024 * 1024
"""The longest message line read from a server (bytes); a longer one ends the process."""


INHERITED = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR")
"""The gateway's variables a process gets without ``inherit_env`` (what the official
SDKs' stdio clients hand down): enough to find and run ``npx``, ``uvx`` or ``python``."""


def process_environment(settings: StdioSettings) -> dict[str, str]:
    """The environment a process of `settings` starts with."""
    if settings.inherit_env:
        env = dict(os.environ)
    else:
        env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    env.update(settings.env)
    return env


class ProcessEnded(ConnectionError):
    """The process exited, or closed its stdout, or wrote a line too long to read."""


class StdioProcess:
    """A started server process: :meth:`send` a message, :meth:`receive` the next one."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        *,
        stop_grace: float = 2.0,
        stderr_lines_per_second: int = 20,
        registry: Path | None = None,
    ) -> None:
        """`registry`: the directory where the groups this worker starts are written
        down (:mod:`proxy.stdio.orphans`)."""
        self.name = name
        self.command = tuple(command)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_grace = stop_grace
        self.stderr_rate = stderr_lines_per_second
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr: asyncio.Task[None] | None = None
        self.stderr_dropped = 0
        self.registry = registry

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def start(self) -> None:
        """Start the process (OSError when the command cannot be run, naming it)."""
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: stop() ends it all
                limit=MAX_LINE,
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"backend {self.name}: cannot run {self.command[0]}: {exc.strerror}"
            ) from None
        if self.registry is not None:
            orphans.record(self.registry, self.proc.pid)
        self._stderr = asyncio.create_task(self._log_stderr(), name=f"{self.name}-stderr")

    async def send(self, message: bytes) -> None:
        """Write one JSON-RPC message (compact JSON: no newline in it) and a newline."""
        proc = self._running()
        assert proc.stdin is not None  # noqa: S101 - a pipe, by start()
        if message.find(b"\n") >= 0 or message.find(b"\r") >= 0:
            raise ValueError("a stdio message must not hold a line break")
        try:
            proc.stdin.write(message + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ProcessEnded(f"backend {self.name}: stdin closed: {exc}") from None

    async def receive(self) -> bytes:
        """The next line the server writes on stdout, without its newline (blank lines are
        skipped); ProcessEnded when there is none to come."""
        proc = self._running()
        assert proc.stdout is not None  # noqa: S101 - a pipe, by start()
        while True:
            try:
                line = await proc.stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise ProcessEnded(f"backend {self.name}: the process closed its stdout") from None
            except asyncio.LimitOverrunError:
                raise ProcessEnded(
                    f"backend {self.name}: a line over {MAX_LINE} bytes on stdout"
                ) from None
            line = line.rstrip(b"\r\n")
            if line.strip():
                return line

    async def stop(self) -> int | None:
        """End the process and reap it: stdin closed, then SIGTERM to its group after
        ``stop_grace`` seconds, then SIGKILL; its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_grace)
                break
            except TimeoutError:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it started and left behind
        if self.registry is not None:
            orphans.forget(self.registry, proc.pid)
        if self._stderr is not None:
            self._stderr.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr
        return proc.returncode

    def _running(self) -> asyncio.subprocess.Process:
        if self.proc is None:
            raise ProcessEnded(f"backend {self.name}: not started")
        return self.proc

    async def _log_stderr(self) -> None:
        proc = self._running()
        assert proc.stderr is not None  # noqa: S101 - a pipe, by start()
        window = time.monotonic()
        lines = 0
        while True:
            try:
                raw = await proc.stderr.readline()
            except ValueError:  # a line over the limit: skip what is there
                continue
            if not raw:
                break
            now = time.monotonic()
            if now - window >= 1.0:
                if self.stderr_dropped:
                    logger.warning(
                        "backend %s: %d stderr lines not logged (over %d a second)",
                        self.name,
                        self.stderr_dropped,
                        self.stderr_rate,
                    )
                    self.stderr_dropped = 0
                window, lines = now, 0
            lines += 1
            if lines > self.stderr_rate:
                self.stderr_dropped += 1
                continue
            text = raw.decode("utf-8", "replace").rstrip()
            logger.info("backend %s: stderr: %s", self.name, text[:2000])
