"""
The GraphQL API: the contract's queries and mutations over the same operations the HTTP API calls.

Queries read the registry: ``services``, ``service(serviceName)`` and ``discover(...)``; mutations
``register`` and ``deregister`` go through ``Operations.register`` and ``Operations.deregister``, so
validation, registration guards and events are exactly those of ``POST /register`` and
``DELETE /deregister``. ``discover`` goes through ``Operations.discover`` and its discovery guards.

How the contract's arguments map onto Maxine:

- ``discover(ip)``: the client address for ``ip-hash``, believed only when the request comes from a
  trusted proxy (as ``X-Forwarded-For`` is), so nobody can pose as another address to the access
  rules; it is also the hash key for ``consistent-hash``, a key any caller may choose anyway.
- ``discover(tags)``: an instance must carry every tag. ``group`` is one more required tag (Maxine
  keeps groups as tags), and ``filter`` is a comma-separated list of further required tags.
- ``discover(deployment)``: the version (canary deployments are versions in Maxine).
- ``discover(loadBalancing)``: a Maxine addition, the strategy name as ``/discover`` takes it.
- ``register(nodeName, address, metadata)``: ``address`` is ``host:port`` or ``[v6]:port``; the
  node id stays ``serviceName:host:port``, and ``nodeName`` is kept as ``metadata.nodeName``.
  ``metadata`` is a JSON object in a string, as the contract types it.
- ``deregister(serviceName, nodeName)``: the instance of that service whose ``metadata.nodeName``
  is ``nodeName``; failing that, ``nodeName`` is read as an address (``host:port``) or a node id.

A request is bounded before it runs: its length, its token count, the depth of its selections and
the number of fields it selects, fragments expanded.

TODO: LATER: ``services`` lists every service and node in one answer, as ``GET /servers`` does;
a registry with very many instances wants cursor pagination there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
from graphql import (
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationRule,
    build_schema,
    execute_sync,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)

from maxine_registry.errors import Conflict, InvalidInput, MaxineError, NotRegistered
from maxine_registry.model import Instance, normalize_host, parse_node_ref, validate_port, validate_service_name
from maxine_registry.operations import Operations
from maxine_registry.registry import Service

logger = logging.getLogger(__name__)

# graphql-core 3.3 made GraphQLResolveInfo generic and 3.2 is not; resolvers read only ``context``
# from it, so it is typed loosely here to check cleanly under both.
ResolveInfo: TypeAlias = Any

MAX_QUERY_LENGTH = 10_000
MAX_QUERY_TOKENS = 1000
MAX_QUERY_DEPTH = 8
MAX_QUERY_FIELDS = 200
MAX_NODE_NAME_LENGTH = 256

SCHEMA = """
"Any JSON value."
scalar JSON

"One registered copy of a service."
type Instance {
  nodeId: String!
  serviceName: String!
  host: String!
  port: Int!
  address: String!
  version: String!
  tags: [String!]!
  weight: Float!
  metadata: JSON!
  healthy: Boolean!
}

type Service {
  serviceName: String!
  "Moves on every change to the service."
  revision: Int!
  nodeCount: Int!
  versions: [String!]!
  nodes: [Instance!]!
}

type Query {
  "Every service with registered instances."
  services: [Service!]!
  "One service, or null when it has no registered instance."
  service(serviceName: String!): Service
  "One instance picked as GET /discover picks it."
  discover(
    serviceName: String!
    ip: String
    group: String
    tags: [String]
    deployment: String
    filter: String
    loadBalancing: String
  ): Instance!
}

type Registration {
  nodeId: String!
  serviceName: String!
  nodeName: String!
  address: String!
  ttl: Float!
}

type Deregistration {
  nodeId: String!
  deregistered: Boolean!
}

type Mutation {
  register(serviceName: String!, nodeName: String!, address: String!, metadata: String, ttl: Float): Registration!
  deregister(serviceName: String!, nodeName: String!): Deregistration!
}
"""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asks, as the transport saw it: for discovery guards and client-address strategies."""

    caller: str | None = None
    peer: str | None = None
    forwarded_for: str | None = None


@dataclass(frozen=True, slots=True)
class GraphQLReply:
    """The HTTP status and the ``{"data", "errors"}`` document of one GraphQL request."""

    status: int
    document: dict[str, Any]


