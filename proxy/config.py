"""Where each setting's value comes from (flags > PROXY_* variables > YAML file >
defaults), and the checks that refuse a bad one, naming it and its source.

The settings themselves are described in :mod:`proxy.settings`."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import shlex
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import yaml

from .auth.settings import AuthSettings, OutboundSettings, SettingsError, parse
from .auth.validate import check_auth
from .forwarded import parse_networks
from .sessions.redis_url import RedisURLError, parse_redis_url
from .settings import (
    CONFIG_ENV,
    DEFAULT_BACKEND,
    ENV_PREFIX,
    SETTING_INFO,
    BackendSettings,
    SettingInfo,
    Settings,
    StdioSettings,
    settings_table,
)

__all__ = (
    "CONFIG_ENV",
    "DEFAULT_BACKEND",
    "ENV_PREFIX",
    "SETTING_INFO",
    "BackendSettings",
    "ConfigError",
    "SettingInfo",
    "Settings",
    "from_env_json",
    "load",
    "read_file",
    "settings_table",
    "usable_cpus",
    "validate",
)

Origin = Literal["flag", "env"]
"""Where a value given to :func:`load` came from (besides the file)."""


class ConfigError(SettingsError):
    """A configuration key or value is wrong.

    ``where`` names it: a setting (``port``) or a part of one (``backends[a].prefix``),
    and once :func:`load` knows where the value came from, the flag (``--port``), the
    variable (``PROXY_PORT``) or the file and key (``gateway.yaml: port``). ``problem``
    says what is wrong.
    """

    @property
    def setting(self) -> str:
        """The setting ``where`` begins with (``backends`` for ``backends[a].prefix``)."""
        return re.split(r"[.\[]", self.where, maxsplit=1)[0]


# A YAML file may also spell a key as its flag does (allowed-origin: for allowed_origins).
_KEY_ALIASES: Final = {
    info.flag.removeprefix("--").replace("-", "_"): info.key
    for info in SETTING_INFO.values()
    if info.flag != "--" + info.key.replace("_", "-")
}
_STDIO_KEYS: Final = frozenset(
    {
        "command",
        "args",
        "env",
        "cwd",
        "inherit_env",
        "max_processes",
        "min_idle",
        "shared",
        "start_timeout",
        "stop_grace",
    }
)
"""A backend that is a local process: these keys in place of ``replicas`` (the first
four as in the ``mcpServers`` files of Claude Desktop, Cursor and VS Code)."""
_BACKEND_KEYS: Final = (
    frozenset({"name", "prefix", "replicas", "tools", "forward_credentials", "credentials", "era"})
    | _STDIO_KEYS
)
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
ERA_CHOICES: Final = ("auto", "handshake", "stateless", "both")
"""A backend's ``era``: asked of the server, or as configured."""
_LOG_LEVELS: Final = frozenset({"critical", "error", "warning", "info", "debug"})
_LOG_FORMATS: Final = frozenset({"text", "json"})


