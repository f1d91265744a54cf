// k6 load test: tools/call in one established MCP session (handshake era).
//
//   k6 run bench/load/k6_tools_call.js
//   k6 run -e MCP_URL=http://127.0.0.1:8787/mcp -e VUS=64 -e DURATION=30s \
//          -e TOOL=test_simple_text -e ARGS='{"q":"x"}' bench/load/k6_tools_call.js
//
// setup() runs once: initialize, then notifications/initialized; every virtual user then
// sends tools/call with the session's Mcp-Session-Id. Each answer is checked: HTTP 200
// and a JSON-RPC result (not an error) for the request's id, whether the server answered
// with JSON or with an SSE stream. teardown() ends the session (DELETE).
//
// Environment: MCP_URL (default http://127.0.0.1:8787/mcp), VUS (64), DURATION (30s),
// MAX_ITERATIONS (0 = unbounded; else shared across VUs), TOOL (test_simple_text),
// ARGS (JSON object, {}), PROTOCOL_VERSION (2025-11-25), P99_MS (50), P50_MS (10).

import http from "k6/http";
import { check, fail } from "k6";
import exec from "k6/execution";
import { Rate } from "k6/metrics";

const ENDPOINT = __ENV.MCP_URL || "http://127.0.0.1:8787/mcp";
const VUS = parseInt(__ENV.VUS || "64", 10);
const DURATION = __ENV.DURATION || "30s";
const MAX_ITERATIONS = parseInt(__ENV.MAX_ITERATIONS || "0", 10);
const TOOL = __ENV.TOOL || "test_simple_text";
const ARGS = JSON.parse(__ENV.ARGS || "{}");
const VERSION = __ENV.PROTOCOL_VERSION || "2025-11-25";
const P99_MS = parseFloat(__ENV.P99_MS || "50");
const P50_MS = parseFloat(__ENV.P50_MS || "10");

const rpcErrors = new Rate("mcp_rpc_errors");

const scenario =
  MAX_ITERATIONS > 0
    ? {
        // Bounded in requests and time: stops at MAX_ITERATIONS or maxDuration.
        executor: "shared-iterations",
        vus: VUS,
        iterations: MAX_ITERATIONS,
        maxDuration: DURATION,
      }
    : { executor: "constant-vus", vus: VUS, duration: DURATION };

export const options = {
  scenarios: { tools_call: scenario },
  thresholds: {
    http_req_failed: ["rate<0.001"],
    mcp_rpc_errors: ["rate<0.001"],
    checks: ["rate>0.999"],
    http_req_duration: [`p(50)<${P50_MS}`, `p(99)<${P99_MS}`],
  },
  summaryTrendStats: ["avg", "med", "p(90)", "p(99)", "max"],
  discardResponseBodies: false,
};

const BASE_HEADERS = {
  "Content-Type": "application/json",
  Accept: "application/json, text/event-stream",
};

// The JSON-RPC messages of a response: one JSON body, or the data of each SSE event.
function messages(res) {
  const type = (res.headers["Content-Type"] || "").toLowerCase();
  const body = res.body || "";
  if (!type.startsWith("text/event-stream")) {
    return [JSON.parse(body)];
  }
  const out = [];
  for (const event of body.replace(/\r\n/g, "\n").split("\n\n")) {
    const data = event
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""));
    if (data.length > 0 && data.join("") !== "") {
      out.push(JSON.parse(data.join("\n")));
    }
  }
  return out;
}

// The JSON-RPC result for `id`, or null when the answer is an error or missing.
function resultFor(res, id) {
  try {
    const answer = messages(res).find((m) => m && m.id === id);
    if (!answer || answer.jsonrpc !== "2.0" || answer.error !== undefined) return null;
    return answer.result && typeof answer.result === "object" ? answer.result : null;
  } catch (e) {
    return null;
  }
}

export function setup() {
  const init = http.post(
    ENDPOINT,
    JSON.stringify({
      jsonrpc: "2.0",
      id: 0,
      method: "initialize",
      params: {
        protocolVersion: VERSION,
        capabilities: {},
        clientInfo: { name: "mcp-fastproxy-k6", version: "1.0" },
      },
    }),
    { headers: BASE_HEADERS, tags: { name: "initialize" } },
  );
  const result = resultFor(init, 0);
  const sid = init.headers["Mcp-Session-Id"];
  if (init.status !== 200 || result === null || !sid) {
    fail(`initialize failed: HTTP ${init.status}, session ${sid}, body ${init.body}`);
  }
  const headers = Object.assign({}, BASE_HEADERS, {
    "Mcp-Session-Id": sid,
    "MCP-Protocol-Version": result.protocolVersion || VERSION,
  });
  const note = http.post(ENDPOINT, JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }), {
    headers,
    tags: { name: "initialized" },
  });
  if (note.status >= 300) {
    fail(`notifications/initialized failed: HTTP ${note.status}`);
  }
  return { headers };
}

export default function (data) {
  // Unique per request across VUs: concurrent requests of one session never share an id.
  const id = exec.vu.idInTest * 1000000 + exec.vu.iterationInScenario + 1;
  const res = http.post(
    ENDPOINT,
    JSON.stringify({ jsonrpc: "2.0", id, method: "tools/call", params: { name: TOOL, arguments: ARGS } }),
    { headers: data.headers, tags: { name: "tools/call" } },
  );
  const result = res.status === 200 ? resultFor(res, id) : null;
  rpcErrors.add(result === null || result.isError === true);
  check(res, {
    "status is 200": (r) => r.status === 200,
    "JSON-RPC result, not an error": () => result !== null && result.isError !== true,
  });
}

export function teardown(data) {
  http.del(ENDPOINT, null, {
    headers: data.headers,
    tags: { name: "delete session" },
    // A server may refuse to end sessions (405) or have dropped this one already (404).
    responseCallback: http.expectedStatuses({ min: 200, max: 299 }, 404, 405),
  });
}
