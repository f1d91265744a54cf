"""Where settings come from (flags > PROXY_* > YAML > defaults) and how bad ones fail."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from proxy.cli import main
from proxy.config import BackendSettings, ConfigError, Settings, from_env_json, read_file, validate

UP = "http://127.0.0.1:9000/mcp"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PROXY_* setting from the machine running the tests leaks into these (the
    switches of the fast path stay: they are not settings)."""
    keep = {"PROXY_NO_EXTENSIONS", "PROXY_REQUIRE_EXTENSIONS"}
    for name in list(os.environ):
        if name.startswith("PROXY_") and name not in keep:
            monkeypatch.delenv(name)


def check(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["check", *args], env=env)


def yaml_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "proxy.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_apply_when_nothing_else_is_given() -> None:
    result = check("--upstream", UP)
    assert result.exit_code == 0, result.output
    assert "ok: http://127.0.0.1:8787/mcp, 1 worker(s), session store memory" in result.output
    assert f"backend default: {UP}" in result.output


@pytest.mark.parametrize(
    ("use_file", "use_env", "use_flag", "port"),
    [
        (True, True, True, 3333),
        (True, True, False, 2222),
        (True, False, False, 1111),
        (False, False, False, 8787),
        (False, True, False, 2222),
        (True, False, True, 3333),
    ],
)
def test_flags_beat_env_beat_file_beat_defaults(
    tmp_path: Path, use_file: bool, use_env: bool, use_flag: bool, port: int
) -> None:
    args = [yaml_file(tmp_path, f"upstream: [{UP}]\nport: 1111\nhost: 127.0.0.2\n")]
    if not use_file:
        args = ["--upstream", UP]
    env = {"PROXY_PORT": "2222"} if use_env else {}
    if use_flag:
        args += ["--port", "3333"]
    result = check(*args, env=env)
    assert result.exit_code == 0, result.output
    host = "127.0.0.2" if use_file else "127.0.0.1"
    assert f"ok: http://{host}:{port}/mcp," in result.output


def test_yaml_keys_may_use_dashes_and_config_may_come_from_env(tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        f"upstream:\n  - {UP}\nsession-store: redis://127.0.0.1:7777/0\nworkers: 3\n",
    )
    result = check(env={"PROXY_CONFIG": path})
    assert result.exit_code == 0, result.output
    assert "3 worker(s), session store redis" in result.output


def test_env_list_values_are_split_on_whitespace() -> None:
    other = "http://127.0.0.1:9001/mcp"
    result = check(env={"PROXY_UPSTREAM": f"{UP} {other}"})
    assert result.exit_code == 0, result.output
    assert f"backend default: {UP}, {other}" in result.output


def test_unknown_yaml_key_fails_naming_it(tmp_path: Path) -> None:
    result = check(yaml_file(tmp_path, f"upstream: [{UP}]\nsesion_ttl: 10\n"))
    assert result.exit_code == 1
    assert "invalid configuration: unknown setting 'sesion_ttl'" in result.output


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("port: eighty", "port: expected a whole number, got 'eighty'"),
        ("port: 70000", "port: 70000 is not a TCP port"),
        ("session_ttl: -1", "session_ttl: must be greater than 0"),
        ("upstream_timeout: soon", "upstream_timeout: expected a number of seconds"),
        ("max_body_size: 10", "max_body_size: must be at least 1024 bytes"),
        ("log_level: loud", "log_level: 'loud' is not one of"),
        ("session_store: postgres://db/0", "session_store: 'postgres://db/0' must be"),
        ("path: /metrics", "path: '/metrics' is reserved"),
        ("allowed_origins: [example.com]", "allowed_origins: 'example.com' must be"),
        ("trusted_proxies: [nginx]", "trusted_proxies: 'nginx' is not an IP address"),
        ("max_streams_per_session: 0", "max_streams_per_session: must be at least 1"),
        ("body_timeout: 0", "body_timeout: must be greater than 0"),
    ],
)
def test_bad_value_fails_naming_the_key(tmp_path: Path, yaml_text: str, named: str) -> None:
    result = check(yaml_file(tmp_path, f"upstream: [{UP}]\n{yaml_text}\n"))
    assert result.exit_code == 1, result.output
    assert named in result.output


def test_bad_upstream_url_fails_naming_it() -> None:
    result = check("--upstream", "ftp://127.0.0.1/mcp")
    assert result.exit_code == 1
    assert "upstream: 'ftp://127.0.0.1/mcp' is not an http:// or https:// URL" in result.output


def test_missing_upstream_fails() -> None:
    result = check()
    assert result.exit_code == 1
    assert "upstream: at least one upstream URL is required" in result.output


def test_bad_env_value_fails_naming_the_variable() -> None:
    result = check("--upstream", UP, env={"PROXY_PORT": "abc"})
    assert result.exit_code == 2
    assert "--port" in result.output
    assert "'abc'" in result.output


def test_unreadable_and_non_mapping_files_fail_clearly(tmp_path: Path) -> None:
    missing = check(str(tmp_path / "absent.yaml"), "--upstream", UP)
    assert missing.exit_code == 1
    assert "config: cannot read" in missing.output
    listed = check(yaml_file(tmp_path, "- a\n- b\n"), "--upstream", UP)
    assert listed.exit_code == 1
    assert "must hold a mapping of settings" in listed.output


def test_memory_store_with_several_workers_is_refused() -> None:
    result = check("--upstream", UP, "--workers", "2")
    assert result.exit_code == 1
    assert "workers: 2 workers cannot share the in-memory session store" in result.output
    assert "--session-store redis://" in result.output


def test_several_workers_are_fine_on_redis() -> None:
    result = check("--upstream", UP, "--workers", "2", "--session-store", "redis://127.0.0.1:1/0")
    assert result.exit_code == 0, result.output
    assert "2 worker(s), session store redis" in result.output


