"""
Service-mesh configuration from the registry's state: Envoy, Istio, Linkerd, Gateway API and SMI.

The HTTP routes (``/service-mesh/*``, Envoy's xDS) and the operator use this one library, so that
every consumer gets the same resources from the same state. Build a ``MeshState`` (from a live
registry with ``build_mesh_state``, or by hand), then call a generator; each is a pure function
that returns plain dicts, sorted and named the same way every time.
"""

from maxine_registry.mesh.envoy import EnvoyOptions, dynamic_bootstrap, static_bootstrap
from maxine_registry.mesh.gateway_api import gateway_api_resources
from maxine_registry.mesh.istio import istio_resources
from maxine_registry.mesh.linkerd import linkerd_resources
from maxine_registry.mesh.model import (
    AccessRules,
    KubernetesOptions,
    MeshInstance,
    MeshService,
    MeshSettings,
    MeshState,
    build_mesh_state,
    parse_mesh_settings,
    validate_mesh_metadata,
)
from maxine_registry.mesh.smi import smi_resources

__all__ = [
    "AccessRules",
    "EnvoyOptions",
    "KubernetesOptions",
    "MeshInstance",
    "MeshService",
    "MeshSettings",
    "MeshState",
    "build_mesh_state",
    "dynamic_bootstrap",
    "gateway_api_resources",
    "istio_resources",
    "linkerd_resources",
    "parse_mesh_settings",
    "smi_resources",
    "static_bootstrap",
    "validate_mesh_metadata",
]
