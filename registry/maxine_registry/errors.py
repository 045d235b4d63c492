"""
The errors the registry core raises, each carrying its HTTP status and a machine code.

Every transport (HTTP, the lightning path, gRPC, UDP) renders the same error the same way:
``{"error": "<sentence for a person>", "code": "<snake_case for a program>"}`` with the status
below. The core raises these before it changes any state, so a refused request never leaves a
half-applied change behind.
"""

from __future__ import annotations


class MaxineError(Exception):
    """A refusal the client should see, with the HTTP status that fits it."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # For refusals that have no class of their own (a protocol error, an aiohttp status).
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"

    def as_dict(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


class InvalidInput(MaxineError):
    """The request is malformed: a missing field, a value of the wrong type or out of range."""

    status = 400
    code = "invalid_input"


class Unauthorized(MaxineError):
    status = 401
    code = "unauthorized"


class Forbidden(MaxineError):
    status = 403
    code = "forbidden"


class NotFound(MaxineError):
    status = 404
    code = "not_found"


class NotRegistered(NotFound):
    """The node is unknown: it expired, was deregistered, or the registry restarted. Register again."""

    code = "not_registered"


class NoInstance(NotFound):
    """The service exists in no form that can serve this request."""

    code = "no_instance"


class Conflict(MaxineError):
    status = 409
    code = "conflict"


class PayloadTooLarge(MaxineError):
    status = 413
    code = "payload_too_large"


class RateLimited(MaxineError):
    status = 429
    code = "rate_limited"


class Unavailable(MaxineError):
    status = 503
    code = "unavailable"


class BadGateway(MaxineError):
    """The instance a request was forwarded to refused it, hung up, or answered with something that is not HTTP."""

    status = 502
    code = "bad_gateway"


class GatewayTimeout(MaxineError):
    """The instance a request was forwarded to did not answer in time."""

    status = 504
    code = "gateway_timeout"