def _unknown(what: str, name: str, known: Collection[str]) -> str:
    """``unknown <what> (did you mean 'upstream'?); known: ...``: most unknown keys are
    typos of a known one."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what}{hint}; known: {', '.join(sorted(known))}"


def _string_list(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.replace(",", " ").split()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(where, f"expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _backend(index: int, raw: Any) -> BackendSettings:
    """One entry of ``backends`` (a YAML mapping, or a BackendSettings read back)."""
    if isinstance(raw, BackendSettings):
        return raw
    where = f"backends[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "expected a mapping with name, prefix and replicas")
    raw = dict(raw)
    if "tools_allow" in raw or "tools_deny" in raw:  # the serialised form (workers)
        raw["tools"] = {"allow": raw.pop("tools_allow", ()), "deny": raw.pop("tools_deny", ())}
    if "stdio" in raw:  # the serialised form, too
        raw.update(raw.pop("stdio") or {})
        if not raw.get("replicas"):
            raw.pop("replicas", None)
    unknown = sorted(set(map(str, raw)) - _BACKEND_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", _unknown("key", unknown[0], _BACKEND_KEYS))
    name = raw.get("name")
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
        raise ConfigError(f"{where}.name", f"{name!r} must be lower-case letters, digits, _ or -")
    where = f"backends[{name}]"
    prefix = raw.get("prefix", "")
    if not isinstance(prefix, str) or any(c in prefix for c in " /\t\n"):
        raise ConfigError(f"{where}.prefix", f"{prefix!r} must be a string without spaces or /")
    stdio = None
    if "command" in raw:
        if "replicas" in raw:
            raise ConfigError(
                f"{where}.command", "give either command (a local process) or replicas, not both"
            )
        stdio = _stdio(where, raw)
        replicas: tuple[str, ...] = ()
    else:
        if set(raw) & _STDIO_KEYS:
            key = sorted(set(raw) & _STDIO_KEYS)[0]
            raise ConfigError(f"{where}.{key}", "only a backend with a command takes it")
        replicas = _string_list(f"{where}.replicas", raw.get("replicas"))
        if not replicas:
            raise ConfigError(f"{where}.replicas", "at least one URL (or a command) is required")
        for url in replicas:
            _check_upstream_url(f"{where}.replicas", url)
    tools = raw.get("tools") or {}
    if not isinstance(tools, Mapping) or set(tools) - {"allow", "deny"}:
        raise ConfigError(f"{where}.tools", "expected a mapping with allow and/or deny lists")
    allow = _string_list(f"{where}.tools.allow", tools.get("allow", ()))
    deny = _string_list(f"{where}.tools.deny", tools.get("deny", ()))
    if allow and deny:
        raise ConfigError(
            f"{where}.tools",
            "give allow (the only tools offered) or deny (the tools held back), not both",
        )
    forward = raw.get("forward_credentials", False)
    if not isinstance(forward, bool):
        raise ConfigError(f"{where}.forward_credentials", "expected true or false")
    try:
        outbound = parse(OutboundSettings, raw.get("credentials") or {}, f"{where}.credentials")
    except SettingsError as exc:
        raise ConfigError(exc.where, exc.problem) from None
    era = raw.get("era", "auto")
    if era not in ERA_CHOICES:
        raise ConfigError(f"{where}.era", f"{era!r} is not one of {', '.join(ERA_CHOICES)}")
    if stdio is not None and era != "auto":
        raise ConfigError(f"{where}.era", "a local server speaks both eras through the gateway")
    return BackendSettings(name, replicas, prefix, allow, deny, forward, outbound, stdio, era)


def _stdio(where: str, raw: Mapping[str, Any]) -> StdioSettings:
    """The process a backend runs (its ``command``, ``args``, ``env``…)."""
    command = raw["command"]
    if not isinstance(command, str) or not command.strip():
        raise ConfigError(f"{where}.command", f"{command!r} must be a program to run")
    args = raw.get("args", ())
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{where}.args", "expected a list of strings")
    env = raw.get("env") or {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        # the values may be secrets: not shown
        raise ConfigError(f"{where}.env", "expected a mapping of variable names to strings")
    cwd = raw.get("cwd", "")
    if not isinstance(cwd, str):
        raise ConfigError(f"{where}.cwd", "expected a directory")
    inherit = raw.get("inherit_env", False)
    if not isinstance(inherit, bool):
        raise ConfigError(f"{where}.inherit_env", "expected true or false")
    shared = raw.get("shared", False)
    if not isinstance(shared, bool):
        raise ConfigError(f"{where}.shared", "expected true or false")
    numbers: dict[str, Any] = {}
    for key, kind, least in (
        ("max_processes", int, 1),
        ("min_idle", int, 0),
        ("start_timeout", float, 0.001),
        ("stop_grace", float, 0.0),
    ):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
                raise ConfigError(f"{where}.{key}", f"{value!r} must be a number >= {least}")
            if kind is int and not isinstance(value, int):
                raise ConfigError(f"{where}.{key}", f"{value!r} must be a whole number")
            numbers[key] = kind(value)
    stdio = StdioSettings(command, tuple(args), dict(env), cwd, inherit, **numbers, shared=shared)
    if stdio.min_idle > stdio.max_processes:
        raise ConfigError(f"{where}.min_idle", "must be at most max_processes")
    return stdio


def _check_backends(backends: tuple[BackendSettings, ...]) -> None:
    names = [b.name for b in backends]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError("backends", f"the name {name!r} is used twice")
    if len(backends) > 1:
        for b in backends:
            if not b.prefix:
                raise ConfigError(
                    f"backends[{b.name}].prefix",
                    "every backend needs a prefix when there are several (tool and prompt "
                    "names are told apart by it)",
                )
        for a in backends:
            for b in backends:
                if a is not b and b.prefix.startswith(a.prefix):
                    raise ConfigError(
                        "backends",
                        f"the prefix {b.prefix!r} of {b.name!r} starts with the prefix "
                        f"{a.prefix!r} of {a.name!r}: names could not be told apart",
                    )
    urls = [u for b in backends for u in b.replicas]  # a stdio backend has none
    for url in urls:
        if urls.count(url) > 1:
            raise ConfigError("backends", f"the replica URL {url!r} is listed twice")


def _coerce(key: str, value: Any) -> Any:
    """Convert one raw value (YAML scalar, env string or flag) to the field's type.

    Flags and variables arrive here as the strings the user typed (the CLI does not
    convert them), so that a bad one is reported with the name it was given by.
    """
    if key == "auth":
        if value is None:
            return None
        if isinstance(value, str):  # PROXY_AUTH: YAML (JSON is YAML too)
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(key, f"not valid YAML or JSON: {exc}") from None
        try:
            return parse(AuthSettings, value, "auth")
        except SettingsError as exc:
            raise ConfigError(exc.where, exc.problem) from None
    if key == "backends":
        if isinstance(value, str):  # PROXY_BACKENDS: YAML (JSON is YAML too)
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(key, f"not valid YAML or JSON: {exc}") from None
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list of backends, got {value!r}")
        return tuple(_backend(i, raw) for i, raw in enumerate(value))
    if key == "command":  # a program and its arguments: each word whole, spaces and all
        if isinstance(value, str):
            value = shlex.split(value)  # PROXY_COMMAND or YAML: shell words (no shell runs)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, "expected a program and its arguments")
        return tuple(value)
    info = SETTING_INFO[key]
    if info.repeatable:
        items: list[Any]
        if isinstance(value, str):
            items = [v.strip() for v in value.replace(",", " ").split()]
        elif isinstance(value, list | tuple):
            # Repeated flags, a variable click split on spaces, or a YAML list: any string
            # in it may still hold several comma-separated values.
            items = [
                part
                for item in value
                for part in (item.replace(",", " ").split() if isinstance(item, str) else [item])
            ]
        else:
            raise ConfigError(key, f"expected a list of strings, got {value!r}")
        if not all(isinstance(v, str) and v for v in items):
            raise ConfigError(key, f"expected a list of non-empty strings, got {value!r}")
        return tuple(items)
    if isinstance(info.default, bool):  # before int: a bool is an int too
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if isinstance(info.default, int):
        try:
            if isinstance(value, bool | float) or (
                isinstance(value, str) and not value.strip().lstrip("+-").isdigit()
            ):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a whole number, got {value!r}") from None
    if isinstance(info.default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number of seconds, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _check_upstream_url(where: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(where, f"{url!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(where, f"{url!r} has an invalid port") from None


def _is_host(address: str) -> bool:
    """A host name or an IP address (IPv6 without brackets), and nothing else."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", address) is not None
    return True


