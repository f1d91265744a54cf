"""X-Forwarded-* toward the upstream: the client's own are believed only from trusted proxies."""

from __future__ import annotations

import pytest

from proxy.forwarded import ProxyHeaders, parse_networks

SPOOFED = [
    (b"x-forwarded-for", b"6.6.6.6"),
    (b"x-forwarded-proto", b"https"),
    (b"x-real-ip", b"6.6.6.6"),
    (b"forwarded", b"for=6.6.6.6"),
]


def test_no_client_headers() -> None:
    headers = ProxyHeaders([]).headers("10.1.1.1", "http", b"gw:8787", None)
    assert headers == [
        (b"x-forwarded-for", b"10.1.1.1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"gw:8787"),
    ]


def test_an_untrusted_peers_headers_are_replaced() -> None:
    headers = ProxyHeaders(["10.0.0.0/8"]).headers("192.0.2.7", "http", b"gw", SPOOFED)
    assert headers == [
        (b"x-forwarded-for", b"192.0.2.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"gw"),
    ]


def test_a_trusted_proxys_headers_are_kept_and_the_chain_extended() -> None:
    sent = [
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"x-forwarded-for", b"10.0.0.2"),
        (b"x-forwarded-proto", b"https"),
    ]
    headers = ProxyHeaders(["10.0.0.0/8"]).headers("10.0.0.3", "http", b"gw", sent)
    assert headers == [
        (b"x-forwarded-for", b"203.0.113.9, 10.0.0.2, 10.0.0.3"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"gw"),
    ]


def test_the_client_behind_trusted_proxies() -> None:
    proxies = ProxyHeaders(["10.0.0.0/8", "::1"])
    sent = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.0.0.2")]
    assert proxies.client("10.0.0.3", sent) == "203.0.113.9"  # right-most untrusted
    assert proxies.client("192.0.2.1", sent) == "192.0.2.1"  # not a proxy: the peer
    assert proxies.client("::1", None) == "::1"
    assert proxies.client(None, None) == "-"


def test_no_peer_address() -> None:
    assert ProxyHeaders([]).headers(None, "https", b"gw", None) == [
        (b"x-forwarded-proto", b"https")
    ]


@pytest.mark.parametrize("bad", ["10.0.0.300", "proxy.local", "10.0.0.0/40"])
def test_bad_networks_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        parse_networks([bad])
