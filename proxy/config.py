"""Settings (a frozen dataclass), their validation, and where each one comes from."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from .forwarded import parse_networks

ENV_PREFIX: Final = "PROXY_"

# Session store backends: the scheme of --session-store picks the module, imported only
# when chosen (uvicorn's HTTP_PROTOCOLS idiom).
SESSION_STORES: Final[Mapping[str, str]] = {
    "memory": "proxy.sessions.memory:MemorySessionStore",
    "redis": "proxy.sessions.redis:RedisSessionStore",
}
REDIS_SCHEMES: Final = frozenset(
    {"redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster"}
)
DEFAULT_BACKEND: Final = "default"


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


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

    def offers_tool(self, name: str) -> bool:
        """Whether the allow/deny lists let clients see and call tool ``name``."""
        if self.tools_allow and name not in self.tools_allow:
            return False
        return name not in self.tools_deny


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway reads at start; every field has a flag, a PROXY_* variable
    and a YAML key of the same name (``allowed_origins`` is ``--allowed-origin``)."""

    upstream: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8787
    path: str = "/mcp"
    workers: int = 0  # 0: one with the memory store, one per usable CPU with Redis
    session_store: str = "memory"
    allowed_origins: tuple[str, ...] = ()
    session_ttl: float = 3600.0
    max_body_size: int = 4 * 1024 * 1024
    upstream_timeout: float = 300.0
    connect_timeout: float = 5.0
    max_connections: int = 512
    redis_key_prefix: str = "mcpfp:"
    probe_interval: float = 2.0
    log_level: str = "info"
    backends: tuple[BackendSettings, ...] = ()
    redis_cache_size: int = 10_000
    redis_cache_max_age: float = 5.0
    redis_max_connections: int = 64
    drain_seconds: float = 5.0
    backlog: int = 1024
    shutdown_timeout: float = 30.0
    list_timeout: float = 2.0
    list_cache_seconds: float = 60.0
    pool_timeout: float = 10.0
    max_streams: int = 512
    max_streams_per_session: int = 2
    max_streams_per_client: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_sessions: int = 100_000
    max_answer_size: int = 64 * 1024 * 1024
    trusted_proxies: tuple[str, ...] = ()

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
        data.pop("backends" if self.upstream else "upstream")
        import orjson  # noqa: PLC0415 - only the CLI serialises settings

        return {"PROXY_SETTINGS_JSON": orjson.dumps(data).decode()}


_FIELDS: Final = {f.name: f for f in dataclasses.fields(Settings)}
_BACKEND_KEYS: Final = frozenset({"name", "prefix", "replicas", "tools", "forward_credentials"})
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_TUPLE_FIELDS: Final = frozenset({"upstream", "allowed_origins", "trusted_proxies"})
_LOG_LEVELS: Final = frozenset({"critical", "error", "warning", "info", "debug"})


def _string_list(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.replace(",", " ").split()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _backend(index: int, raw: Any) -> BackendSettings:
    """One entry of ``backends`` (a YAML mapping, or a BackendSettings read back)."""
    if isinstance(raw, BackendSettings):
        return raw
    where = f"backends[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with name, prefix and replicas")
    raw = dict(raw)
    if "tools_allow" in raw or "tools_deny" in raw:  # the serialised form (workers)
        raw["tools"] = {"allow": raw.pop("tools_allow", ()), "deny": raw.pop("tools_deny", ())}
    unknown = set(raw) - _BACKEND_KEYS
    if unknown:
        known = sorted(_BACKEND_KEYS)
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} (known: {known})")
    name = raw.get("name")
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
        raise ConfigError(f"{where}.name: {name!r} must be lower-case letters, digits, _ or -")
    where = f"backends[{name}]"
    prefix = raw.get("prefix", "")
    if not isinstance(prefix, str) or any(c in prefix for c in " /\t\n"):
        raise ConfigError(f"{where}.prefix: {prefix!r} must be a string without spaces or /")
    replicas = _string_list(f"{where}.replicas", raw.get("replicas"))
    if not replicas:
        raise ConfigError(f"{where}.replicas: at least one URL is required")
    for url in replicas:
        _check_upstream_url(f"{where}.replicas", url)
    tools = raw.get("tools") or {}
    if not isinstance(tools, Mapping) or set(tools) - {"allow", "deny"}:
        raise ConfigError(f"{where}.tools: expected a mapping with allow and/or deny lists")
    allow = _string_list(f"{where}.tools.allow", tools.get("allow", ()))
    deny = _string_list(f"{where}.tools.deny", tools.get("deny", ()))
    credentials = raw.get("forward_credentials", False)
    if not isinstance(credentials, bool):
        raise ConfigError(f"{where}.forward_credentials: expected true or false")
    return BackendSettings(name, replicas, prefix, allow, deny, credentials)


