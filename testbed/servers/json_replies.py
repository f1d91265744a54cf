"""``testbed.servers.streaming`` answering every POST with one JSON body instead of an SSE stream.

With ``json_response=True`` the SDK sends a response's head only once the tool is done, so
``sleep_then_echo`` holds the head back: what the gateway's ``--upstream-timeout`` bounds
(504). An SSE answer would send its head at once and then wait on the stream.

Run: ``python -m testbed.servers.json_replies --port 3003 --name slow`` (MCP on ``/mcp``,
readiness on ``/healthz``).
"""

from __future__ import annotations

from collections.abc import Sequence

from testbed.servers import streaming

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> None:
    streaming.main(
        argv,
        prog="python -m testbed.servers.json_replies",
        description=__doc__,
        port=3003,
        json_response=True,
    )


if __name__ == "__main__":
    main()
