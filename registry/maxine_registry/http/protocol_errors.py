"""
aiohttp's own protocol errors, answered in Maxine's JSON shape.

A connection the lightning path hands over is served by aiohttp from then on. aiohttp refuses a
request it cannot parse (a bad chunk size, a malformed header) before any route or middleware runs,
with a plain-text page and an ERROR log line with a traceback. Here that refusal becomes the JSON
error every other refusal is, and the log gets one debug line.

Kept apart from the lightning module, which is compiled in a wheel: this class extends aiohttp's
handler, which a compiled class cannot.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from maxine_registry.errors import MaxineError
from maxine_registry.operations import error_body

logger = logging.getLogger(__name__)

HEADERS_TOO_LARGE = "The request headers are too large."
# A parser's complaint is quoted up to this many characters: it may hold what the client sent.
MAX_ERROR_DETAIL = 200


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own protocol errors in Maxine's JSON shape."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("The answer has begun; no error can be sent any more.")
        if isinstance(exc, LineTooLong):
            # The same refusal as the lean path's, and without aiohttp's echo of the header (a token, say).
            error = MaxineError(HEADERS_TOO_LARGE, code="headers_too_large", status=431)
        else:
            # The first line of aiohttp's own message: the lines after it quote the offending bytes
            # back, which may be part of a secret.
            text = str(getattr(exc, "message", None) or exc or message or HTTPStatus(status).phrase)
            detail = next((line.strip() for line in text.splitlines() if line.strip()), "").rstrip(":")
            detail = detail[:MAX_ERROR_DETAIL] or HTTPStatus(status).phrase
            error = MaxineError(f"The request is malformed: {detail}.", code="bad_request", status=status)
        # The log gets what the client gets, never the bytes it sent.
        logger.debug("Refused a malformed request from %s: %s", request.remote, error.message)
        # TODO: LATER: the status line says HTTP/1.0: aiohttp answers with the version of the stand-in
        # request it makes for a head it could not parse, and offers no way to set it here.
        response = web.Response(status=error.status, body=error_body(error), content_type="application/json")
        response.force_close()
        return response


def json_error_protocol(server: web.Server) -> RequestHandler:
    """An aiohttp connection handler for ``server``, as ``server()`` would make, with JSON protocol errors."""
    return JsonErrorRequestHandler(server, loop=server._loop, **server._kwargs)
