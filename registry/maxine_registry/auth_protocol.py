"""
The seam between transports and authentication.

Transports that need to know who is calling (the WebSocket's auth message, gRPC metadata, the
HTTP middleware) go through an ``Authenticator`` kept on ``Operations.authenticator``. It is None
when auth is off; then every request is anonymous and nothing is refused for want of a token.
"""

from __future__ import annotations

from typing import Protocol

from maxine_registry.identity import Identity


class Authenticator(Protocol):
    def verify(self, token: str) -> Identity:
        """The identity a token proves; raise ``Unauthorized`` for an expired, forged or malformed one."""

    def issue(self, identity: Identity) -> str:
        """A fresh token for an identity (sign-in and token refresh)."""
