"""N gateway replicas behind nginx (least_conn) on one Redis, all on loopback.

Run from the repository (Ctrl-C stops everything)::

    python deploy/local/cluster.py --replicas 3 --upstream http://127.0.0.1:9000/mcp
    python deploy/local/cluster.py --upstream URL1 --upstream URL2 -- --upstream-timeout 5

Arguments after ``--`` go to every ``python -m proxy serve``. nginx runs
``deploy/nginx/nginx.conf`` with ``deploy/nginx/mcp_gateway.conf.template`` rendered for the
local replicas, in its own prefix directory. The tests use the same :class:`LocalCluster`
(``tests/cluster.py`` loads this file).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `testbed` and `bench` importable
    sys.path.insert(0, str(REPO_ROOT))

from bench.services import nginx_binary  # noqa: E402 - after the path fix above
from testbed.processes import StartupError, free_port, wait_http  # noqa: E402
from testbed.redis_server import RedisServer  # noqa: E402

__all__ = ("NGINX_DIR", "GatewayReplica", "LocalCluster", "main", "render_nginx")

NGINX_DIR = REPO_ROOT / "deploy" / "nginx"
HOST = "127.0.0.1"
SERVER_OPTIONS = "max_fails=1 fail_timeout=2s"
"""nginx's passive health check per replica (see mcp_gateway.conf.template)."""
_TEMP_PATHS = """\
# Written by deploy/local/cluster.py: nginx's temporary files inside this prefix.
client_body_temp_path {dir}/temp/body;
proxy_temp_path {dir}/temp/proxy;
fastcgi_temp_path {dir}/temp/fastcgi;
uwsgi_temp_path {dir}/temp/uwsgi;
scgi_temp_path {dir}/temp/scgi;
"""
_LOG_TAIL = 8000


def render_nginx(servers: Sequence[str], listen: str, server_names: str) -> str:
    """``mcp_gateway.conf.template`` with its three variables filled in.

    :param servers: ``host:port`` of each gateway replica.
    :param listen: nginx's ``listen`` argument (``8080``, ``127.0.0.1:8080``).
    :param server_names: the Host names clients use, space-separated.
    """
    template = string.Template((NGINX_DIR / "mcp_gateway.conf.template").read_text())
    lines = "\n    ".join(f"server {s} {SERVER_OPTIONS};" for s in servers)
    # safe_substitute leaves nginx's own $variables alone, as envsubst with a list does.
    return template.safe_substitute(
        MCP_GATEWAY_SERVERS=lines, MCP_LISTEN=listen, MCP_SERVER_NAMES=server_names
    )


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-_LOG_TAIL:].decode(errors="replace")


def _group_gone(pgid: int, timeout: float) -> bool:
    """Wait (bounded) until no process of group `pgid` is left; True when none is."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # pragma: no cover - the id was reused by someone else
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds, and reap the leader."""
    if proc.poll() is None and grace > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers share the group: none may outlive it
    proc.wait()
    _group_gone(proc.pid, 2.0)


