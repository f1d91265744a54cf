"""A hostile upstream: just enough MCP over raw HTTP/1.1 to be a backend, and answers
framed to attack whatever relays them.

It answers ``initialize`` (with an ``Mcp-Session-Id``), notifications (202), the lists,
``ping`` and ``tools/call``. Each tool's name is the misbehaviour its answer shows (see
``TOOLS``); ``ok`` answers correctly, as a control. What the server saw is served at
``GET /seen``: ``{"calls": {tool: count}, "connections": n}``. ``GET /mcp`` opens an event
stream that sends ``--flood-mb`` MiB of events (0: it stays open, silent), for tests of a
client that does not read.

Run: ``python -m testbed.servers.hostile --port 3005`` (readiness on ``/healthz``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ("TOOLS", "main")

Head = list[tuple[bytes, bytes]]
_session_ids = itertools.count(1)


def answer(rid: Any, result: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode()


def text_result(rid: Any, text: str) -> bytes:
    return answer(rid, {"content": [{"type": "text", "text": text}], "isError": False})


def http(
    status: int,
    body: bytes,
    *lines: bytes,
    length: bool = True,
    content_type: bytes = b"application/json",
) -> bytes:
    head = [b"HTTP/1.1 %d X" % status, b"content-type: " + content_type, *lines]
    if length:
        head.append(b"content-length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def forged(rid: Any) -> bytes:
    """What an attack hides: a complete second response claiming to answer `rid`."""
    return http(200, text_result(rid, "forged"))


def _ok(rid: Any) -> bytes:
    return http(200, text_result(rid, "ok"))


def _double_length(rid: Any) -> bytes:
    body = b'{"ok":1}' + forged(rid)
    return http(200, body, b"content-length: 8", b"content-length: %d" % len(body), length=False)


def _chunked_and_length(rid: Any) -> bytes:
    real = text_result(rid, "chunked")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(real), real)
    return http(200, chunked, b"transfer-encoding: chunked", b"content-length: 8", length=False)


def _signed_length(rid: Any) -> bytes:
    return http(200, b'{"ok":1}' + forged(rid), b"content-length: +0_3_6", length=False)


def _negative_length(rid: Any) -> bytes:
    return http(200, b"", b"content-length: -1", length=False)


def _not_chunked(rid: Any) -> bytes:
    real = text_result(rid, "x")
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(real), real)
    return http(200, body, b"transfer-encoding: notchunked", length=False)


def _hex_chunk(rid: Any) -> bytes:
    real = text_result(rid, "x")
    body = b"0x%x\r\n%s\r\n0\r\n\r\n" % (len(real), real)
    return http(200, body, b"transfer-encoding: chunked", length=False)


def _space_before_colon(rid: Any) -> bytes:
    body = text_result(rid, "x")
    return http(200, body, b"content-length : %d" % len(body), length=False)


def _folded_header(rid: Any) -> bytes:
    return http(200, text_result(rid, "x"), b"x-folded: a", b" b")


def _bare_lf(rid: Any) -> bytes:
    body = text_result(rid, "x")
    return (
        b"HTTP/1.1 200 X\ncontent-type: application/json\ncontent-length: %d\n\n" % len(body) + body
    )


def _huge_head(rid: Any) -> bytes:
    return http(200, text_result(rid, "x"), b"x-big: " + b"a" * 70_000)


def _bad_header_value(rid: Any) -> bytes:
    return http(200, text_result(rid, "x"), b"x-bad: a\rb")


def _odd_connection(rid: Any) -> bytes:
    return http(200, text_result(rid, "ok"), b"connection: x-unknown-token")


def _no_content_with_body(rid: Any) -> bytes:
    return b"HTTP/1.1 204 No Content\r\n\r\n" + forged(rid)


TOOLS: dict[str, Callable[[Any], bytes]] = {
    "ok": _ok,
    "double_length": _double_length,
    "chunked_and_length": _chunked_and_length,
    "signed_length": _signed_length,
    "negative_length": _negative_length,
    "not_chunked": _not_chunked,
    "hex_chunk": _hex_chunk,
    "space_before_colon": _space_before_colon,
    "folded_header": _folded_header,
    "bare_lf": _bare_lf,
    "huge_head": _huge_head,
    "bad_header_value": _bad_header_value,
    "no_content_with_body": _no_content_with_body,
    "odd_connection": _odd_connection,
}
"""Tools whose whole answer is one write of these bytes (their name says how it is bad)."""

STREAMED = (
    "late_second_response",  # answers, then 0.3 s later writes a forged second response
    "act_and_close",  # counts the call, closes without answering
    "endless_trailer",  # a chunked answer whose trailer never ends (until the peer hangs up)
    "big_event",  # an event stream answer holding one event of --event-mb MiB
    "large_answer",  # a correct answer of --event-mb MiB
    "slow",  # answers after 3 s
)


class Hostile:
    def __init__(self, flood_mb: int, event_mb: int) -> None:
        self.flood_mb = flood_mb
        self.event_mb = event_mb
        self.calls: Counter[str] = Counter()
        self.connections = 0
        self.last_call = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.exchanges(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def exchanges(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one connection, answered in turn, until one ends the connection."""
        odd = False
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head[:-4].split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            headers: Head = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers.append((name.strip().lower(), value.strip()))
            length = int(dict(headers).get(b"content-length", b"0"))
            body = await reader.readexactly(length) if length else b""
            if odd:  # a request on a connection this server said it would not keep
                self.calls["after_odd_connection"] += 1
            if not await self.respond(method, target, body, writer):
                return
            odd = self.last_call == "odd_connection"

    async def respond(
        self, method: bytes, target: bytes, body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is to end now."""
        if target == b"/healthz":
            writer.write(http(200, b'{"status":"ok"}'))
        elif target == b"/seen":
            seen = {"calls": dict(self.calls), "connections": self.connections}
            writer.write(http(200, json.dumps(seen).encode()))
        elif method == b"GET":
            await self.flood(writer)
            return False
        elif method == b"DELETE":
            writer.write(http(200, b""))
        else:
            return await self.rpc(json.loads(body), writer)
        await writer.drain()
        return True

    async def rpc(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        rid = message.get("id")
        method = message.get("method")
        params = message.get("params") or {}
        if rid is None:  # a notification or a response
            writer.write(http(202, b""))
        elif method == "initialize":
            result = {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}, "resources": {}},
                "serverInfo": {"name": "hostile", "version": "0"},
            }
            sid = b"hostile-%d" % next(_session_ids)
            writer.write(http(200, answer(rid, result), b"mcp-session-id: " + sid))
        elif method == "tools/list":
            names = [*TOOLS, *STREAMED]
            tools = [{"name": n, "inputSchema": {"type": "object"}} for n in names]
            writer.write(http(200, answer(rid, {"tools": tools})))
        elif method in ("prompts/list", "resources/list", "resources/templates/list"):
            key = {"prompts/list": "prompts", "resources/list": "resources"}.get(
                method, "resourceTemplates"
            )
            writer.write(http(200, answer(rid, {key: []})))
        elif method == "resources/read":  # big://<n>: n MiB of text
            uri = str(params.get("uri"))
            text = "r" * (int(uri.removeprefix("big://")) << 20 if uri.startswith("big://") else 1)
            contents = [{"uri": uri, "mimeType": "text/plain", "text": text}]
            writer.write(http(200, answer(rid, {"contents": contents})))
        elif method == "tools/call":
            name = str(params.get("name"))
            self.calls[name] += 1
            self.last_call = name
            if name in TOOLS:
                writer.write(TOOLS[name](rid))
            else:
                return await self.streamed(name, rid, writer)
        else:
            error = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}}
            writer.write(http(200, json.dumps(error).encode()))
        await writer.drain()
        return True

    async def streamed(self, name: str, rid: Any, writer: asyncio.StreamWriter) -> bool:
        if name == "late_second_response":
            writer.write(_ok(rid))
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(forged(rid))
        elif name == "act_and_close":
            return False
        elif name == "endless_trailer":
            writer.write(
                http(200, b"2\r\n{}\r\n0\r\nx-t: ", b"transfer-encoding: chunked", length=False)
            )
            piece = b"t" * 65536
            for _ in range(1024):  # 64 MiB, unless the peer hangs up first
                writer.write(piece)
                await writer.drain()
            return False
        elif name == "big_event":
            data = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/message",
                    "params": {"level": "info", "data": "e" * (self.event_mb << 20)},
                }
            )
            event = b"event: message\ndata: " + data.encode() + b"\n\n"
            event += b"event: message\ndata: " + text_result(rid, "after the big one") + b"\n\n"
            writer.write(http(200, event, content_type=b"text/event-stream"))
        elif name == "large_answer":
            writer.write(http(200, text_result(rid, "l" * (self.event_mb << 20))))
        elif name == "slow":
            await asyncio.sleep(3.0)
            writer.write(_ok(rid))
        else:
            error = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": name}}
            writer.write(http(200, json.dumps(error).encode()))
        await writer.drain()
        return True

    async def flood(self, writer: asyncio.StreamWriter) -> None:
        """An event stream: --flood-mb MiB of events as fast as the peer takes them, then
        silence until the peer hangs up."""
        head = b"HTTP/1.1 200 X\r\ncontent-type: text/event-stream\r\n\r\n"
        writer.write(head)
        await writer.drain()
        event = (
            b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message",'
            b'"params":{"level":"info","data":"' + b"f" * 16000 + b'"}}\n\n'
        )
        sent = 0
        while sent < self.flood_mb << 20:
            writer.write(event)
            sent += len(event)
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            await asyncio.sleep(3600)


async def run(host: str, port: int, flood_mb: int, event_mb: int) -> None:
    hostile = Hostile(flood_mb, event_mb)
    server = await asyncio.start_server(hostile.serve, host, port)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testbed.servers.hostile", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3005)
    parser.add_argument("--flood-mb", type=int, default=0, help="MiB a GET stream sends.")
    parser.add_argument("--event-mb", type=int, default=32, help="MiB of the big answers.")
    args = parser.parse_args(argv)
    asyncio.run(run(args.host, args.port, args.flood_mb, args.event_mb))


if __name__ == "__main__":
    main()
