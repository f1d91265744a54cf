"""Redis session-store URLs: the accepted forms, checked and split into a RedisTarget.

Plain standard library, no redis-py: :func:`proxy.config.validate` checks the URL at start
with it, before anything connects, and :class:`~proxy.sessions.redis.RedisSessionStore`
connects to what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ("REDIS_SCHEMES", "RedisShape", "RedisTarget", "RedisURLError", "parse_redis_url")

REDIS_SCHEMES: Final = frozenset(
    {"redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster"}
)

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


class RedisURLError(ValueError):
    """A session-store URL is wrong; the message says what (the caller names the setting:
    this module does not import :mod:`proxy.config`, which imports it)."""


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
            raise RedisURLError(f"{url!r} lists an empty host")
        if not port_text:
            port = default_port
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise RedisURLError(f"{url!r} has an invalid port {port_text!r}")
        nodes.append((host, port))
    return tuple(nodes)


def parse_redis_url(url: str) -> RedisTarget:
    """Check a Redis ``session_store`` URL and split it up; RedisURLError says what is wrong.

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
        raise RedisURLError(f"{url!r} must be {_STORE_FORMS}")
    parts = urlsplit(url)
    if parts.fragment:
        raise RedisURLError(f"{url!r} must not have a #fragment")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _URL_OPTIONS[scheme]:
            allowed = ", ".join(sorted(_URL_OPTIONS[scheme])) or "none"
            raise RedisURLError(
                f"unknown query parameter {name!r} for {scheme}:// (allowed: {allowed})"
            )
        options[name] = value
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs.lower() not in _CERT_REQS:
        raise RedisURLError(f"ssl_cert_reqs={reqs!r} must be none, optional or required")
    check = options.get("ssl_check_hostname")
    if check is not None and check.lower() not in _BOOLS:
        raise RedisURLError(f"ssl_check_hostname={check!r} must be true or false")
    for name in ("db", "protocol"):
        if name in options and not options[name].isdigit():
            raise RedisURLError(f"{name}={options[name]!r} must be a number")
    if "protocol" in options and options["protocol"] not in ("2", "3"):
        raise RedisURLError("protocol must be 2 or 3")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in options and not Path(options[name]).is_file():
            raise RedisURLError(f"{name}={options[name]!r} is not a readable file")

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
                raise RedisURLError(f"{url!r} must name a socket path")
        else:
            if not hostlist:
                raise RedisURLError(f"{url!r} has no host")
            if "," in hostlist:
                raise RedisURLError(
                    f"{url!r} lists several hosts; use redis+sentinel:// or "
                    "redis+cluster:// for several nodes"
                )
            _hosts(url, hostlist, 6379)
            db_text = parts.path.strip("/")
            if db_text and not db_text.isdigit():
                raise RedisURLError(f"{url!r}: the path must be a database number, not {db_text!r}")
        return RedisTarget(
            "standalone",
            url,
            username=username,
            password=password,
            tls=scheme == "rediss",
            options=options,
        )

    if not hostlist:
        raise RedisURLError(f"{url!r} names no host")
    if scheme == "redis+sentinel":
        nodes = _hosts(url, hostlist, 26379)
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            raise RedisURLError(
                f"{url!r} names no service: use "
                "redis+sentinel://host:26379[,host:26379...]/<service-name>[/db]"
            )
        if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
            raise RedisURLError(f"{url!r}: the path must be /<service-name>[/<db number>]")
        db = int(segments[1]) if len(segments) == 2 else 0
        return RedisTarget(
            "sentinel",
            url,
            nodes,
            service=unquote(segments[0]),
            db=db,
            username=username,
            password=password,
            options=options,
        )
    nodes = _hosts(url, hostlist, 6379)
    if parts.path.strip("/") not in ("", "0"):
        raise RedisURLError(f"{url!r}: a Redis Cluster has only database 0; drop the path")
    return RedisTarget(
        "cluster",
        url,
        nodes,
        username=username,
        password=password,
        tls=scheme == "rediss+cluster",
        options=options,
    )


def safe_url(url: str) -> str:
    """A store URL without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{hosts}"
