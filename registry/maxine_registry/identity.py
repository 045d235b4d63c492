"""
Who is asking: the identity a request carries, for access rules, audit and rate limits.

With JWT auth on, the auth middleware verifies the token and stores an ``Identity`` with the
token's subject and roles on the request. Without auth, a caller may still name itself with the
``X-Maxine-Caller`` header (or the ``caller`` query parameter): that name is a claim, not a proof,
and it is used for service-to-service rules (ACLs, intentions) the way Consul uses a service
name when ACLs are off. Governance code asks ``caller_name`` and never reads headers itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

CALLER_HEADER = "X-Maxine-Caller"
CALLER_PARAMETER = "caller"
ADMIN = "admin"
READ_ONLY = "read-only"


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    roles: frozenset[str] = field(default_factory=frozenset)
    verified: bool = False

    def has_role(self, role: str) -> bool:
        return role in self.roles or ADMIN in self.roles


def caller_name(*, identity: Identity | None, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The name access rules apply to: a verified subject first, then the declared caller."""
    if identity is not None and identity.verified:
        return identity.subject
    declared = headers.get(CALLER_HEADER) or query.get(CALLER_PARAMETER)
    return declared.strip() or None if declared else None
