"""The one writer of upstream request heads refuses CR, LF and NUL anywhere."""

from __future__ import annotations

import pytest

from proxy.upstream.head import HeadInjection, request_head


def test_a_request_head() -> None:
    head = request_head(b"POST", b"/mcp?x=1", [(b"host", b"u:8000"), (b"content-length", b"2")])
    assert head == b"POST /mcp?x=1 HTTP/1.1\r\nhost: u:8000\r\ncontent-length: 2\r\n\r\n"


def test_no_headers() -> None:
    assert request_head(b"GET", b"/", []) == b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize("bad", [b"\r", b"\n", b"\r\n", b"\x00", b"x\r\nX-Injected: yes"])
@pytest.mark.parametrize("where", ["name", "value", "target"])
def test_cr_lf_and_nul_are_refused_anywhere(bad: bytes, where: str) -> None:
    name, value, target = b"last-event-id", b"17", b"/mcp"
    if where == "name":
        name += bad
    elif where == "value":
        value += bad
    else:
        target += bad
    with pytest.raises(HeadInjection):
        request_head(b"GET", target, [(b"host", b"u"), (name, value)])