def test_validate_and_read_file_directly(tmp_path: Path) -> None:
    settings = validate(read_file(yaml_file(tmp_path, f"upstream: [{UP}]\nallowed-origin: ['*']")))
    default = BackendSettings("default", (UP,))
    assert settings == Settings(
        upstream=(UP,), allowed_origins=("*",), workers=1, backends=(default,)
    )
    with pytest.raises(ConfigError, match="workers"):
        validate({"upstream": [UP], "workers": -1})


def test_workers_default_to_one_on_memory_and_to_the_usable_cpus_on_redis() -> None:
    assert validate({"upstream": [UP]}).workers == 1
    on_redis = validate({"upstream": [UP], "session_store": "redis://127.0.0.1:1/0"})
    assert on_redis.workers == len(os.sched_getaffinity(0))
    assert validate({"upstream": [UP], "session_store": "redis://h:1/0", "workers": 1}).workers == 1


def test_backlog_is_bounded() -> None:
    assert validate({"upstream": [UP]}).backlog == 1024
    assert validate({"upstream": [UP], "backlog": "4096"}).backlog == 4096
    with pytest.raises(ConfigError, match="backlog: 64 must be between 128 and 65535"):
        validate({"upstream": [UP], "backlog": 64})


def test_drain_and_shutdown_timeouts_are_checked() -> None:
    settings = validate({"upstream": [UP], "drain_seconds": "0", "shutdown_timeout": 12})
    assert (settings.drain_seconds, settings.shutdown_timeout) == (0.0, 12.0)
    with pytest.raises(ConfigError, match="drain_seconds"):
        validate({"upstream": [UP], "drain_seconds": -1})
    with pytest.raises(ConfigError, match="shutdown_timeout"):
        validate({"upstream": [UP], "shutdown_timeout": 0})


# -- several backends (federation) ----------------------------------------------------------


def _backends(*entries: dict[str, object]) -> Settings:
    return validate({"backends": list(entries)})


def test_backends_with_prefixes_replicas_and_tool_lists() -> None:
    settings = _backends(
        {"name": "weather", "prefix": "weather_", "replicas": [UP, "http://10.0.0.6:8000/mcp"]},
        {"name": "files", "prefix": "files_", "replicas": ["http://10.0.0.7:9000/mcp"],
         "tools": {"allow": ["read_file", "list_dir"]}},
    )  # fmt: skip
    assert settings.federated
    weather, files = settings.backends
    assert (weather.name, weather.prefix, len(weather.replicas)) == ("weather", "weather_", 2)
    assert files.tools_allow == ("read_file", "list_dir")
    assert files.offers_tool("read_file") and not files.offers_tool("write_file")
    # Workers read the same settings back.
    assert from_env_json(settings.to_env()["PROXY_SETTINGS_JSON"]) == settings


def test_one_upstream_stays_one_plain_backend() -> None:
    settings = validate({"upstream": [UP]})
    assert not settings.federated
    assert [b.name for b in settings.backends] == ["default"]
    assert from_env_json(settings.to_env()["PROXY_SETTINGS_JSON"]) == settings


def test_backend_mistakes_are_named() -> None:
    two = [{"name": "a", "replicas": [UP]}, {"name": "b", "replicas": ["http://h:2/mcp"]}]
    with pytest.raises(ConfigError, match=r"backends\[a\].prefix: every backend needs a prefix"):
        validate({"backends": two})
    with pytest.raises(ConfigError, match="starts with the prefix 'w_' of 'a'"):
        _backends({"name": "a", "prefix": "w_", "replicas": [UP]},
                  {"name": "b", "prefix": "w_x_", "replicas": ["http://h:2/mcp"]})  # fmt: skip
    with pytest.raises(ConfigError, match="the name 'a' is used twice"):
        _backends({"name": "a", "prefix": "x_", "replicas": [UP]},
                  {"name": "a", "prefix": "y_", "replicas": ["http://h:2/mcp"]})  # fmt: skip
    with pytest.raises(ConfigError, match="not both"):
        validate({"upstream": [UP], "backends": [{"name": "a", "replicas": [UP]}]})
    with pytest.raises(ConfigError, match=r"backends\[a\].replicas: at least one URL"):
        _backends({"name": "a", "replicas": []})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['weight'\]"):
        _backends({"name": "a", "replicas": [UP], "weight": 2})
    with pytest.raises(ConfigError, match=r"backends\[a\].forward_credentials: expected true"):
        _backends({"name": "a", "replicas": [UP], "forward_credentials": "yes"})


def test_trusted_proxies_and_credential_forwarding_survive_the_trip_to_the_workers() -> None:
    backends = [{"name": "a", "prefix": "a_", "replicas": [UP], "forward_credentials": True}]
    settings = validate({"backends": backends, "trusted_proxies": ["10.0.0.0/8", "::1"]})
    again = from_env_json(settings.to_env()["PROXY_SETTINGS_JSON"])
    assert again == settings
    assert again.backends[0].forward_credentials
    assert again.trusted_proxies == ("10.0.0.0/8", "::1")


def test_backends_from_the_environment() -> None:
    listed = json.dumps([
        {"name": "a", "prefix": "a_", "replicas": [UP]},
        {"name": "b", "prefix": "b_", "replicas": ["http://10.0.0.9:1/mcp"]},
    ])  # fmt: skip
    result = check(env={"PROXY_BACKENDS": listed, "PROXY_LIST_TIMEOUT": "0.5"})
    assert result.exit_code == 0, result.output
    assert f"backend a (prefix a_): {UP}" in result.output
    assert "backend b (prefix b_): http://10.0.0.9:1/mcp" in result.output
