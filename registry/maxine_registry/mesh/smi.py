"""
SMI TrafficSplits from a ``MeshState``: one per service whose traffic goes by version.

A TrafficSplit sends the calls to the apex Service (``<service>``) to one Service per version
(``<service>-<version>``, as in ``gateway_api``), weighted as ``model.routing_plan`` says, the
weights summing to 100. Services without a split or a retired version need none.

Two API versions are offered: ``v1alpha4``, the last of the SMI specification, and ``v1alpha2``,
the one Linkerd's SMI extension serves. Their ``spec`` is the same for what Maxine writes.
"""

from __future__ import annotations

import logging
from typing import Any

from maxine_registry.errors import InvalidInput
from maxine_registry.mesh.gateway_api import version_service_name
from maxine_registry.mesh.model import (
    KubernetesOptions,
    MeshService,
    MeshState,
    integer_weights,
    object_meta,
    routing_plan,
)
from maxine_registry.mesh.names import dns_label

logger = logging.getLogger(__name__)

SMI_GROUP = "split.smi-spec.io"
SMI_VERSIONS = ("v1alpha4", "v1alpha2")
DEFAULT_SMI_VERSION = "v1alpha4"
SPLIT_TOTAL_WEIGHT = 100


def parse_smi_version(value: str | None) -> str:
    if not value:
        return DEFAULT_SMI_VERSION
    if value not in SMI_VERSIONS:
        raise InvalidInput(f"apiVersion must be one of {', '.join(SMI_VERSIONS)}, got {value!r}.")
    return value


def traffic_split(service: MeshService, options: KubernetesOptions, *, version: str) -> dict[str, Any] | None:
    plan = routing_plan(service)
    if not plan.by_version:
        return None
    name = dns_label(service.name)
    return {
        "apiVersion": f"{SMI_GROUP}/{version}",
        "kind": "TrafficSplit",
        "metadata": object_meta(name=name, service_name=service.name, options=options),
        "spec": {
            "service": name,
            "backends": [
                {"service": version_service_name(service.name, backend), "weight": weight}
                for backend, weight in integer_weights(plan.shares, total=SPLIT_TOTAL_WEIGHT)
            ],
        },
    }


def smi_resources(
    state: MeshState, options: KubernetesOptions, *, version: str = DEFAULT_SMI_VERSION
) -> list[dict[str, Any]]:
    splits = (traffic_split(service, options, version=version) for service in state.routable())
    return [split for split in splits if split is not None]
