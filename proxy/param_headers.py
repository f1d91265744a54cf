"""The ``Mcp-Param-*`` headers of a 2026-07-28 ``tools/call``, checked against the tool's
``x-mcp-header`` declarations as a server of that era checks them (SEP-2243).

A tool's input schema may mark a property ``"x-mcp-header": "Region"``; a client then
mirrors that argument into ``Mcp-Param-Region`` (plain visible ASCII, or
``=?base64?…?=``), so that an intermediary can route on it without reading the body.
The header and the argument must agree: both present and equal, or both absent. Used
where the gateway itself serves that era in front of a server that does not (a local
server's bridge, :mod:`proxy.stdio.bridge`).

A declaration counts only on a property reached from the schema's root through
``properties`` alone, of type string, integer or boolean, named by an HTTP token, unique
(case-insensitively) in the schema. A schema with any other ``x-mcp-header`` is invalid:
a conforming client drops such a tool, and nothing of it is checked here.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .headers import decode_header_value, encode_header_value

__all__ = (
    "PREFIX",
    "TOOL_PAGES",
    "Declared",
    "call_mismatch",
    "declarations",
    "headers_for",
    "list_tools",
    "mismatch",
)

PREFIX: Final = b"mcp-param-"
_KEY: Final = "x-mcp-header"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TYPES = frozenset({"string", "integer", "boolean"})
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")

# JSON Schema keywords whose values are schemas: one, a list of them, or a map of them.
# Entering any of these leaves the pure `properties` chain; `$ref` is never followed, and
# data keywords (`default`, `const`, `enum`, `examples`) are never entered.
_ONE = frozenset(
    {
        "items",
        "contains",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "contentSchema",
    }
)
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_MAP = frozenset({"patternProperties", "dependentSchemas", "$defs", "definitions"})


@dataclass(frozen=True, slots=True)
class Declared:
    """An argument a tool wants mirrored in a header."""

    path: tuple[str, ...]
    """The property names from the arguments' root to the argument."""
    header: bytes
    """The header's name, lower case (``mcp-param-region``)."""
    shown: str
    """The header's name as declared (``Mcp-Param-Region``), for error messages."""
    kind: str
    """The property's type: string, integer or boolean."""


def _positions(schema: Any) -> Iterator[tuple[tuple[str, ...] | None, dict[str, Any]]]:
    """Every schema object in `schema`, with its `properties` path from the root (None
    once another keyword was crossed)."""
    stack: list[tuple[tuple[str, ...] | None, Any]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield path, node
        for keyword, value in node.items():
            if keyword == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    stack.append((None if path is None else (*path, name), sub))
            elif keyword in _ONE:
                stack.append((None, value))
            elif keyword in _LIST and isinstance(value, list):
                stack.extend((None, sub) for sub in value)
            elif keyword in _MAP and isinstance(value, dict):
                stack.extend((None, sub) for sub in value.values())


def declarations(schema: Any) -> tuple[Declared, ...] | None:
    """The headers `schema` (a tool's ``inputSchema``) declares; None when one of its
    declarations is invalid (see the module's docstring)."""
    found: list[Declared] = []
    seen: set[bytes] = set()
    for path, node in _positions(schema):
        if _KEY not in node:
            continue
        token, kind = node[_KEY], node.get("type")
        if not path or not isinstance(token, str) or not _TOKEN.fullmatch(token):
            return None
        if not isinstance(kind, str) or kind not in _TYPES:
            return None
        header = PREFIX + token.lower().encode("ascii")
        if header in seen:
            return None
        seen.add(header)
        found.append(Declared(path, header, "Mcp-Param-" + token, kind))
    return tuple(found)


def _argument(arguments: Any, path: tuple[str, ...]) -> Any:
    node = arguments
    for name in path:
        if not isinstance(node, dict):
            return None
        node = node.get(name)
    return node


def _rendered(value: Any) -> str | None:
    """An argument as a client writes it into its header (None: it cannot be)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        try:
            return str(value)
        except ValueError:  # an int past Python's digit limit
            return None
    return None


def _agrees(kind: str, value: Any, rendered: str, header: str) -> bool:
    """Whether a header's (decoded) text stands for the argument: equal text, or for an
    integer property the same number written in plain decimals (42 and 42.0)."""
    if header == rendered:
        return True
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind != "integer" or isinstance(value, bool) or not integral:
        return False
    if _DECIMAL.fullmatch(header) is None:
        return False
    whole, _, fraction = header.partition(".")
    return fraction.strip("0") == "" and int(whole) == int(value)


def mismatch(
    declared: tuple[Declared, ...],
    arguments: Any,
    headers: Mapping[bytes, bytes],
    duplicated: frozenset[bytes] | set[bytes] = frozenset(),
) -> str | None:
    """Why a call's headers (lower-case names) disagree with its `arguments`, or None.

    `duplicated`: the header names the request carried more than once."""
    for d in declared:
        raw = headers.get(d.header)
        value = _argument(arguments, d.path)
        where = ".".join(d.path)
        if raw is not None and d.header in duplicated:
            return f"{d.shown} header appears more than once"
        rendered = None if value is None else _rendered(value)
        if rendered is None:
            if raw is not None:
                return f"{d.shown} header is present but the {where!r} argument is not"
            continue
        if raw is None:
            return f"{d.shown} header is missing but the {where!r} argument is present"
        text = decode_header_value(raw.strip(b" \t"))
        if text is None:
            return f"{d.shown} header is not valid base64 in =?base64?…?="
        if not _agrees(d.kind, value, rendered, text):
            return f"{d.shown} header does not match the {where!r} argument"
    return None


TOOL_PAGES: Final = 20
"""Pages of ``tools/list`` read at most (a server that pages forever is not followed)."""


def headers_for(schema: Any, arguments: Any) -> list[tuple[bytes, bytes]]:
    """The ``Mcp-Param-*`` headers a client of the stateless era sends with a call of the
    tool whose input schema is `schema` (none for an argument that is absent)."""
    declared = declarations(schema) or ()
    found = []
    for item in declared:
        rendered = _rendered(_argument(arguments, item.path))
        if rendered is not None:
            found.append((item.header, encode_header_value(rendered)))
    return found


async def list_tools(page: Callable[[str | None], Awaitable[Any]]) -> dict[str, Any]:
    """A server's tools by name: ``page(cursor)`` gives one ``tools/list`` result (None
    when the server did not answer one), followed by ``nextCursor`` up to TOOL_PAGES."""
    tools: dict[str, Any] = {}
    cursor: str | None = None
    for _ in range(TOOL_PAGES):
        result = await page(cursor)
        if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            break
        for tool in result["tools"]:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                tools[tool["name"]] = tool
        cursor = result.get("nextCursor")
        if not isinstance(cursor, str):
            break
    return tools


def call_mismatch(
    params: Any,
    schema: Any,
    headers: Mapping[bytes, bytes],
    duplicated: frozenset[bytes] | set[bytes] = frozenset(),
) -> str | None:
    """Why a ``tools/call`` (its `params`) disagrees with its headers, as the tool's
    input `schema` declares them; None when it does not (or declares nothing)."""
    declared = None if schema is None else declarations(schema)
    if not declared or not isinstance(params, dict):
        return None
    return mismatch(declared, params.get("arguments"), headers, duplicated)
