"""Names through the one endpoint: prefixes, reversible resource URIs, allow/deny lists,
merged lists with collisions reported naming both backends."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.config import BackendSettings
from proxy.errors import MethodNotFound, ResourceNotFound, UnknownName
from proxy.federation.names import Namespace, name_header

WEATHER = BackendSettings("weather", ("http://w:1/mcp",), "weather_")
FILES = BackendSettings("files", ("http://f:1/mcp",), "files_", ("read_file", "list_dir"))
NOTES = BackendSettings("notes", ("http://n:1/mcp",), "notes_", (), ("delete_all",))
NS = Namespace([WEATHER, FILES, NOTES])


def test_tool_and_prompt_names_route_by_prefix() -> None:
    assert NS.public_name("weather", "forecast") == "weather_forecast"
    assert NS.route_name("weather_forecast") == (WEATHER, "forecast")
    assert NS.route_name("files_read_file") == (FILES, "read_file")
    assert NS.route_name("weather_") is None  # the prefix alone names nothing
    assert NS.route_name("unknown_tool") is None


def test_allow_and_deny_lists_filter_tools() -> None:
    assert NS.route_tool("files_read_file") == (FILES, "read_file")
    assert NS.route_tool("files_write_file") is None  # not allowed
    assert NS.route_tool("notes_delete_all") is None  # denied
    assert NS.route_tool("notes_add") == (NOTES, "add")


def test_resource_uris_and_templates_map_reversibly() -> None:
    for uri in ("file:///etc/hosts", "test://static-text", "weather://{city}/today", "x"):
        public = NS.public_uri("files", uri)
        assert NS.route_uri(public) == (FILES, uri)
    assert NS.route_uri("nobody+file:///a") is None
    assert NS.route_uri("file:///a") is None


def test_lists_merge_in_backend_order_with_public_names() -> None:
    merged, collisions = NS.merge(
        "tools/list",
        {
            "weather": [{"name": "forecast", "inputSchema": {}}],
            "files": [{"name": "read_file"}, {"name": "write_file"}],
            "notes": [{"name": "add"}, {"name": "delete_all"}],
        },
    )
    assert [t["name"] for t in merged] == ["weather_forecast", "files_read_file", "notes_add"]
    assert merged[0]["inputSchema"] == {}
    assert collisions == []
    resources, _ = NS.merge("resources/list", {"files": [{"uri": "file:///a", "name": "a"}]})
    assert resources == [{"uri": "files+file:///a", "name": "a"}]
    templates, _ = NS.merge("resources/templates/list", {"files": [{"uriTemplate": "file:///{p}"}]})
    assert templates == [{"uriTemplate": "files+file:///{p}"}]


def test_a_collision_names_both_backends_and_keeps_the_first() -> None:
    one = BackendSettings("one", ("http://a:1/",), "")
    other = BackendSettings("other", ("http://b:1/",), "")
    merged, collisions = Namespace([one, other]).merge(
        "prompts/list", {"one": [{"name": "greet"}], "other": [{"name": "greet"}]}
    )
    assert merged == [{"name": "greet"}]
    assert collisions == [
        "prompts: 'greet' is offered by both backend 'one' and backend 'other'; "
        "'other''s is left out"
    ]


def test_read_results_map_content_uris_back() -> None:
    answer = {"result": {"contents": [{"uri": "file:///a", "text": "x"}, {"blob": "AA=="}]}}
    assert NS.publish("files", answer)
    assert answer == {
        "result": {"contents": [{"uri": "files+file:///a", "text": "x"}, {"blob": "AA=="}]}
    }


def test_every_uri_a_backend_names_is_made_public() -> None:
    link: dict[str, Any] = {"type": "resource_link", "uri": "demo://r/1", "name": "r1"}
    embedded: dict[str, Any] = {"type": "resource", "resource": {"uri": "demo://r/2"}}
    call = {"id": 1, "result": {"content": [{"type": "text", "text": "x"}, link, embedded]}}
    assert NS.publish("files", call)
    assert link["uri"] == "files+demo://r/1"
    assert embedded["resource"]["uri"] == "files+demo://r/2"
    prompt: dict[str, Any] = {
        "id": 2,
        "result": {"messages": [{"role": "user", "content": dict(link)}]},
    }
    assert NS.publish("notes", prompt)
    assert prompt["result"]["messages"][0]["content"]["uri"] == "notes+files+demo://r/1"
    updated: dict[str, Any] = {
        "method": "notifications/resources/updated",
        "params": {"uri": "demo://r/3"},
    }
    assert NS.publish("weather", updated)
    assert updated["params"]["uri"] == "weather+demo://r/3"
    assert not NS.publish("weather", {"id": 3, "result": {"content": [{"type": "text"}]}})


# -- requests rewritten for their backend ---------------------------------------------------


def _body(method: str, params: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})


def test_a_call_is_routed_by_prefix_and_carries_the_backends_own_name() -> None:
    params = {"name": "weather_forecast", "arguments": {}}
    routed = NS.route("tools/call", _body("tools/call", params))
    assert routed.backend.name == "weather"
    assert routed.local == "forecast"
    assert orjson.loads(routed.body)["params"] == {"name": "forecast", "arguments": {}}


def test_a_read_is_routed_by_the_backends_name_before_the_scheme() -> None:
    routed = NS.route("resources/read", _body("resources/read", {"uri": "files+file:///a"}))
    assert (routed.backend.name, routed.local) == ("files", "file:///a")


def test_a_completion_is_routed_by_its_reference() -> None:
    ref = {"type": "ref/prompt", "name": "weather_daily"}
    routed = NS.route("completion/complete", _body("completion/complete", {"ref": ref}))
    assert orjson.loads(routed.body)["params"]["ref"] == {"type": "ref/prompt", "name": "daily"}


@pytest.mark.parametrize(
    ("method", "params", "error", "message"),
    [
        ("tools/call", {"name": "nobody_x"}, UnknownName, "Unknown tool: 'nobody_x'"),
        ("prompts/get", {}, UnknownName, "Unknown prompt: None"),
        ("resources/read", {"uri": "elsewhere+x://y"}, ResourceNotFound, "Resource not found"),
        ("completion/complete", {"ref": {"type": "ref/other"}}, UnknownName, "completion"),
        ("sampling/createMessage", {}, MethodNotFound, "Method not found"),
    ],
)
def test_names_no_backend_offers_are_answered_in_band(
    method: str, params: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        NS.route(method, _body(method, params))


def test_an_mcp_name_header_that_does_not_fit_is_base64() -> None:
    assert name_header("forecast") == b"forecast"
    assert name_header("prévision") == b"=?base64?cHLDqXZpc2lvbg==?="
