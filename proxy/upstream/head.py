"""The one writer of upstream request heads.

Every request the gateway sends a backend (a client's request passed on, its own
``initialize``, a GET stream, a DELETE, a discovery call) gets its request line and
headers from :func:`request_head`. A name or value holding CR, LF or NUL is refused with
:class:`HeadInjection`: one such byte would let whoever supplied it end the header (or
the whole request) early and smuggle in their own.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ("HeadInjection", "request_head")


class HeadInjection(ValueError):
    """A request line, header name or value holds CR, LF or NUL."""


def request_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``METHOD target HTTP/1.1``, one ``name: value`` line per header, and the blank
    line; raises HeadInjection when any part holds CR, LF or NUL."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines.extend([name + b": " + value for name, value in headers])
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    # The only CR and LF are the line ends written here (one pair per element of lines).
    # (find, not `in`: a bytes `in` first tries its operand as an int, and formats the
    # TypeError that fails: some 2,000 instructions per request.)
    crlf = len(lines)
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf or head.find(b"\0") >= 0:
        raise HeadInjection("a request header holds CR, LF or NUL")
    return head
