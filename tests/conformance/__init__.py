"""MCP conformance harness: pinned CLI (package.json) and a Python runner around it."""
