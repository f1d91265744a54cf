"""Origin and Host rules: loopback defaults, allowed origins, '*', non-loopback binds."""

from __future__ import annotations

import pytest

from proxy.config import Settings
from proxy.guard import OriginGuard, is_loopback

ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the non-loopback bind under test


def guard(host: str = "127.0.0.1", *origins: str) -> OriginGuard:
    return OriginGuard(
        Settings(upstream=("http://127.0.0.1:9/mcp",), host=host, allowed_origins=origins)
    )


@pytest.mark.parametrize("name", ["127.0.0.1", "127.1.2.3", "localhost", "::1"])
def test_loopback_names(name: str) -> None:
    assert is_loopback(name)


@pytest.mark.parametrize(
    "name", [ALL_INTERFACES, "10.0.0.1", "example.com", "localhost.evil.com", "127.0.0.1.nip.io"]
)
def test_non_loopback_names(name: str) -> None:
    assert not is_loopback(name)


@pytest.mark.parametrize(
    "origin",
    [
        None,  # non-browser clients send none
        b"http://localhost:3000",
        b"http://127.0.0.1:8787",
        b"https://localhost",
        b"http://[::1]:5173",
        b"HTTP://LOCALHOST:3000/",
    ],
)
def test_loopback_bind_allows_absent_and_loopback_origins(origin: bytes | None) -> None:
    assert guard().allows(origin, b"127.0.0.1:8787")


@pytest.mark.parametrize(
    "origin",
    [
        b"http://evil.example",
        b"http://localhost.evil.example",
        b"http://127.0.0.1.evil.example",
        b"null",
        b"file://",
        b"http://[::1",  # unparsable
    ],
)
def test_loopback_bind_refuses_foreign_origins(origin: bytes) -> None:
    assert not guard().allows(origin, b"127.0.0.1:8787")


@pytest.mark.parametrize(
    "host", [b"127.0.0.1:8787", b"localhost", b"localhost:8787", b"[::1]:8787", b"127.0.0.2"]
)
def test_loopback_bind_accepts_loopback_host_headers(host: bytes) -> None:
    assert guard().host_allowed(host)


@pytest.mark.parametrize(
    "host",
    [None, b"evil.example", b"evil.example:8787", b"10.0.0.5:8787", b"127.0.0.1.evil.example:8787"],
)
def test_loopback_bind_refuses_other_hosts_against_dns_rebinding(host: bytes | None) -> None:
    assert not guard().allows(None, host)


def test_allowed_origins_are_matched_exactly_ignoring_case_and_trailing_slash() -> None:
    g = guard("127.0.0.1", "https://app.example.com/")
    assert g.allows(b"https://App.Example.com", b"localhost")
    assert not g.allows(b"https://app.example.com:8443", b"localhost")
    assert not g.allows(b"http://app.example.com", b"localhost")
    assert g.allows(b"http://localhost:3000", b"localhost")  # loopback still allowed


def test_star_allows_any_origin_but_host_rules_still_apply() -> None:
    g = guard("127.0.0.1", "*")
    assert g.allows(b"http://evil.example", b"localhost:8787")
    assert not g.allows(b"http://evil.example", b"evil.example")


def test_non_loopback_bind_accepts_any_host_and_only_listed_origins() -> None:
    g = guard(ALL_INTERFACES, "https://app.example.com")
    assert g.allows(None, b"mcp.example.com")
    assert g.allows(b"https://app.example.com", b"mcp.example.com")
    assert not g.allows(b"http://localhost:3000", b"mcp.example.com")
    assert not g.allows(b"https://evil.example", b"mcp.example.com")


def test_non_loopback_bind_without_allowed_origins_refuses_every_origin() -> None:
    g = guard(ALL_INTERFACES)
    assert g.allows(None, b"mcp.example.com")
    assert not g.allows(b"https://mcp.example.com", b"mcp.example.com")
