"""How the gateway replicas reach each other's local servers (``peer_address``,
``peer_secret``): URLs only a holder of the secret can make, a key that is not the secret,
and a configuration that cannot leave the bridges open."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.auth.settings import SettingsError
from proxy.auth.validate import check_secrets
from proxy.config import ConfigError, validate
from proxy.stdio.peers import Peers

SECRET = "a-secret-the-replicas-share-0123"  # noqa: S105 - the test's own


def test_a_bridge_url_names_its_backend_and_address_under_the_secret() -> None:
    peers = Peers("10.0.0.5", SECRET)
    url = peers.url("files", 41234)
    assert url.startswith("http://10.0.0.5:41234/stdio/files/") and url.endswith("/mcp")
    assert peers.is_bridge("files", url)
    # Another replica with the same secret recognises it; without it, nobody does.
    assert Peers("10.0.0.6", SECRET).is_bridge("files", url)
    assert not Peers("10.0.0.5", SECRET + "x").is_bridge("files", url)
    # The tag binds the backend and the address: moved or renamed, it is not a bridge.
    assert not peers.is_bridge("other", url)
    assert not peers.is_bridge("files", url.replace("41234", "41235"))
    assert not peers.is_bridge("files", url.replace("10.0.0.5", "evil.example"))
    assert not peers.is_bridge("files", url.replace("http://", "https://"))
    assert not peers.is_bridge("files", url + "?x=1")
    assert not peers.is_bridge("files", "http+unix://%2Ftmp%2Fx.sock/mcp")
    assert Peers("fd00::5", SECRET).url("files", 9).startswith("http://[fd00::5]:9/stdio/")


def test_the_key_sent_is_not_the_secret_and_only_it_is_allowed() -> None:
    peers = Peers("10.0.0.5", SECRET)
    assert SECRET.encode() not in peers.key
    assert peers.headers == ((b"mcp-fastproxy-peer", peers.key),)
    assert peers.allows(peers.key)
    assert not peers.allows(None)
    assert not peers.allows(b"")
    assert not peers.allows(Peers("10.0.0.5", "another-secret-of-16+").key)


def _settings(**values: Any) -> dict[str, Any]:
    return {"command": ["server"], "session_store": "redis://127.0.0.1:6379", **values}


@pytest.mark.parametrize(
    ("values", "where", "problem"),
    [
        ({"peer_address": "10.0.0.5"}, "peer_secret", "is required with peer_address"),
        (
            {"peer_address": "10.0.0.5", "peer_secret": SECRET},
            "peer_secret",
            "must be a reference",
        ),
        (
            {"peer_address": "10.0.0.5:9000", "peer_secret": "env:X"},
            "peer_address",
            "without a port",
        ),
        ({"peer_address": "http://h", "peer_secret": "env:X"}, "peer_address", "without a port"),
        (
            {"peer_address": "10.0.0.5", "peer_secret": "env:X", "session_store": "memory"},
            "peer_address",
            "needs the Redis store",
        ),
    ],
)
def test_peer_settings_that_would_leave_a_bridge_open_are_refused(
    values: dict[str, Any], where: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(_settings(**values))
    assert caught.value.where == where
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value)  # a secret given by mistake is not repeated


def test_a_short_shared_secret_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = {"peer_secret": "env:PEERS"}  # a reference, not a secret
    for address in ("10.0.0.5", "fd00::5", "gateway-0.gateways.svc"):
        validate(_settings(peer_address=address, **reference))
    settings = validate(_settings(peer_address="10.0.0.5", **reference))
    monkeypatch.setenv("PEERS", "short-secret")
    with pytest.raises(SettingsError) as caught:
        check_secrets(settings)
    assert caught.value.where == "peer_secret"
    assert "short-secret" not in str(caught.value)
    monkeypatch.setenv("PEERS", SECRET)
    check_secrets(settings)