def validate(values: Mapping[str, Any]) -> Settings:
    """Build Settings from already-merged raw values; raise ConfigError naming the bad key."""
    merged: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in SETTING_INFO:
            raise ConfigError(key, _unknown("setting", key, SETTING_INFO))
        merged[key] = _coerce(key, raw)
    settings = Settings(**merged)
    if settings.backends and settings.upstream:
        raise ConfigError(
            "upstream", "give either upstream (one backend) or backends (several), not both"
        )
    if settings.command and (settings.backends or settings.upstream):
        raise ConfigError(
            "command", "give either a command (a local server) or upstream or backends, not both"
        )
    if settings.backends:
        _check_backends(settings.backends)
    elif settings.command:
        if not settings.command[0].strip():
            raise ConfigError("command", "the first word must be the program to run")
    else:
        if not settings.upstream:
            raise ConfigError("upstream", "at least one upstream URL is required")
        for url in settings.upstream:
            _check_upstream_url("upstream", url)
        if len(set(settings.upstream)) != len(settings.upstream):
            raise ConfigError("upstream", "the same URL is listed twice")
    if not 0 < settings.port < 65536:
        raise ConfigError("port", f"{settings.port} is not a TCP port (1-65535)")
    if not settings.path.startswith("/") or any(c in settings.path for c in "?# "):
        raise ConfigError("path", f"{settings.path!r} must be an absolute URL path such as /mcp")
    if settings.path in ("/healthz", "/readyz", "/metrics"):
        raise ConfigError("path", f"{settings.path!r} is reserved for the gateway's own endpoints")
    if settings.workers < 0:
        raise ConfigError("workers", f"{settings.workers} must be at least 1 (or 0: automatic)")
    store = settings.session_store
    if store != "memory":
        try:
            parse_redis_url(store)
        except RedisURLError as exc:
            raise ConfigError("session_store", str(exc)) from None
    if settings.workers > 1 and store == "memory":
        raise ConfigError(
            "workers",
            f"{settings.workers} workers cannot share the in-memory session store (each "
            "worker would hold its own sessions and lose the others'); use "
            "--session-store redis://... to run several workers, or --workers 1",
        )
    if settings.workers == 0:
        settings = dataclasses.replace(settings, workers=1 if store == "memory" else usable_cpus())
    if settings.drain_seconds < 0:
        raise ConfigError("drain_seconds", "must be 0 or more")
    if not 128 <= settings.backlog <= 65535:
        raise ConfigError("backlog", f"{settings.backlog} must be between 128 and 65535")
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
            raise ConfigError(key, "must be greater than 0")
    if settings.max_body_size < 1024:
        raise ConfigError("max_body_size", "must be at least 1024 bytes")
    for key in (
        "max_connections",
        "max_streams",
        "max_streams_per_session",
        "max_streams_per_client",
        "max_sessions",
        "max_answer_size",
    ):
        if getattr(settings, key) < 1:
            raise ConfigError(key, "must be at least 1")
    try:
        parse_networks(settings.trusted_proxies)
    except ValueError as exc:
        raise ConfigError("trusted_proxies", str(exc)) from None
    if settings.log_format not in _LOG_FORMATS:
        raise ConfigError("log_format", f"{settings.log_format!r} is not 'text' or 'json'")
    if settings.access_log_format not in _LOG_FORMATS:
        raise ConfigError(
            "access_log_format", f"{settings.access_log_format!r} is not 'text' or 'json'"
        )
    if not 0 < settings.trace_sample <= 1:
        raise ConfigError("trace_sample", "must be greater than 0 and at most 1")
    if settings.trace_endpoint and urlsplit(settings.trace_endpoint).scheme not in (
        "http",
        "https",
    ):
        raise ConfigError("trace_endpoint", "must be an http:// or https:// URL")
    if not 0 < settings.access_log_sample <= 1:
        raise ConfigError("access_log_sample", "must be greater than 0 and at most 1")
    if settings.log_level not in _LOG_LEVELS:
        raise ConfigError(
            "log_level", f"{settings.log_level!r} is not one of {sorted(_LOG_LEVELS)}"
        )
    if settings.redis_cache_size < 0:
        raise ConfigError("redis_cache_size", "must be 0 (no cache) or more")
    if settings.redis_cache_max_age <= 0:
        raise ConfigError("redis_cache_max_age", "must be greater than 0")
    if settings.redis_max_connections < 1:
        raise ConfigError("redis_max_connections", "must be at least 1")
    for origin in settings.allowed_origins:
        if origin != "*" and not urlsplit(origin).scheme:
            raise ConfigError("allowed_origins", f"{origin!r} must be '*' or scheme://host[:port]")
    if settings.peer_address and settings.session_store == "memory":
        raise ConfigError(
            "peer_address",
            "needs the Redis store: the replicas find each other's sessions there",
        )
    if settings.peer_address and not settings.peer_secret:
        raise ConfigError("peer_secret", "is required with peer_address")
    if settings.peer_secret and not settings.peer_secret.startswith(("env:", "file:")):
        raise ConfigError("peer_secret", "must be a reference: env:NAME or file:/path")
    if settings.state_secret and not settings.state_secret.startswith(("env:", "file:")):
        raise ConfigError("state_secret", "must be a reference: env:NAME or file:/path")
    if settings.peer_address and not _is_host(settings.peer_address):
        raise ConfigError("peer_address", "must be a host name or an IP address, without a port")
    if not settings.backends:
        stdio = None
        if settings.command:
            stdio = StdioSettings(settings.command[0], settings.command[1:])
        backend = BackendSettings(DEFAULT_BACKEND, settings.upstream, stdio=stdio)
        settings = dataclasses.replace(settings, backends=(backend,))
    try:
        check_auth(settings)
    except SettingsError as exc:
        raise ConfigError(exc.where, exc.problem) from None
    return settings


