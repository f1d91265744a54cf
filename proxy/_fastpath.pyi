"""Types of the compiled fast path, proxy/_fastpath.pyx (checked by mypy.stubtest)."""

from proxy.headers import McpHeaders
from proxy.jsonrpc import Envelope

__all__ = ("scan_envelope", "scan_headers")

def scan_envelope(body: bytes) -> Envelope: ...
def scan_headers(headers: list[tuple[bytes, bytes]]) -> McpHeaders: ...
