"""
The federation endpoints, and the middleware that asks peers on a miss and replicates writes to them.

``GET /api/maxine/serviceops/federation`` lists the peers with their replication counters;
``POST .../federation/add`` ``{"name", "url"}`` adds one and ``POST .../federation/remove``
``{"name"}`` removes one. With ``FEDERATION_ENABLED`` off, the list says so and the writes answer
409 ``federation_disabled``.

With federation on, a middleware watches the registry's own routes (either surface): a discover
that misses (404 ``service_not_found``) is tried on the peers (see ``federation``) and answered
with the first peer's instance, marked by ``X-Maxine-Peer``; a register, deregister or heartbeat
that succeeded is queued for the peers. Requests that carry ``X-Maxine-Federated`` come from a
peer: they are answered from here only and never passed on. Being a middleware, it sends every
request through aiohttp: the lightning path does not serve hot routes while federation is on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from maxine_registry.errors import InvalidInput, NotFound
from maxine_registry.federation import (
    DEREGISTER,
    FEDERATED_HEADER,
    HEARTBEAT,
    PEER_HEADER,
    REGISTER,
    Federation,
)
from maxine_registry.http.common import JSON, SERVICEOPS_PREFIX, Handler, read_json, request_caller, respond
from maxine_registry.operations import Operations, ok
from maxine_registry.settings import parse_peer_list

logger = logging.getLogger(__name__)

FEDERATION_KEY = web.AppKey("federation", Federation)
WRITES = {("POST", "/register"): REGISTER, ("DELETE", "/deregister"): DEREGISTER}
HEARTBEAT_METHODS = frozenset({"POST", "PUT"})


def _route(path: str) -> str:
    """The route on the root surface: ``/api/maxine/serviceops/discover`` is ``/discover``."""
    return path.removeprefix(SERVICEOPS_PREFIX) or "/"


def _node_id(response: web.StreamResponse) -> str | None:
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    node_id = document.get("nodeId") if isinstance(document, dict) else None
    return node_id if isinstance(node_id, str) else None


def federation_middleware(federation: Federation) -> Middleware:
    @web.middleware
    async def federated(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route(request.path)
        from_peer = FEDERATED_HEADER in request.headers
        if route == "/discover" and request.method == "GET":
            try:
                return await handler(request)
            except NotFound as miss:
                if from_peer or miss.code != "service_not_found":
                    raise
                found = await federation.lookup(request.query, caller=request_caller(request))
                if found is None:
                    raise
                peer_name, body = found
                return web.Response(body=body, content_type=JSON, headers={PEER_HEADER: peer_name})

        operation = WRITES.get((request.method, route))
        if operation is None and route == "/heartbeat" and request.method in HEARTBEAT_METHODS:
            operation = HEARTBEAT
        response = await handler(request)
        if operation is not None and not from_peer and response.status == 200:
            node_id = _node_id(response)
            if node_id is not None:
                if operation == HEARTBEAT:
                    federation.note_heartbeat(node_id)
                else:
                    federation.replicate(operation, node_id)
        return response

    return federated


async def list_peers(request: web.Request) -> web.Response:
    return respond(ok(request.app[FEDERATION_KEY].view()))


async def add_peer(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object with a name and a url.")
    peer = request.app[FEDERATION_KEY].add(name=body.get("name"), url=body.get("url"))
    return respond(ok({**peer.view(), "added": True}))


async def remove_peer(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object with the name of a peer.")
    peer = await request.app[FEDERATION_KEY].remove(body.get("name"))
    return respond(ok({"name": peer.name, "removed": True}))


def setup(app: web.Application, operations: Operations) -> None:
    settings = operations.settings
    federation = Federation(
        registry=operations.registry,
        origin_id=operations.instance_id,
        timeout=settings.federation_timeout / 1000,
        enabled=settings.federation_enabled,
    )
    app[FEDERATION_KEY] = federation
    app.router.add_get(SERVICEOPS_PREFIX + "/federation", list_peers)
    app.router.add_post(SERVICEOPS_PREFIX + "/federation/add", add_peer)
    app.router.add_post(SERVICEOPS_PREFIX + "/federation/remove", remove_peer)
    if not settings.federation_enabled:
        return

    federation.add_configured(parse_peer_list(settings.federation_peers))
    app.middlewares.append(federation_middleware(federation))

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        await federation.start()
        try:
            yield
        finally:
            await federation.stop()

    app.cleanup_ctx.append(lifespan)
