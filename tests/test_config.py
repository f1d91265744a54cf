"""Where settings come from (flags > PROXY_* > YAML > defaults) and how bad ones fail."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from proxy.cli import main
from proxy.config import (
    SETTING_INFO,
    BackendSettings,
    ConfigError,
    Settings,
    from_env_json,
    read_file,
    settings_table,
    validate,
)

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


def test_env_list_values_are_split_on_whitespace_and_commas() -> None:
    result = check(env={"PROXY_UPSTREAM": f"{UP},http://127.0.0.1:9001/mcp http://h:3/mcp"})
    assert result.exit_code == 0, result.output
    assert f"{UP}, http://127.0.0.1:9001/mcp, http://h:3/mcp" in result.output


def test_env_list_values_are_split_on_whitespace() -> None:
    other = "http://127.0.0.1:9001/mcp"
    result = check(env={"PROXY_UPSTREAM": f"{UP} {other}"})
    assert result.exit_code == 0, result.output
    assert f"backend default: {UP}, {other}" in result.output


def test_unknown_yaml_key_fails_naming_it_and_the_file(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, f"upstream: [{UP}]\nsesion_ttl: 10\n")
    result = check(path)
    assert result.exit_code == 1
    assert f"invalid configuration: {path}: sesion_ttl: unknown setting" in result.output
    assert "(did you mean 'session_ttl'?)" in result.output
    assert "known: access_log, access_log_format, access_log_sample, allowed_origins, auth," in (
        result.output
    )


def test_a_typo_of_a_key_gets_a_suggestion(tmp_path: Path) -> None:
    result = check(yaml_file(tmp_path, f"upstreams: [{UP}]\n"))
    assert result.exit_code == 1
    assert "upstreams: unknown setting (did you mean 'upstream'?); known: " in result.output
    known = r"^colour: unknown setting; known: access_log, access_log_format"
    with pytest.raises(ConfigError, match=known):
        validate({"upstream": [UP], "colour": "blue"})  # nothing close: no suggestion


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
    assert result.exit_code == 1
    assert "invalid configuration: PROXY_PORT: expected a whole number, got 'abc'" in result.output
    assert "--port" not in result.output


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "abc"], {}, "--port: expected a whole number, got 'abc'"),
        (["--port", "70000"], {}, "--port: 70000 is not a TCP port (1-65535)"),
        ([], {"PROXY_PORT": "70000"}, "PROXY_PORT: 70000 is not a TCP port (1-65535)"),
        (["--session-ttl", "soon"], {}, "--session-ttl: expected a number of seconds"),
        ([], {"PROXY_SESSION_TTL": "0"}, "PROXY_SESSION_TTL: must be greater than 0"),
        (["--allowed-origin", "example.com"], {}, "--allowed-origin: 'example.com' must be"),
        ([], {"PROXY_TRUSTED_PROXY": "nginx"}, "PROXY_TRUSTED_PROXY: 'nginx' is not an IP"),
        (["--workers", "-1"], {}, "--workers: -1 must be at least 1 (or 0: automatic)"),
        (["--workers", "2"], {}, "--workers: 2 workers cannot share the in-memory"),
        (["--session-store", "postgres://db/0"], {}, "--session-store: 'postgres://db/0' must"),
        (["--upstream", "ftp://h/mcp"], {}, "--upstream: 'ftp://h/mcp' is not an http://"),
    ],
)
def test_bad_flag_or_env_value_fails_naming_the_flag_or_the_variable(
    args: list[str], env: dict[str, str], message: str
) -> None:
    if "--upstream" not in args:
        args = ["--upstream", UP, *args]
    result = check(*args, env=env)
    assert result.exit_code == 1, result.output
    assert f"invalid configuration: {message}" in result.output


def test_bad_yaml_value_fails_naming_the_file_and_the_key(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, f"upstream: [{UP}]\nport: eighty\n")
    result = check(path)
    assert result.exit_code == 1
    assert f"invalid configuration: {path}: port: expected a whole number" in result.output
    # The flag given for the same key wins, so the file's value no longer matters.
    assert check(path, "--port", "8000").exit_code == 0
    # A key spelled as its flag is still named by its key.
    path = yaml_file(tmp_path, f"upstream: [{UP}]\nallowed-origin: [example.com]\n")
    assert f"{path}: allowed_origins: 'example.com' must be" in check(path).output


def test_bad_backend_from_env_or_file_names_both_the_source_and_the_entry(
    tmp_path: Path,
) -> None:
    listed = json.dumps([{"name": "a", "replica": [UP]}])
    result = check(env={"PROXY_BACKENDS": listed})
    assert result.exit_code == 1
    assert (
        "invalid configuration: PROXY_BACKENDS: backends[0].replica: unknown key "
        "(did you mean 'replicas'?); known: args, command, credentials, cwd, env, era, "
        "forward_credentials, inherit_env, max_processes, min_idle, name, prefix, replicas, "
        "shared, start_timeout, stop_grace, tools"
    ) in result.output
    path = yaml_file(tmp_path, f"backends:\n  - name: a\n    prefixx: a_\n    replicas: [{UP}]\n")
    result = check(path)
    assert result.exit_code == 1
    assert f"{path}: backends[0].prefixx: unknown key (did you mean 'prefix'?)" in result.output
    result = check("--backends", "[{name: A, replicas: [x]}]")
    assert "invalid configuration: --backends: backends[0].name: 'A' must be" in result.output


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
        {
            "name": "files",
            "prefix": "files_",
            "replicas": ["http://10.0.0.7:9000/mcp"],
            "tools": {"allow": ["read_file", "list_dir"]},
        },
    )
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
        _backends(
            {"name": "a", "prefix": "w_", "replicas": [UP]},
            {"name": "b", "prefix": "w_x_", "replicas": ["http://h:2/mcp"]},
        )
    with pytest.raises(ConfigError, match="the name 'a' is used twice"):
        _backends(
            {"name": "a", "prefix": "x_", "replicas": [UP]},
            {"name": "a", "prefix": "y_", "replicas": ["http://h:2/mcp"]},
        )
    with pytest.raises(ConfigError, match="not both"):
        validate({"upstream": [UP], "backends": [{"name": "a", "replicas": [UP]}]})
    with pytest.raises(ConfigError, match=r"backends\[a\].replicas: at least one URL"):
        _backends({"name": "a", "replicas": []})
    with pytest.raises(ConfigError, match=r"backends\[0\]\.weight: unknown key; known: "):
        _backends({"name": "a", "replicas": [UP], "weight": 2})
    both = {"allow": ["x"], "deny": ["y"]}
    with pytest.raises(
        ConfigError, match=r"backends\[a\].tools: give allow .* or deny .*, not both"
    ):
        _backends({"name": "a", "replicas": [UP], "tools": both})
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
    listed = json.dumps(
        [
            {"name": "a", "prefix": "a_", "replicas": [UP]},
            {"name": "b", "prefix": "b_", "replicas": ["http://10.0.0.9:1/mcp"]},
        ]
    )
    result = check(env={"PROXY_BACKENDS": listed, "PROXY_LIST_TIMEOUT": "0.5"})
    assert result.exit_code == 0, result.output
    assert f"backend a (prefix a_): {UP}" in result.output
    assert "backend b (prefix b_): http://10.0.0.9:1/mcp" in result.output


# -- one description of each setting: the CLI, the README and the checks ----------------------


def test_flags_and_variables_keep_their_names() -> None:
    """Lists have a singular flag and variable; everything else is its key with dashes."""
    names = {key: (info.flag, info.env) for key, info in SETTING_INFO.items()}
    assert names["allowed_origins"] == ("--allowed-origin", "PROXY_ALLOWED_ORIGIN")
    assert names["trusted_proxies"] == ("--trusted-proxy", "PROXY_TRUSTED_PROXY")
    assert names["backends"] == ("--backends", "PROXY_BACKENDS")
    assert names["max_streams_per_session"] == (
        "--max-streams-per-session",
        "PROXY_MAX_STREAMS_PER_SESSION",
    )
    assert list(SETTING_INFO) == [f.name for f in Settings.__dataclass_fields__.values()]


@pytest.mark.parametrize("command", ["serve", "check"])
def test_every_option_is_generated_and_shows_its_variable_and_default(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # undo click's wrapping
    flags = [info.flag for info in SETTING_INFO.values()] + ["--help"]
    for info, after in zip(SETTING_INFO.values(), flags[1:], strict=True):
        entry = text[text.index(f" {info.flag} ") : text.index(f" {after} ")]
        assert f"env var: {info.env}; default: " in entry, entry
        assert "`" not in entry  # markdown is for the README only
    assert "--port INTEGER Port to bind. [env var: PROXY_PORT; default: 8787]" in text
    assert "--session-ttl SECONDS" in text
    assert "default: none (required unless backends is given)]" in text


def test_flags_and_variables_reach_validation_as_typed() -> None:
    """Click converts nothing (the option would be named in its error, not the variable):
    the same checks apply to a flag, a variable and a YAML value."""
    result = check("--upstream", UP, "--port", " 9000 ", "--session-ttl", "1.5")
    assert result.exit_code == 0, result.output
    assert "ok: http://127.0.0.1:9000/mcp," in result.output


def test_readme_table_is_the_one_generated_from_the_settings() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = settings_table()
    assert f"\n\n{table}\n" in readme, (
        "README.md's settings table differs from proxy.config.settings_table(): "
        "run `python scripts/settings_table.py`"
    )
    for info in SETTING_INFO.values():
        if info.see:  # the section a row links to exists
            assert re.search(rf"^#+ {re.escape(info.see)}$", readme, re.MULTILINE), info.see


def test_every_option_of_serve_and_check_shows_its_variable_and_default() -> None:
    for command in ("serve", "check"):
        result = CliRunner().invoke(main, [command, "--help"], terminal_width=400)
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())  # click wraps the help column
        for info in SETTING_INFO.values():
            assert f"env var: {info.env}; default:" in text, info.flag


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("trace_sample", 0, "trace_sample: must be greater than 0 and at most 1"),
        ("trace_sample", 1.5, "trace_sample: must be greater than 0 and at most 1"),
        ("trace_endpoint", "collector:4318", "trace_endpoint: must be an http:// or https://"),
        ("access_log_sample", 0, "access_log_sample: must be greater than 0 and at most 1"),
        ("access_log_format", "xml", "access_log_format: 'xml' is not 'text' or 'json'"),
    ],
)
def test_operating_settings_out_of_range_are_refused(key: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(problem)}"):
        validate({"upstream": [UP], key: value})


def test_a_trace_endpoint_is_accepted() -> None:
    settings = validate({"upstream": [UP], "trace_endpoint": "http://127.0.0.1:4318/v1/traces"})
    assert (settings.trace_sample, settings.trace_service_name) == (1.0, "mcp-fastproxy")


def _servers_file(tmp_path: Path, servers: object, key: str = "mcpServers") -> str:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({key: servers}), encoding="utf-8")
    return str(path)


def test_an_mcp_servers_file_becomes_backends_named_and_prefixed(tmp_path: Path) -> None:
    file = _servers_file(
        tmp_path,
        {
            "GitHub Server": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-github"],
                "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_x"},
            },
            "remote": {"url": UP},
            "off": {"command": "npx", "disabled": True},
        },
    )
    settings = validate(read_file(file))
    local, remote = settings.backends
    assert (local.name, local.prefix, local.replicas) == ("github-server", "github_server_", ())
    assert local.stdio is not None
    assert local.stdio.command == "npx"
    assert local.stdio.args == ("-y", "@modelcontextprotocol/server-github")
    assert local.stdio.env == {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_x"}
    assert (remote.name, remote.prefix, remote.replicas, remote.stdio) == (
        "remote",
        "remote_",
        (UP,),
        None,
    )
    # Read back by a worker as the main process wrote it.
    assert from_env_json(settings.to_env()["PROXY_SETTINGS_JSON"]) == settings


def test_one_server_of_a_vs_code_file_needs_no_prefix(tmp_path: Path) -> None:
    file = _servers_file(
        tmp_path, {"everything": {"type": "stdio", "command": "node", "args": ["x.js"]}}, "servers"
    )
    (backend,) = validate(read_file(file)).backends
    assert (backend.name, backend.prefix) == ("everything", "")
    assert backend.stdio is not None and backend.stdio.args == ("x.js",)


@pytest.mark.parametrize(
    ("servers", "named"),
    [
        ({"a": "npx"}, "mcpServers.a: expected a mapping with command or url"),
        ({"a": {"args": ["x"]}}, "mcpServers.a: expected command (a local server) or url"),
        ({"a": {"command": "npx", "autoApprove": []}}, "mcpServers.a.autoApprove: not supported"),
        ({"a": {"command": ["npx"]}}, "backends[a].command: ['npx'] must be a program to run"),
        ({"a": {"command": "npx", "env": {"K": 1}}}, "backends[a].env: expected a mapping"),
        ({"a": {"url": "ftp://x"}}, "backends[a].replicas"),
    ],
)
def test_a_broken_mcp_servers_file_is_refused_naming_the_entry(
    tmp_path: Path, servers: object, named: str
) -> None:
    result = check(_servers_file(tmp_path, servers))
    assert result.exit_code == 1
    assert named in result.output


def test_a_command_is_one_backend_and_not_beside_upstreams() -> None:
    settings = validate({"command": ["uvx", "mcp-server-git"]})
    (backend,) = settings.backends
    assert backend.stdio is not None
    assert (backend.stdio.command, backend.stdio.args) == ("uvx", ("mcp-server-git",))
    with pytest.raises(ConfigError, match="give either a command"):
        validate({"command": ["uvx"], "upstream": [UP]})
    assert (
        validate({"command": ["uvx"], "workers": 2, "session_store": "redis://h:1/0"}).workers == 2
    )
    with pytest.raises(ConfigError, match="give either command"):
        validate({"backends": [{"name": "a", "command": "x", "replicas": [UP]}]})
    with pytest.raises(ConfigError, match=r"backends\[a\].max_processes"):
        validate({"backends": [{"name": "a", "command": "x", "max_processes": 0}]})
    with pytest.raises(ConfigError, match=r"backends\[a\].min_idle: must be at most"):
        validate({"backends": [{"name": "a", "command": "x", "max_processes": 1, "min_idle": 2}]})


def test_a_commands_arguments_stay_whole() -> None:
    script = "python -m server; echo 'a, b'"
    (backend,) = validate({"command": ["/bin/sh", "-c", script, ""]}).backends
    assert backend.stdio is not None
    assert backend.stdio.args == ("-c", script, "")
    (backend,) = validate({"command": "npx -y 'my server' --dir '/My Documents'"}).backends
    assert backend.stdio is not None
    assert backend.stdio.args == ("-y", "my server", "--dir", "/My Documents")
    settings = validate({"command": ["/bin/sh", "-c", script]})
    assert from_env_json(settings.to_env()["PROXY_SETTINGS_JSON"]) == settings
