"""What a reload decides in the main process, and what it keeps of the running upstreams
(the worker's side, against real processes, is in tests/integration/test_reload.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.app import create_app
from proxy.config import ConfigError, Settings, validate
from proxy.forward import Forwarder
from proxy.reload import ReloadFile, Reloads, fixed_settings, render
from proxy.upstream.registry import Upstreams

A = "http://127.0.0.1:9/mcp"
B = "http://127.0.0.1:10/mcp"


def loading(*values: dict[str, object] | Exception) -> Callable[[], Settings]:
    """A `load` that returns (or raises) each of `values` in turn."""
    queue = list(values)

    def load() -> Settings:
        value = queue.pop(0)
        if isinstance(value, Exception):
            raise value
        return validate(value)

    return load


def test_only_settings_marked_live_apply_without_a_restart() -> None:
    assert fixed_settings(["backends", "upstream_timeout", "allowed_origins"]) == []
    assert fixed_settings(["port", "backends", "auth", "session_store"]) == [
        "port",
        "auth",
        "session_store",
    ]


def test_a_valid_reload_becomes_the_next_generation(tmp_path: Path) -> None:
    file = ReloadFile(tmp_path / "reload.json")
    running = validate({"upstream": [A]})
    reloads = Reloads(running, loading({"upstream": [A, B]}, {"upstream": [A, B]}), file)
    assert file.read() is not None and file.read().generation == 0  # type: ignore[union-attr]
    new = reloads.reload()
    assert new is not None and new.backends[0].replicas == (A, B)
    state = file.read()
    assert state is not None and (state.generation, state.applied, state.refused) == (1, 1, 0)
    assert validate({"upstream": [A, B]}).to_env()["PROXY_SETTINGS_JSON"] == state.settings
    assert reloads.reload() is None  # the same again: unchanged, no worker to tell
    state = file.read()
    assert state is not None and (state.generation, state.applied) == (1, 1)


def test_a_refused_reload_changes_nothing_but_its_count(tmp_path: Path) -> None:
    file = ReloadFile(tmp_path / "reload.json")
    reloads = Reloads(
        validate({"upstream": [A]}),
        loading(ConfigError("colour", "unknown setting"), {"upstream": [A], "port": 9999}),
        file,
    )
    assert reloads.reload() is None
    assert reloads.reload() is None
    state = file.read()
    assert state is not None and (state.generation, state.applied, state.refused) == (0, 0, 2)
    page = render(state).decode()
    assert "proxy_config_generation 0" in page
    assert 'proxy_config_reloads_total{outcome="refused"} 2' in page


def test_a_missing_or_torn_reload_file_reads_as_none(tmp_path: Path) -> None:
    assert ReloadFile(tmp_path / "absent.json").read() is None
    (tmp_path / "torn.json").write_text('{"generation": 1, "sett')
    assert ReloadFile(tmp_path / "torn.json").read() is None


def test_replicas_that_stay_keep_their_pools_and_health() -> None:
    running = Upstreams(validate({"upstream": [A, B]}))
    kept_a = running.default.by_url[A]
    kept_a.up = False
    after = Upstreams(validate({"upstream": [A]}), running)
    assert after.default.by_url[A] is kept_a and not after.default.by_url[A].up
    assert B not in after.default.by_url


@pytest.mark.parametrize("change", [{"max_connections": 8}, {"connect_timeout": 1.0}])
def test_new_pool_settings_make_new_pools(change: dict[str, object]) -> None:
    running = Upstreams(validate({"upstream": [A]}))
    after = Upstreams(validate({"upstream": [A], **change}), running)
    assert after.default.by_url[A] is not running.default.by_url[A]


async def test_a_worker_that_cannot_open_the_new_backends_keeps_the_running_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injected where a real one is hard to provoke: the new handler fails to open.
    Nothing of the new configuration stays: handler, upstreams, relay and limits are the
    running ones, and the new replica's pool is closed."""
    app = create_app(validate({"upstream": [A], "max_streams_per_session": 2}))
    await app.open()
    try:
        running_handler, running_upstreams = app.handler, app.upstreams
        opened: list[Upstreams] = []
        real_open = Upstreams.open

        async def remember(self: Upstreams) -> None:
            opened.append(self)
            await real_open(self)

        async def refuse(self: Forwarder) -> None:
            raise OSError("the backend's secret file went away")

        monkeypatch.setattr(Upstreams, "open", remember)
        monkeypatch.setattr(Forwarder, "open", refuse)
        new = validate({"upstream": [A, B], "max_streams_per_session": 5})
        with pytest.raises(OSError, match="went away"):
            await app.reconfigure(new)
        assert app.handler is running_handler and app.upstreams is running_upstreams
        assert app.relay.upstreams is running_upstreams and app.endpoint.handler is running_handler
        assert app.stream_limits.per_session == 2 and app.settings.backends[0].replicas == (A,)
        (discarded,) = opened
        assert discarded.default.by_url[B].pool.closed
        assert not running_upstreams.default.by_url[A].pool.closed
    finally:
        await app.close()
