"""Header helpers: Connection tokens and the routing-header value codec."""

from __future__ import annotations

import base64

import pytest

from proxy.headers import connection_tokens, decode_header_value


@pytest.mark.parametrize("value", [b"keep-alive", b"close", b"Keep-Alive"])
def test_plain_connection_values_name_no_other_header(value: bytes) -> None:
    assert connection_tokens(value) == frozenset()


def test_connection_tokens_are_lower_cased_header_names() -> None:
    assert connection_tokens(b"keep-alive, X-Trace , Upgrade") == {
        b"keep-alive",
        b"x-trace",
        b"upgrade",
    }


def test_plain_header_value_is_its_own_text() -> None:
    assert decode_header_value(b"tools/call") == "tools/call"


def test_base64_sentinel_decodes_utf8() -> None:
    encoded = base64.b64encode("héllo wörld".encode()).decode()
    assert decode_header_value(f"=?base64?{encoded}?=".encode()) == "héllo wörld"


@pytest.mark.parametrize(
    "value",
    [b"=?base64?SGVsbG8?=", b"=?base64?SGVs!!!bG8=?=", b"=?base64?SGVsbG9=?=", b"=?base64?/w==?="],
    ids=["bad-padding", "bad-alphabet", "non-canonical", "not-utf8"],
)
def test_malformed_base64_sentinel_matches_nothing(value: bytes) -> None:
    assert decode_header_value(value) is None


def test_value_without_the_full_sentinel_is_literal() -> None:
    assert decode_header_value(b"=?base64?SGVsbG8=") == "=?base64?SGVsbG8="
