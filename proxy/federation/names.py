"""How the backends' names look through the one endpoint, and back (federation).

Tools and prompts get their backend's prefix (``weather_`` + ``forecast``). Resource URIs
and URI templates are mapped reversibly by putting the backend's name in front of the
scheme (``file:///a`` of backend ``files`` is ``files+file:///a``): a template's
``{variables}`` stay intact, and a read routes to the owner by the part before ``+``.
:meth:`Namespace.route` rewrites a client's request for the backend it names.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from ..config import BackendSettings
from ..errors import MethodNotFound, ResourceNotFound, UnknownName
from ..jsonrpc import LIST_KEYS

_NAMED = ("tools/call", "prompts/get")
_BY_URI = ("resources/read", "resources/subscribe", "resources/unsubscribe")


__all__ = ("LIST_KEYS", "Namespace", "Routed", "name_header")


class Routed(NamedTuple):
    """A client's request rewritten for its backend: the backend, the body with the
    backend's own name or URI, and that name or URI (for the Mcp-Name header)."""

    backend: BackendSettings
    body: bytes
    local: str


def name_header(value: str) -> bytes:
    """An Mcp-Name header value: plain when it fits in a header, else the spec's
    ``=?base64?…?=`` form."""
    if value.isascii() and value.isprintable():
        return value.encode("ascii")
    return b"=?base64?" + base64.b64encode(value.encode("utf-8")) + b"?="


