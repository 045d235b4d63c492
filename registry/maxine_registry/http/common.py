"""
What every HTTP handler shares: the operations key, reading JSON bodies, writing replies.

Feature modules import from here, never from ``app``, so that ``app`` can import every feature
module without a cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from maxine_registry.errors import MaxineError, PayloadTooLarge
from maxine_registry.identity import Identity, caller_name
from maxine_registry.operations import Operations, Reply, decode_body, error_body

JSON = "application/json"
OPERATIONS_KEY = web.AppKey("operations", Operations)
# What the HTTP layer keeps on a request: the verified identity (auth), the request's id and the
# detail of a security event (audit).
IDENTITY_KEY = web.RequestKey("identity", Identity)
REQUEST_ID_KEY = web.RequestKey("request_id", str)
AUDIT_DETAIL_KEY = web.RequestKey("audit_detail", dict[str, Any])
# The contract's second surface: the same operations under a prefix.
SERVICEOPS_PREFIX = "/api/maxine/serviceops"
# How long a request body may take to arrive once its head is in: the lean path's request timeout.
# TODO: LATER: aiohttp has no deadline for the head itself, so a client trickling headers to a
# route aiohttp serves holds its connection; only the lean path times out heads.
BODY_TIMEOUT = 10.0

HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "route_not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
}


def respond(reply: Reply) -> web.Response:
    return web.Response(body=reply.body, status=reply.status, content_type=JSON)


def error_response(error: MaxineError) -> web.Response:
    return web.Response(body=error_body(error), status=error.status, content_type=JSON)


async def read_json(request: web.Request) -> object:
    """The decoded body, or None when there is none; ``InvalidInput`` when it is not JSON."""
    limit = request.app[OPERATIONS_KEY].settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The request body is {request.content_length} bytes; the limit is {limit} bytes.")
    try:
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT)
    except TimeoutError:
        # TODO: LATER: the 408 leaves at once, but aiohttp then lingers up to 10 s reading what more
        # comes before it closes. Lingering protects early answers to clients still sending; a
        # per-answer switch would need aiohttp's protocol internals.
        raise MaxineError(
            f"The request body did not arrive within {BODY_TIMEOUT:g} s.", code="request_timeout", status=408
        ) from None
    return decode_body(raw)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_caller(request: web.Request) -> str | None:
    """The caller name for access rules: the verified identity, else what the caller declares."""
    return caller_name(identity=request.get(IDENTITY_KEY), headers=request.headers, query=request.query)
