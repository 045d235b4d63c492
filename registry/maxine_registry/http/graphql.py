"""
``/graphql``: POST runs a request, GET with ``?query=`` runs a query, GET without one serves the playground.

POST takes ``{"query", "variables"?, "operationName"?}`` as JSON and answers ``{"data", "errors"?}``
(``errors`` only when there are some, as the GraphQL specification has it). A request that cannot
run at all (not JSON, no query, a syntax error, an invalid or too large query) answers 400 with
the same shape; a query that runs answers 200 even when some fields failed, each failure in
``errors`` with ``extensions.code`` set to Maxine's error code. GET runs queries only.

The playground is a small offline page (a text area and a Run button) shipped in the package.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from maxine_registry.http.common import JSON, Handler, read_json, request_caller
from maxine_registry.operations import Operations

if TYPE_CHECKING:
    from maxine_registry.graphql_api import GraphQLApi, GraphQLReply, RequestContext

logger = logging.getLogger(__name__)


class LazyGraphQLApi:
    """The GraphQL API, built on first use: graphql-core costs about 10 MiB that most registries never need."""

    def __init__(self, *, operations: Operations) -> None:
        self._operations = operations
        self._api: GraphQLApi | None = None

    def execute(self, **arguments: Any) -> GraphQLReply:
        if self._api is None:
            from maxine_registry.graphql_api import GraphQLApi  # noqa: PLC0415

            self._api = GraphQLApi(operations=self._operations)
        return self._api.execute(**arguments)


GRAPHQL_KEY = web.AppKey("graphql", LazyGraphQLApi)


def request_error(message: str, *, code: str) -> GraphQLReply:
    from maxine_registry.graphql_api import request_error as make_error  # noqa: PLC0415

    return make_error(message, code=code)


GRAPHQL_PATH = "/graphql"
# Path after ``/graphql`` -> (file in the package's ``static/graphql`` folder, content type).
PLAYGROUND_FILES = {
    "": ("index.html", "text/html"),
    "/playground.js": ("playground.js", "text/javascript"),
    "/playground.css": ("playground.css", "text/css"),
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _context(request: web.Request) -> RequestContext:
    from maxine_registry.graphql_api import RequestContext  # noqa: PLC0415

    return RequestContext(
        caller=request_caller(request), peer=request.remote, forwarded_for=request.headers.get("X-Forwarded-For")
    )


def _render(reply: GraphQLReply) -> web.Response:
    response = web.Response(body=orjson.dumps(reply.document), status=reply.status, content_type=JSON)
    if reply.status == 405:
        # Only a mutation sent with GET is refused this way; POST takes it.
        response.headers["Allow"] = "POST"
    return response


async def post_graphql(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        return _render(request_error("The body must be a JSON object with a query.", code="invalid_input"))
    reply = request.app[GRAPHQL_KEY].execute(
        query=body.get("query"),
        variables=body.get("variables"),
        operation_name=body.get("operationName"),
        context=_context(request),
    )
    return _render(reply)


def _playground_file(file_name: str, content_type: str) -> tuple[bytes, str]:
    return resources.files("maxine_registry.http").joinpath("static", "graphql", file_name).read_bytes(), content_type


def _static_response(page: tuple[bytes, str]) -> web.Response:
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}
    return web.Response(body=page[0], content_type=page[1], charset="utf-8", headers=headers)


def _get_graphql(playground: tuple[bytes, str]) -> Handler:
    async def get_graphql(request: web.Request) -> web.Response:
        if "query" not in request.query:
            return _static_response(playground)
        variables: object = None
        if request.query.get("variables"):
            try:
                variables = orjson.loads(request.query["variables"])
            except orjson.JSONDecodeError:
                return _render(request_error("variables must be a JSON object.", code="invalid_json"))
        reply = request.app[GRAPHQL_KEY].execute(
            query=request.query["query"],
            variables=variables,
            operation_name=request.query.get("operationName") or None,
            context=_context(request),
            read_only=True,
        )
        return _render(reply)

    return get_graphql


def _asset(page: tuple[bytes, str]) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        return _static_response(page)

    return serve


def setup(app: web.Application, operations: Operations) -> None:
    app[GRAPHQL_KEY] = LazyGraphQLApi(operations=operations)
    files = {suffix: _playground_file(name, kind) for suffix, (name, kind) in PLAYGROUND_FILES.items()}
    app.router.add_post(GRAPHQL_PATH, post_graphql)
    app.router.add_get(GRAPHQL_PATH, _get_graphql(files[""]))
    for suffix, page in files.items():
        if suffix:
            app.router.add_get(GRAPHQL_PATH + suffix, _asset(page))
