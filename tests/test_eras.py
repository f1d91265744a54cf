"""Which protocol eras a backend speaks: as configured (``era``), or asked of it."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, validate
from proxy.upstream.eras import configured, of_versions
from proxy.upstream.registry import Upstreams


def backends(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"backends": list(entries)}


HTTP = {"name": "web", "prefix": "web_", "replicas": ["http://127.0.0.1:9/mcp"]}
LOCAL = {"name": "local", "prefix": "local_", "command": "server"}


def test_versions_name_their_eras() -> None:
    assert of_versions(["2026-07-28"]) == {"stateless"}
    assert of_versions(["2025-11-25", "2026-07-28"]) == {"handshake", "stateless"}
    assert of_versions(["2024-11-05"]) == {"handshake"}
    assert of_versions([]) == frozenset()


@pytest.mark.parametrize(
    ("era", "spoken"),
    [
        ("auto", None),
        ("handshake", frozenset({"handshake"})),
        ("stateless", frozenset({"stateless"})),
        ("both", frozenset({"handshake", "stateless"})),
    ],
)
def test_a_configured_era_is_believed_and_auto_is_asked(
    era: str, spoken: frozenset[str] | None
) -> None:
    settings = validate(backends({**HTTP, "era": era}, LOCAL))
    web, local = settings.backends
    assert configured(web) == spoken
    assert configured(local) == frozenset({"handshake", "stateless"})  # through its bridge
    upstreams = Upstreams(settings, local={"local": "http+unix://%2Ftmp%2Fx.sock/mcp"})
    found = upstreams.backends["web"]
    assert found.eras == spoken
    assert found.era_source == ("" if spoken is None else "configured")


def test_an_unknown_era_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        validate(backends({**HTTP, "era": "2026"}, LOCAL))
    assert caught.value.where == "backends[web].era"
    assert "auto, handshake, stateless, both" in caught.value.problem
    with pytest.raises(ConfigError) as local:
        validate(backends(HTTP, {**LOCAL, "era": "handshake"}))
    assert local.value.where == "backends[local].era"


def test_a_backend_that_takes_credentials_is_not_asked_without_them() -> None:
    credentials = {"kind": "headers", "headers": {"X-Key": "env:KEY"}}
    settings = validate(backends({**HTTP, "credentials": credentials}, LOCAL))
    upstreams = Upstreams(settings, local={"local": "http+unix://%2Ftmp%2Fx.sock/mcp"})
    assert not upstreams.asks("web")
    assert upstreams.backends["web"].eras is None  # not known, and not asked
    plain = Upstreams(validate(backends(HTTP, LOCAL)), local={"local": "x"})
    assert plain.asks("web") and not plain.asks("local")  # a local server: known