@dataclass
class GatewayReplica:
    """One ``python -m proxy serve`` process (Granian main and workers in one group)."""

    index: int
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The replica's own MCP endpoint (bypassing nginx)."""
        return f"{self.base}/mcp"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    """Redis, N gateway replicas on it and nginx (least_conn) in front, on free loopback
    ports. A context manager: entering starts everything and waits until each gateway's
    ``/healthz`` and nginx answer; leaving stops every process, also after a failure.

    :param upstreams: URLs of the replicas of the one upstream MCP backend.
    :param command: or a local (stdio) server to run as the backend, program and arguments.
    :param replicas: how many gateway processes.
    :param gateway_args: extra ``proxy serve`` arguments for every gateway (after the
        cluster's own; ``--workers 1`` is the default and may be overridden here).
    :param redis_url: use this Redis instead of starting one (then :attr:`redis` is None).
    :param env: laid over this process's environment for the gateways.
    """

    def __init__(
        self,
        upstreams: Sequence[str],
        replicas: int = 3,
        *,
        gateway_args: Sequence[str] = (),
        redis_url: str | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = (),
    ) -> None:
        if not upstreams and not command:
            raise ValueError("at least one upstream URL (or a command) is needed")
        if replicas < 1:
            raise ValueError("at least one gateway replica is needed")
        self.upstreams = tuple(upstreams)
        self.command = tuple(command)
        self.replicas = replicas
        self.gateway_args = tuple(gateway_args)
        self.env = dict(env or {})
        self._redis_url = redis_url
        self.redis: RedisServer | None = None
        self.gateways: list[GatewayReplica] = []
        self.nginx_port = 0
        self.nginx: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self._logs: list[IO[bytes]] = []

    def __repr__(self) -> str:
        alive = sum(g.running for g in self.gateways)
        return f"<LocalCluster {self.url} gateways={alive}/{self.replicas} redis={self.redis_url}>"

    @property
    def url(self) -> str:
        """nginx's MCP endpoint."""
        return f"http://{HOST}:{self.nginx_port}/mcp"

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.nginx_port}"

    @property
    def redis_url(self) -> str:
        if self._redis_url is not None:
            return self._redis_url
        if self.redis is None:
            raise RuntimeError("the cluster is not started")
        return self.redis.url()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.dump_logs()
        self.close()

    def start(self, timeout: float = 60.0) -> None:
        """Start Redis (unless given), the gateways (in parallel) and nginx."""
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="mcp-cluster-"))
            if self._redis_url is None:
                self.redis = RedisServer()
                self.redis.start()
            self.gateways = [
                GatewayReplica(i, free_port(), self.dir / f"gateway-{i}.log")
                for i in range(self.replicas)
            ]
            for gateway in self.gateways:
                self._spawn(gateway)
            for gateway in self.gateways:
                wait_http(f"{gateway.base}/healthz", timeout, proc=gateway.proc)
            self._start_nginx(timeout)
        except BaseException:
            self.dump_logs()
            self.close()
            raise

    def close(self) -> None:
        """Stop nginx, every gateway (whole process groups) and our Redis; idempotent."""
        procs = [g.proc for g in self.gateways if g.proc is not None]
        if self.nginx is not None:
            procs.append(self.nginx)
        for proc in procs:  # all at once: draining gateways wait in parallel
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            _kill_group(proc, grace=0)
        self.nginx = None
        for log in self._logs:
            log.close()
        self._logs = []
        if self.redis is not None:
            self.redis.close()
            self.redis = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    # -- gateways --------------------------------------------------------------------------

    def _command(self, gateway: GatewayReplica) -> list[str]:
        cmd = [sys.executable, "-m", "proxy", "serve"]
        for upstream in self.upstreams:
            cmd += ["--upstream", upstream]
        cmd += [
            "--host",
            HOST,
            "--port",
            str(gateway.port),
            "--session-store",
            self.redis_url,
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--trusted-proxy",
            HOST,  # nginx, in front: its X-Forwarded-* are believed
            *self.gateway_args,
        ]
        if self.command:
            cmd += ["--", *self.command]
        return cmd

    def _spawn(self, gateway: GatewayReplica) -> None:
        log = gateway.log.open("ab")
        self._logs.append(log)
        gateway.proc = subprocess.Popen(  # noqa: S603 - our own command line
            self._command(gateway),
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: Granian's workers are signalled with it
        )

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to replica `index`'s whole process group (Granian main and workers).

        With SIGKILL this returns once every process of the group is gone (bounded), so
        that nothing new reaches the replica afterwards; other signals return at once.
        """
        proc = self.gateways[index].proc
        if proc is None:
            raise RuntimeError(f"gateway {index} was never started")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            _group_gone(proc.pid, 5.0)

    def start_gateway(self, index: int, timeout: float = 60.0) -> None:
        """(Re)start replica `index` on its same port and wait until it answers /healthz.

        A previous process still running (say, draining after SIGTERM) gets `timeout`
        seconds to exit, then is killed.
        """
        gateway = self.gateways[index]
        if gateway.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                gateway.proc.wait(timeout=timeout)
            _kill_group(gateway.proc, grace=0)
        self._spawn(gateway)
        try:
            wait_http(f"{gateway.base}/healthz", timeout, proc=gateway.proc)
        except StartupError:
            self.dump_logs()
            raise

    # -- nginx -----------------------------------------------------------------------------

    def _render(self) -> None:
        assert self.dir is not None  # noqa: S101 - set by start()
        confd = self.dir / "conf.d"
        confd.mkdir(exist_ok=True)
        (self.dir / "temp").mkdir(exist_ok=True)
        shutil.copy(NGINX_DIR / "nginx.conf", self.dir / "nginx.conf")
        (confd / "local.conf").write_text(_TEMP_PATHS.format(dir=self.dir))
        servers = [f"{HOST}:{g.port}" for g in self.gateways]
        listen = f"{HOST}:{self.nginx_port}"
        rendered = render_nginx(servers, listen, "127.0.0.1 localhost")
        (confd / "mcp_gateway.conf").write_text(rendered)

    def _start_nginx(self, timeout: float) -> None:
        assert self.dir is not None  # noqa: S101 - set by start()
        self.nginx_port = free_port()
        self._render()
        prefix = str(self.dir)
        cmd = [
            nginx_binary(),
            "-p",
            prefix + "/",
            "-c",
            f"{prefix}/nginx.conf",
            "-e",
            f"{prefix}/error.log",
            "-g",
            f"daemon off; pid {prefix}/nginx.pid;",
        ]
        log = (self.dir / "nginx.out").open("ab")
        self._logs.append(log)
        self.nginx = subprocess.Popen(  # noqa: S603 - our own command line
            cmd,
            cwd=prefix,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.base}/healthz", timeout, proc=self.nginx)

    def nginx_reload(self, timeout: float = 10.0) -> None:
        """Render the configuration again and have nginx reload it (SIGHUP)."""
        if self.nginx is None or self.nginx.poll() is not None:
            raise RuntimeError("nginx is not running")
        self._render()
        os.kill(self.nginx.pid, signal.SIGHUP)
        time.sleep(0.2)  # new workers take over; the old ones finish their requests
        wait_http(f"{self.base}/healthz", timeout, proc=self.nginx)

    # -- diagnostics ------------------------------------------------------------------------

    def dump_logs(self) -> None:
        """Print the tail of every process's log to stderr."""
        if self.dir is None:
            return
        for gateway in self.gateways:
            print(f"--- gateway {gateway.index} ({gateway.base}) ---", file=sys.stderr)
            print(_tail(gateway.log), file=sys.stderr)
        for name in ("nginx.out", "error.log"):
            if (text := _tail(self.dir / name)).strip():
                print(f"--- nginx {name} ---\n{text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python deploy/local/cluster.py",
        description="N mcp-fastproxy replicas on Redis behind nginx, on loopback.",
        epilog="Arguments after -- are passed to every `proxy serve`.",
    )
    parser.add_argument("--replicas", type=int, default=3, help="gateway replicas [3]")
    parser.add_argument(
        "--upstream", action="append", required=True, help="upstream MCP URL (repeatable)"
    )
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    args_in = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, extra = args_in[:cut], args_in[cut + 1 :]
    args = parser.parse_args(args_in)

    with LocalCluster(
        args.upstream, args.replicas, gateway_args=extra, redis_url=args.redis_url
    ) as cluster:
        for gateway in cluster.gateways:
            print(f"gateway {gateway.index}: {gateway.url}  (log {gateway.log})")
        print(f"redis: {cluster.redis_url}")
        print(f"MCP endpoint (nginx): {cluster.url}", flush=True)
        reported: set[int] = set()
        try:
            while True:
                time.sleep(1.0)
                if cluster.nginx is None or cluster.nginx.poll() is not None:
                    print("nginx exited", file=sys.stderr)
                    cluster.dump_logs()
                    return 1
                for gateway in cluster.gateways:
                    if not gateway.running and gateway.index not in reported:
                        reported.add(gateway.index)  # nginx keeps going with the others
                        print(f"gateway {gateway.index} exited", file=sys.stderr)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
