"""
Spans for HTTP requests and the registry operations they carry.

Every request gets a server span named ``METHOD /route/pattern`` (the pattern, not the raw path,
so span names stay few), continuing the caller's trace when it sent a W3C ``traceparent`` header.
Register, discover and deregister (on both surfaces) get a child span of their own named after
the operation: ``discover`` carries the service, the strategy (``maxine.strategy``) and the node
it chose (``maxine.node_id``), read from the request's query and the answer, so the registry
core's hot loop knows nothing about tracing.

The middleware sits outside ``json_errors``, so a span's status code is the one the client got.
Server spans are errors for 5xx only (a 404 is the client's business); operation spans are
errors whenever the operation failed. Without tracing configured nothing is installed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from maxine_registry import __version__
from maxine_registry.http.common import JSON, SERVICEOPS_PREFIX, Handler
from maxine_registry.operations import Operations
from maxine_registry.strategies import DEFAULT_STRATEGY
from maxine_registry.tracing import TracingConfig, build_tracer_provider

logger = logging.getLogger(__name__)

TRACER_NAME = "maxine_registry"
# Route patterns (without the serviceops prefix) whose handling is a registry operation of this name.
OPERATION_ROUTES = {"/register": "register", "/discover": "discover", "/deregister": "deregister"}
# Answers larger than this are not read for span attributes.
MAX_ATTRIBUTE_SCAN_BYTES = 16 * 1024


def _answer(response: web.StreamResponse) -> dict[str, Any]:
    if not isinstance(response, web.Response) or response.content_type != JSON:
        return {}
    body = response.body
    if not isinstance(body, bytes) or len(body) > MAX_ATTRIBUTE_SCAN_BYTES:
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def _describe_operation(span: trace.Span, name: str, request: web.Request, response: web.StreamResponse) -> None:
    answer = _answer(response)
    if name == "discover":
        span.set_attribute(
            "maxine.strategy", request.query.get("loadBalancing") or request.query.get("strategy") or DEFAULT_STRATEGY
        )
    service = request.query.get("serviceName") or answer.get("serviceName")
    if isinstance(service, str):
        span.set_attribute("maxine.service", service)
    if response.status < 400 and isinstance(answer.get("nodeId"), str):
        span.set_attribute("maxine.node_id", answer["nodeId"])
    if response.status >= 400:
        code = answer.get("code")
        span.set_status(Status(StatusCode.ERROR, code if isinstance(code, str) else None))
        if isinstance(code, str):
            span.set_attribute("maxine.error_code", code)


def tracing_middleware(tracer: trace.Tracer) -> Middleware:
    propagator = TraceContextTextMapPropagator()

    @web.middleware
    async def trace_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        pattern = resource.canonical if resource is not None else None
        attributes: dict[str, str | int] = {"http.request.method": request.method, "url.path": request.path}
        if pattern is not None:
            attributes["http.route"] = pattern
        if request.remote:
            attributes["client.address"] = request.remote

        parent = propagator.extract(carrier=request.headers)
        name = f"{request.method} {pattern}" if pattern is not None else request.method
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes) as span:
            operation = OPERATION_ROUTES.get(pattern.removeprefix(SERVICEOPS_PREFIX)) if pattern is not None else None
            try:
                if operation is None:
                    response = await handler(request)
                else:
                    with tracer.start_as_current_span(operation, kind=SpanKind.INTERNAL) as operation_span:
                        response = await handler(request)
                        _describe_operation(operation_span, operation, request, response)
            except web.HTTPException as exc:
                span.set_attribute("http.response.status_code", exc.status)
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    return trace_requests


def install(app: web.Application, *, tracer_provider: TracerProvider, owns_provider: bool = True) -> None:
    """
    Trace this app's requests with ``tracer_provider``.

    ``owns_provider`` shuts the provider down (flushing what is queued) when the app stops; tests
    that bring their own provider and read its spans afterwards pass False.
    """
    tracer = tracer_provider.get_tracer(TRACER_NAME, __version__)
    # Outermost, ahead of json_errors: the span must cover the whole request and see the real status.
    app.middlewares.insert(0, tracing_middleware(tracer))
    if owns_provider:

        async def shut_down(app: web.Application) -> None:
            # Flushing may wait for the exporter's HTTP request: not on the event loop.
            await asyncio.to_thread(tracer_provider.shutdown)

        app.on_cleanup.append(shut_down)


def setup(app: web.Application, operations: Operations) -> None:
    config = TracingConfig.from_environment(settings=operations.settings, environ=os.environ)
    if not config.enabled:
        return
    install(app, tracer_provider=build_tracer_provider(config))
    logger.info(
        "Tracing is on.",
        extra={"exporters": sorted(config.exporters), "endpoint": config.endpoint, "service": config.service_name},
    )
