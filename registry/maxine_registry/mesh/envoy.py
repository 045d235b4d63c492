"""
Envoy configuration from a ``MeshState``: a complete static bootstrap, and the same resources over xDS.

One listener serves every service two ways: by ``Host`` header (``curl -H 'Host: orders' ...``)
and by path prefix (``/orders/...`` reaches ``orders`` as ``/...``). Each service has one cluster
of its instances that may take traffic (healthy, of a version not retired); a service with a
traffic split gets one more cluster per version of the split, ``<service>|<version>``, and its
routes send traffic to them by weight. Cluster names cannot collide with one another: service
names never contain ``|``, and the cluster that reaches Maxine itself is ``maxine/xds``, which no
service name can be.

Maxine's own rules become Envoy's:

- the circuit-breaker policy becomes outlier detection: ``failureThreshold`` consecutive failures
  eject a host for ``openSeconds``, growing up to ``maxOpenSeconds``; every host may be ejected, as
  every breaker may open; and panic routing is off, since Maxine never hands out a node it holds
  back, however few are left;
- ``metadata.mesh`` gives the route's timeout and retry policy;
- the preferred strategy (``metadata.mesh.loadBalancing``) picks the load balancer: see
  ``ENVOY_LB_POLICIES``. Hash strategies hash what Maxine hashes: the ``key`` query parameter for
  ``consistent-hash``, the client address for ``ip-hash``. Endpoint weights are set only for the
  weighted strategies, since the others ignore weights in Maxine too.

Live configuration uses Envoy's REST-JSON xDS: Envoy polls ``POST /v3/discovery:<type>`` with a
``DiscoveryRequest``. ``version_info`` is a registry revision and a digest of the resources,
so a poll that finds nothing new gets 304 and Envoy keeps what it has. The dynamic bootstrap
passes the listener's address and port and the poll interval in the node's metadata, so the
answers for one Envoy depend on nothing but the registry and that Envoy's own bootstrap.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from maxine_registry.errors import InvalidInput
from maxine_registry.mesh.model import (
    MeshInstance,
    MeshService,
    MeshState,
    Plan,
    integer_weights,
    protobuf_duration,
    routing_plan,
)
from maxine_registry.model import normalize_host, validate_port

logger = logging.getLogger(__name__)

DEFAULT_LISTENER_ADDRESS = "127.0.0.1"
DEFAULT_LISTENER_PORT = 10000
DEFAULT_ADMIN_PORT = 9901
ADMIN_ADDRESS = "127.0.0.1"  # the admin interface can change the proxy: loopback only, never configurable
DEFAULT_NODE_ID = "maxine-envoy"
DEFAULT_NODE_CLUSTER = "maxine"
DEFAULT_REFRESH_MS = 1000
MIN_REFRESH_MS = 100
MAX_REFRESH_MS = 60_000
CONNECT_TIMEOUT_MS = 2000
XDS_REQUEST_TIMEOUT_MS = 1000
OUTLIER_INTERVAL_MS = 5000
# Weighted clusters share 10,000 basis points, so a 100-way split of odd percentages keeps its shape.
SPLIT_TOTAL_WEIGHT = 10_000
ENDPOINT_WEIGHT_SCALE = 100
MAX_ENDPOINT_WEIGHT = 1_000_000

XDS_CLUSTER = "maxine/xds"
LISTENER_NAME = "maxine"
ROUTE_CONFIG_NAME = "maxine"
PATHS_VIRTUAL_HOST = "maxine-paths"
NODE_METADATA_KEY = "maxine"

TYPE_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
TYPE_ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
TYPE_ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TYPE_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TYPE_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
# The xDS endpoint of each resource type: POST /v3/discovery:<name>.
XDS_TYPES = {"clusters": TYPE_CLUSTER, "endpoints": TYPE_ENDPOINTS, "listeners": TYPE_LISTENER, "routes": TYPE_ROUTES}

ENVOY_LB_POLICIES = {
    "round-robin": "ROUND_ROBIN",
    "random": "RANDOM",
    # Envoy's random balancer ignores weights; weighted round-robin gives the same shares.
    "weighted-random": "ROUND_ROBIN",
    "least-connections": "LEAST_REQUEST",
    "weighted-least-connections": "LEAST_REQUEST",
    "least-response-time": "LEAST_REQUEST",
    "consistent-hash": "RING_HASH",
    "ip-hash": "RING_HASH",
    # TODO: LATER: zone-aware routing needs Envoy's own locality (local_cluster_name); endpoints carry it already.
    "geo-aware": "ROUND_ROBIN",
}
WEIGHTED_STRATEGIES = frozenset({"weighted-random", "weighted-least-connections"})
# The query parameter Maxine's consistent-hash strategy hashes on discover.
HASH_QUERY_PARAMETER = "key"


@dataclass(frozen=True, slots=True)
class EnvoyOptions:
    """Where the generated Envoy listens, and how often it polls Maxine when it runs on xDS."""

    listener_address: str = DEFAULT_LISTENER_ADDRESS
    listener_port: int = DEFAULT_LISTENER_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    refresh_ms: int = DEFAULT_REFRESH_MS


def parse_ip(value: object, *, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be an IP address, got {value!r}.")
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise InvalidInput(f"{field} must be an IP address, got {value!r}.") from None


def parse_refresh_ms(value: object) -> int:
    text = str(value)
    if not text.isascii() or not text.isdigit() or not MIN_REFRESH_MS <= int(text) <= MAX_REFRESH_MS:
        raise InvalidInput(
            f"refreshMs must be a whole number from {MIN_REFRESH_MS} to {MAX_REFRESH_MS}, got {value!r}."
        )
    return int(text)


def parse_options(query: Mapping[str, object]) -> EnvoyOptions:
    """Options from a query string or an Envoy node's metadata: ``listenerAddress``, ``listenerPort``, ..."""
    defaults = EnvoyOptions()
    address = query.get("listenerAddress")
    listener_port, admin_port, refresh = (query.get(key) for key in ("listenerPort", "adminPort", "refreshMs"))
    return EnvoyOptions(
        listener_address=parse_ip(address, field="listenerAddress") if address else defaults.listener_address,
        listener_port=validate_port(listener_port, field="listenerPort") if listener_port else defaults.listener_port,
        admin_port=validate_port(admin_port, field="adminPort") if admin_port else defaults.admin_port,
        refresh_ms=parse_refresh_ms(refresh) if refresh else defaults.refresh_ms,
    )


