"""
Gateway API HTTPRoutes for service meshes (the GAMMA pattern) from a ``MeshState``.

Each service gets one HTTPRoute attached to its own Kubernetes Service (``parentRefs`` of kind
``Service``), so the mesh applies it to every call to that Service. Traffic goes:

- to the Service itself when every instance may serve;
- to one Service per version, ``<service>-<version>``, weighted as ``model.routing_plan`` says,
  when there is a split or a retired version. Those per-version Services select
  ``app: <service>, version: <version>`` and must exist in the cluster (TODO: LATER: generate them
  too, once the operator owns Services; until then they are the user's to create);
- nowhere when nothing may serve: a rule without backends, which the mesh answers with 500.

Gateway API allows at most ``MAX_BACKENDS`` backends in a rule. A split over more versions keeps
the heaviest ``MAX_BACKENDS``, their weights scaled to the same total, and the route says so in the
``maxine.io/dropped-backends`` annotation.

``metadata.mesh.timeoutMs`` becomes the rule's request timeout and ``perTryTimeoutMs`` its backend
request timeout. Retries are not part of the standard channel, so they are not written here
(Linkerd's own HTTPRoute carries them as annotations; see ``linkerd``).

Linkerd's ``policy.linkerd.io`` HTTPRoute has the same shape, so ``http_route`` builds both.
"""

from __future__ import annotations

import logging
from typing import Any

from maxine_registry.mesh.model import (
    KubernetesOptions,
    MeshService,
    MeshState,
    Plan,
    integer_weights,
    object_meta,
    routing_plan,
    top_shares,
)
from maxine_registry.mesh.names import dns_label, join_name

logger = logging.getLogger(__name__)

GATEWAY_API = "gateway.networking.k8s.io/v1"
MAX_BACKENDS = 16  # the CRD's maxItems for backendRefs
BACKEND_TOTAL_WEIGHT = 100
DROPPED_BACKENDS_ANNOTATION = "maxine.io/dropped-backends"


def version_service_name(service_name: str, version: str) -> str:
    """The Kubernetes Service of one version of a service: ``<service>-<version>``, kept to 63 characters."""
    return join_name(dns_label(service_name), dns_label(version))


def gateway_duration(milliseconds: int) -> str:
    """A Gateway API duration (GEP-2257): up to four of h, m, s and ms, with no fractions (``1m30s250ms``)."""
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    parts = [
        f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")) if value
    ]
    return "".join(parts) or "0s"


def http_route(service: MeshService, options: KubernetesOptions, *, api_version: str) -> dict[str, Any] | None:
    """The HTTPRoute for one service; None when it has no instance, hence no port to route to."""
    port = service.port
    if port is None:
        return None
    name = dns_label(service.name)
    metadata = object_meta(name=name, service_name=service.name, options=options)

    plan = routing_plan(service)
    backends: list[dict[str, Any]]
    if plan.kind is Plan.ALL:
        backends = [{"name": name, "port": port}]
    elif plan.kind is Plan.NONE:
        backends = []
    else:
        kept = top_shares(plan.shares, limit=MAX_BACKENDS)
        if len(kept) < len(plan.shares):
            dropped = sorted({version for version, _ in plan.shares} - {version for version, _ in kept})
            metadata["annotations"][DROPPED_BACKENDS_ANNOTATION] = ",".join(dropped)
        weights = integer_weights(kept, total=BACKEND_TOTAL_WEIGHT)
        backends = [
            {"name": version_service_name(service.name, version), "port": port, "weight": weight}
            for version, weight in weights
        ]

    rule: dict[str, Any] = {"backendRefs": backends}
    settings = service.settings
    timeouts: dict[str, str] = {}
    if settings.timeout_ms is not None:
        timeouts["request"] = gateway_duration(settings.timeout_ms)
    if settings.per_try_timeout_ms is not None:
        # The backend timeout may not exceed the whole request's.
        per_try = min(settings.per_try_timeout_ms, settings.timeout_ms or settings.per_try_timeout_ms)
        timeouts["backendRequest"] = gateway_duration(per_try)
    if timeouts:
        rule["timeouts"] = timeouts

    return {
        "apiVersion": api_version,
        "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": name, "port": port}], "rules": [rule]},
    }


def gateway_api_resources(state: MeshState, options: KubernetesOptions) -> list[dict[str, Any]]:
    """One HTTPRoute per routable service that has instances."""
    routes = (http_route(service, options, api_version=GATEWAY_API) for service in state.routable())
    return [route for route in routes if route is not None]
