"""
Istio resources from a ``MeshState``: a VirtualService and a DestinationRule per service, and an
AuthorizationPolicy per service that governance restricts.

Names and selectors: a service's objects are named after its Kubernetes name (``names.dns_label``),
its host is ``<name>.<namespace>.svc.<cluster domain>``, its pods carry ``app: <name>``, and each
version is a subset selecting ``version: <version>`` (as a label value). One subset exists per
version that has instances and is not retired.

Routing follows ``model.routing_plan``: a split or a retirement becomes weighted routes to subsets
(weights summing to 100); a service nothing may serve answers 503 directly; otherwise one route to
the host. ``metadata.mesh`` gives the route's timeout and retries (otherwise Istio's defaults
apply). The circuit-breaker policy becomes the DestinationRule's outlier detection. The preferred
strategy becomes the load balancer (``ISTIO_LOAD_BALANCERS``): Istio cannot weight pods, so the
weighted strategies fall back to their unweighted kin, and ``geo-aware`` turns on Istio's
locality load balancing.

Access: for each destination, ``model.access_for`` sorts callers into the named ones let in, the
named ones kept out, every other caller with an identity, and anonymous callers. Then:

- everyone but some named callers: a DENY policy for those callers' principals;
- every caller with an identity but some named ones: an ALLOW policy for principal ``*`` minus
  those (anonymous callers match no principal, so they are refused);
- only some named callers: an ALLOW policy for their principals, or an ALLOW policy without rules
  (which lets nobody in) when there are none.

A caller's principal is ``<trust domain>/ns/<namespace>/sa/<account>``; see
``names.service_account``.
"""

from __future__ import annotations

import logging
from typing import Any

from maxine_registry.mesh.model import (
    APP_LABEL,
    VERSION_LABEL,
    KubernetesOptions,
    MeshService,
    MeshState,
    Plan,
    access_for,
    integer_weights,
    object_meta,
    protobuf_duration,
    routing_plan,
)
from maxine_registry.mesh.names import dns_label, label_value, spiffe_principal

logger = logging.getLogger(__name__)

NETWORKING_API = "networking.istio.io/v1"
SECURITY_API = "security.istio.io/v1"
ROUTE_TOTAL_WEIGHT = 100
OUTLIER_INTERVAL_MS = 5000
NO_SERVER_STATUS = 503
# The query parameter Maxine's consistent-hash strategy hashes on discover.
HASH_QUERY_PARAMETER = "key"

ISTIO_LOAD_BALANCERS: dict[str, dict[str, Any]] = {
    "round-robin": {"simple": "ROUND_ROBIN"},
    "random": {"simple": "RANDOM"},
    "weighted-random": {"simple": "RANDOM"},
    "least-connections": {"simple": "LEAST_REQUEST"},
    "weighted-least-connections": {"simple": "LEAST_REQUEST"},
    "least-response-time": {"simple": "LEAST_REQUEST"},
    "consistent-hash": {"consistentHash": {"httpQueryParameterName": HASH_QUERY_PARAMETER}},
    "ip-hash": {"consistentHash": {"useSourceIp": True}},
    "geo-aware": {"simple": "ROUND_ROBIN", "localityLbSetting": {"enabled": True}},
}


def host(service_name: str, options: KubernetesOptions) -> str:
    return f"{dns_label(service_name)}.{options.namespace}.svc.{options.cluster_domain}"


def subset_name(version: str) -> str:
    return dns_label(version)


def subset_versions(service: MeshService) -> list[str]:
    return sorted({instance.version for instance in service.instances if instance.version not in service.retired})


def destination_rule(state: MeshState, service: MeshService, options: KubernetesOptions) -> dict[str, Any]:
    policy = state.breaker
    spec: dict[str, Any] = {
        "host": host(service.name, options),
        "trafficPolicy": {
            "loadBalancer": ISTIO_LOAD_BALANCERS.get(service.settings.load_balancing, {"simple": "ROUND_ROBIN"}),
            "outlierDetection": {
                "consecutive5xxErrors": policy.failure_threshold,
                "interval": protobuf_duration(OUTLIER_INTERVAL_MS),
                "baseEjectionTime": protobuf_duration(round(policy.open_seconds * 1000)),
                "maxEjectionPercent": 100,
            },
        },
    }
    subsets = [
        {"name": subset_name(version), "labels": {VERSION_LABEL: label_value(version)}}
        for version in subset_versions(service)
    ]
    if subsets:
        spec["subsets"] = subsets
    return {
        "apiVersion": NETWORKING_API,
        "kind": "DestinationRule",
        "metadata": object_meta(name=dns_label(service.name), service_name=service.name, options=options),
        "spec": spec,
    }


