"""
The aiohttp application: routes, body limits, and errors rendered as JSON.

Handlers are thin: read the body or query, call ``Operations``, write the reply. The one
middleware counts requests and turns every failure into the registry's JSON error shape,
including aiohttp's own (unknown route, wrong method, body too large), so no client ever
receives an HTML error page or a traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from aiohttp import web

from maxine_registry.errors import MaxineError
from maxine_registry.http import (
    admin,
    audit,
    auth,
    configs,
    dashboard,
    dependencies,
    federation,
    governance,
    graphql,
    mesh,
    persistence,
    prometheus,
    traces,
    websocket,
)
from maxine_registry.http.common import (
    HTTP_ERROR_CODES,
    OPERATIONS_KEY,
    SERVICEOPS_PREFIX,
    Handler,
    error_response,
    read_json,
    request_caller,
    respond,
)
from maxine_registry.http.proxy import install_proxy
from maxine_registry.operations import Operations
from maxine_registry.tracing import TracingConfig

logger = logging.getLogger(__name__)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    stats = request.app[OPERATIONS_KEY].stats
    stats.requests += 1
    try:
        return await handler(request)
    except MaxineError as error:
        stats.errors += 1
        response = error_response(error)
        if error.status == 408:
            # The rest of the body may still come; the connection cannot be read as requests any more.
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        stats.errors += 1
        if exc.status == 413:
            limit = request.app[OPERATIONS_KEY].settings.max_body_bytes
            message = f"The request body exceeds the limit of {limit} bytes."
        else:
            message = f"{exc.reason}: {request.method} {request.path}."
        http_error = MaxineError(message, code=HTTP_ERROR_CODES.get(exc.status, "http_error"), status=exc.status)
        response = error_response(http_error)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except ConnectionError:
        # The client went away mid-request (a body cut short, a reset): nothing to answer, nothing
        # wrong with the server. The answer goes nowhere; it only lets aiohttp close the connection quietly.
        stats.errors += 1
        logger.debug("The client of %s %s hung up before its request was complete.", request.method, request.path)
        response = web.Response(status=400)
        response.force_close()
        return response
    except Exception:
        stats.errors += 1
        logger.exception("Request %s %s failed unexpectedly.", request.method, request.path)
        return error_response(MaxineError("The registry failed to handle this request; it is logged."))


# Handlers: parse, call the core, render.


async def register(request: web.Request) -> web.Response:
    body = await read_json(request)
    return respond(request.app[OPERATIONS_KEY].register(body))


async def heartbeat(request: web.Request) -> web.Response:
    body = await read_json(request)
    return respond(request.app[OPERATIONS_KEY].heartbeat(body, request.query))


async def deregister(request: web.Request) -> web.Response:
    body = await read_json(request)
    return respond(request.app[OPERATIONS_KEY].deregister(body, request.query))


async def discover(request: web.Request) -> web.Response:
    operations = request.app[OPERATIONS_KEY]
    forwarded_for = request.headers.get("X-Forwarded-For")
    reply = operations.discover(
        request.query, client_ip=request.remote, forwarded_for=forwarded_for, caller=request_caller(request)
    )
    return respond(reply)


async def record_response_time(request: web.Request) -> web.Response:
    body = await read_json(request)
    return respond(request.app[OPERATIONS_KEY].record_response_time(body))


async def circuit_breaker(request: web.Request) -> web.Response:
    return respond(request.app[OPERATIONS_KEY].circuit_breaker(request.match_info["nodeId"]))


async def anomalies(request: web.Request) -> web.Response:
    return respond(request.app[OPERATIONS_KEY].anomalies())


async def traffic(request: web.Request) -> web.Response:
    return respond(request.app[OPERATIONS_KEY].traffic(request.query))


async def set_traffic(request: web.Request) -> web.Response:
    body = await read_json(request)
    return respond(request.app[OPERATIONS_KEY].set_traffic(body))


async def clear_traffic(request: web.Request) -> web.Response:
    return respond(request.app[OPERATIONS_KEY].clear_traffic(request.query))


async def shift_traffic(request: web.Request) -> web.Response:
    body = await read_json(request)
    return respond(request.app[OPERATIONS_KEY].shift_traffic(body))


async def promote(request: web.Request) -> web.Response:
    body = await read_json(request)
    return respond(request.app[OPERATIONS_KEY].promote(body))


async def retire(request: web.Request) -> web.Response:
    body = await read_json(request)
    return respond(request.app[OPERATIONS_KEY].retire(body))


async def servers(request: web.Request) -> web.Response:
    return respond(request.app[OPERATIONS_KEY].servers())


async def versions(request: web.Request) -> web.Response:
    return respond(request.app[OPERATIONS_KEY].versions(request.query))


async def health(request: web.Request) -> web.Response:
    return respond(request.app[OPERATIONS_KEY].health())


async def metrics(request: web.Request) -> web.Response:
    # A Prometheus scraper asks for its own format; everyone else gets the contract's JSON.
    if prometheus.wants_exposition(request):
        return prometheus.exposition_response(request)
    return respond(request.app[OPERATIONS_KEY].metrics())


async def events(request: web.Request) -> web.Response:
    return respond(request.app[OPERATIONS_KEY].events(request.query))


# Both surfaces of the contract serve these.
SERVICE_ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/register", register),
    ("GET", "/discover", discover),
    ("POST", "/heartbeat", heartbeat),
    ("PUT", "/heartbeat", heartbeat),
    ("DELETE", "/deregister", deregister),
    ("GET", "/servers", servers),
    ("GET", "/versions", versions),
    ("POST", "/record-response-time", record_response_time),
    ("GET", "/circuit-breaker/{nodeId}", circuit_breaker),
    ("GET", "/anomalies", anomalies),
    ("GET", "/traffic", traffic),
    ("POST", "/traffic/set", set_traffic),
    ("DELETE", "/traffic", clear_traffic),
    ("POST", "/traffic/shift", shift_traffic),
    ("POST", "/version/promote", promote),
    ("POST", "/version/retire", retire),
]

ROOT_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/health", health),
    ("GET", "/metrics", metrics),
    ("GET", "/events", events),
]


def _mqtt(app: web.Application, operations: Operations) -> None:
    # MQTT's client library is loaded only when publishing is on.
    if operations.settings.mqtt_enabled:
        from maxine_registry import mqtt  # noqa: PLC0415

        mqtt.setup(app, operations)


def _tracing(app: web.Application, operations: Operations) -> None:
    # OpenTelemetry is loaded only when tracing is configured; off, it costs neither time nor memory.
    if TracingConfig.from_environment(settings=operations.settings, environ=os.environ).enabled:
        from maxine_registry.http import tracing  # noqa: PLC0415

        tracing.setup(app, operations)


# Each feature module adds its routes, middlewares, startup and cleanup to the app, and its
# guards to the operations. Order matters only for middlewares (auth before rate limits).
Feature = Callable[[web.Application, Operations], None]
FEATURES: list[Feature] = [
    auth.setup,
    install_proxy,
    governance.setup,
    websocket.setup,
    dashboard.setup,
    _mqtt,
    configs.setup,
    dependencies.setup,
    graphql.setup,
    traces.setup,
    audit.setup,
    prometheus.setup,
    _tracing,
    admin.setup,
    mesh.setup,
    persistence.setup,
    federation.setup,
]


def has_request_middleware(app: web.Application) -> bool:
    """Does a feature wrap requests (auth, rate limits, tracing)? Then only aiohttp may serve them."""
    return any(middleware is not json_errors for middleware in app.middlewares)


def create_app(operations: Operations) -> web.Application:
    app = web.Application(client_max_size=operations.settings.max_body_bytes, middlewares=[json_errors])
    app[OPERATIONS_KEY] = operations
    for feature in FEATURES:
        feature(app, operations)
    for method, path, handler in SERVICE_ROUTES:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, SERVICEOPS_PREFIX + path, handler)
    for method, path, handler in ROOT_ROUTES:
        app.router.add_route(method, path, handler)
    _answer_head_like_get(app)
    return app


def _answer_head_like_get(app: web.Application) -> None:
    """Answer HEAD wherever GET is served, as HTTP expects: aiohttp sends the head of the GET answer."""
    for resource in app.router.resources():
        if not isinstance(resource, web.Resource):  # static folders and sub-apps answer HEAD their own way
            continue
        methods = {route.method: route for route in resource}
        if "GET" in methods and "HEAD" not in methods and "*" not in methods:
            resource.add_route("HEAD", methods["GET"].handler)
