"""``GET /status``: the gateway's state now, as JSON, and to a browser as a small page over
the same data that refreshes itself.

What it shows: version, this worker's pid and uptime, a digest of the configuration, the
session store's kind and the sessions open, requests in flight and the latency of those
done (mean, and the p50 and p99 as the upper bound of their latency bucket), and each
backend with its replicas' health and load and, in federation, how many entries of each
list its catalog holds and how long ago they were fetched. Never a secret: a URL is shown
without its user and password, the session store by its kind only. With several workers,
each answers for itself.

The page is one static HTML document with a little inline script (no build step, no CDN:
it works offline) that asks ``/status`` for JSON every two seconds and writes what it got
with ``textContent`` (no markup from the data ever reaches the page).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from . import __version__
from .sessions import StoreUnavailable

if TYPE_CHECKING:
    from .app import ProxyApp
    from .config import Settings
    from .metrics import Histogram

__all__ = ("Status", "shown_url")


def shown_url(url: str) -> str:
    """`url` without the user and password it may carry."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _quantile(buckets: tuple[float, ...], counts: list[float], q: float) -> float | None:
    """The upper bound of the bucket holding the `q` quantile (None: nothing observed, or
    beyond the last bound)."""
    total = sum(counts)
    if not total:
        return None
    seen = 0.0
    for bound, count in zip(buckets, counts, strict=False):
        seen += count
        if seen >= q * total:
            return bound
    return None


def _latency(histogram: Histogram) -> dict[str, Any]:
    width = len(histogram.buckets) + 1
    counts = [0.0] * width
    total = 0.0
    for row in histogram.series.values():
        for i in range(width):
            counts[i] += row[i]
        total += row[-1]
    done = sum(counts)
    p50 = _quantile(histogram.buckets, counts, 0.50)
    p99 = _quantile(histogram.buckets, counts, 0.99)
    return {
        "done": int(done),
        "mean_ms": round(1000 * total / done, 3) if done else None,
        "p50_ms_at_most": None if p50 is None else round(p50 * 1000, 3),
        "p99_ms_at_most": None if p99 is None else round(p99 * 1000, 3),
    }


class Status:
    """Reads the app's parts; :meth:`document` is the JSON, :data:`PAGE` the page."""

    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.started = time.monotonic()
        self._digest: tuple[Settings, str] | None = None

    @property
    def digest(self) -> str:
        """The running configuration's digest (a reload changes it)."""
        settings = self.app.settings
        if self._digest is None or self._digest[0] is not settings:
            text = settings.to_env()["PROXY_SETTINGS_JSON"]
            self._digest = (settings, hashlib.sha256(text.encode()).hexdigest()[:16])
        return self._digest[1]

    async def document(self) -> dict[str, Any]:
        app = self.app
        try:
            sessions: int | None = await app.store.count()
        except StoreUnavailable:  # shown as unknown; /readyz says why
            sessions = None
        listed = getattr(app.handler, "listed", None)
        lists: dict[str, dict[str, Any]] = listed() if callable(listed) else {}
        backends = []
        prefixes = {b.name: b.prefix for b in app.settings.backends}
        for backend in app.upstreams.backends.values():
            replicas = [
                {"url": shown_url(r.url), "up": r.up, "in_flight": r.inflight}
                for r in backend.replicas
            ]
            backends.append(
                {
                    "name": backend.name,
                    "prefix": prefixes.get(backend.name) or None,
                    "healthy": backend.healthy(),
                    "eras": None if backend.eras is None else sorted(backend.eras),
                    "era_source": backend.era_source or None,
                    "replicas": replicas,
                    "lists": lists.get(backend.name),
                }
            )
        return {
            "version": __version__,
            "worker": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "config_digest": self.digest,
            "config_generation": app.generation,
            "draining": app.draining,
            "session_store": app.settings.store_kind,
            "sessions_open": sessions,
            "requests": {
                "in_flight": app.endpoint.in_flight,
                **_latency(app.metrics.latency),
            },
            "backends": backends,
        }

    async def json(self) -> bytes:
        return orjson.dumps(await self.document())


PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>mcp-fastproxy status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; text-align: left; }
th { background: #eee; } tr + tr td { border-top: 1px solid #ddd; }
.up { color: #176b27; font-weight: 600; } .down { color: #b3261e; font-weight: 600; }
#error { color: #b3261e; }
</style></head>
<body>
<h1>mcp-fastproxy <span id="version"></span></h1>
<p id="error"></p>
<table id="summary"></table>
<h2>Backends</h2>
<table id="backends"><thead><tr><th>backend</th><th>prefix</th><th>eras</th>
<th>replica</th><th>state</th><th>in flight</th><th>lists</th></tr></thead><tbody></tbody>
</table>
<script>
"use strict";
function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text == null ? "-" : String(text);
  if (cls) td.className = cls; return td;
}
function show(s) {
  document.getElementById("version").textContent = s.version;
  const summary = document.getElementById("summary"); summary.textContent = "";
  const r = s.requests;
  const rows = [["worker", s.worker], ["uptime", s.uptime_seconds + " s"],
    ["configuration", s.config_digest + " (generation " + s.config_generation + ")"],
    ["draining", s.draining ? "yes" : "no"],
    ["session store", s.session_store], ["sessions open", s.sessions_open],
    ["requests in flight", r.in_flight], ["requests done", r.done],
    ["latency mean", r.mean_ms == null ? null : r.mean_ms + " ms"],
    ["latency p50 at most", r.p50_ms_at_most == null ? null : r.p50_ms_at_most + " ms"],
    ["latency p99 at most", r.p99_ms_at_most == null ? null : r.p99_ms_at_most + " ms"]];
  for (const [k, v] of rows) { const row = summary.insertRow(); cell(row, k); cell(row, v); }
  const body = document.querySelector("#backends tbody"); body.textContent = "";
  for (const b of s.backends) {
    const lists = b.lists && Object.keys(b.lists).length ? Object.entries(b.lists).map(
      ([k, v]) => k + " " + v.count + " (" + v.age_seconds + " s ago)").join(", ") : null;
    for (const rep of b.replicas) {
      const row = body.insertRow(); row.dataset.backend = b.name;
      cell(row, b.name); cell(row, b.prefix);
      cell(row, b.eras ? b.eras.join(", ") + " (" + b.era_source + ")" : null);
      cell(row, rep.url);
      cell(row, rep.up ? "up" : "down", rep.up ? "up" : "down");
      cell(row, rep.in_flight); cell(row, lists);
    }
  }
  document.body.dataset.loaded = "yes";
}
async function refresh() {
  try {
    const answer = await fetch(location.pathname, {headers: {accept: "application/json"}});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    show(await answer.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "status not read: " + e.message;
  }
}
refresh(); setInterval(refresh, 2000);
</script>
</body></html>
"""
"""The page: the same data, refreshed every two seconds."""
