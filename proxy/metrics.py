"""Prometheus metrics of the gateway: counters and histograms with bounded labels."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from .fastpath import IMPLEMENTATION

# Label values are bounded: MCP methods outside this set count as "other".
KNOWN_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "server/discover",
        "subscriptions/listen",
        "notifications",
        "response",
        "batch",
        "GET",
        "DELETE",
    }
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def method_label(method: str | None) -> str:
    if method is None:
        return "other"
    if method in KNOWN_METHODS:
        return method
    if method.startswith("notifications/"):
        return "notifications"
    return "other"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    __slots__ = ("_cells", "_values", "help", "labelnames", "name")

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self._values: dict[tuple[str, ...], float] = {}
        self._cells: dict[tuple[str, ...], list[float]] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def cell(self, *labels: str) -> list[float]:
        """A one-item list that a hot path adds to itself (``cell[0] += 1``, no call);
        it counts in :attr:`values` from the next read on."""
        return self._cells.setdefault(labels, [0.0])

    @property
    def values(self) -> dict[tuple[str, ...], float]:
        """Every series and its count (what the cells hold added in)."""
        values = self._values
        for labels, cell in self._cells.items():
            if cell[0]:
                values[labels] = values.get(labels, 0.0) + cell[0]
                cell[0] = 0.0
        return values

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, labels)} {value:g}"


class Gauge(Counter):
    """A value that goes up and down (processes running); the workers' figures add up."""

    __slots__ = ()

    def dec(self, *labels: str, amount: float = 1.0) -> None:
        self.inc(*labels, amount=-amount)

    def set(self, *labels: str, value: float) -> None:
        self._cells.pop(labels, None)
        self._values[labels] = value

    def forget(self, *labels: str) -> None:
        """The series is gone (say, its backend was removed)."""
        self._cells.pop(labels, None)
        self._values.pop(labels, None)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, labels)} {value:g}"


