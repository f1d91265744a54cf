"""The auth section and the backends' credentials refused at start-up, each problem named
by where it is and never by a secret: what keeps an unsafe configuration from serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.auth.settings import SettingsError, secret
from proxy.auth.validate import check_secrets
from proxy.config import validate

ISSUER = {"issuer": "https://login.example.com"}
UPSTREAM = "http://127.0.0.1:9/mcp"


def _auth(**auth: Any) -> dict[str, Any]:
    return {"upstream": [UPSTREAM], "auth": {"issuers": [ISSUER], **auth}}


def _backends(credentials: dict[str, Any], auth: bool = True) -> dict[str, Any]:
    values: dict[str, Any] = {
        "backends": [
            {
                "name": "files",
                "prefix": "files_",
                "replicas": [UPSTREAM],
                "credentials": credentials,
            },
            {"name": "other", "prefix": "other_", "replicas": ["http://127.0.0.1:8/mcp"]},
        ]
    }
    if auth:
        values["auth"] = {"issuers": [ISSUER]}
    return values


def _refused(values: dict[str, Any]) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        validate(values)
    return caught.value


def test_a_minimal_section_is_accepted() -> None:
    settings = validate(_auth(resource="https://mcp.example.com/mcp"))
    assert settings.auth is not None
    assert settings.auth.issuers[0].issuer == "https://login.example.com"


@pytest.mark.parametrize(
    ("auth", "where", "says"),
    [
        ({"algorithms": ["RS256", "HS256"]}, "auth.algorithms", "never HMAC"),
        ({"algorithms": ["none"]}, "auth.algorithms", "never none"),
        ({"algorithms": []}, "auth.algorithms", "at least one"),
        ({"issuers": [{"issuer": "http://login.example.com"}]}, "auth.issuers[0].issuer", "https"),
        ({"issuers": [ISSUER, ISSUER]}, "auth.issuers[1].issuer", "twice"),
        ({"issuers": []}, "auth.issuers", "at least one"),
        (
            {"issuers": [{**ISSUER, "client_id": "gw", "client_secret": "hunter2"}]},
            "auth.issuers[0].client_secret",
            "reference",
        ),
        (
            {"issuers": [{**ISSUER, "introspection_endpoint": "https://login.example.com/i"}]},
            "auth.issuers[0].client_id",
            "introspection",
        ),
        ({"resource": "/mcp"}, "auth.resource", "absolute URL"),
        ({"policy_default": "maybe"}, "auth.policy_default", "allow or deny"),
        (
            {"policy": [{"name": "default", "effect": "allow", "when": "true"}]},
            "auth.policy[0].name",
            "name of its own",
        ),
        ({"rate_limit": {"requests": 5, "on_store_failure": "sometimes"}}, "auth.rate_limit", ""),
        ({"audit": {"target": "/no/such/folder/audit.log"}}, "auth.audit.target", "folder"),
        ({"audit": {"target": "stdout", "arguments": "all"}}, "auth.audit.arguments", "digest"),
        ({"max_token_size": 10}, "auth.max_token_size", "512"),
    ],
)
def test_an_unsafe_or_wrong_auth_section_is_refused_naming_where(
    auth: dict[str, Any], where: str, says: str
) -> None:
    error = _refused(_auth(**auth))
    assert error.where.startswith(where), error
    assert says in error.problem
    assert "hunter2" not in str(error)


def test_passthrough_with_auth_needs_the_audience_the_backend_expects() -> None:
    error = _refused(_backends({"kind": "passthrough"}))
    assert error.where == "backends[0].credentials.audience"
    accepted = validate(_backends({"kind": "passthrough", "audience": "https://files/mcp"}))
    assert accepted.backends[0].credentials.kind == "passthrough"
    assert validate(_backends({"kind": "passthrough"}, auth=False)).auth is None


def test_forwarding_the_clients_credentials_is_refused_with_auth() -> None:
    values = _backends({"kind": "none"})
    values["backends"][0]["forward_credentials"] = True
    assert _refused(values).where == "backends[0].forward_credentials"


@pytest.mark.parametrize(
    ("credentials", "where"),
    [
        ({"kind": "sometimes"}, "backends[0].credentials.kind"),
        ({"kind": "headers"}, "backends[0].credentials.headers"),
        (
            {"kind": "headers", "headers": {"X-Key": "plain-secret"}},
            "backends[0].credentials.headers.X-Key",
        ),
        ({"kind": "headers", "headers": {"Host": "env:H"}}, "backends[0].credentials.headers"),
        ({"kind": "client_credentials", "client_id": "gw"}, "backends[0].credentials.token_url"),
        (
            {
                "kind": "token_exchange",
                "token_url": "https://login.example.com/t",
                "client_id": "gw",
            },
            "backends[0].credentials.audience",
        ),
        ({"kind": "per_principal"}, "backends[0].credentials.secrets"),
    ],
)
def test_wrong_outbound_credentials_are_refused_naming_where(
    credentials: dict[str, Any], where: str
) -> None:
    error = _refused(_backends(credentials))
    assert error.where == where, error
    assert "plain-secret" not in str(error)


def test_token_exchange_and_per_principal_need_inbound_auth() -> None:
    credentials = {"kind": "per_principal", "secrets": "file:/run/keys.json"}
    assert _refused(_backends(credentials, auth=False)).where == "backends[0].credentials.kind"


def test_a_secret_that_does_not_resolve_stops_the_start_naming_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_SECRET_VARIABLE", raising=False)
    settings = validate(
        _backends({"kind": "headers", "headers": {"X-Key": "env:NO_SUCH_SECRET_VARIABLE"}})
    )
    with pytest.raises(SettingsError) as caught:
        check_secrets(settings)
    assert caught.value.where == "backends[0].credentials.headers.X-Key"
    assert "NO_SUCH_SECRET_VARIABLE" in caught.value.problem
    key = tmp_path / "key"
    key.write_text("s3cret-value\n")
    assert secret(f"file:{key}", "where") == "s3cret-value"
    monkeypatch.setenv("SOME_SECRET", "from-the-environment")
    assert secret("env:SOME_SECRET", "where") == "from-the-environment"
    with pytest.raises(SettingsError) as unreadable:
        secret(f"file:{tmp_path / 'missing'}", "where")
    assert "s3cret" not in str(unreadable.value)
