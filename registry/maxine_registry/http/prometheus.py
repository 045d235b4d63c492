"""
Prometheus over HTTP: ``GET /metrics/prometheus``, and ``GET /metrics`` for a scraper that asks for it.

``GET /metrics`` keeps answering the contract's JSON; when the request's ``Accept`` header
prefers the Prometheus text format or OpenMetrics to JSON (as a Prometheus scraper's does), it
answers the exposition instead, so a scrape config can point at ``/metrics`` unchanged.

With ``HTTP_METRICS_ENABLED`` a middleware counts and times every request by route pattern. It
is off by default: any middleware sends every request through aiohttp, and the lightning path,
which answers the hot routes without aiohttp, stops serving. Without it the exposition still
has the registry's gauges, event counters and the all-transport request totals.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry

from maxine_registry.http.common import Handler
from maxine_registry.operations import Operations
from maxine_registry.prometheus import RequestMetrics, build_collector_registry, prefers_exposition, render

PROMETHEUS_KEY = web.AppKey("prometheus", CollectorRegistry)


def wants_exposition(request: web.Request) -> bool:
    return prefers_exposition(request.headers.get("Accept"))


def exposition_response(request: web.Request) -> web.Response:
    body, content_type = render(request.app[PROMETHEUS_KEY], accept=request.headers.get("Accept"))
    response = web.Response(body=body)
    # The content type carries version and escaping parameters that aiohttp's content_type setter would refuse.
    response.headers["Content-Type"] = content_type
    return response


async def prometheus_metrics(request: web.Request) -> web.Response:
    return exposition_response(request)


def metrics_middleware(metrics: RequestMetrics) -> Middleware:
    clock = time.perf_counter

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.observe(method=request.method, route=route, status=exc.status, seconds=clock() - started)
            raise
        metrics.observe(method=request.method, route=route, status=response.status, seconds=clock() - started)
        return response

    return count_requests


def setup(app: web.Application, operations: Operations) -> None:
    requests = RequestMetrics() if operations.settings.http_metrics else None
    app[PROMETHEUS_KEY] = build_collector_registry(operations, requests=requests)
    app.router.add_route("GET", "/metrics/prometheus", prometheus_metrics)
    if requests is not None:
        # Outermost, ahead of json_errors, so it counts the status the client really gets.
        app.middlewares.insert(0, metrics_middleware(requests))
