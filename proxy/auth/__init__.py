"""Identity and access: the gateway as an OAuth 2.1 resource server (``gate``, ``tokens``),
sessions bound to principals, per-tool policy (``policy``), rate limits (``ratelimit``),
outbound credentials per backend (``outbound``) and the audit log (``audit``).

Off unless ``auth:`` is configured; nothing here is imported on the transparent path."""