def load(
    config_file: str | os.PathLike[str] | None, given: Mapping[str, tuple[Origin, Any]]
) -> Settings:
    """Merge defaults < file < PROXY_* variables < flags, and validate.

    :param config_file: the YAML file, if any.
    :param given: the values of the flags and variables the user set, by key, each with
        where it came from.
    :raises ConfigError: naming where the bad value came from: the flag (``--port``), the
        variable (``PROXY_PORT``) or the file and the key (``gateway.yaml: port``).
    """
    raw = read_file(config_file) if config_file is not None else {}
    file_name = os.fspath(config_file) if config_file is not None else ""
    origins: dict[str, Origin | Literal["file"]] = dict.fromkeys(raw, "file")
    for key, (origin, value) in given.items():
        raw[key] = value
        origins[key] = origin
    try:
        return validate(raw)
    except ConfigError as exc:
        came_from = origins.get(exc.setting)
        info = SETTING_INFO.get(exc.setting)
        if came_from == "file":
            raise ConfigError(f"{file_name}: {exc.where}", exc.problem) from None
        if came_from is None or info is None:  # a default, or no one value is to blame
            raise
        name = info.flag if came_from == "flag" else info.env
        # "--port: ..." says which setting; "PROXY_BACKENDS: backends[a].prefix: ..." must.
        where = name if exc.where == exc.setting else f"{name}: {exc.where}"
        raise ConfigError(where, exc.problem) from None


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping of a YAML configuration file (keys use - or _ alike, and a list's
    key may be spelled as its flag: ``allowed-origin``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{os.fspath(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{os.fspath(path)!r} must hold a mapping of settings")
    for key in ("mcpServers", "servers"):  # Claude Desktop and Cursor; VS Code
        if isinstance(data.get(key), dict) and "backends" not in data:
            backends = mcp_servers(key, data.pop(key))
            data = {**data, "backends": backends}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        out[_KEY_ALIASES.get(name, name)] = value
    return out


_MCP_SERVER_KEYS: Final = frozenset(
    {"command", "args", "env", "cwd", "url", "type", "disabled", "description"}
)


def mcp_servers(key: str, servers: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``backends`` of an ``mcpServers`` (or VS Code ``servers``) mapping: an entry
    with a ``command`` runs it (stdio), one with a ``url`` is an HTTP backend; a
    ``disabled`` one is left out. With several, each name (made a valid backend name)
    prefixes its tools and prompts."""
    backends: list[dict[str, Any]] = []
    for label, entry in servers.items():
        where = f"{key}.{label}"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, "expected a mapping with command or url")
        unknown = sorted(set(map(str, entry)) - _MCP_SERVER_KEYS)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "not supported by the gateway")
        if entry.get("disabled") is True:
            continue
        name = re.sub(r"[^a-z0-9_-]+", "-", str(label).lower()).strip("-") or "server"
        backend: dict[str, Any] = {"name": name}
        if "url" in entry:
            backend["replicas"] = [entry["url"]]
        elif "command" in entry:
            backend.update((k, entry[k]) for k in ("command", "args", "env", "cwd") if k in entry)
        else:
            raise ConfigError(where, "expected command (a local server) or url")
        backends.append(backend)
    if len(backends) > 1:
        for backend in backends:
            backend["prefix"] = backend["name"].replace("-", "_") + "_"
    return backends


def from_env_json(text: str) -> Settings:
    """Settings as serialised by :meth:`Settings.to_env` (worker side)."""
    import orjson  # noqa: PLC0415 - only workers read this

    return validate(orjson.loads(text))