class Namespace:
    """The backends' names as clients see them."""

    def __init__(self, backends: Iterable[BackendSettings]) -> None:
        self.backends = {b.name: b for b in backends}
        # Longest prefix first: "w_x_" must win over "w_" (config forbids that overlap,
        # but an empty prefix of a single backend matches everything).
        self._by_prefix = sorted(self.backends.values(), key=lambda b: -len(b.prefix))

    # -- tools and prompts ---------------------------------------------------------------

    def public_name(self, backend: str, name: str) -> str:
        return self.backends[backend].prefix + name

    def route_name(self, public: str) -> tuple[BackendSettings, str] | None:
        """The backend and its own name for a prefixed tool or prompt name."""
        for backend in self._by_prefix:
            if public.startswith(backend.prefix) and len(public) > len(backend.prefix):
                return backend, public[len(backend.prefix) :]
        return None

    def route_tool(self, public: str) -> tuple[BackendSettings, str] | None:
        """As :meth:`route_name`, and only for tools the backend's lists let through."""
        found = self.route_name(public)
        if found is None or not found[0].offers_tool(found[1]):
            return None
        return found

    # -- resources -----------------------------------------------------------------------

    def public_uri(self, backend: str, uri: str) -> str:
        return f"{backend}+{uri}"

    def route_uri(self, public: str) -> tuple[BackendSettings, str] | None:
        name, plus, uri = public.partition("+")
        backend = self.backends.get(name)
        if not plus or backend is None or not uri:
            return None
        return backend, uri

    # -- requests ------------------------------------------------------------------------

    def route(self, method: str, body: bytes) -> Routed:
        """The backend a request goes to, and the request with that backend's own names.
        Names no backend offers are answered in-band (UnknownName, ResourceNotFound,
        MethodNotFound)."""
        message = orjson.loads(body)
        params = message.get("params")
        if not isinstance(params, dict):
            params = {}
        found: tuple[BackendSettings, str] | None = None
        if method in _NAMED:
            name = params.get("name")
            kind = "tool" if method == "tools/call" else "prompt"
            if isinstance(name, str):
                found = self.route_tool(name) if kind == "tool" else self.route_name(name)
            if found is None:
                raise UnknownName(f"Unknown {kind}: {name!r}")
            params["name"] = found[1]
        elif method in _BY_URI:
            uri = params.get("uri")
            if isinstance(uri, str):
                found = self.route_uri(uri)
            if found is None:
                raise ResourceNotFound(f"Resource not found: {uri!r}")
            params["uri"] = found[1]
        elif method == "completion/complete":
            ref = params.get("ref")
            ref_type = ref.get("type") if isinstance(ref, dict) else None
            key = "name" if ref_type == "ref/prompt" else "uri"
            if isinstance(ref, dict) and ref_type == "ref/prompt":
                found = self.route_name(str(ref.get(key)))
            elif isinstance(ref, dict) and ref_type == "ref/resource":
                found = self.route_uri(str(ref.get(key)))
            if found is None or not isinstance(ref, dict):
                raise UnknownName("Unknown completion reference")
            ref[key] = found[1]
        else:
            raise MethodNotFound(f"Method not found: {method}")
        message["params"] = params
        return Routed(found[0], orjson.dumps(message), found[1])

    # -- lists ---------------------------------------------------------------------------

    def present(self, method: str, backend: str, item: Mapping[str, Any]) -> dict[str, Any] | None:
        """One list entry of `backend` as clients see it; None when it is filtered out."""
        out = dict(item)
        if method == "tools/list":
            name = item.get("name")
            if not isinstance(name, str) or not self.backends[backend].offers_tool(name):
                return None
            out["name"] = self.public_name(backend, name)
        elif method == "prompts/list":
            name = item.get("name")
            if not isinstance(name, str):
                return None
            out["name"] = self.public_name(backend, name)
        elif method == "resources/list":
            uri = item.get("uri")
            if not isinstance(uri, str):
                return None
            out["uri"] = self.public_uri(backend, uri)
        elif method == "resources/templates/list":
            template = item.get("uriTemplate")
            if not isinstance(template, str):
                return None
            out["uriTemplate"] = self.public_uri(backend, template)
        return out

    def merge(
        self, method: str, lists: Mapping[str, list[dict[str, Any]]]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The merged entries (backend order) and a message per public-name collision."""
        field = (
            "uriTemplate"
            if method == "resources/templates/list"
            else ("uri" if method == "resources/list" else "name")
        )
        merged: list[dict[str, Any]] = []
        owner: dict[str, str] = {}
        collisions: list[str] = []
        for backend, items in lists.items():
            for item in items:
                shown = self.present(method, backend, item)
                if shown is None:
                    continue
                key = shown[field]
                if key in owner:
                    collisions.append(
                        f"{LIST_KEYS[method]}: {key!r} is offered by both backend "
                        f"{owner[key]!r} and backend {backend!r}; {backend!r}'s is left out"
                    )
                    continue
                owner[key] = backend
                merged.append(shown)
        return merged, collisions

    def publish(self, backend: str, message: Any) -> bool:
        """A backend's message with every resource URI it names made public, in place:
        tool results (``resource_link`` and embedded resources, in ``content``), prompt
        messages, read results, and ``notifications/resources/updated``. True when
        anything changed."""
        if not isinstance(message, dict):
            return False
        changed = False
        result = message.get("result")
        if isinstance(result, dict):
            changed |= self._publish_blocks(backend, result.get("content"))
            for prompt_message in _dicts(result.get("messages")):
                content = prompt_message.get("content")
                changed |= self._publish_blocks(backend, [content])
            for content in _dicts(result.get("contents")):
                changed |= self._publish_uri(backend, content)
        params = message.get("params")
        if message.get("method") == "notifications/resources/updated" and isinstance(params, dict):
            changed |= self._publish_uri(backend, params)
        return changed

    def _publish_blocks(self, backend: str, blocks: Any) -> bool:
        changed = False
        for block in _dicts(blocks):
            kind = block.get("type")
            if kind == "resource_link":
                changed |= self._publish_uri(backend, block)
            elif kind == "resource" and isinstance(block.get("resource"), dict):
                changed |= self._publish_uri(backend, block["resource"])
        return changed

    def _publish_uri(self, backend: str, holder: dict[str, Any]) -> bool:
        uri = holder.get("uri")
        if not isinstance(uri, str):
            return False
        holder["uri"] = self.public_uri(backend, uri)
        return True


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
