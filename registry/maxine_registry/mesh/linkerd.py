"""
Linkerd resources from a ``MeshState``: ServiceProfiles, HTTPRoutes, and Server, AuthorizationPolicy
and MeshTLSAuthentication for access.

- A ServiceProfile per service, named by its FQDN, with one route for every path. The route is
  retryable when ``metadata.mesh.retries`` is set, and carries ``timeoutMs``; Linkerd retries
  within a budget (``RETRY_BUDGET``) rather than a count, so the count itself goes to the HTTPRoute.
- A ``policy.linkerd.io`` HTTPRoute per service, shaped as the Gateway API one (weighted backends
  per version for splits; see ``gateway_api``), with retries as Linkerd's annotations:
  ``retry.linkerd.io/http`` (the HTTP conditions of ``retryOn``: ``5xx``, ``gateway-error``, and
  ``409`` for ``retriable-4xx``; Linkerd retries failed connections by itself),
  ``retry.linkerd.io/limit`` and ``retry.linkerd.io/timeout``.
- Access per destination and port: a Server selecting the service's pods on that port, which
  refuses everyone not authorised; an AuthorizationPolicy for it; and a MeshTLSAuthentication
  listing the identities let in (service accounts, or ``*`` for every meshed identity).

Linkerd authorises but never denies, and meshed identities are all it can name. So:
every caller let in: no objects at all; every meshed caller: identity ``*``; only some named
callers: those. When everyone but a few named callers may call, the closest rule that lets none of
them in is taken: every caller Maxine knows of (every service, every caller a rule names) that may
call, listed one by one; unknown and unmeshed callers are then refused too. The AuthorizationPolicy
says so in its ``maxine.io/approximation`` annotation.
"""

from __future__ import annotations

import logging
from typing import Any

from maxine_registry.mesh.gateway_api import http_route
from maxine_registry.mesh.model import (
    APP_LABEL,
    KubernetesOptions,
    MeshService,
    MeshState,
    access_for,
    go_duration,
    object_meta,
)
from maxine_registry.mesh.names import dns_label, join_name, service_account

logger = logging.getLogger(__name__)

PROFILE_API = "linkerd.io/v1alpha2"
POLICY_API = "policy.linkerd.io/v1beta3"
AUTHORIZATION_API = "policy.linkerd.io/v1alpha1"
POLICY_GROUP = "policy.linkerd.io"
RETRY_BUDGET = {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"}
LINKERD_RETRY_CONDITIONS = {"5xx": "5xx", "gateway-error": "gateway-error", "retriable-4xx": "409"}
APPROXIMATION_ANNOTATION = "maxine.io/approximation"
APPROXIMATION_NOTE = (
    "Linkerd cannot refuse single identities: the known callers that may call are listed, and everyone else is refused."
)


def service_profile(service: MeshService, options: KubernetesOptions) -> dict[str, Any]:
    settings = service.settings
    route: dict[str, Any] = {"name": "all", "condition": {"pathRegex": ".*"}, "isRetryable": settings.retries > 0}
    if settings.timeout_ms is not None:
        route["timeout"] = go_duration(settings.timeout_ms)
    name = f"{dns_label(service.name)}.{options.namespace}.svc.{options.cluster_domain}"
    return {
        "apiVersion": PROFILE_API,
        "kind": "ServiceProfile",
        "metadata": object_meta(name=name, service_name=service.name, options=options),
        "spec": {"routes": [route], "retryBudget": dict(RETRY_BUDGET)},
    }


def linkerd_http_route(service: MeshService, options: KubernetesOptions) -> dict[str, Any] | None:
    route = http_route(service, options, api_version=POLICY_API)
    if route is None:
        return None
    settings = service.settings
    if settings.retries:
        annotations = route["metadata"]["annotations"]
        conditions = sorted(
            {LINKERD_RETRY_CONDITIONS[item] for item in settings.retry_on if item in LINKERD_RETRY_CONDITIONS}
        )
        if conditions:
            annotations["retry.linkerd.io/http"] = ",".join(conditions)
        annotations["retry.linkerd.io/limit"] = str(settings.retries)
        if settings.per_try_timeout_ms is not None:
            annotations["retry.linkerd.io/timeout"] = go_duration(settings.per_try_timeout_ms)
    return route


def _identity_refs(callers: list[str], options: KubernetesOptions) -> list[dict[str, str]]:
    accounts = sorted({service_account(caller, namespace=options.namespace) for caller in callers})
    return [{"kind": "ServiceAccount", "name": name, "namespace": namespace} for namespace, name in accounts]


def access_resources(state: MeshState, service: MeshService, options: KubernetesOptions) -> list[dict[str, Any]]:
    """Server, AuthorizationPolicy and MeshTLSAuthentication for each port of ``service``; none when all may call."""
    access = access_for(state.access, service.name)
    if access.open or not service.ports:
        return []

    # Who to let in, as Linkerd can say it; see the module docstring.
    approximated = False
    identities: dict[str, Any] | None
    if access.others and not access.denied:
        identities = {"identities": ["*"]}
    elif access.others:
        approximated = True
        known = sorted({item.name for item in state.services} | set(access.allowed))
        callers = [name for name in known if state.access.allows(source=name, destination=service.name)]
        identities = {"identityRefs": _identity_refs(callers, options)} if callers else None
    else:
        approximated = access.anonymous
        identities = {"identityRefs": _identity_refs(list(access.allowed), options)} if access.allowed else None

    resources: list[dict[str, Any]] = []
    for port in sorted(service.ports):
        name = join_name(dns_label(service.name), str(port))
        resources.append(
            {
                "apiVersion": POLICY_API,
                "kind": "Server",
                "metadata": object_meta(name=name, service_name=service.name, options=options),
                "spec": {
                    "podSelector": {"matchLabels": {APP_LABEL: dns_label(service.name)}},
                    "port": port,
                    "accessPolicy": "deny",
                },
            }
        )
        if identities is None:
            # A Server nobody is authorised for refuses every caller.
            continue
        resources.append(
            {
                "apiVersion": AUTHORIZATION_API,
                "kind": "MeshTLSAuthentication",
                "metadata": object_meta(name=name, service_name=service.name, options=options),
                "spec": identities,
            }
        )
        policy_meta = object_meta(name=name, service_name=service.name, options=options)
        if approximated:
            policy_meta["annotations"][APPROXIMATION_ANNOTATION] = APPROXIMATION_NOTE
        resources.append(
            {
                "apiVersion": AUTHORIZATION_API,
                "kind": "AuthorizationPolicy",
                "metadata": policy_meta,
                "spec": {
                    "targetRef": {"group": POLICY_GROUP, "kind": "Server", "name": name},
                    "requiredAuthenticationRefs": [
                        {"group": POLICY_GROUP, "kind": "MeshTLSAuthentication", "name": name}
                    ],
                },
            }
        )
    return resources


def linkerd_resources(state: MeshState, options: KubernetesOptions) -> list[dict[str, Any]]:
    """Every Linkerd object for the state, service by service, in a stable order."""
    resources: list[dict[str, Any]] = []
    for service in state.routable():
        resources.append(service_profile(service, options))
        route = linkerd_http_route(service, options)
        if route is not None:
            resources.append(route)
    if state.access.restricts:
        for service in state.services:
            resources.extend(access_resources(state, service, options))
    return resources
