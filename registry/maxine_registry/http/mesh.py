"""
The service-mesh feature over HTTP: ``/service-mesh/*`` documents, and Envoy's REST-JSON xDS.

Each handler takes a ``MeshState`` of the registry and its governance rules, calls one generator
of ``maxine_registry.mesh`` and renders the result. Kubernetes resources come as one ``List``, so
``curl .../istio-config | kubectl apply -f -`` applies all of them.

xDS (``POST /v3/discovery:{clusters,endpoints,listeners,routes}``) is polled by every Envoy about
once a second per resource type and per EDS cluster. Answers are kept in a small cache keyed on
what they depend on (the registry revision, the blacklist, the Envoy's options and the names it
asks for), so polls between two changes cost a dictionary lookup, and the polls after a change
share one snapshot; a poll whose ``version_info``
is already the current version gets 304 and no body, which Envoy takes as "nothing new".

The feature also adds ``metadata.mesh`` validation to registrations, so a malformed setting is
refused when it is registered rather than ignored when a mesh asks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from aiohttp import web

from maxine_registry.errors import InvalidInput, PayloadTooLarge
from maxine_registry.governance import Governance
from maxine_registry.http.common import JSON, OPERATIONS_KEY, Handler
from maxine_registry.http.governance import GOVERNANCE_KEY
from maxine_registry.mesh import envoy
from maxine_registry.mesh.gateway_api import gateway_api_resources
from maxine_registry.mesh.istio import istio_resources
from maxine_registry.mesh.linkerd import linkerd_resources
from maxine_registry.mesh.model import (
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    KubernetesOptions,
    MeshState,
    build_mesh_state,
    validate_mesh_metadata,
)
from maxine_registry.mesh.names import is_namespace
from maxine_registry.mesh.smi import parse_smi_version, smi_resources
from maxine_registry.model import normalize_host, validate_port
from maxine_registry.operations import Operations, decode_body

logger = logging.getLogger(__name__)

# Envoy's DiscoveryRequest carries its node, with every extension it was built with: about 80 KB for
# Envoy 1.40, more than the API's body limit. The xDS routes read bodies up to this size instead.
MAX_XDS_REQUEST_BYTES = 1024 * 1024
# Distinct xDS answers kept; past this the cache starts over (revisions move on, old answers are dead).
MAX_XDS_CACHE_ENTRIES = 1024
MAX_NODE_ID_LENGTH = 128
XdsKey = tuple[str, int, tuple[str, ...], envoy.EnvoyOptions, tuple[str, ...]]
XDS_CACHE_KEY = web.AppKey("mesh_xds_cache", dict[XdsKey, tuple[str, bytes]])
# The last snapshot xDS built, by (revision, blacklist): one entry at most.
XDS_STATE_KEY = web.AppKey("mesh_xds_state", dict[tuple[int, tuple[str, ...]], MeshState])


def mesh_state(request: web.Request) -> MeshState:
    governance: Governance | None = request.app.get(GOVERNANCE_KEY)
    return build_mesh_state(registry=request.app[OPERATIONS_KEY].registry, governance=governance)


def kubernetes_options(query: Mapping[str, str]) -> KubernetesOptions:
    namespace = query.get("namespace") or DEFAULT_NAMESPACE
    trust_domain = query.get("trustDomain") or DEFAULT_TRUST_DOMAIN
    cluster_domain = query.get("clusterDomain") or DEFAULT_CLUSTER_DOMAIN
    if not is_namespace(namespace):
        raise InvalidInput(f"namespace must be a Kubernetes namespace name (a DNS-1123 label), got {namespace!r}.")
    for field, value in (("trustDomain", trust_domain), ("clusterDomain", cluster_domain)):
        try:
            normalize_host(value)
        except InvalidInput:
            raise InvalidInput(f"{field} must be a DNS name, got {value!r}.") from None
    return KubernetesOptions(
        namespace=namespace, trust_domain=trust_domain.lower(), cluster_domain=cluster_domain.lower()
    )


def json_response(document: object) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type=JSON)


def kubernetes_list(items: list[dict[str, object]]) -> web.Response:
    return json_response({"apiVersion": "v1", "kind": "List", "items": items})


# The documents.


async def envoy_config(request: web.Request) -> web.Response:
    options = envoy.parse_options(request.query)
    return json_response(envoy.static_bootstrap(mesh_state(request), options))


async def envoy_bootstrap(request: web.Request) -> web.Response:
    query = request.query
    options = envoy.parse_options(query)
    # By default Envoy reaches Maxine on loopback, on the port this request came in on.
    xds_host = query.get("xdsHost") or "127.0.0.1"
    xds_port = validate_port(query.get("xdsPort") or request.url.port or request.app[OPERATIONS_KEY].settings.port)
    node_id = query.get("nodeId") or envoy.DEFAULT_NODE_ID
    node_cluster = query.get("cluster") or envoy.DEFAULT_NODE_CLUSTER
    for field, value in (("nodeId", node_id), ("cluster", node_cluster)):
        if len(value) > MAX_NODE_ID_LENGTH or not value.isprintable():
            raise InvalidInput(f"{field} must be 1 to {MAX_NODE_ID_LENGTH} printable characters, got {value!r}.")
    document = envoy.dynamic_bootstrap(
        options, xds_host=xds_host, xds_port=xds_port, node_id=node_id, node_cluster=node_cluster
    )
    return json_response(document)


async def istio_config(request: web.Request) -> web.Response:
    return kubernetes_list(istio_resources(mesh_state(request), kubernetes_options(request.query)))


async def linkerd_config(request: web.Request) -> web.Response:
    return kubernetes_list(linkerd_resources(mesh_state(request), kubernetes_options(request.query)))


async def gateway_api_config(request: web.Request) -> web.Response:
    return kubernetes_list(gateway_api_resources(mesh_state(request), kubernetes_options(request.query)))


async def smi_config(request: web.Request) -> web.Response:
    version = parse_smi_version(request.query.get("apiVersion"))
    return kubernetes_list(smi_resources(mesh_state(request), kubernetes_options(request.query), version=version))


# xDS.


def xds_state(request: web.Request, *, blacklist: tuple[str, ...]) -> MeshState:
    """
    The snapshot xDS answers from, built once per registry revision and blacklist.

    Every EDS cluster polls on its own, so after a change many polls arrive for one state; they
    share one snapshot. What Envoy is told depends on nothing else (it gets no access rules).
    """
    registry = request.app[OPERATIONS_KEY].registry
    cached = request.app[XDS_STATE_KEY]
    key = (registry.revision, blacklist)
    state = cached.get(key)
    if state is None:
        state = mesh_state(request)
        cached.clear()
        cached[key] = state
    return state


async def read_discovery_request(request: web.Request) -> object:
    """The decoded body, read past the API's body limit up to ``MAX_XDS_REQUEST_BYTES``."""
    too_large = PayloadTooLarge(f"A DiscoveryRequest may be at most {MAX_XDS_REQUEST_BYTES} bytes.")
    if request.content_length is not None and request.content_length > MAX_XDS_REQUEST_BYTES:
        raise too_large
    # The stream, not request.read(): the app's client_max_size is the API's limit, too small here.
    body = await request.content.read(MAX_XDS_REQUEST_BYTES + 1)
    while len(body) <= MAX_XDS_REQUEST_BYTES and not request.content.at_eof():
        chunk = await request.content.read(MAX_XDS_REQUEST_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > MAX_XDS_REQUEST_BYTES:
        raise too_large
    return decode_body(body)


async def discovery(request: web.Request) -> web.Response:
    type_url = envoy.XDS_TYPES.get(request.match_info["resource"])
    if type_url is None:
        raise InvalidInput(
            f"Unknown xDS resource {request.match_info['resource']!r}; expected one of {', '.join(envoy.XDS_TYPES)}."
        )
    discovery_request = envoy.parse_discovery_request(await read_discovery_request(request))
    if discovery_request.error_detail is not None:
        logger.warning(
            "Envoy %r rejected the %s at version %r: %s",
            discovery_request.node_id,
            request.match_info["resource"],
            discovery_request.version_info,
            discovery_request.error_detail,
        )

    registry = request.app[OPERATIONS_KEY].registry
    governance: Governance | None = request.app.get(GOVERNANCE_KEY)
    blacklist = tuple(governance.blacklist()) if governance is not None else ()
    key: XdsKey = (type_url, registry.revision, blacklist, discovery_request.options, discovery_request.resource_names)
    cache = request.app[XDS_CACHE_KEY]
    answer = cache.get(key)
    if answer is None:
        state = xds_state(request, blacklist=blacklist)
        resources = envoy.xds_resources(state, type_url=type_url, request=discovery_request)
        version = envoy.resource_version(state, resources, type_url=type_url)
        body = orjson.dumps(envoy.discovery_response(resources, type_url=type_url, version=version))
        if len(cache) >= MAX_XDS_CACHE_ENTRIES:
            cache.clear()
        answer = cache[key] = (version, body)

    version, body = answer
    if discovery_request.version_info == version:
        return web.Response(status=304)
    logger.debug("xDS %s for node=%s version=%s.", request.match_info["resource"], discovery_request.node_id, version)
    return web.Response(body=body, content_type=JSON)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/service-mesh/envoy-config", envoy_config),
    ("GET", "/service-mesh/envoy-bootstrap", envoy_bootstrap),
    ("GET", "/service-mesh/istio-config", istio_config),
    ("GET", "/service-mesh/linkerd-config", linkerd_config),
    ("GET", "/service-mesh/gateway-api-config", gateway_api_config),
    ("GET", "/service-mesh/smi-config", smi_config),
    ("POST", "/v3/discovery:{resource}", discovery),
]


def setup(app: web.Application, operations: Operations) -> None:
    app[XDS_CACHE_KEY] = {}
    app[XDS_STATE_KEY] = {}
    operations.registration_guards.append(validate_mesh_metadata)
    # TODO: LATER: with auth on, the xDS routes need an admin token (POST), and Envoy's REST xDS cannot send
    # one; they need their own rule in the auth table and a credential Envoy can present (mTLS, or a header
    # added by a proxy in front).
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
