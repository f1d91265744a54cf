"""Who a request comes from, once its access token is verified."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ("Principal",)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a verified access token names.

    ``key`` (issuer, subject and client id) is what a session is bound to: never a digest
    of the token, which changes at every refresh while the caller stays the same.
    """

    issuer: str
    subject: str
    client_id: str = ""
    scopes: frozenset[str] = frozenset()
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """The token's claims, for policy rules (``principal.claims``)."""
    expires: float = 0.0
    """The token's ``exp`` (0: none given)."""
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    """What was worked out for this principal while its token is cached: its policy
    context and decisions, its outbound tokens' keys."""
    key: str = field(init=False, compare=False, repr=False)
    """What a session is bound to: issuer, subject and client id."""
    audience: str = field(default="", compare=False, repr=False)
    """The resource the token was checked against (set by the verifier when it accepts
    the token: a cached token is good only for the same resource)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.issuer}\n{self.subject}\n{self.client_id}")

    @property
    def name(self) -> str:
        """For logs and audit lines: the subject (and client), never the token."""
        return self.subject if not self.client_id else f"{self.subject} ({self.client_id})"
