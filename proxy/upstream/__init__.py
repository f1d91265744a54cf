"""Upstream backends: replica choice (balance) and pooled connections (pool)."""
