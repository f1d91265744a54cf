"""Every setting of the gateway, described once: where it is declared.

Each :class:`Settings` field carries its default, its help and (when not derived from
its name) its flag. The CLI's options (:mod:`proxy.cli`), the README's table
(:func:`settings_table`) and the checks of raw values (:mod:`proxy.config`) all read
:data:`SETTING_INFO`, which is built from those fields.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from .auth.settings import AuthSettings, OutboundSettings

__all__ = (
    "CONFIG_ENV",
    "DEFAULT_BACKEND",
    "ENV_PREFIX",
    "SETTING_INFO",
    "BackendSettings",
    "SettingInfo",
    "Settings",
    "StdioSettings",
    "settings_table",
)

ENV_PREFIX: Final = "PROXY_"
CONFIG_ENV: Final = ENV_PREFIX + "CONFIG"
"""The variable that names the YAML file (``--config`` of ``serve``)."""
DEFAULT_BACKEND: Final = "default"

_T = TypeVar("_T")


def _setting(
    default: _T,
    help: str,
    *,
    flag: str = "",
    repeatable: bool = False,
    shown: str = "",
    see: str = "",
    live: bool = False,
) -> _T:
    """A Settings field: its default, and what ``--help`` and the README say of it.

    :param help: a sentence or two; backticks mark code (``--help`` drops them).
    :param flag: when it is not ``--`` and the name with dashes (a list's flag is
        singular: ``--allowed-origin``). The variable is ``PROXY_`` and the flag in
        upper case with underscores, the YAML key is the field's name.
    :param repeatable: the flag may be given several times (the value is a list).
    :param shown: the default in words (markdown), where the value alone would mislead.
    :param see: the title of the README section that says more.
    :param live: a reload (SIGHUP) applies a change of it to the running gateway; any
        other setting changes only with a restart.
    """
    meta = {
        "help": help,
        "flag": flag,
        "repeatable": repeatable,
        "shown": shown,
        "see": see,
        "live": live,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class StdioSettings:
    """A backend that is a local process speaking MCP on stdin and stdout: what to run
    (an argument list, never through a shell) and how many of it."""

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables the process gets, beside the few it inherits (or all, with
    ``inherit_env``). Values may be secrets: never logged."""
    cwd: str = ""
    inherit_env: bool = False
    max_processes: int = 64
    """Processes at most (one per client session), per worker; beyond, 503."""
    min_idle: int = 0
    """Processes kept started ahead of demand, per worker: a new session takes one instead
    of waiting for a program to start."""
    shared: bool = False
    """One process (per worker) serves every session, the gateway keeping their requests
    apart; it is offered no sampling, elicitation or roots."""
    start_timeout: float = 30.0
    """Seconds a new process has to answer ``initialize``."""
    stop_grace: float = 2.0
    """Seconds between closing stdin, SIGTERM and SIGKILL when a process ends."""


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """One upstream MCP server: a name, the URLs of its replicas, and (federation) the
    prefix of its tool and prompt names and which of its tools are offered."""

    name: str
    replicas: tuple[str, ...]
    prefix: str = ""
    tools_allow: tuple[str, ...] = ()  # empty: every tool
    tools_deny: tuple[str, ...] = ()
    forward_credentials: bool = False  # federation: pass the client's Authorization/Cookie
    credentials: OutboundSettings = field(default_factory=OutboundSettings)
    """What the gateway sends this backend in place of the client's credentials."""
    stdio: StdioSettings | None = None
    """A local process instead of replicas (``replicas`` is then empty)."""
    era: str = "auto"
    """Which protocol eras it speaks: ``auto`` (asked: ``server/discover``, then
    ``initialize``), or ``handshake``, ``stateless`` or ``both`` as configured."""

    def describe(self) -> str:
        """Where it is, for the log and ``check``: its replicas, or the program it runs
        with the number of its arguments and the names of its variables (either may hold
        a secret: never their values)."""
        if self.stdio is None:
            return ", ".join(self.replicas)
        stdio = self.stdio
        variables = f"; variables {', '.join(sorted(stdio.env))}" if stdio.env else ""
        return f"runs {stdio.command} ({len(stdio.args)} argument(s){variables})"

    def offers_tool(self, name: str) -> bool:
        """Whether the allow/deny lists let clients see and call tool ``name``."""
        if self.tools_allow and name not in self.tools_allow:
            return False
        return name not in self.tools_deny


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway reads at start; every field has a flag, a PROXY_* variable
    and a YAML key of the same name (``allowed_origins`` is ``--allowed-origin``).

    Each field is declared with :func:`_setting`: its default and help live here and
    nowhere else. The order of the fields is the order of ``--help`` and of the README's
    table.
    """

    # -- where requests go, and where the gateway listens
    upstream: tuple[str, ...] = _setting(
        (),
        "URLs of the replicas of the one backend.",
        repeatable=True,
        shown="none (required unless `backends` is given)",
        live=True,
    )
    command: tuple[str, ...] = _setting(
        (),
        "A local MCP server to run as the one backend (stdio): the program, then its "
        "arguments. `mcp-fastproxy serve -- npx -y @modelcontextprotocol/server-everything` "
        "sets it (everything after `--`).",
        repeatable=True,
        shown="none",
        see="Local (stdio) servers",
    )
    peer_address: str = _setting(
        "",
        "Local servers across hosts: the address of this gateway that the other gateway "
        "replicas reach (its pod or host IP). Each worker's local servers listen there too, "
        "on a port of their own, and sessions record it; empty: reached on this host only.",
        see="Local (stdio) servers",
    )
    peer_secret: str = _setting(
        "",
        "A reference (`env:NAME` or `file:/path`) to the secret the gateway replicas share "
        "to reach each other's local servers (at least 16 characters); required with "
        "`peer_address`.",
        see="Local (stdio) servers",
    )
    response_cache: bool = _setting(
        True,
        "Serve again the results of stateless-era backends that say they may be kept "
        "(`ttlMs`, `cacheScope`): `public` ones for every caller, `private` ones for their "
        "caller only; in Redis with the Redis store.",
        see="Response cache",
    )
    response_cache_bytes: int = _setting(
        64 << 20,
        "Bytes of results the in-memory response cache holds at most (least recently "
        "used first out).",
        see="Response cache",
    )
    state_secret: str = _setting(
        "",
        "A reference (`env:NAME` or `file:/path`) to the key (at least 16 characters) that "
        "seals the `requestState` a stateless client gets in front of a handshake-era "
        "backend; replicas that share it accept each other's. Empty: a key made for each "
        "run, good on this gateway (all its workers) only.",
        see="Era bridging",
    )
    host: str = _setting("127.0.0.1", "Address to bind.")
    port: int = _setting(8787, "Port to bind.")
    path: str = _setting("/mcp", "MCP endpoint path.")
    workers: int = _setting(
        0,
        "Granian worker processes (more than one needs Redis).",
        shown="`0` (automatic: one with the memory store, one per usable CPU with Redis)",
    )
    session_store: str = _setting(
        "memory",
        "`memory`, or a `redis://`, `rediss://`, `unix://`, `redis+sentinel://` or "
        "`redis+cluster://` URL.",
        see="Redis deployments",
    )
    allowed_origins: tuple[str, ...] = _setting(
        (),
        "Origins allowed besides the loopback defaults; `*` allows any.",
        flag="--allowed-origin",
        repeatable=True,
        live=True,
    )
    # -- sessions, and the upstream connections
    session_ttl: float = _setting(
        3600.0, "Idle seconds before a session expires; every use renews it."
    )
    max_body_size: int = _setting(
        4 * 1024 * 1024, "Largest request body in bytes (413 above it).", live=True
    )
    upstream_timeout: float = _setting(
        300.0, "Seconds to wait for an upstream's response headers (504 after).", live=True
    )
    connect_timeout: float = _setting(5.0, "Upstream connect timeout, in seconds.", live=True)
    max_connections: int = _setting(512, "Upstream connection pool size.", live=True)
    # -- Redis
    redis_key_prefix: str = _setting("mcpfp:", "Prefix of the session keys in Redis.")
    redis_max_connections: int = _setting(
        64,
        "Redis connections per worker (per node on a cluster), besides the invalidation "
        "feed; more concurrent operations wait up to 1 s, then 503.",
    )
    redis_cache_size: int = _setting(
        10_000,
        "Session records cached in-process in front of Redis, per worker; `0` turns the cache off.",
    )
    redis_cache_max_age: float = _setting(
        5.0, "Seconds a cached record is served at most before Redis is read again."
    )
    # -- health, and the process's start and end
    probe_interval: float = _setting(
        2.0, "Seconds between probes of a replica marked down.", live=True
    )
    backlog: int = _setting(
        1024,
        "Listen backlog (capped by the kernel's `net.core.somaxconn`); Granian also admits "
        "at most backlog / workers requests at once per worker, open streams included.",
    )
    drain_seconds: float = _setting(
        5.0,
        "On SIGTERM, seconds spent draining (`/readyz` 503, `Connection: close` on every "
        "answer, GET streams ended) before the listener closes; `0` skips the drain.",
    )
    shutdown_timeout: float = _setting(
        30.0, "Seconds requests in flight get to finish once the listener has closed."
    )
    # -- several backends (federation)
    backends: tuple[BackendSettings, ...] = _setting(
        (),
        "Several backends behind one endpoint (in a flag or variable: YAML or JSON text).",
        see="Several MCP servers behind one endpoint (federation)",
        live=True,
    )
    list_timeout: float = _setting(
        2.0, "Federation: seconds a merged list waits for each backend.", live=True
    )
    list_cache_seconds: float = _setting(
        60.0, "Federation: seconds a backend's list is served from the cache at most.", live=True
    )
    # -- limits
    pool_timeout: float = _setting(
        10.0,
        "Seconds a request waits for a free upstream connection when every one is busy "
        "(503 after).",
        live=True,
    )
    max_streams: int = _setting(
        512,
        "Upstream connections per replica for long-lived streams (GET streams, listens), "
        "kept apart from `max_connections` so that held-open streams never starve "
        "request/response exchanges.",
        live=True,
    )
    max_streams_per_session: int = _setting(
        2, "Open GET streams per session in one gateway process (429 after).", live=True
    )
    max_streams_per_client: int = _setting(
        256,
        "Open GET streams per client address in one gateway process (429 after); behind a "
        "proxy, set `trusted_proxies` so that clients are told apart.",
        live=True,
    )
    header_timeout: float = _setting(
        10.0,
        "Seconds a client has to send its request head (Granian closes the connection after).",
    )
    body_timeout: float = _setting(
        30.0, "Seconds a client has to send its request body (408 after).", live=True
    )
    max_sessions: int = _setting(
        100_000,
        "Sessions the in-memory store holds at most (503 for a new one after); with Redis, "
        "Redis' own memory limit applies and each worker caches at most "
        "`redis_cache_size` records.",
    )
    max_answer_size: int = _setting(
        64 * 1024 * 1024,
        "Federation: largest backend answer the gateway reads whole, or single event it "
        "rewrites, in bytes (502 after).",
        live=True,
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        "Addresses or networks (`10.0.0.0/8`) of proxies in front whose `X-Forwarded-*` "
        "headers are believed.",
        flag="--trusted-proxy",
        repeatable=True,
        live=True,
    )
    log_level: str = _setting(
        "info", "Log level: `critical`, `error`, `warning`, `info` or `debug`."
    )
    log_format: str = _setting(
        "text", "`text` (one line with its time, for people) or `json` (one object a line)."
    )
    access_log: str = _setting(
        "off",
        "One line per request to the MCP endpoint: `off`, `stdout`, `stderr` or a file "
        "path (appended to).",
    )
    access_log_format: str = _setting(
        "json", "`json` (one object a line) or `text` (`key=value` pairs, for terminals)."
    )
    access_log_sample: float = _setting(
        1.0, "Share of requests with an access log line (0 < share <= 1)."
    )
    auth: AuthSettings | None = _setting(  # noqa: RUF009 - frozen (AuthSettings is)
        None,
        "Authentication (the gateway as an OAuth 2.1 resource server), policy, rate limits "
        "and audit (in a flag or variable: YAML or JSON text); off when not given.",
        see="Identity and access",
    )
    trace_endpoint: str = _setting(
        "",
        "OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`): a span per request "
        "and per upstream exchange; empty: off.",
    )
    trace_sample: float = _setting(
        1.0, "Share of new traces sampled (0 < share <= 1; a client's sampled trace is kept)."
    )
    trace_service_name: str = _setting("mcp-fastproxy", "The traces' `service.name`.")
    status_page: bool = _setting(
        True,
        "`GET /status`: the gateway's state as JSON and, to a browser, as a page (with "
        "the Origin and Host checks of the MCP endpoint).",
    )
    reuse_port: bool = _setting(
        False,
        "Share the port with other processes already listening on it (`SO_REUSEPORT`); "
        "without it, a port in use stops the start.",
    )

    @property
    def federated(self) -> bool:
        """Several backends behind one endpoint (or one with a prefix or a tool filter):
        the gateway answers initialize and merges lists itself."""
        return len(self.backends) > 1 or any(
            b.prefix or b.tools_allow or b.tools_deny for b in self.backends
        )

    @property
    def store_kind(self) -> str:
        """``memory`` or ``redis``, from the session-store value."""
        return "memory" if self.session_store == "memory" else "redis"

    def to_env(self) -> dict[str, str]:
        """Serialised for worker processes (read back by :func:`from_env_json`)."""
        data = dataclasses.asdict(self)
        # One of the two: validate() derives the backends from --upstream.
        data.pop("backends" if self.upstream or self.command else "upstream")
        import orjson  # noqa: PLC0415 - only the CLI serialises settings

        return {"PROXY_SETTINGS_JSON": orjson.dumps(data).decode()}


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One setting as its user meets it, read from its :class:`Settings` field."""

    key: str
    """The field's name, and the key in a YAML file."""
    flag: str
    """The command-line flag (``--allowed-origin``)."""
    env: str
    """The environment variable (``PROXY_ALLOWED_ORIGIN``)."""
    default: Any
    shown_default: str
    """The default as ``--help`` and the README show it (markdown; empty: none)."""
    help: str
    """What the setting does (markdown: backticks mark code)."""
    see: str
    """The title of the README section that says more (or empty)."""
    repeatable: bool
    """The flag may be given several times; the value is a list of strings."""
    live: bool
    """A reload applies a change of it to the running gateway (others need a restart)."""


