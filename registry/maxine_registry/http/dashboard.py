"""
The dashboard: one HTML page, its script and style, and the compact state it draws.

Everything the page needs is served by Maxine itself (no CDN, no third-party script), from files
packaged under ``http/static/dashboard`` and read once at start. The page asks ``/dashboard/state``
for counters and the table of services, nodes, health and breaker states, seeds its event feed from
``/events``, and then follows the event WebSocket at the server root; with auth on, its token goes
in the first WebSocket message, since a browser cannot send a header with a WebSocket.
The state is capped (``MAX_DASHBOARD_SERVICES``, ``MAX_DASHBOARD_NODES``) so that a huge registry
cannot make one dashboard request expensive; counters always cover the whole registry.

The page is sent with a strict Content-Security-Policy: its own origin only.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from maxine_registry import __version__
from maxine_registry.breakers import CLOSED
from maxine_registry.http.common import JSON, OPERATIONS_KEY
from maxine_registry.http.websocket import HUB_KEY
from maxine_registry.model import Instance
from maxine_registry.operations import Operations

logger = logging.getLogger(__name__)

# TODO: LATER: page through larger registries; past these the table shows the first ones by name.
MAX_DASHBOARD_SERVICES = 500
MAX_DASHBOARD_NODES = 2000

# The page's files: name -> content type. Nothing else under the folder is served.
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
PAGE = "index.html"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read_static() -> dict[str, bytes]:
    folder = resources.files("maxine_registry.http").joinpath("static", "dashboard")
    return {name: folder.joinpath(name).read_bytes() for name in (PAGE, *ASSETS)}


def node_view(instance: Instance, *, expires_in: float) -> dict[str, Any]:
    runtime = instance.runtime
    breaker = runtime.breaker if runtime is not None else None
    return {
        "nodeId": instance.node_id,
        "address": instance.address,
        "version": instance.version,
        "tags": sorted(instance.tags),
        "healthy": instance.healthy,
        "circuitBreaker": breaker.state if breaker is not None else CLOSED,
        "expiresIn": round(max(expires_in, 0.0), 1),
        "averageResponseTime": (
            round(runtime.ewma_ms, 1) if runtime is not None and runtime.ewma_ms is not None else None
        ),
    }


def dashboard_state(
    operations: Operations, *, websocket: dict[str, Any] | None, mqtt: dict[str, Any] | None
) -> dict[str, Any]:
    """Counters over the whole registry, and the first services and nodes by name for the table."""
    registry = operations.registry
    now = registry.clock()

    services: list[dict[str, Any]] = []
    listed_nodes = 0
    healthy = 0
    open_breakers = 0
    truncated = False
    for service in sorted(registry.services(), key=lambda service: service.name):
        for instance in service.instances.values():
            healthy += instance.healthy
            runtime = instance.runtime
            if runtime is not None and runtime.breaker is not None and runtime.breaker.state != CLOSED:
                open_breakers += 1
        if len(services) >= MAX_DASHBOARD_SERVICES or listed_nodes >= MAX_DASHBOARD_NODES:
            truncated = True
            continue
        room = MAX_DASHBOARD_NODES - listed_nodes
        instances = sorted(service.instances.values(), key=lambda instance: instance.node_id)[:room]
        truncated = truncated or len(instances) < len(service.instances)
        listed_nodes += len(instances)
        services.append(
            {
                "name": service.name,
                "revision": service.revision,
                "nodeCount": len(service.instances),
                "nodes": [node_view(instance, expires_in=instance.expires_at - now) for instance in instances],
            }
        )

    return {
        "instanceId": operations.instance_id,
        "version": __version__,
        "uptime": round(operations.stats.uptime, 1),
        "serviceCount": registry.service_count,
        "nodeCount": registry.node_count,
        "healthyNodes": healthy,
        "openBreakers": open_breakers,
        "wsConnections": operations.stats.ws_connections,
        "eventsPublished": registry.events.published,
        "requests": operations.stats.requests,
        "errors": operations.stats.errors,
        "authRequired": operations.authenticator is not None,
        "websocket": websocket,
        "mqtt": mqtt,
        "services": services,
        "truncated": truncated,
    }


class Dashboard:
    def __init__(self) -> None:
        self.files = _read_static()

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files[PAGE], content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name], content_type=ASSETS[name], charset="utf-8", headers=PAGE_HEADERS)

    async def state(self, request: web.Request) -> web.Response:
        hub = request.app.get(HUB_KEY)
        operations = request.app[OPERATIONS_KEY]
        mqtt = None
        if operations.settings.mqtt_enabled:
            # The MQTT module (and its client library) is loaded only where publishing is on.
            from maxine_registry.mqtt import MQTT_KEY  # noqa: PLC0415

            publisher = request.app.get(MQTT_KEY)
            mqtt = publisher.view() if publisher is not None else None
        state = dashboard_state(operations, websocket=hub.view() if hub is not None else None, mqtt=mqtt)
        return web.Response(body=orjson.dumps(state), content_type=JSON, headers={"Cache-Control": "no-store"})


def setup(app: web.Application, operations: Operations) -> None:
    dashboard = Dashboard()
    app.router.add_get("/dashboard", dashboard.page)
    app.router.add_get("/dashboard/state", dashboard.state)
    app.router.add_get("/dashboard/assets/{name}", dashboard.asset)
