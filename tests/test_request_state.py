"""The sealed requestState (``proxy/request_state.py``): what one key seals, only that key
opens, unaltered and before it lapses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.auth.settings import SettingsError
from proxy.auth.validate import check_secrets
from proxy.config import ConfigError, Settings, validate
from proxy.request_state import KEY_FILE_ENV, LIFETIME, Seal, write_key_file

NOW = 1_800_000_000.0


def test_a_sealed_state_opens_to_what_was_sealed() -> None:
    seal = Seal(b"k" * 32)
    state = seal.seal({"x": "token", "a": {"f.1": {"action": "accept"}}}, now=NOW)
    opened = seal.open(state, now=NOW + 1)
    assert opened is not None
    assert (opened["x"], opened["a"]) == ("token", {"f.1": {"action": "accept"}})


@pytest.mark.parametrize(
    "alter",
    [
        lambda s: s[:-2] + ("AA" if not s.endswith("AA") else "BB"),  # the MAC
        lambda s: s.replace(".", ".e", 1),  # the payload
        lambda s: "v2" + s[2:],  # the version
        lambda s: s + "-TAMPERED",
        lambda s: s.rpartition(".")[0],  # no MAC
        lambda s: "",
    ],
)
def test_an_altered_state_is_refused(alter: object) -> None:
    seal = Seal(b"k" * 32)
    state = seal.seal({"x": "token"}, now=NOW)
    assert callable(alter)
    assert seal.open(alter(state), now=NOW) is None


def test_a_state_of_another_key_or_lapsed_or_not_a_string_is_refused() -> None:
    seal = Seal(b"k" * 32)
    state = seal.seal({"x": "token"}, now=NOW)
    assert Seal(b"j" * 32).open(state, now=NOW) is None
    assert seal.open(state, now=NOW + LIFETIME + 1) is None
    assert seal.open(12, now=NOW) is None
    assert seal.open(state, now=NOW + LIFETIME - 1) is not None


def test_replicas_sharing_state_secret_open_each_others_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCPFP_UNIT_STATE", "a-shared-key-of-sixteen+")
    settings = Settings(state_secret="env:MCPFP_UNIT_STATE")  # noqa: S106 - a reference
    one, other = Seal.from_settings(settings), Seal.from_settings(settings)
    assert other.open(one.seal({"x": "t"})) is not None


def test_without_state_secret_the_workers_of_one_run_share_its_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_key_file(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    one, other = Seal.from_settings(Settings()), Seal.from_settings(Settings())
    assert other.open(one.seal({"x": "t"})) is not None
    monkeypatch.delenv(KEY_FILE_ENV)
    assert Seal.from_settings(Settings()).open(one.seal({"x": "t"})) is None  # a key of its own


def test_a_state_secret_must_be_a_reference_and_long_enough_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = "the-key-itself-typed-in-by-mistake"
    with pytest.raises(ConfigError) as refused:
        validate({"upstream": "http://127.0.0.1:9/mcp", "state_secret": given})
    assert refused.value.where == "state_secret"
    assert "must be a reference" in str(refused.value)
    assert given not in str(refused.value)
    settings = validate(
        {"upstream": "http://127.0.0.1:9/mcp", "state_secret": "env:MCPFP_UNIT_STATE"}
    )
    monkeypatch.setenv("MCPFP_UNIT_STATE", "too-short")
    with pytest.raises(SettingsError) as short:
        check_secrets(settings)
    assert short.value.where == "state_secret"
    assert "too-short" not in str(short.value)
    monkeypatch.setenv("MCPFP_UNIT_STATE", "long-enough-for-a-key")
    check_secrets(settings)
