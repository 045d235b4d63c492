"""
The errors a client call raises: one base class, and a subclass for each answer a program acts on.

The registry answers every refusal as ``{"error": "<sentence>", "code": "<snake_case>"}``. The
client keeps both, plus the HTTP status, and picks the class from the code first and the status
second, so that ``except NotRegistered`` catches exactly "register again" and ``except NotFound``
catches every 404. ``RegistryUnreachable`` is different in kind: no answer came at all, after every
retry the policy allowed.
"""

from __future__ import annotations

from typing import Any

import orjson

# Longest piece of a body that is not Maxine's JSON that goes into an error message.
_MAX_QUOTED_BODY = 200


class MaxineError(Exception):
    """A request the registry refused or could not serve; ``status`` and ``code`` say how."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"

    def __str__(self) -> str:
        return self.message


class NotFound(MaxineError):
    """404: the service, the node or the route does not exist."""


class NotRegistered(NotFound):
    """404 ``not_registered``: the registry does not know this node (it expired or the registry restarted)."""


class Unavailable(MaxineError):
    """503: the registry cannot serve this now, e.g. a service with no healthy instance, or a full registry."""


class RegistryUnreachable(MaxineError):
    """No answer from the registry: every attempt failed to connect, was cut off, or timed out."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message, status=None, code="unreachable")
        self.attempts = attempts


def error_from_response(*, status: int, body: bytes, what: str) -> MaxineError:
    """The error for a refusal, from the registry's JSON body or, failing that, from the status alone."""
    code, reason = _read_error_body(body)
    if code is None:
        code = f"http_{status}"
    message = f"{what} failed with {status} {code}: {reason}"

    if code == "not_registered":
        return NotRegistered(message, status=status, code=code)
    if status == 404:
        return NotFound(message, status=status, code=code)
    if status == 503:
        return Unavailable(message, status=status, code=code)
    return MaxineError(message, status=status, code=code)


def _read_error_body(body: bytes) -> tuple[str | None, str]:
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        code = document.get("code")
        return (code if isinstance(code, str) else None), document["error"]

    # Not the registry's shape: a proxy's page, or another server on that port. Quote a little of it.
    text = body[:_MAX_QUOTED_BODY].decode("utf-8", errors="replace").strip()
    return None, (f"the response body was {text!r}." if text else "the response had no body.")
