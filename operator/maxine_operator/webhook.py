"""
Sidecar injection: pods annotated ``maxine.io/inject: "true"`` get a ``maxine-sidecar`` container.

The operator serves this as a kopf mutating admission webhook. The patch it answers with adds one
container that runs ``maxine-sidecar`` (configured as the README's sidecar section describes, the
same container the Helm chart writes) with what it needs to register the pod:

- ``POD_NAME``, ``POD_NAMESPACE``, ``POD_IP`` from the Downward API (the IP is known only once the
  pod runs, which is why it cannot be written into the spec here);
- ``MAXINE_URL``, the registry;
- ``SERVICE_NAME`` from ``maxine.io/service-name`` (else the pod's ``app.kubernetes.io/name`` or
  ``app`` label), and ``SERVICE_PORT`` from ``maxine.io/port`` (else the first container port);
- ``SERVICE_METADATA`` with the pod's ``version`` label as ``version``, so that the registry's
  splits and the meshes' version subsets name the same pods;
- ``READINESS_URL`` when ``maxine.io/readiness-path`` names the app's readiness path on that port;
- ``HEALTHZ_HOST`` ``0.0.0.0`` and a liveness probe on the sidecar's ``/healthz``.

Injection is idempotent: a pod that already has a container of that name is left as it is, so a
webhook called twice (reinvocation, a retried request) never adds two sidecars.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

INJECT_ANNOTATION = "maxine.io/inject"
SERVICE_NAME_ANNOTATION = "maxine.io/service-name"
PORT_ANNOTATION = "maxine.io/port"
READINESS_PATH_ANNOTATION = "maxine.io/readiness-path"
VERSION_LABEL = "version"
HEALTHZ_PORT = 8099
SIDECAR_CONTAINER = "maxine-sidecar"
SIDECAR_COMMAND = "maxine-sidecar"
NAME_LABELS = ("app.kubernetes.io/name", "app")
# Small and fixed: the sidecar only registers and heartbeats.
SIDECAR_RESOURCES = {"requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "96Mi"}}


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def pod_service_name(pod: Mapping[str, Any]) -> str | None:
    metadata = pod.get("metadata") or {}
    annotated = (metadata.get("annotations") or {}).get(SERVICE_NAME_ANNOTATION)
    if annotated:
        return str(annotated)
    labels = metadata.get("labels") or {}
    return next((str(labels[label]) for label in NAME_LABELS if labels.get(label)), None)


def pod_port(pod: Mapping[str, Any]) -> str | None:
    annotated = ((pod.get("metadata") or {}).get("annotations") or {}).get(PORT_ANNOTATION)
    if annotated:
        return str(annotated)
    for container in (pod.get("spec") or {}).get("containers") or ():
        for port in container.get("ports") or ():
            if isinstance(port.get("containerPort"), int):
                return str(port["containerPort"])
    return None


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    return any(
        container.get("name") == SIDECAR_CONTAINER for container in (pod.get("spec") or {}).get("containers") or ()
    )


def sidecar_container(
    *, image: str, registry_url: str, service_name: str | None, port: str | None, pod: Mapping[str, Any]
) -> dict[str, Any]:
    metadata = pod.get("metadata") or {}
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_IP", "status.podIP"),
        {"name": "MAXINE_URL", "value": registry_url},
        # All interfaces: the kubelet probes /healthz from outside the pod.
        {"name": "HEALTHZ_HOST", "value": "0.0.0.0"},
    ]
    if service_name:
        env.append({"name": "SERVICE_NAME", "value": service_name})
    if port:
        env.append({"name": "SERVICE_PORT", "value": port})
    version = (metadata.get("labels") or {}).get(VERSION_LABEL)
    if version:
        env.append({"name": "SERVICE_METADATA", "value": json.dumps({"version": str(version)})})
    readiness_path = (metadata.get("annotations") or {}).get(READINESS_PATH_ANNOTATION)
    if readiness_path and port:
        path = readiness_path if readiness_path.startswith("/") else "/" + readiness_path
        env.append({"name": "READINESS_URL", "value": f"http://127.0.0.1:{port}{path}"})
    return {
        "name": SIDECAR_CONTAINER,
        "image": image,
        "command": [SIDECAR_COMMAND],
        "env": env,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": HEALTHZ_PORT}},
        "resources": SIDECAR_RESOURCES,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


# TODO: LATER: a registry with auth on needs MAXINE_TOKEN in the sidecar, from a Secret the pod names in an
# annotation; until then such pods must carry the variable themselves.
def injection(pod: Mapping[str, Any], *, image: str, registry_url: str) -> tuple[dict[str, Any] | None, list[str]]:
    """
    The container to add to this pod (None when nothing is to be done), and warnings for the user.

    A pod that names no service or port still gets the sidecar, with a warning: the sidecar reports
    what is missing at its start, which is where a person looks first.
    """
    if has_sidecar(pod):
        return None, []
    service_name = pod_service_name(pod)
    port = pod_port(pod)
    warnings = []
    if service_name is None:
        warnings.append(f"maxine: no {SERVICE_NAME_ANNOTATION} annotation or app label; the sidecar cannot register.")
    if port is None:
        warnings.append(f"maxine: no {PORT_ANNOTATION} annotation or container port; the sidecar cannot register.")
    container = sidecar_container(image=image, registry_url=registry_url, service_name=service_name, port=port, pod=pod)
    return container, warnings