def _check_backends(backends: tuple[BackendSettings, ...]) -> None:
    names = [b.name for b in backends]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"backends: the name {name!r} is used twice")
    if len(backends) > 1:
        for b in backends:
            if not b.prefix:
                raise ConfigError(
                    f"backends[{b.name}].prefix: every backend needs a prefix when there "
                    "are several (tool and prompt names are told apart by it)"
                )
        for a in backends:
            for b in backends:
                if a is not b and b.prefix.startswith(a.prefix):
                    raise ConfigError(
                        f"backends: the prefix {b.prefix!r} of {b.name!r} starts with the "
                        f"prefix {a.prefix!r} of {a.name!r}: names could not be told apart"
                    )
    urls = [u for b in backends for u in b.replicas]
    for url in urls:
        if urls.count(url) > 1:
            raise ConfigError(f"backends: the replica URL {url!r} is listed twice")


def _coerce(key: str, value: Any) -> Any:
    """Convert one raw value (YAML scalar, env string or flag) to the field's type."""
    if key == "backends":
        if isinstance(value, str):  # PROXY_BACKENDS: YAML (JSON is YAML too)
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(f"backends: not valid YAML or JSON: {exc}") from None
        if not isinstance(value, list | tuple):
            raise ConfigError(f"backends: expected a list of backends, got {value!r}")
        return tuple(_backend(i, raw) for i, raw in enumerate(value))
    default = _FIELDS[key].default
    if key in _TUPLE_FIELDS:
        items: list[Any]
        if isinstance(value, str):
            items = [v.strip() for v in value.replace(",", " ").split()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        if not all(isinstance(v, str) and v for v in items):
            raise ConfigError(f"{key}: expected a list of non-empty strings, got {value!r}")
        return tuple(items)
    if isinstance(default, int):
        try:
            if isinstance(value, bool | float) or (
                isinstance(value, str) and not value.strip().isdigit()
            ):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number of seconds, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _check_upstream_url(key: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: {url!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{key}: {url!r} has an invalid port") from None


# -- Redis URLs --------------------------------------------------------------------------

RedisShape = Literal["standalone", "sentinel", "cluster"]
_TLS_OPTIONS: Final = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
_CERT_REQS: Final = frozenset({"none", "optional", "required"})
_BOOLS: Final = frozenset({"true", "false", "yes", "no", "1", "0", "on", "off"})
# Query parameters each scheme accepts (anything else is a typo: refused at start).
_URL_OPTIONS: Final[Mapping[str, frozenset[str]]] = {
    "redis": frozenset({"db", "protocol"}),
    "unix": frozenset({"db", "protocol"}),
    "rediss": frozenset({"db", "protocol"}) | _TLS_OPTIONS,
    "redis+sentinel": frozenset({"sentinel_username", "sentinel_password"}),
    "redis+cluster": frozenset(),
    "rediss+cluster": _TLS_OPTIONS,
}
_STORE_FORMS: Final = (
    "'memory', redis://[user:password@]host[:port][/db], rediss://... (TLS), "
    "unix:///path/to/redis.sock, redis+sentinel://[user:password@]host[:port][,host[:port]...]"
    "/service-name[/db] or redis+cluster://[user:password@]host[:port][,host[:port]...] "
    "(rediss+cluster:// for TLS)"
)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``session_store`` URL: which Redis deployment, where, and how to log in.

    ``standalone`` URLs (``redis://``, ``rediss://``, ``unix://``) go to redis-py's
    ``from_url`` as they are; ``nodes`` lists the sentinels (``sentinel``) or the cluster's
    seed nodes (``cluster``). ``options`` holds the (checked) query parameters.
    """

    shape: RedisShape
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: Mapping[str, str] = field(default_factory=dict)


def _hosts(url: str, hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        entry = item.strip()
        if entry.startswith("["):  # [IPv6]:port
            host, _, rest = entry[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = entry.partition(":")
        if not host:
            raise ConfigError(f"session_store: {url!r} lists an empty host")
        if not port_text:
            port = default_port
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ConfigError(f"session_store: {url!r} has an invalid port {port_text!r}")
        nodes.append((host, port))
    return tuple(nodes)


def parse_redis_url(url: str) -> RedisTarget:
    """Check a Redis ``session_store`` URL and split it up; ConfigError says what is wrong.

    Forms: ``redis://[user:password@]host[:port][/db]`` (``rediss://`` for TLS, with
    ``?ssl_ca_certs=&ssl_certfile=&ssl_keyfile=&ssl_cert_reqs=none|optional|required&
    ssl_check_hostname=``), ``unix:///path.sock[?db=N]``,
    ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/<service-name>[/db]``
    (sentinels default to port 26379; ``?sentinel_username=&sentinel_password=`` log in to
    the sentinels, the user and password before ``@`` to the Redis servers) and
    ``redis+cluster://[user:password@]host[:port][,host[:port]...]`` (seed nodes, port
    6379 by default; ``rediss+cluster://`` with the TLS options above).
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in REDIS_SCHEMES:
        raise ConfigError(f"session_store: {url!r} must be {_STORE_FORMS}")
    parts = urlsplit(url)
    if parts.fragment:
        raise ConfigError(f"session_store: {url!r} must not have a #fragment")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _URL_OPTIONS[scheme]:
            allowed = ", ".join(sorted(_URL_OPTIONS[scheme])) or "none"
            raise ConfigError(
                f"session_store: unknown query parameter {name!r} for {scheme}:// "
                f"(allowed: {allowed})"
            )
        options[name] = value
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs.lower() not in _CERT_REQS:
        raise ConfigError(
            f"session_store: ssl_cert_reqs={reqs!r} must be none, optional or required"
        )
    check = options.get("ssl_check_hostname")
    if check is not None and check.lower() not in _BOOLS:
        raise ConfigError(f"session_store: ssl_check_hostname={check!r} must be true or false")
    for name in ("db", "protocol"):
        if name in options and not options[name].isdigit():
            raise ConfigError(f"session_store: {name}={options[name]!r} must be a number")
    if "protocol" in options and options["protocol"] not in ("2", "3"):
        raise ConfigError("session_store: protocol must be 2 or 3")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in options and not Path(options[name]).is_file():
            raise ConfigError(f"session_store: {name}={options[name]!r} is not a readable file")

    netloc = parts.netloc
    userinfo, at, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None  # redis://:secret@host: no user

    if scheme in ("redis", "rediss", "unix"):
        if scheme == "unix":
            if not parts.path or parts.path == "/":
                raise ConfigError(f"session_store: {url!r} must name a socket path")
        else:
            if not hostlist:
                raise ConfigError(f"session_store: {url!r} has no host")
            if "," in hostlist:
                raise ConfigError(
                    f"session_store: {url!r} lists several hosts; use redis+sentinel:// or "
                    "redis+cluster:// for several nodes"
                )
            _hosts(url, hostlist, 6379)
            db_text = parts.path.strip("/")
            if db_text and not db_text.isdigit():
                raise ConfigError(
                    f"session_store: {url!r}: the path must be a database number, not {db_text!r}"
                )
        return RedisTarget(
            "standalone", url, username=username, password=password,
            tls=scheme == "rediss", options=options,
        )  # fmt: skip

    if not hostlist:
        raise ConfigError(f"session_store: {url!r} names no host")
    if scheme == "redis+sentinel":
        nodes = _hosts(url, hostlist, 26379)
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            raise ConfigError(
                f"session_store: {url!r} names no service: use "
                "redis+sentinel://host:26379[,host:26379...]/<service-name>[/db]"
            )
        if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
            raise ConfigError(
                f"session_store: {url!r}: the path must be /<service-name>[/<db number>]"
            )
        db = int(segments[1]) if len(segments) == 2 else 0
        return RedisTarget(
            "sentinel", url, nodes, service=unquote(segments[0]), db=db,
            username=username, password=password, options=options,
        )  # fmt: skip
    nodes = _hosts(url, hostlist, 6379)
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigError(
            f"session_store: {url!r}: a Redis Cluster has only database 0; drop the path"
        )
    return RedisTarget(
        "cluster", url, nodes, username=username, password=password,
        tls=scheme == "rediss+cluster", options=options,
    )  # fmt: skip


def validate(values: Mapping[str, Any]) -> Settings:
    """Build Settings from already-merged raw values; raise ConfigError naming the bad key."""
    merged: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"unknown setting {key!r} (known: {known})")
        merged[key] = _coerce(key, raw)
    settings = Settings(**merged)
    if settings.backends and settings.upstream:
        raise ConfigError(
            "upstream: give either upstream (one backend) or backends (several), not both"
        )
    if settings.backends:
        _check_backends(settings.backends)
    else:
        if not settings.upstream:
            raise ConfigError("upstream: at least one upstream URL is required")
        for url in settings.upstream:
            _check_upstream_url("upstream", url)
        if len(set(settings.upstream)) != len(settings.upstream):
            raise ConfigError("upstream: the same URL is listed twice")
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port: {settings.port} is not a TCP port (1-65535)")
    if not settings.path.startswith("/") or any(c in settings.path for c in "?# "):
        raise ConfigError(f"path: {settings.path!r} must be an absolute URL path such as /mcp")
    if settings.path in ("/healthz", "/readyz", "/metrics"):
        raise ConfigError(f"path: {settings.path!r} is reserved for the gateway's own endpoints")
    if settings.workers < 0:
        raise ConfigError(f"workers: {settings.workers} must be at least 1 (or 0: automatic)")
    store = settings.session_store
    if store != "memory":
        parse_redis_url(store)
    if settings.workers > 1 and store == "memory":
        raise ConfigError(
            f"workers: {settings.workers} workers cannot share the in-memory session store "
            "(each worker would hold its own sessions and lose the others'); use "
            "--session-store redis://... to run several workers, or --workers 1"
        )
    if settings.workers == 0:
        settings = dataclasses.replace(
            settings, workers=1 if store == "memory" else usable_cpus()
        )
    if settings.drain_seconds < 0:
        raise ConfigError("drain_seconds: must be 0 or more")
    if not 128 <= settings.backlog <= 65535:
        raise ConfigError(f"backlog: {settings.backlog} must be between 128 and 65535")
    for key in (
        "list_timeout",
        "list_cache_seconds",
        "session_ttl",
        "upstream_timeout",
        "connect_timeout",
        "probe_interval",
        "shutdown_timeout",
        "pool_timeout",
        "header_timeout",
        "body_timeout",
    ):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"{key}: must be greater than 0")
    if settings.max_body_size < 1024:
        raise ConfigError("max_body_size: must be at least 1024 bytes")
    for key in (
        "max_connections",
        "max_streams",
        "max_streams_per_session",
        "max_streams_per_client",
        "max_sessions",
        "max_answer_size",
    ):
        if getattr(settings, key) < 1:
            raise ConfigError(f"{key}: must be at least 1")
    try:
        parse_networks(settings.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"trusted_proxies: {exc}") from None
    if settings.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level: {settings.log_level!r} is not one of {sorted(_LOG_LEVELS)}")
    if settings.redis_cache_size < 0:
        raise ConfigError("redis_cache_size: must be 0 (no cache) or more")
    if settings.redis_cache_max_age <= 0:
        raise ConfigError("redis_cache_max_age: must be greater than 0")
    if settings.redis_max_connections < 1:
        raise ConfigError("redis_max_connections: must be at least 1")
    for origin in settings.allowed_origins:
        if origin != "*" and not urlsplit(origin).scheme:
            raise ConfigError(f"allowed_origins: {origin!r} must be '*' or scheme://host[:port]")
    if settings.backends:
        return settings
    backend = BackendSettings(name=DEFAULT_BACKEND, replicas=settings.upstream)
    return dataclasses.replace(settings, backends=(backend,))


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping of a YAML configuration file (keys use - or _ alike)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config: cannot read {os.fspath(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {os.fspath(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {os.fspath(path)!r} must hold a mapping of settings")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in ("allowed_origin", "trusted_proxy"):
            name += "s"
        out[name] = value
    return out


def from_env_json(text: str) -> Settings:
    """Settings as serialised by :meth:`Settings.to_env` (worker side)."""
    import orjson  # noqa: PLC0415 - only workers read this

    return validate(orjson.loads(text))
