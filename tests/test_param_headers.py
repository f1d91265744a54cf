"""Mcp-Param-* headers against a tool's x-mcp-header declarations (SEP-2243): what a
2026-07-28 server refuses, and what it must take, where the gateway serves that era."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from proxy.param_headers import declarations, mismatch

SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "dry": {"type": "boolean", "x-mcp-header": "Dry"},
        "where": {
            "type": "object",
            "properties": {"zone": {"type": "string", "x-mcp-header": "Zone"}},
        },
        "note": {"type": "string"},
    },
}


def b64(text: str) -> bytes:
    return b"=?base64?" + base64.b64encode(text.encode()) + b"?="


def test_declarations_are_read_along_properties_only() -> None:
    declared = declarations(SCHEMA)
    assert declared is not None
    found = {d.path: (d.header, d.shown, d.kind) for d in declared}
    assert found == {
        ("region",): (b"mcp-param-region", "Mcp-Param-Region", "string"),
        ("count",): (b"mcp-param-count", "Mcp-Param-Count", "integer"),
        ("dry",): (b"mcp-param-dry", "Mcp-Param-Dry", "boolean"),
        ("where", "zone"): (b"mcp-param-zone", "Mcp-Param-Zone", "string"),
    }
    assert declarations({"type": "object"}) == ()
    assert declarations(None) == ()


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"a": {"type": "number", "x-mcp-header": "A"}}},  # number: no
        {"properties": {"a": {"type": "string", "x-mcp-header": "A B"}}},  # not a token
        {"properties": {"a": {"type": "string", "x-mcp-header": 7}}},
        {"properties": {"a": {"x-mcp-header": "A"}}},  # no type
        {
            "properties": {
                "a": {"type": "string", "x-mcp-header": "Dup"},
                "b": {"type": "string", "x-mcp-header": "dup"},  # the same, case aside
            }
        },
        {"items": {"type": "string", "x-mcp-header": "A"}},  # off the properties chain
        {"anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]},
        {"type": "string", "x-mcp-header": "Root"},  # the root itself
    ],
)
def test_a_schema_with_an_invalid_declaration_declares_nothing(schema: dict[str, Any]) -> None:
    assert declarations(schema) is None


def check(arguments: dict[str, Any], headers: dict[bytes, bytes], dup: bool = False) -> str | None:
    declared = declarations(SCHEMA)
    assert declared is not None
    duplicated = {next(iter(headers))} if dup else set()
    return mismatch(declared, arguments, headers, duplicated)


@pytest.mark.parametrize(
    ("arguments", "headers"),
    [
        ({}, {}),
        ({"note": "x"}, {}),
        ({"region": "eu-west"}, {b"mcp-param-region": b"eu-west"}),
        ({"region": "eu-west"}, {b"mcp-param-region": b"  eu-west "}),  # whitespace around
        ({"region": "Hello"}, {b"mcp-param-region": b64("Hello")}),
        ({"region": "caf\u00e9 "}, {b"mcp-param-region": b64("caf\u00e9 ")}),
        ({"region": "SGVsbG8="}, {b"mcp-param-region": b"SGVsbG8="}),  # no sentinel: literal
        ({"region": "=?base64?SGVsbG8="}, {b"mcp-param-region": b"=?base64?SGVsbG8="}),
        ({"count": 42}, {b"mcp-param-count": b"42"}),
        ({"count": 42}, {b"mcp-param-count": b"42.0"}),  # the same number
        ({"count": 42.0}, {b"mcp-param-count": b"42"}),
        ({"dry": True}, {b"mcp-param-dry": b"true"}),
        ({"where": {"zone": "a"}}, {b"mcp-param-zone": b"a"}),
        ({"region": None}, {}),  # null is absent
    ],
)
def test_headers_that_agree_with_the_arguments_pass(
    arguments: dict[str, Any], headers: dict[bytes, bytes]
) -> None:
    assert check(arguments, headers) is None


@pytest.mark.parametrize(
    ("arguments", "headers", "said"),
    [
        ({"region": "eu"}, {}, "Mcp-Param-Region header is missing"),
        ({}, {b"mcp-param-region": b"eu"}, "is present but the 'region' argument is not"),
        ({"region": "eu"}, {b"mcp-param-region": b"us"}, "does not match the 'region'"),
        ({"region": "Hello"}, {b"mcp-param-region": b"=?base64?SGVsbG8?="}, "not valid base64"),
        ({"region": "Hello"}, {b"mcp-param-region": b"=?base64?SGVs!!!bG8=?="}, "base64"),
        ({"count": 42}, {b"mcp-param-count": b"42.5"}, "does not match"),
        ({"count": 42}, {b"mcp-param-count": b"4.2e1"}, "does not match"),
        ({"dry": True}, {b"mcp-param-dry": b"True"}, "does not match"),
        ({"where": {"zone": "a"}}, {}, "Mcp-Param-Zone header is missing"),
        ({"region": {"no": "scalar"}}, {b"mcp-param-region": b"x"}, "is present"),
    ],
)
def test_headers_that_disagree_are_named(
    arguments: dict[str, Any], headers: dict[bytes, bytes], said: str
) -> None:
    found = check(arguments, headers)
    assert found is not None and said in found


def test_a_declared_header_sent_twice_is_refused() -> None:
    found = check({"region": "eu"}, {b"mcp-param-region": b"eu"}, dup=True)
    assert found == "Mcp-Param-Region header appears more than once"
