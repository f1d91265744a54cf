"""/metrics output is valid Prometheus text exposition (0.0.4) with bounded labels."""

from __future__ import annotations

import math
import re

import orjson
import pytest

from proxy.fastpath import IMPLEMENTATION
from proxy.metrics import KNOWN_METHODS, Metrics, method_label

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?:\{{(?P<labels>.*)\}})? (?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Sample = tuple[str, dict[str, str], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value)


def parse(text: str) -> tuple[dict[str, str], list[Sample]]:
    """A strict little parser: metric families and their types, and every sample."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    types: dict[str, str] = {}
    helped: set[str] = set()
    samples: list[Sample] = []
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped, f"HELP for {name} given twice"
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in _TYPES, line
            assert name not in types, f"TYPE for {name} given twice"
            types[name] = kind
        else:
            assert not line.startswith("#"), line
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels: dict[str, str] = {}
            rest = match["labels"] or ""
            while rest:
                label = _LABEL.match(rest)
                assert label, f"bad labels in {line!r}"
                assert label[1] not in labels
                labels[label[1]] = _unescape(label[2])
                rest = rest[label.end() :]
            samples.append((match["name"], labels, float(match["value"])))
    for name, _, _ in samples:
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        declared = name if name in types else family
        assert declared in types, f"{name} has no TYPE line before it"
        if declared != name:
            assert types[declared] == "histogram", name
    return types, samples


def test_empty_metrics_render_all_families_and_no_gauge_value_without_store() -> None:
    types, samples = parse(Metrics().render(None).decode())
    assert types == {
        "proxy_requests_total": "counter",
        "proxy_request_duration_seconds": "histogram",
        "proxy_upstream_errors_total": "counter",
        "proxy_store_duration_seconds": "histogram",
        "proxy_store_errors_total": "counter",
        "proxy_sessions_created_total": "counter",
        "proxy_refused_total": "counter",
        "proxy_backend_requests_total": "counter",
        "proxy_backend_errors_total": "counter",
        "proxy_backend_duration_seconds": "histogram",
        "proxy_backend_lazy_initializations_total": "counter",
        "proxy_backend_list_refreshes_total": "counter",
        "proxy_trace_spans_total": "counter",
        "proxy_config_reloads_applied_total": "counter",
        "proxy_response_cache_total": "counter",
        "proxy_response_cache_hit_bytes_total": "counter",
        "proxy_response_cache_evictions_total": "counter",
        "proxy_response_cache_size_bytes": "gauge",
        "proxy_backend_era": "gauge",
        "proxy_stdio_processes": "gauge",
        "proxy_stdio_spawns_total": "counter",
        "proxy_stdio_session_starts_total": "counter",
        "proxy_stdio_exits_total": "counter",
        "proxy_stdio_bytes_total": "counter",
        "proxy_fastpath_info": "gauge",
        "proxy_workers": "gauge",
        "proxy_sessions_open": "gauge",
        "proxy_auth_requests_total": "counter",
        "proxy_auth_token_cache_total": "counter",
        "proxy_auth_jwks_fetches_total": "counter",
        "proxy_policy_decisions_total": "counter",
        "proxy_rate_limited_total": "counter",
        "proxy_audit_lines_total": "counter",
        "proxy_access_log_lines_total": "counter",
    }
    assert samples == [
        ("proxy_fastpath_info", {"implementation": IMPLEMENTATION}, 1.0),
        ("proxy_workers", {}, 1.0),
    ]


def test_rendered_traffic_parses_and_histograms_are_cumulative() -> None:
    metrics = Metrics()
    metrics.requests.inc("initialize", "2xx")
    metrics.requests.inc("tools/call", "5xx")
    metrics.requests.inc("tools/call", "5xx")
    for seconds in (0.0001, 0.003, 0.003, 0.7, 99.0):
        metrics.latency.observe(seconds, "tools/call")
    metrics.upstream_errors.inc('http://a"b\\c\nd/mcp', "connect")
    metrics.sessions_created.inc()

    _, samples = parse(metrics.render(open_sessions=4).decode())
    values = {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples}
    assert values[("proxy_requests_total", (("code", "5xx"), ("method", "tools/call")))] == 2
    assert values[("proxy_requests_total", (("code", "2xx"), ("method", "initialize")))] == 1
    assert values[("proxy_sessions_created_total", ())] == 1
    assert values[("proxy_sessions_open", ())] == 4
    # label values round-trip through the escaping
    upstream = ("upstream", 'http://a"b\\c\nd/mcp')
    assert values[("proxy_upstream_errors_total", (("kind", "connect"), upstream))] == 1

    buckets = [
        (labels["le"], value)
        for name, labels, value in samples
        if name == "proxy_request_duration_seconds_bucket"
    ]
    bounds = [math.inf if le == "+Inf" else float(le) for le, _ in buckets]
    counts = [value for _, value in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf
    assert counts == sorted(counts), "buckets are cumulative"
    assert dict(buckets)["0.0005"] == 1
    assert dict(buckets)["0.005"] == 3
    assert dict(buckets)["1"] == 4
    assert dict(buckets)["+Inf"] == 5
    count = values[("proxy_request_duration_seconds_count", (("method", "tools/call"),))]
    total = values[("proxy_request_duration_seconds_sum", (("method", "tools/call"),))]
    assert count == 5
    assert total == pytest.approx(0.0001 + 0.003 + 0.003 + 0.7 + 99.0)


@pytest.mark.parametrize(
    ("method", "label"),
    [
        ("tools/call", "tools/call"),
        ("notifications/initialized", "notifications"),
        ("notifications/cancelled", "notifications"),
        ("x-vendor/secret-per-user-method", "other"),
        (None, "other"),
    ],
)
def test_method_labels_are_bounded(method: str | None, label: str) -> None:
    assert method_label(method) == label
    assert label in KNOWN_METHODS | {"other"}


@pytest.mark.parametrize(
    "text",
    [
        "proxy_x 1\n",  # no TYPE
        '# TYPE proxy_x counter\nproxy_x{a="1} 1\n',  # unterminated label
        "# TYPE proxy_x counter\nproxy_x 1",  # no final line feed
        "# TYPE proxy_x counter\nproxy_x one\n",  # not a number
    ],
)
def test_the_parser_itself_rejects_bad_exposition(text: str) -> None:
    with pytest.raises((AssertionError, ValueError)):
        parse(text)


def test_workers_figures_add_up() -> None:
    """Each worker's snapshot, added to a fresh Metrics, gives the gateway's figures."""
    one, two = Metrics(), Metrics()
    one.requests.inc("tools/call", "2xx")
    two.requests.inc("tools/call", "2xx", amount=2)
    two.requests.inc("ping", "2xx")
    one.latency.observe(0.003, "tools/call")
    two.latency.observe(0.7, "tools/call")
    total = Metrics()
    for worker in (one, two):
        total.add(orjson.loads(orjson.dumps(worker.snapshot())))  # through JSON, as shared
    assert total.requests.values == {("tools/call", "2xx"): 3.0, ("ping", "2xx"): 1.0}
    row = total.latency.series[("tools/call",)]
    assert row[-1] == pytest.approx(0.703)
    assert sum(row[:-1]) == 2
    _, samples = parse(total.render(None, workers=2).decode())
    assert ("proxy_workers", {}, 2.0) in samples
