"""The `mcp-fastproxy` command: `serve` and `check`; every flag is also a PROXY_* variable."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from . import __version__
from .config import ConfigError, Settings, read_file, validate

# (flag, setting, help); every option defaults to None so its source tells whether the
# user gave it: flags win over env over file over defaults.
_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "--upstream",
        "upstream",
        {"multiple": True, "help": "Upstream MCP URL (repeat for replicas)."},
    ),
    ("--host", "host", {"help": "Address to bind.  [default: 127.0.0.1]"}),
    ("--port", "port", {"type": int, "help": "Port to bind.  [default: 8787]"}),
    ("--path", "path", {"help": "MCP endpoint path.  [default: /mcp]"}),
    (
        "--workers",
        "workers",
        {
            "type": int,
            "help": "Granian worker processes.  [default: 1 with the memory store, "
            "one per usable CPU with Redis]",
        },
    ),
    (
        "--session-store",
        "session_store",
        {
            "help": "'memory' or a redis://, rediss://, unix://, redis+sentinel:// or "
            "redis+cluster:// URL.  [default: memory]"
        },
    ),
    (
        "--allowed-origin",
        "allowed_origins",
        {"multiple": True, "help": "Allowed Origin (repeatable; '*' allows any)."},
    ),
    ("--session-ttl", "session_ttl", {"type": float, "help": "Idle session TTL, seconds."}),
    ("--max-body-size", "max_body_size", {"type": int, "help": "Largest request body, bytes."}),
    (
        "--upstream-timeout",
        "upstream_timeout",
        {"type": float, "help": "Seconds to wait for an upstream's response headers."},
    ),
    ("--connect-timeout", "connect_timeout", {"type": float, "help": "Upstream connect timeout."}),
    ("--max-connections", "max_connections", {"type": int, "help": "Upstream pool size."}),
    ("--redis-key-prefix", "redis_key_prefix", {"help": "Prefix of the session keys in Redis."}),
    ("--probe-interval", "probe_interval", {"type": float, "help": "Seconds between probes."}),
    (
        "--redis-cache-size",
        "redis_cache_size",
        {"type": int, "help": "Session records cached in front of Redis (0: off)."},
    ),
    (
        "--redis-cache-max-age",
        "redis_cache_max_age",
        {"type": float, "help": "Seconds a cached session record may be served."},
    ),
    (
        "--redis-max-connections",
        "redis_max_connections",
        {
            "type": int,
            "help": "Redis connections per worker (per node on a cluster), besides the "
            "invalidation feed; more concurrent operations wait up to 1 s, then 503.  "
            "[default: 64]",
        },
    ),
    (
        "--backlog",
        "backlog",
        {
            "type": int,
            "help": "Listen backlog (the kernel caps it at net.core.somaxconn); Granian "
            "also admits at most backlog / workers requests at once per worker.  "
            "[default: 1024]",
        },
    ),
    (
        "--drain-seconds",
        "drain_seconds",
        {
            "type": float,
            "help": "On SIGTERM, seconds spent draining (unready, connections closed after "
            "each answer, GET streams ended) before the listener closes.  [default: 5]",
        },
    ),
    (
        "--shutdown-timeout",
        "shutdown_timeout",
        {
            "type": float,
            "help": "Seconds requests in flight get to finish once the listener has "
            "closed.  [default: 30]",
        },
    ),
    (
        "--backends",
        "backends",
        {"help": "Several backends behind one endpoint: a YAML or JSON list (see README)."},
    ),
    (
        "--list-timeout",
        "list_timeout",
        {"type": float, "help": "Federation: seconds a merged list waits for each backend."},
    ),
    (
        "--list-cache-seconds",
        "list_cache_seconds",
        {"type": float, "help": "Federation: longest a backend's list is served cached."},
    ),
    (
        "--pool-timeout",
        "pool_timeout",
        {
            "type": float,
            "help": "Seconds a request waits for a free upstream connection when all are "
            "busy (then 503).  [default: 10]",
        },
    ),
    (
        "--max-streams",
        "max_streams",
        {
            "type": int,
            "help": "Upstream connections per replica for long-lived streams (GET streams, "
            "listens), apart from --max-connections.  [default: 512]",
        },
    ),
    (
        "--max-streams-per-session",
        "max_streams_per_session",
        {"type": int, "help": "Open GET streams per session (then 429).  [default: 2]"},
    ),
    (
        "--max-streams-per-client",
        "max_streams_per_client",
        {
            "type": int,
            "help": "Open GET streams per client address (then 429).  [default: 256]",
        },
    ),
    (
        "--header-timeout",
        "header_timeout",
        {
            "type": float,
            "help": "Seconds a client has to send its request headers.  [default: 10]",
        },
    ),
    (
        "--body-timeout",
        "body_timeout",
        {
            "type": float,
            "help": "Seconds a client has to send its request body (then 408).  [default: 30]",
        },
    ),
    (
        "--max-sessions",
        "max_sessions",
        {
            "type": int,
            "help": "Open sessions this process keeps in memory, at most (then 503).  "
            "[default: 100000]",
        },
    ),
    (
        "--max-answer-size",
        "max_answer_size",
        {
            "type": int,
            "help": "Federation: largest backend answer the gateway reads whole or one "
            "event it rewrites, in bytes (then 502).  [default: 67108864]",
        },
    ),
    (
        "--trusted-proxy",
        "trusted_proxies",
        {
            "multiple": True,
            "help": "Address or network of a proxy in front whose X-Forwarded-* headers "
            "are believed (repeatable).",
        },
    ),
    ("--log-level", "log_level", {"help": "critical, error, warning, info or debug."}),
)


def _settings_options(func: Any) -> Any:
    for flag, name, extra in reversed(_OPTIONS):
        envvar = "PROXY_" + flag.removeprefix("--").upper().replace("-", "_")
        func = click.option(flag, name, default=None, envvar=envvar, **extra)(func)
    return func


def load_settings(ctx: click.Context, config: str | None, values: dict[str, Any]) -> Settings:
    """Merge defaults < file < env < flags and validate; exits with the message on error."""
    raw: dict[str, Any] = read_file(config) if config else {}
    for name, value in values.items():
        if value is None or value == ():
            continue
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            raw[name] = value
    return validate(raw)


@click.group()
@click.version_option(__version__, prog_name="mcp-fastproxy")
def main() -> None:
    """mcp-fastproxy: a fast gateway and reverse proxy for MCP servers."""


@main.command()
@click.option("--config", "config", envvar="PROXY_CONFIG", help="YAML configuration file.")
@_settings_options
@click.pass_context
def serve(ctx: click.Context, /, config: str | None, **values: Any) -> None:
    """Serve the gateway."""
    try:
        settings = load_settings(ctx, config, values)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None
    from .server import run  # noqa: PLC0415 - Granian is imported only to serve

    run(settings)


@main.command()
@click.argument("config", required=False)
@_settings_options
@click.pass_context
def check(ctx: click.Context, /, config: str | None, **values: Any) -> None:
    """Validate a configuration (file, PROXY_* variables and flags) without serving."""
    config = config or os.environ.get("PROXY_CONFIG")
    try:
        settings = load_settings(ctx, config, values)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None
    for backend in settings.backends:
        prefix = f" (prefix {backend.prefix})" if backend.prefix else ""
        click.echo(f"backend {backend.name}{prefix}: {', '.join(backend.replicas)}")
    click.echo(
        f"ok: http://{settings.host}:{settings.port}{settings.path}, "
        f"{settings.workers} worker(s), session store {settings.store_kind}"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
