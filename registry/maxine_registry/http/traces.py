"""The trace endpoints, on both surfaces: ``POST /trace/start|event|end`` and ``GET /trace/{id}``."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from maxine_registry.errors import InvalidInput
from maxine_registry.http.common import SERVICEOPS_PREFIX, Handler, read_json, respond
from maxine_registry.operations import Operations, ok
from maxine_registry.traces import TraceStore, parse_event, parse_operation, parse_trace_id

logger = logging.getLogger(__name__)

TRACE_STORE_KEY = web.AppKey("trace_store", TraceStore)


async def _body(request: web.Request, fields: str) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput(f"The body must be a JSON object with {fields}.")
    return body


async def start_trace(request: web.Request) -> web.Response:
    body = await _body(request, "id and operation")
    store = request.app[TRACE_STORE_KEY]
    trace = store.start(parse_trace_id(body.get("id")), parse_operation(body.get("operation")))
    return respond(ok(store.view(trace), status=201))


async def add_trace_event(request: web.Request) -> web.Response:
    body = await _body(request, "id and event")
    store = request.app[TRACE_STORE_KEY]
    trace_id = parse_trace_id(body.get("id"))
    event = parse_event(body.get("event"))
    return respond(ok(store.view(store.add_event(trace_id, event))))


async def end_trace(request: web.Request) -> web.Response:
    body = await _body(request, "id")
    store = request.app[TRACE_STORE_KEY]
    return respond(ok(store.view(store.end(parse_trace_id(body.get("id"))))))


async def get_trace(request: web.Request) -> web.Response:
    store = request.app[TRACE_STORE_KEY]
    return respond(ok(store.view(store.get(parse_trace_id(request.match_info["traceId"])))))


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/trace/start", start_trace),
    ("POST", "/trace/event", add_trace_event),
    ("POST", "/trace/end", end_trace),
    ("GET", "/trace/{traceId}", get_trace),
]


def setup(app: web.Application, operations: Operations) -> None:
    registry = operations.registry
    app[TRACE_STORE_KEY] = TraceStore(clock=registry.clock, wall=registry.wall)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, SERVICEOPS_PREFIX + path, handler)
