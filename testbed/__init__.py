"""Real peers for the gateway's tests and benchmarks: MCP servers (official SDK), a hostile
raw-HTTP upstream, raw-bytes HTTP servers, Redis servers in every deployment shape, the
local scale-out cluster, and helpers to run them as processes on free loopback ports.

Shared by ``tests/`` and ``bench/``; not part of the gateway's package."""