class Histogram:
    __slots__ = ("buckets", "help", "labelnames", "name", "series")

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] = _LATENCY_BUCKETS,
    ) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self.buckets = buckets
        # labels -> [count per bucket (+Inf last)..., sum]
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        row[bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, row in sorted(self.series.items()):
            cumulative = 0.0
            for bound, count in zip((*self.buckets, float("inf")), row, strict=False):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                bucket = _labels(self.labelnames, labels, 'le="' + le + '"')
                yield f"{self.name}_bucket{bucket} {cumulative:g}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {row[-1]:g}"
            yield f"{self.name}_count{_labels(self.labelnames, labels)} {cumulative:g}"


class Metrics:
    """Everything /metrics shows for this worker."""

    def __init__(self) -> None:
        self.requests = Counter(
            "proxy_requests_total",
            "Requests answered, by MCP method and status class.",
            ("method", "code"),
        )
        self.latency = Histogram(
            "proxy_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (a stream's included), "
            "by MCP method.",
            ("method",),
        )
        self.upstream_errors = Counter(
            "proxy_upstream_errors_total",
            "Upstream failures, by replica and kind (connect, pool, timeout, protocol).",
            ("upstream", "kind"),
        )
        self.store_latency = Histogram(
            "proxy_store_duration_seconds", "Session store operation latency.", ("op",)
        )
        self.store_errors = Counter("proxy_store_errors_total", "Session store failures.", ("op",))
        self.sessions_created = Counter("proxy_sessions_created_total", "Sessions minted.")
        # Identity and access (bounded labels: outcomes, issuers and rules from the config).
        self.auth_outcomes = Counter(
            "proxy_auth_requests_total",
            "Token checks, by outcome (ok, missing, invalid, insufficient_scope); a token "
            "answered from the cache is counted in proxy_auth_token_cache_total only.",
            ("outcome",),
        )
        self.auth_token_cache = Counter(
            "proxy_auth_token_cache_total",
            "Requests whose token was known (hit: accepted without a signature check) or "
            "not (miss: checked in full).",
            ("result",),
        )
        self.auth_jwks = Counter(
            "proxy_auth_jwks_fetches_total",
            "JWKS fetches, by issuer and outcome.",
            ("issuer", "outcome"),
        )
        self.policy_decisions = Counter(
            "proxy_policy_decisions_total",
            "Policy decisions, by rule (or default) and outcome (allow, deny).",
            ("rule", "outcome"),
        )
        self.rate_limited = Counter(
            "proxy_rate_limited_total",
            "Requests over a rate limit, by what was counted (principal, tool), and rate "
            "checks the store could not answer (store_failed_open, store_failed_closed).",
            ("limit",),
        )
        self.audit_lines = Counter(
            "proxy_audit_lines_total",
            "Audit lines, by fate (written, dropped: the writer's queue was full).",
            ("fate",),
        )
        self.access_lines = Counter(
            "proxy_access_log_lines_total",
            "Access log lines, by fate (written, dropped: the writer's queue was full).",
            ("fate",),
        )
        self.refused = Counter(
            "proxy_refused_total",
            "Requests refused by a limit, by reason (streams_per_session, "
            "streams_per_client, body_timeout, sessions_full).",
            ("reason",),
        )
        # Federation: per backend (bounded: backends come from the configuration).
        self.backend_requests = Counter(
            "proxy_backend_requests_total",
            "Requests sent to a backend for clients, by backend and MCP method.",
            ("backend", "method"),
        )
        self.backend_errors = Counter(
            "proxy_backend_errors_total",
            "Backend failures, by backend and kind (connect, http, initialize, list, "
            "session_lost).",
            ("backend", "kind"),
        )
        self.backend_latency = Histogram(
            "proxy_backend_duration_seconds",
            "Time to a backend's response headers, by backend.",
            ("backend",),
        )
        self.lazy_inits = Counter(
            "proxy_backend_lazy_initializations_total",
            "Backend sessions opened on a client session's first request that needs them.",
            ("backend",),
        )
        self.list_refreshes = Counter(
            "proxy_backend_list_refreshes_total",
            "Backend list fetches for the merged lists, by backend, list and outcome.",
            ("backend", "list", "outcome"),
        )
        self.trace_spans = Counter(
            "proxy_trace_spans_total",
            "Sampled spans by fate: `exported`, `failed` (the collector did not take "
            "them) or `dropped` (more waited than the export queue holds).",
            ("outcome",),
        )
        self.response_cache = Counter(
            "proxy_response_cache_total",
            "Answers looked up in the response cache or kept there, by method and outcome "
            "(`hit`, `miss`, `stored`).",
            ("method", "outcome"),
        )
        self.response_cache_bytes = Counter(
            "proxy_response_cache_hit_bytes_total",
            "Bytes of results served from the response cache, by method.",
            ("method",),
        )
        self.response_cache_evictions = Counter(
            "proxy_response_cache_evictions_total",
            "Results the in-memory response cache let go for room, by method.",
            ("method",),
        )
        self.response_cache_size = Gauge(
            "proxy_response_cache_size_bytes",
            "Bytes of results the in-memory response cache holds (Redis keeps its own).",
        )
        self.backend_eras = Gauge(
            "proxy_backend_era",
            "Whether a backend speaks a protocol era (`handshake`, `stateless`), as "
            "configured or asked of it: the workers that found it does (as many as "
            "`proxy_workers` when all agree), 0 when it does not; absent while not known.",
            ("backend", "era"),
        )
        # Local (stdio) servers, per backend (bounded: backends come from the configuration).
        self.stdio_processes = Gauge(
            "proxy_stdio_processes",
            "Local server processes by backend and state (`idle`: started ahead of demand, "
            "`starting`: not yet answered initialize, `running`).",
            ("backend", "state"),
        )
        self.stdio_spawns = Counter(
            "proxy_stdio_spawns_total",
            "Local server processes started, by backend and outcome (`started`, "
            "`failed`: the command could not run, `unanswered`: no answer to initialize, "
            "`refused`: max_processes reached).",
            ("backend", "outcome"),
        )
        self.stdio_starts = Counter(
            "proxy_stdio_session_starts_total",
            "Client sessions given a local server process, by backend and whether one "
            "started ahead of demand was waiting (`warm`), the session waited for a new "
            "one to start (`cold`) or joined the backend's one process (`shared`).",
            ("backend", "pool"),
        )
        self.stdio_exits = Counter(
            "proxy_stdio_exits_total",
            "Local server processes gone, by backend and reason (`ended`: by DELETE, "
            "expiry or the gateway stopping; `crashed`: exited by itself).",
            ("backend", "reason"),
        )
        self.stdio_bytes = Counter(
            "proxy_stdio_bytes_total",
            "Bytes written to local servers' stdin (`in`) and read from their stdout (`out`).",
            ("backend", "direction"),
        )
        self.reloads_applied = Counter(
            "proxy_config_reloads_applied_total",
            "Reloaded configurations a worker applied, by outcome (`ok`, or `failed`: "
            "the worker goes on with the configuration it had).",
            ("outcome",),
        )

    def families(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return (
            self.auth_outcomes,
            self.auth_token_cache,
            self.auth_jwks,
            self.policy_decisions,
            self.rate_limited,
            self.audit_lines,
            self.access_lines,
            self.requests,
            self.latency,
            self.upstream_errors,
            self.store_latency,
            self.store_errors,
            self.sessions_created,
            self.refused,
            self.backend_requests,
            self.backend_errors,
            self.backend_latency,
            self.lazy_inits,
            self.list_refreshes,
            self.trace_spans,
            self.reloads_applied,
            self.response_cache,
            self.response_cache_bytes,
            self.response_cache_evictions,
            self.response_cache_size,
            self.backend_eras,
            self.stdio_processes,
            self.stdio_spawns,
            self.stdio_starts,
            self.stdio_exits,
            self.stdio_bytes,
        )

    def snapshot(self) -> dict[str, list[list[object]]]:
        """Every family's series as JSON-ready data (for the other workers to add up)."""
        out: dict[str, list[list[object]]] = {}
        for family in self.families():
            rows = family.values if isinstance(family, Counter) else family.series
            out[family.name] = [[list(labels), value] for labels, value in rows.items()]
        return out

    def add(self, snapshot: dict[str, list[list[object]]]) -> None:
        """Add another worker's :meth:`snapshot` to these figures."""
        by_name = {family.name: family for family in self.families()}
        for name, rows in snapshot.items():
            family = by_name.get(name)
            if family is None:
                continue
            for labels, value in rows:
                if not isinstance(labels, list):
                    continue
                key = tuple(str(v) for v in labels)
                if isinstance(family, Counter) and isinstance(value, int | float):
                    family.values[key] = family.values.get(key, 0.0) + value
                elif isinstance(family, Histogram) and isinstance(value, list):
                    row = family.series.setdefault(key, [0.0] * (len(family.buckets) + 2))
                    for i, amount in enumerate(value[: len(row)]):
                        row[i] += float(amount)

    def render(self, open_sessions: int | None, workers: int = 1) -> bytes:
        lines: list[str] = []
        for metric in self.families():
            lines.extend(metric.render())
        lines.append("# HELP proxy_fastpath_info Which envelope scanner runs: c or py (the twin).")
        lines.append("# TYPE proxy_fastpath_info gauge")
        lines.append(f'proxy_fastpath_info{{implementation="{IMPLEMENTATION}"}} 1')
        lines.append("# HELP proxy_workers Worker processes whose figures this page adds up.")
        lines.append("# TYPE proxy_workers gauge")
        lines.append(f"proxy_workers {workers}")
        lines.append("# HELP proxy_sessions_open Open gateway sessions in the store.")
        lines.append("# TYPE proxy_sessions_open gauge")
        if open_sessions is not None:
            lines.append(f"proxy_sessions_open {open_sessions}")
        return ("\n".join(lines) + "\n").encode()
