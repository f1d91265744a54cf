"""Several MCP servers behind one endpoint: names, catalog, lazy sessions, routing."""

from __future__ import annotations

from .dispatch import Federator

__all__ = ("Federator",)