# Building blocks.


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def cluster_name(service_name: str, version: str | None = None) -> str:
    return service_name if version is None else f"{service_name}|{version}"


def parse_cluster_name(name: str) -> tuple[str, str | None]:
    service_name, sep, version = name.partition("|")
    return service_name, version if sep else None


def rest_config_source(options: EnvoyOptions) -> dict[str, Any]:
    """Where Envoy polls for dynamic resources: Maxine, over REST-JSON."""
    return {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": [XDS_CLUSTER],
            "refresh_delay": protobuf_duration(options.refresh_ms),
            "request_timeout": protobuf_duration(XDS_REQUEST_TIMEOUT_MS),
        },
    }


def _endpoint_weight(instance: MeshInstance) -> int:
    return max(1, min(round(instance.weight * ENDPOINT_WEIGHT_SCALE), MAX_ENDPOINT_WEIGHT))


def load_assignment(service: MeshService, *, version: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The endpoints that may take the service's (or one version's) traffic, grouped by region and zone."""
    weighted = service.settings.load_balancing in WEIGHTED_STRATEGIES
    localities: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for instance in service.serving(version=version):
        endpoint: dict[str, Any] = {"endpoint": {"address": socket_address(instance.host, instance.port)}}
        if weighted:
            endpoint["load_balancing_weight"] = _endpoint_weight(instance)
        localities.setdefault((instance.region or "", instance.zone or ""), []).append(endpoint)

    endpoints = []
    for (region, zone), members in sorted(localities.items()):
        group: dict[str, Any] = {"lb_endpoints": members}
        if region or zone:
            group["locality"] = {key: value for key, value in (("region", region), ("zone", zone)) if value}
        endpoints.append(group)
    return {"cluster_name": name or cluster_name(service.name, version), "endpoints": endpoints}


def outlier_detection(state: MeshState) -> dict[str, Any]:
    policy = state.breaker
    return {
        "consecutive_5xx": policy.failure_threshold,
        "interval": protobuf_duration(OUTLIER_INTERVAL_MS),
        "base_ejection_time": protobuf_duration(round(policy.open_seconds * 1000)),
        "max_ejection_time": protobuf_duration(round(policy.max_open_seconds * 1000)),
        "max_ejection_percent": 100,
    }


def cluster(state: MeshState, service: MeshService, *, version: str | None, eds: EnvoyOptions | None) -> dict[str, Any]:
    """
    One cluster: inline endpoints, or endpoints over EDS when ``eds`` gives the poll settings.

    Hosts registered by DNS name cannot go over EDS (it takes addresses only): such a cluster
    resolves them itself (``STRICT_DNS``) with its endpoints inline, on xDS as well.
    """
    name = cluster_name(service.name, version)
    result: dict[str, Any] = {
        "name": name,
        "connect_timeout": protobuf_duration(CONNECT_TIMEOUT_MS),
        "lb_policy": ENVOY_LB_POLICIES.get(service.settings.load_balancing, "ROUND_ROBIN"),
        "outlier_detection": outlier_detection(state),
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
    }
    if any(not is_ip(instance.host) for instance in service.serving(version=version)):
        result["type"] = "STRICT_DNS"
        result["dns_lookup_family"] = "V4_PREFERRED"
        result["load_assignment"] = load_assignment(service, version=version)
    elif eds is not None:
        result["type"] = "EDS"
        result["eds_cluster_config"] = {"eds_config": rest_config_source(eds), "service_name": name}
    else:
        result["type"] = "STATIC"
        result["load_assignment"] = load_assignment(service, version=version)
    return result


def split_weights(service: MeshService) -> tuple[tuple[str, int], ...]:
    """(version, weight) of a service whose traffic is split by version; empty when it is not."""
    plan = routing_plan(service)
    if plan.kind is not Plan.SPLIT:
        return ()
    return integer_weights(plan.shares, total=SPLIT_TOTAL_WEIGHT)


def clusters(state: MeshState, *, eds: EnvoyOptions | None = None) -> list[dict[str, Any]]:
    """Every cluster: one per routable service, and one per version of each traffic split."""
    result = []
    for service in state.routable():
        result.append(cluster(state, service, version=None, eds=eds))
        for version, _ in split_weights(service):
            result.append(cluster(state, service, version=version, eds=eds))
    return result


def load_assignments(state: MeshState, *, names: Collection[str] = ()) -> list[dict[str, Any]]:
    """
    The endpoints of the EDS clusters, or of the named ones only.

    A name Envoy asks for that has nothing behind it (a service that just left) gets an empty
    assignment rather than no answer, so the cluster empties at once instead of waiting.
    """
    if not names:
        services = {service.name: service for service in state.routable()}
        return [
            load_assignment(services[parse_cluster_name(item["name"])[0]], version=parse_cluster_name(item["name"])[1])
            for item in clusters(state, eds=EnvoyOptions())
            if item["type"] == "EDS"
        ]
    routable = {service.name: service for service in state.routable()}
    result = []
    for name in sorted(set(names)):
        service_name, version = parse_cluster_name(name)
        service = routable.get(service_name)
        if service is None:
            result.append({"cluster_name": name, "endpoints": []})
        else:
            result.append(load_assignment(service, version=version, name=name))
    return result


def route_action(service: MeshService) -> dict[str, Any]:
    settings = service.settings
    action: dict[str, Any]
    weights = split_weights(service)
    if weights:
        action = {
            "weighted_clusters": {
                "clusters": [{"name": cluster_name(service.name, version), "weight": w} for version, w in weights]
            }
        }
    else:
        # Every instance not retired is in the service's own cluster; with none, Envoy answers 503.
        action = {"cluster": cluster_name(service.name)}

    if settings.timeout_ms is not None:
        action["timeout"] = protobuf_duration(settings.timeout_ms)
    if settings.retries:
        retry: dict[str, Any] = {"retry_on": ",".join(settings.retry_on), "num_retries": settings.retries}
        if settings.per_try_timeout_ms is not None:
            retry["per_try_timeout"] = protobuf_duration(settings.per_try_timeout_ms)
        action["retry_policy"] = retry
    if settings.load_balancing == "consistent-hash":
        action["hash_policy"] = [{"query_parameter": {"name": HASH_QUERY_PARAMETER}}]
    elif settings.load_balancing == "ip-hash":
        action["hash_policy"] = [{"connection_properties": {"source_ip": True}}]
    return action


def route_configuration(state: MeshState) -> dict[str, Any]:
    """
    Routes by ``Host`` (one virtual host per service) and by path prefix (one catch-all virtual host).

    Envoy matches domains without regard to case, and refuses two virtual hosts with one domain;
    services whose names differ only in case share one domain, which goes to the one spelled in
    lower case if any, else to the first by name. The others are reached by path.
    """
    services = state.routable()
    by_domain: dict[str, MeshService] = {}
    for service in sorted(services, key=lambda item: (item.name != item.name.lower(), item.name)):
        by_domain.setdefault(service.name.lower(), service)

    virtual_hosts = [
        {
            "name": f"service/{service.name}",
            "domains": [domain],
            "routes": [{"match": {"prefix": "/"}, "route": route_action(service)}],
        }
        for domain, service in sorted(by_domain.items())
    ]
    path_routes = [
        {"match": {"prefix": f"/{service.name}/"}, "route": {**route_action(service), "prefix_rewrite": "/"}}
        for service in services
    ]
    virtual_hosts.append({"name": PATHS_VIRTUAL_HOST, "domains": ["*"], "routes": path_routes})
    return {"name": ROUTE_CONFIG_NAME, "virtual_hosts": virtual_hosts}


def listener(state: MeshState, options: EnvoyOptions, *, rds: bool) -> dict[str, Any]:
    """The one HTTP listener, with its routes inline or, when ``rds``, over RDS from Maxine."""
    manager: dict[str, Any] = {
        "@type": TYPE_HCM,
        "stat_prefix": LISTENER_NAME,
        # Clients send ``Host: orders:10000``; the port must not stop the match.
        "strip_any_host_port": True,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": TYPE_ROUTER}}],
    }
    if rds:
        manager["rds"] = {"route_config_name": ROUTE_CONFIG_NAME, "config_source": rest_config_source(options)}
    else:
        manager["route_config"] = route_configuration(state)
    return {
        "name": LISTENER_NAME,
        "address": socket_address(options.listener_address, options.listener_port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def admin(options: EnvoyOptions) -> dict[str, Any]:
    return {"address": socket_address(ADMIN_ADDRESS, options.admin_port)}


# Whole configurations.


def static_bootstrap(state: MeshState, options: EnvoyOptions) -> dict[str, Any]:
    """A complete bootstrap with every resource inline: a snapshot that ``envoy -c`` runs as it is."""
    return {
        "node": {"id": DEFAULT_NODE_ID, "cluster": DEFAULT_NODE_CLUSTER},
        "admin": admin(options),
        "static_resources": {
            "listeners": [listener(state, options, rds=False)],
            "clusters": clusters(state),
        },
    }


def dynamic_bootstrap(
    options: EnvoyOptions,
    *,
    xds_host: str,
    xds_port: int,
    node_id: str = DEFAULT_NODE_ID,
    node_cluster: str = DEFAULT_NODE_CLUSTER,
) -> dict[str, Any]:
    """
    A bootstrap that takes clusters and listeners from Maxine's xDS at ``xds_host:xds_port``.

    The listener's address and port and the poll interval travel in the node's metadata, so that
    Maxine builds this Envoy's listener as this bootstrap asked.
    """
    host = normalize_host(xds_host)
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "connect_timeout": protobuf_duration(CONNECT_TIMEOUT_MS),
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, xds_port)}}]}],
        },
    }
    source = rest_config_source(options)
    return {
        "node": {
            "id": node_id,
            "cluster": node_cluster,
            "metadata": {
                NODE_METADATA_KEY: {
                    "listenerAddress": options.listener_address,
                    "listenerPort": options.listener_port,
                    "refreshMs": options.refresh_ms,
                }
            },
        },
        "admin": admin(options),
        "dynamic_resources": {"cds_config": source, "lds_config": source},
        "static_resources": {"clusters": [xds_cluster]},
    }


# xDS over REST-JSON.


@dataclass(frozen=True, slots=True)
class DiscoveryRequest:
    version_info: str
    resource_names: tuple[str, ...]
    options: EnvoyOptions
    node_id: str
    error_detail: str | None


def parse_discovery_request(body: object) -> DiscoveryRequest:
    """The parts of a ``DiscoveryRequest`` that Maxine reads; the options come from the node's metadata."""
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a DiscoveryRequest JSON object.")
    version_info = body.get("version_info", "")
    names = body.get("resource_names", [])
    if not isinstance(version_info, str):
        raise InvalidInput(f"version_info must be a string, got {version_info!r}.")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise InvalidInput(f"resource_names must be a list of strings, got {names!r}.")

    node = body.get("node") or {}
    metadata = node.get("metadata") if isinstance(node, dict) else None
    settings = metadata.get(NODE_METADATA_KEY) if isinstance(metadata, dict) else None
    options = parse_options(settings) if isinstance(settings, dict) else EnvoyOptions()

    error = body.get("error_detail")
    return DiscoveryRequest(
        version_info=version_info,
        resource_names=tuple(names),
        options=options,
        node_id=str(node.get("id", "")) if isinstance(node, dict) else "",
        error_detail=str(error.get("message", error)) if isinstance(error, dict) else None,
    )


