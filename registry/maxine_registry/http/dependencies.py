"""
The dependency endpoints under ``/api/maxine/serviceops/dependency/``, and the dependency graph page.

The page (``GET /dependency-graph``) is a static HTML document with its own script and style
sheet, shipped inside the package and served from memory. It draws the graph from the JSON
endpoints here, needs nothing from any other host, and is served with a Content-Security-Policy
that holds it to that.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from aiohttp import web

from maxine_registry.dependencies import DependencyGraph
from maxine_registry.errors import InvalidInput
from maxine_registry.http.common import SERVICEOPS_PREFIX, Handler, read_json, respond
from maxine_registry.model import validate_service_name
from maxine_registry.operations import Operations, ok

logger = logging.getLogger(__name__)

DEPENDENCY_GRAPH_KEY = web.AppKey("dependency_graph", DependencyGraph)
PAGE_PATH = "/dependency-graph"
# Path after ``/dependency-graph`` -> (file in the package's ``static/dependency-graph`` folder, content type).
PAGE_FILES = {
    "": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
# Only Maxine itself: no CDN, no inline script; ``data:`` for the empty favicon, ``blob:`` for exports.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _edge(body: object) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object with serviceName and dependsOn.")
    return validate_service_name(body.get("serviceName")), validate_service_name(
        body.get("dependsOn"), field="dependsOn"
    )


async def add_dependency(request: web.Request) -> web.Response:
    service_name, depends_on = _edge(await read_json(request))
    graph = request.app[DEPENDENCY_GRAPH_KEY]
    added = graph.add(service_name, depends_on)
    return respond(
        ok(
            {
                "serviceName": service_name,
                "dependsOn": depends_on,
                "added": added,
                "dependencies": graph.dependencies(service_name),
            }
        )
    )


async def remove_dependency(request: web.Request) -> web.Response:
    service_name, depends_on = _edge(await read_json(request))
    graph = request.app[DEPENDENCY_GRAPH_KEY]
    graph.remove(service_name, depends_on)
    return respond(
        ok(
            {
                "serviceName": service_name,
                "dependsOn": depends_on,
                "removed": True,
                "dependencies": graph.dependencies(service_name),
            }
        )
    )


async def get_dependencies(request: web.Request) -> web.Response:
    service_name = validate_service_name(request.query.get("serviceName"))
    dependencies = request.app[DEPENDENCY_GRAPH_KEY].dependencies(service_name)
    return respond(ok({"serviceName": service_name, "dependencies": dependencies}))


async def get_dependents(request: web.Request) -> web.Response:
    service_name = validate_service_name(request.query.get("serviceName"))
    dependents = request.app[DEPENDENCY_GRAPH_KEY].dependents(service_name)
    return respond(ok({"serviceName": service_name, "dependents": dependents}))


async def get_graph(request: web.Request) -> web.Response:
    return respond(ok(request.app[DEPENDENCY_GRAPH_KEY].graph()))


async def get_cycles(request: web.Request) -> web.Response:
    return respond(ok(request.app[DEPENDENCY_GRAPH_KEY].cycles().view()))


async def get_impact(request: web.Request) -> web.Response:
    service_name = validate_service_name(request.query.get("serviceName"))
    impacted = request.app[DEPENDENCY_GRAPH_KEY].impact(service_name)
    document: dict[str, Any] = {"serviceName": service_name, "impacted": impacted, "count": len(impacted)}
    return respond(ok(document))


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/dependency/add", add_dependency),
    ("POST", "/dependency/remove", remove_dependency),
    ("DELETE", "/dependency/remove", remove_dependency),
    ("GET", "/dependency/get", get_dependencies),
    ("GET", "/dependency/dependents", get_dependents),
    ("GET", "/dependency/graph", get_graph),
    ("GET", "/dependency/cycles", get_cycles),
    ("GET", "/dependency/impact", get_impact),
]


def _static_handler(file_name: str, content_type: str) -> Handler:
    """A handler answering one packaged file, read once at startup."""
    body = resources.files("maxine_registry.http").joinpath("static", "dependency-graph", file_name).read_bytes()
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

    return serve


def setup(app: web.Application, operations: Operations) -> None:
    graph = DependencyGraph(events=operations.registry.events)
    app[DEPENDENCY_GRAPH_KEY] = graph
    operations.snapshot_parts["dependencies"] = graph
    for method, path, handler in ROUTES:
        app.router.add_route(method, SERVICEOPS_PREFIX + path, handler)
    for suffix, (file_name, content_type) in PAGE_FILES.items():
        app.router.add_get(PAGE_PATH + suffix, _static_handler(file_name, content_type))