class QueryLimits(ValidationRule):
    """Refuses operations nested deeper than ``MAX_QUERY_DEPTH`` or selecting more than ``MAX_QUERY_FIELDS`` fields."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
        fragments = {
            definition.name.value: definition
            for definition in self.context.document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        counter = _FieldCounter(fragments)
        depth = counter.depth(node.selection_set, level=1)
        if depth > MAX_QUERY_DEPTH:
            self.report_error(GraphQLError(f"The query is nested deeper than {MAX_QUERY_DEPTH} levels.", node))
        elif counter.fields > MAX_QUERY_FIELDS:
            self.report_error(GraphQLError(f"The query selects more than {MAX_QUERY_FIELDS} fields.", node))


class _FieldCounter:
    def __init__(self, fragments: Mapping[str, FragmentDefinitionNode]) -> None:
        self.fragments = fragments
        self.fields = 0

    def depth(self, selection_set: SelectionSetNode | None, *, level: int, seen: frozenset[str] = frozenset()) -> int:
        """The deepest level below ``selection_set``; stops a little past the limits, so it stays cheap."""
        if selection_set is None or level > MAX_QUERY_DEPTH + 1 or self.fields > MAX_QUERY_FIELDS:
            return level - 1
        deepest = level - 1
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                self.fields += 1
                below = self.depth(selection.selection_set, level=level + 1, seen=seen)
                deepest = max(deepest, below if selection.selection_set is not None else level)
            elif isinstance(selection, InlineFragmentNode):
                deepest = max(deepest, self.depth(selection.selection_set, level=level, seen=seen))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                # A fragment cycle is reported by the standard rules; here it just stops.
                if fragment is not None and name not in seen:
                    deepest = max(deepest, self.depth(fragment.selection_set, level=level, seen=seen | {name}))
        return deepest


# Resolvers.


def _service_view(service: Service) -> dict[str, Any]:
    # Lists are built only when the query asks for them: the default resolver calls a callable value.
    instances = list(service.instances.values())
    return {
        "serviceName": service.name,
        "revision": service.revision,
        "nodeCount": len(instances),
        "versions": lambda _info: service.versions(),
        "nodes": lambda _info: [instance.view() for instance in instances],
    }


def parse_address(value: object) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into a normalized host and a port."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"address must be 'host:port' or '[v6]:port', got {value!r}.")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise InvalidInput(f"address {value!r} has no port: use 'host:port' or '[v6]:port'.")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise InvalidInput(f"address {value!r} is ambiguous: put an IPv6 host in brackets, as in '[::1]:8080'.")
    return normalize_host(host), validate_port(port_text)


def _node_name(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NODE_NAME_LENGTH:
        raise InvalidInput(f"nodeName must be 1 to {MAX_NODE_NAME_LENGTH} characters, got {value!r}.")
    if not value.isprintable() or any(character.isspace() for character in value):
        raise InvalidInput(f"nodeName must be printable and without spaces, got {value!r}.")
    return value


def _metadata(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        metadata = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"metadata is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must hold a JSON object, got {type(metadata).__name__}.")
    return metadata


def _named(instance: Instance, node_name: str) -> bool:
    # Most metadata never mentions a node name; skip parsing it then.
    return "nodeName" in instance.parsed.keys and instance.metadata.get("nodeName") == node_name


class GraphQLApi:
    def __init__(self, *, operations: Operations) -> None:
        self.operations = operations
        self.schema: GraphQLSchema = build_schema(SCHEMA)
        self._wire()

    def __repr__(self) -> str:
        return f"GraphQLApi(operations={self.operations!r})"

    def _wire(self) -> None:
        query_type, mutation_type = self.schema.query_type, self.schema.mutation_type
        assert query_type is not None and mutation_type is not None
        query_type.fields["services"].resolve = self.resolve_services
        query_type.fields["service"].resolve = self.resolve_service
        query_type.fields["discover"].resolve = self.resolve_discover
        mutation_type.fields["register"].resolve = self.resolve_register
        mutation_type.fields["deregister"].resolve = self.resolve_deregister

    # Running a request.

    def execute(
        self,
        *,
        query: object,
        variables: object = None,
        operation_name: object = None,
        context: RequestContext,
        read_only: bool = False,
    ) -> GraphQLReply:
        """
        Parse, validate and run one request; problems with the request itself answer 400.

        ``read_only`` is for GET requests, which may run queries only (405 for a mutation).
        """
        if not isinstance(query, str) or not query.strip():
            return request_error("query is required and must be a non-empty string.", code="invalid_input")
        if len(query) > MAX_QUERY_LENGTH:
            return request_error(
                f"The query is {len(query)} characters; the limit is {MAX_QUERY_LENGTH}.", code="query_too_large"
            )
        if variables is not None and not isinstance(variables, dict):
            return request_error("variables must be a JSON object.", code="invalid_input")
        if operation_name is not None and not isinstance(operation_name, str):
            return request_error("operationName must be a string.", code="invalid_input")

        try:
            document = parse(query, max_tokens=MAX_QUERY_TOKENS)
        except GraphQLError as error:
            return GraphQLReply(400, {"data": None, "errors": [_format(error, code="syntax_error")]})
        except RecursionError:
            return request_error("The query is nested too deeply to read.", code="query_too_complex")
        errors = validate(self.schema, document, [*specified_rules, QueryLimits])
        if errors:
            return GraphQLReply(
                400, {"data": None, "errors": [_format(error, code="invalid_query") for error in errors]}
            )

        operation = get_operation_ast(document, operation_name)
        if read_only and operation is not None and operation.operation != OperationType.QUERY:
            return request_error(
                "GET runs queries only; send mutations with POST.", code="method_not_allowed", status=405
            )

        result = execute_sync(
            self.schema, document, variable_values=variables, operation_name=operation_name, context_value=context
        )
        return GraphQLReply(200, self._render(result))

    def _render(self, result: ExecutionResult) -> dict[str, Any]:
        document: dict[str, Any] = {"data": result.data}
        if result.errors:
            document["errors"] = [self._format_execution_error(error) for error in result.errors]
        return document

    def _format_execution_error(self, error: GraphQLError) -> dict[str, Any]:
        original = error.original_error
        if isinstance(original, MaxineError):
            formatted = _format(error, code=original.code)
            formatted["extensions"]["status"] = original.status
            return formatted
        if original is not None:
            # A bug, not a refusal: keep the details in the log and out of the answer.
            logger.error("A GraphQL resolver failed at %s.", error.path, exc_info=original)
            formatted = _format(error, code="internal_error")
            formatted["message"] = "The registry failed to resolve this field; it is logged."
            return formatted
        return _format(error, code="invalid_input")

    # Queries.

    def resolve_services(self, _root: object, _info: ResolveInfo) -> list[dict[str, Any]]:
        return [_service_view(service) for service in sorted(self.operations.registry.services(), key=_by_name)]

    def resolve_service(self, _root: object, _info: ResolveInfo, *, serviceName: str) -> dict[str, Any] | None:
        service = self.operations.registry.get_service(validate_service_name(serviceName))
        return _service_view(service) if service is not None else None

    def resolve_discover(
        self,
        _root: object,
        info: ResolveInfo,
        *,
        serviceName: str,
        ip: str | None = None,
        group: str | None = None,
        tags: list[str | None] | None = None,
        deployment: str | None = None,
        filter: str | None = None,
        loadBalancing: str | None = None,
    ) -> dict[str, Any]:
        context: RequestContext = info.context
        required = [tag for tag in tags or () if tag]
        if group:
            required.append(group)
        if filter:
            required.extend(part for part in filter.split(",") if part.strip())
        query = {"serviceName": serviceName, "tags": ",".join(required)}
        if deployment:
            query["version"] = deployment
        if loadBalancing:
            query["loadBalancing"] = loadBalancing
        if ip:
            query["key"] = ip
        reply = self.operations.discover(
            query, client_ip=context.peer, forwarded_for=ip or context.forwarded_for, caller=context.caller
        )
        instance: dict[str, Any] = orjson.loads(reply.body)
        return instance

    # Mutations.

    def resolve_register(
        self,
        _root: object,
        _info: ResolveInfo,
        *,
        serviceName: str,
        nodeName: str,
        address: str,
        metadata: str | None = None,
        ttl: float | None = None,
    ) -> dict[str, Any]:
        node_name = _node_name(nodeName)
        host, port = parse_address(address)
        body: dict[str, Any] = {
            "serviceName": serviceName,
            "host": host,
            "port": port,
            "metadata": _metadata(metadata) | {"nodeName": node_name},
        }
        if ttl is not None:
            body["ttl"] = ttl
        registered: dict[str, Any] = orjson.loads(self.operations.register(body).body)
        return registered | {"serviceName": serviceName, "nodeName": node_name}

    def resolve_deregister(
        self, _root: object, _info: ResolveInfo, *, serviceName: str, nodeName: str
    ) -> dict[str, Any]:
        node_id = self._node_id(validate_service_name(serviceName), _node_name(nodeName))
        deregistered: dict[str, Any] = orjson.loads(self.operations.deregister({"nodeId": node_id}, {}).body)
        return deregistered

    def _node_id(self, service_name: str, node_name: str) -> str:
        """The node id a (serviceName, nodeName) pair names: by recorded node name first, then as an address."""
        service = self.operations.registry.get_service(service_name)
        if service is not None:
            named = [instance for instance in service.instances.values() if _named(instance, node_name)]
            if len(named) == 1:
                return named[0].node_id
            if len(named) > 1:
                ids = ", ".join(sorted(instance.node_id for instance in named))
                raise Conflict(
                    f"Several instances of {service_name!r} are named {node_name!r} ({ids}); deregister by address.",
                    code="ambiguous_node_name",
                )
        try:
            ref = parse_node_ref(node_name)
        except InvalidInput:
            raise NotRegistered(f"Service {service_name!r} has no node named {node_name!r}.") from None
        if ref.service_name is not None and ref.service_name != service_name:
            raise InvalidInput(f"nodeName {node_name!r} is a node of another service than {service_name!r}.")
        return f"{service_name}:{ref.host}:{ref.port}"


def _by_name(service: Service) -> str:
    return service.name


def _format(error: GraphQLError, *, code: str) -> dict[str, Any]:
    formatted: dict[str, Any] = dict(error.formatted)
    formatted["extensions"] = {**(formatted.get("extensions") or {}), "code": code}
    return formatted


def request_error(message: str, *, code: str, status: int = 400) -> GraphQLReply:
    """A request that cannot run, in the GraphQL answer shape."""
    return GraphQLReply(status, {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]})
