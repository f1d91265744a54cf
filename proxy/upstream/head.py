"""The one writer of upstream request heads.

Every request the gateway sends a backend (a client's request passed on, its own
``initialize``, a GET stream, a DELETE, a discovery call) gets its request line and
headers from :func:`request_head`. A name or value holding CR, LF or NUL is refused with
:class:`HeadInjection`: one such byte would let whoever supplied it end the header (or
the whole request) early and smuggle in their own. The writer is the fast path's
(:func:`proxy.fastpath.write_head`, compiled, with its twin): one pass copies and checks.
"""

from __future__ import annotations

from ..fastpath import write_head as request_head
from .errors import HeadInjection

__all__ = ("HeadInjection", "request_head")
