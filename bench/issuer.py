"""A token issuer for the benchmarks: its metadata and JWKS on a loopback port, and tokens
signed with its key.

The benchmarks measure the gateway's auth path, not an authorization server: the
gateway fetches this issuer's JWKS once and then checks tokens itself. (The tests use a
real authorization server, ``testbed.authserver``.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from joserfc import jwt
from joserfc.jwk import RSAKey

from testbed.processes import free_port, serving_in_thread

__all__ = ("Issuer", "issuer")


class Issuer:
    """RFC 8414 metadata and a JWKS at ``url``; :meth:`token` signs access tokens."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.key = RSAKey.generate_key(2048, parameters={"kid": "bench", "alg": "RS256"})
        self._serial = 0

    def document(self, path: str) -> dict[str, Any] | None:
        if path == "/.well-known/oauth-authorization-server":
            return {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"}
        if path == "/jwks":
            return {"keys": [self.key.as_dict(private=False)]}
        return None

    def token(self, audience: str, subject: str = "bench-user", lifetime: int = 3600) -> str:
        """A fresh token (each one different: a new ``jti``)."""
        self._serial += 1
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "scope": "mcp",
            "client_id": "bench",
            "jti": str(self._serial),
        }
        return jwt.encode({"alg": "RS256", "kid": "bench"}, claims, self.key)


@contextlib.contextmanager
def issuer() -> Iterator[Issuer]:
    port = free_port()
    found = Issuer(port)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            document = found.document(self.path)
            if document is None:
                self.send_response(404)
                self.end_headers()
                return
            data = orjson.dumps(document)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    with serving_in_thread(server):
        yield found
