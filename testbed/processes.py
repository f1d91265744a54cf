"""Helpers for tests that cross a socket: free loopback ports, real subprocesses, readiness."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

__all__ = (
    "REPO_ROOT",
    "StartupError",
    "black_hole",
    "cpu_seconds",
    "free_port",
    "process_tree",
    "rss_bytes",
    "running",
    "serving_in_thread",
    "wait_http",
)

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Working directory for subprocesses, so ``python -m proxy`` / ``-m tests...`` resolve."""


class StartupError(RuntimeError):
    """A subprocess exited, or its readiness URL did not answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str, timeout: float) -> bool:
    if url.startswith("tcp://"):  # a server with no health endpoint: it accepts connections
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError:
            return False
        return True
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.is_success


def wait_http(url: str, timeout: float, *, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``GET url`` until it returns 2xx (``tcp://host:port``: until it accepts a
    connection).

    Raises `StartupError` after `timeout` seconds, or at once if `proc` (the process
    expected to serve `url`) has exited.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"process exited with code {proc.returncode} before {url} answered")
        if _answers(url, timeout=min(2.0, timeout)):
            return
        if time.monotonic() >= deadline:
            raise StartupError(f"{url} did not answer 2xx within {timeout:.1f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group we created, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Workers (e.g. Granian's) share the group; make sure none outlive the parent.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(
    cmd: list[str],
    ready_url: str,
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = 30.0,
    grace: float = 5.0,
    log: Path | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd`, wait until `ready_url` answers 2xx, yield the process, then stop it.

    The process runs in its own session (so its children are stopped with it) from
    `cwd` (`REPO_ROOT` by default), with `env` laid over the current environment. Its
    stderr goes to `log` (or a temporary file), which is printed to our stderr if startup
    fails or the body raises.
    """
    full_env = {**os.environ, **(env or {})}
    opened = log.open("w+b") if log is not None else tempfile.TemporaryFile()  # noqa: SIM115 - closed by the with below
    with opened as errlog:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd or REPO_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            start_new_session=True,
        )
        try:
            wait_http(ready_url, timeout, proc=proc)
            yield proc
        except BaseException:
            _stop(proc, grace)
            errlog.seek(0)
            tail = errlog.read()[-20_000:].decode(errors="replace")
            print(f"--- stderr of {' '.join(cmd)} ---\n{tail}", file=sys.stderr)
            raise
        else:
            _stop(proc, grace)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc: a gateway's Granian workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User and system CPU time used so far by `pid` and its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """A listener that accepts connections and reads but never answers (a hung server,
    the worst kind of dead: no quick refusal); yields its MCP URL."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = server.accept()
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/mcp"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


@contextlib.contextmanager
def serving_in_thread(server: socketserver.BaseServer) -> Iterator[None]:
    """`server` (an ``http.server`` one, say) answering from a thread until the block
    ends; then shut down and closed."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