def http_route(service: MeshService, options: KubernetesOptions) -> dict[str, Any]:
    plan = routing_plan(service)
    target = host(service.name, options)
    if plan.kind is Plan.NONE:
        return {"name": "no-instance", "directResponse": {"status": NO_SERVER_STATUS}}

    route: dict[str, Any] = {"name": "default"}
    if plan.by_version:
        route["route"] = [
            {"destination": {"host": target, "subset": subset_name(version)}, "weight": weight}
            for version, weight in integer_weights(plan.shares, total=ROUTE_TOTAL_WEIGHT)
        ]
    else:
        route["route"] = [{"destination": {"host": target}}]

    settings = service.settings
    if settings.timeout_ms is not None:
        route["timeout"] = protobuf_duration(settings.timeout_ms)
    if settings.retries:
        retries: dict[str, Any] = {"attempts": settings.retries, "retryOn": ",".join(settings.retry_on)}
        if settings.per_try_timeout_ms is not None:
            retries["perTryTimeout"] = protobuf_duration(settings.per_try_timeout_ms)
        route["retries"] = retries
    return route


def virtual_service(service: MeshService, options: KubernetesOptions) -> dict[str, Any]:
    return {
        "apiVersion": NETWORKING_API,
        "kind": "VirtualService",
        "metadata": object_meta(name=dns_label(service.name), service_name=service.name, options=options),
        "spec": {"hosts": [host(service.name, options)], "http": [http_route(service, options)]},
    }


def authorization_policy(state: MeshState, destination: str, options: KubernetesOptions) -> dict[str, Any] | None:
    """The policy that enforces who may call ``destination``; None when everyone may."""
    access = access_for(state.access, destination)
    if access.open:
        return None

    def principals(callers: tuple[str, ...]) -> list[str]:
        found = {
            spiffe_principal(caller, namespace=options.namespace, trust_domain=options.trust_domain)
            for caller in callers
        }
        return sorted(found)

    spec: dict[str, Any] = {"selector": {"matchLabels": {APP_LABEL: dns_label(destination)}}}
    if access.others and access.anonymous:
        spec["action"] = "DENY"
        spec["rules"] = [{"from": [{"source": {"principals": principals(access.denied)}}]}]
    elif access.others:
        source: dict[str, Any] = {"principals": ["*"]}
        if access.denied:
            source["notPrincipals"] = principals(access.denied)
        spec["action"] = "ALLOW"
        spec["rules"] = [{"from": [{"source": source}]}]
    else:
        spec["action"] = "ALLOW"
        if access.allowed:
            spec["rules"] = [{"from": [{"source": {"principals": principals(access.allowed)}}]}]
    return {
        "apiVersion": SECURITY_API,
        "kind": "AuthorizationPolicy",
        "metadata": object_meta(name=dns_label(destination), service_name=destination, options=options),
        "spec": spec,
    }


def authorization_policies(state: MeshState, options: KubernetesOptions) -> list[dict[str, Any]]:
    if not state.access.restricts:
        return []
    destinations = sorted({service.name for service in state.services} | set(state.access.destinations()))
    policies = (authorization_policy(state, destination, options) for destination in destinations)
    return [policy for policy in policies if policy is not None]


def istio_resources(state: MeshState, options: KubernetesOptions) -> list[dict[str, Any]]:
    """Every Istio object for the state, in a stable order: routing per service, then access."""
    resources: list[dict[str, Any]] = []
    for service in state.routable():
        resources.append(virtual_service(service, options))
        resources.append(destination_rule(state, service, options))
    resources.extend(authorization_policies(state, options))
    return resources