def xds_resources(state: MeshState, *, type_url: str, request: DiscoveryRequest) -> list[dict[str, Any]]:
    """The resources of one type for one Envoy, without their ``@type``."""
    if type_url == TYPE_CLUSTER:
        return clusters(state, eds=request.options)
    if type_url == TYPE_ENDPOINTS:
        return load_assignments(state, names=request.resource_names)
    if type_url == TYPE_LISTENER:
        return [listener(state, request.options, rds=True)]
    if type_url == TYPE_ROUTES:
        return [route_configuration(state)]
    raise InvalidInput(f"Unknown xDS resource type {type_url!r}; expected one of {sorted(XDS_TYPES.values())}.")


def resource_version(state: MeshState, resources: list[dict[str, Any]], *, type_url: str) -> str:
    """
    ``version_info``: a registry revision, and a digest of the resources themselves.

    The revision says when: the registry's, or for endpoints the last change of the services
    asked for, so that a change elsewhere does not resend every cluster's endpoints. The digest
    makes the version change exactly when the answer does, whatever changed it (a blacklist does
    not move the revision) and across registry restarts, which start revisions over.
    """
    revision = state.revision
    if type_url == TYPE_ENDPOINTS:
        names = {parse_cluster_name(item["cluster_name"])[0] for item in resources}
        revision = max((service.revision for service in state.services if service.name in names), default=0)
    digest = hashlib.sha256(orjson.dumps(resources, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    return f"{revision}-{digest}"


def discovery_response(resources: list[dict[str, Any]], *, type_url: str, version: str) -> dict[str, Any]:
    return {
        "version_info": version,
        "resources": [{"@type": type_url, **resource} for resource in resources],
        "type_url": type_url,
        "nonce": version,
    }
