"""mcp-fastproxy: a high-performance gateway and reverse proxy for MCP servers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ("Settings", "__version__", "create_app")


def __getattr__(name: str) -> object:
    # Lazy surface: importing `proxy` must stay cheap for the CLI and the workers.
    if name == "Settings":
        from .config import Settings  # noqa: PLC0415 - lazy re-export

        return Settings
    if name == "create_app":
        from .app import create_app  # noqa: PLC0415 - lazy re-export

        return create_app
    raise AttributeError(name)
