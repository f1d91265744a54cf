"""Redis session-store URLs: the accepted forms, what they parse to, and the messages for
the wrong ones; the redis_max_connections setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main
from proxy.config import ConfigError, validate
from proxy.sessions.redis_url import RedisTarget, RedisURLError, parse_redis_url

UP = "http://127.0.0.1:8000/mcp"


@pytest.mark.parametrize(
    ("url", "shape", "nodes", "service", "db", "username", "password", "tls"),
    [
        ("redis://127.0.0.1:6379/0", "standalone", (), "", 0, None, None, False),
        ("redis://gw:p%40ss@h:1/2", "standalone", (), "", 0, "gw", "p@ss", False),
        ("redis://:secret@h", "standalone", (), "", 0, None, "secret", False),
        ("rediss://h:6380/0", "standalone", (), "", 0, None, None, True),
        ("unix:///run/redis.sock?db=3", "standalone", (), "", 0, None, None, False),
        (
            "redis+sentinel://s1:26379,s2,[::1]:5000/mymaster/4",
            "sentinel",
            (("s1", 26379), ("s2", 26379), ("::1", 5000)),
            "mymaster",
            4,
            None,
            None,
            False,
        ),
        (
            "redis+sentinel://gw:pw@s1/my%20master",
            "sentinel",
            (("s1", 26379),),
            "my master",
            0,
            "gw",
            "pw",
            False,
        ),
        (
            "redis+cluster://gw:pw@n1:7000,n2",
            "cluster",
            (("n1", 7000), ("n2", 6379)),
            "",
            0,
            "gw",
            "pw",
            False,
        ),
        ("rediss+cluster://n1:7000/", "cluster", (("n1", 7000),), "", 0, None, None, True),
    ],
)
def test_accepted_forms(
    url: str,
    shape: str,
    nodes: tuple[tuple[str, int], ...],
    service: str,
    db: int,
    username: str | None,
    password: str | None,
    tls: bool,
) -> None:
    target = parse_redis_url(url)
    assert isinstance(target, RedisTarget)
    assert (target.shape, target.url, target.nodes, target.service, target.db) == (
        shape,
        url,
        nodes,
        service,
        db,
    )
    assert (target.username, target.password, target.tls) == (username, password, tls)


def test_query_options_are_kept(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    target = parse_redis_url(
        f"rediss://h:6380/0?ssl_ca_certs={ca}&ssl_cert_reqs=required&ssl_check_hostname=false"
    )
    assert target.options == {
        "ssl_ca_certs": str(ca),
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": "false",
    }
    sentinel = parse_redis_url("redis+sentinel://s1/m?sentinel_password=pw&sentinel_username=u")
    assert sentinel.options == {"sentinel_password": "pw", "sentinel_username": "u"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:1/0", "must be 'memory', redis://"),
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://s1:26379/", "names no service"),
        ("redis+sentinel://s1/m/x", "/<service-name>[/<db number>]"),
        ("redis+sentinel://s1/m/1/2", "/<service-name>[/<db number>]"),
        ("redis+sentinel:///m", "names no host"),
        ("redis+cluster://n1:7000/3", "only database 0"),
        ("redis+cluster://n1:99999", "invalid port '99999'"),
        ("redis+cluster://n1,,n2", "empty host"),
        ("redis://a:1,b:2/0", "use redis+sentinel:// or redis+cluster://"),
        ("redis://h:1/zero", "must be a database number"),
        ("redis:///0", "has no host"),
        ("unix://", "must name a socket path"),
        ("redis://h/0?ssl_ca_certs=/x", "unknown query parameter 'ssl_ca_certs' for redis://"),
        ("redis+cluster://n1?sentinel_password=x", "unknown query parameter"),
        ("redis+sentinel://s1/m?ssl_cert_reqs=required", "unknown query parameter"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "must be none, optional or required"),
        ("rediss://h/0?ssl_check_hostname=perhaps", "must be true or false"),
        ("rediss://h/0?ssl_ca_certs=/no/such/ca.crt", "is not a readable file"),
        ("redis://h/0?protocol=4", "protocol must be 2 or 3"),
        ("redis://h/0#frag", "#fragment"),
    ],
)
def test_wrong_urls_are_refused_with_a_message_naming_the_problem(url: str, message: str) -> None:
    with pytest.raises(RedisURLError) as info:
        parse_redis_url(url)
    assert message in str(info.value)
    with pytest.raises(ConfigError, match=r"^session_store: ") as config_info:
        validate({"upstream": [UP], "session_store": url})
    assert message in str(config_info.value)


def test_the_new_shapes_validate_as_redis_stores() -> None:
    for url in ("redis+sentinel://s1:26379/mymaster/0", "redis+cluster://n1:7000,n2:7001"):
        settings = validate({"upstream": [UP], "session_store": url, "workers": 2})
        assert settings.store_kind == "redis"


def test_redis_max_connections_defaults_and_bounds() -> None:
    assert validate({"upstream": [UP]}).redis_max_connections == 64
    assert validate({"upstream": [UP], "redis_max_connections": "8"}).redis_max_connections == 8
    with pytest.raises(ConfigError, match="redis_max_connections: must be at least 1"):
        validate({"upstream": [UP], "redis_max_connections": 0})


@pytest.fixture
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONFIG", "UPSTREAM", "SESSION_STORE", "WORKERS", "REDIS_MAX_CONNECTIONS"):
        monkeypatch.delenv(f"PROXY_{name}", raising=False)


@pytest.mark.usefixtures("_no_proxy_env")
def test_the_flag_the_env_var_and_the_yaml_key(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["check", "--upstream", UP, "--session-store", "redis+cluster://n1:7000"]
    assert runner.invoke(main, [*base, "--redis-max-connections", "8"]).exit_code == 0
    env = {"PROXY_REDIS_MAX_CONNECTIONS": "0"}
    result = runner.invoke(main, base, env=env)
    assert result.exit_code != 0
    assert "PROXY_REDIS_MAX_CONNECTIONS: must be at least 1" in result.output
    config = tmp_path / "gateway.yaml"
    config.write_text(f"upstream: [{UP}]\nredis-max-connections: -1\n", encoding="utf-8")
    result = runner.invoke(main, ["check", str(config)])
    assert f"{config}: redis_max_connections: must be at least 1" in result.output
    assert result.exit_code != 0
    result = runner.invoke(
        main, ["check", "--upstream", UP, "--session-store", "redis+sentinel://s"]
    )
    assert result.exit_code != 0
    assert "--session-store: 'redis+sentinel://s' names no service" in result.output
