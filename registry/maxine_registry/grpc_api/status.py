"""
How a refusal travels over gRPC: a status code chosen from the HTTP status, and Maxine's code alongside.

The core raises one ``MaxineError`` whatever the transport. Over gRPC it ends the call with the
status code that means the same as its HTTP status, the error's sentence as the details, and the
machine code in the trailing metadata (``maxine-code``), with the HTTP status (``maxine-status``)
for clients that want to share handling with the HTTP API. A status code alone would lose the
difference between, say, ``not_registered`` and ``service_not_found``, which are both NOT_FOUND.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from maxine_registry.errors import MaxineError

CODE_KEY = "maxine-code"
STATUS_KEY = "maxine-status"

# 409: Maxine's conflicts are requests that do not fit the current state (an ambiguous short
# node id, a rule that exists), which is FAILED_PRECONDITION rather than ALREADY_EXISTS.
# 413: a value above a documented limit is a bad argument, not an exhausted resource that
# retrying later could cure; gRPC's own message-size limit still answers RESOURCE_EXHAUSTED.
GRPC_STATUS_BY_HTTP_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(error: MaxineError) -> grpc.StatusCode:
    return GRPC_STATUS_BY_HTTP_STATUS.get(error.status, grpc.StatusCode.UNKNOWN)


def trailing_metadata(error: MaxineError) -> tuple[tuple[str, str], ...]:
    return ((CODE_KEY, error.code), (STATUS_KEY, str(error.status)))


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: MaxineError) -> NoReturn:
    """End the call with ``error``: its status code, its sentence, and its codes as trailing metadata."""
    await context.abort(grpc_status(error), error.message, trailing_metadata(error))