def _shown(value: object) -> str:
    if value == () or value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 3600, as one would write it, not 3600.0
    return f"`{value}`"


def _info(f: dataclasses.Field[Any]) -> SettingInfo:
    meta = f.metadata
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    return SettingInfo(
        key=f.name,
        flag=flag,
        env=ENV_PREFIX + flag.removeprefix("--").upper().replace("-", "_"),
        default=f.default,
        shown_default=meta["shown"] or _shown(f.default),
        help=meta["help"],
        see=meta["see"],
        repeatable=meta["repeatable"],
        live=meta["live"],
    )


SETTING_INFO: Final[Mapping[str, SettingInfo]] = {
    f.name: _info(f) for f in dataclasses.fields(Settings)
}
"""Every setting by key, in the order of the fields."""


def _anchor(title: str) -> str:
    """The link target GitHub gives a README heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def settings_table() -> str:
    """The README's table of settings (markdown), one row per :class:`Settings` field.

    ``python scripts/settings_table.py`` writes it into README.md; a test fails when the
    README's copy differs.
    """
    rows = [
        "| flag | env | YAML key | default | meaning |",
        "|---|---|---|---|---|",
        f"| `--config` | `{CONFIG_ENV}` | — | — | YAML file with any of the keys below. |",
    ]
    for info in SETTING_INFO.values():
        meaning = info.help
        if info.live:
            meaning += " Applied by a [reload](#reload-without-a-restart)."
        if info.see:
            meaning += f" See [{info.see}](#{_anchor(info.see)})."
        cells = (
            f"`{info.flag}`" + (" (repeatable)" if info.repeatable else ""),
            f"`{info.env}`" + (" (space- or comma-separated)" if info.repeatable else ""),
            f"`{info.key}`" + (" (list)" if isinstance(info.default, tuple) else ""),
            info.shown_default or "—",
            meaning,
        )
        rows.append("| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
