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
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from maxine_registry.http.common import Handler
from maxine_registry.operations import Operations

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from maxine_registry.prometheus import RequestMetrics


class LazyCollectors:
    """
    The collector registry, built by the first scrape.

    prometheus-client costs about 10 MiB; a registry nobody scrapes never loads it, unless per-route
    request metrics are on (then the middleware needs it from the start).
    """

    def __init__(self, *, operations: Operations, requests: RequestMetrics | None) -> None:
        self._operations = operations
        self._requests = requests
        self._collectors: CollectorRegistry | None = None

    def get(self) -> CollectorRegistry:
        if self._collectors is None:
            from maxine_registry.prometheus import build_collector_registry  # noqa: PLC0415

            self._collectors = build_collector_registry(self._operations, requests=self._requests)
        return self._collectors


PROMETHEUS_KEY = web.AppKey("prometheus", LazyCollectors)


def wants_exposition(request: web.Request) -> bool:
    return prefers_exposition(request.headers.get("Accept"))


def exposition_response(request: web.Request) -> web.Response:
    from maxine_registry.prometheus import render  # noqa: PLC0415

    body, content_type = render(request.app[PROMETHEUS_KEY].get(), accept=request.headers.get("Accept"))
    response = web.Response(body=body)
    # The content type carries version and escaping parameters that aiohttp's content_type setter would refuse.
    response.headers["Content-Type"] = content_type
    return response


def _quality(accept: str, wanted: tuple[str, ...]) -> float:
    best = 0.0
    for item in accept.split(","):
        media_type, *parameters = (part.strip() for part in item.split(";"))
        if media_type.lower() not in wanted:
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best = max(best, quality)
    return best


def prefers_exposition(accept: str | None) -> bool:
    """
    Does an Accept header prefer Prometheus text or OpenMetrics to JSON?

    A scraper sends ``application/openmetrics-text;...;q=0.5,text/plain;...;q=0.3,*/*;q=0.2``:
    its best Prometheus type beats what it would give JSON (``*/*``). A browser, curl, or a
    client that names JSON keeps the contract's JSON; a tie goes to JSON too.
    """
    if not accept:
        return False
    exposition = _quality(accept, ("text/plain", "application/openmetrics-text"))
    json = max(_quality(accept, ("application/json",)), _quality(accept, ("*/*", "application/*")))
    return exposition > json


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
    requests = None
    if operations.settings.http_metrics:
        from maxine_registry.prometheus import RequestMetrics  # noqa: PLC0415

        requests = RequestMetrics()
    app[PROMETHEUS_KEY] = LazyCollectors(operations=operations, requests=requests)
    app.router.add_route("GET", "/metrics/prometheus", prometheus_metrics)
    if requests is not None:
        # Outermost, ahead of json_errors, so it counts the status the client really gets.
        app.middlewares.insert(0, metrics_middleware(requests))
