"""Local MCP servers that speak the stdio transport, behind the gateway."""
