"""
Mesh emission: the Istio, Linkerd, Gateway API and SMI objects that carry splits and intentions into a mesh.

The objects themselves come from the registry's generator library (``maxine_registry.mesh``), the
one the registry's ``/service-mesh/*`` endpoints use, so the operator and the registry never
disagree on what a split or an intention means to a mesh. The operator builds the generators'
input (a ``MeshState``) from its custom resources instead of from a live registry:

- a **traffic split** becomes a service with one stand-in instance per version of the split, on
  the split's ``port`` (80 when not set), and the split as its distribution. The generators then
  route by version exactly as for a registry that had those versions registered;
- an **intention** is part of its destination's access rules. Access is decided per destination
  by all intentions about it together (the most specific rule wins, as in the registry), so the
  objects of a destination are built from every intention resource of the namespace that names it
  (or ``*``), and each of those resources is an owner of them.

A mesh is used when it is enabled (``--meshes``) and its CRDs are served by the cluster (discovery,
cached for ``discovery_ttl``); an object whose own kind is not served (Linkerd's policy CRDs may be
missing while its ServiceProfile is there) is skipped. Every object is labelled
``app.kubernetes.io/managed-by: maxine-operator`` and carries owner references to the custom
resources it stands for, so Kubernetes deletes it with them. Objects are created, or patched when
they differ from what the generator says; patching again with the same content changes nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import kopf

from maxine_operator import crds
from maxine_operator.kube import KubeClient, KubeError, resource_path
from maxine_registry.governance import Intention
from maxine_registry.mesh import (
    AccessRules,
    KubernetesOptions,
    MeshInstance,
    MeshService,
    MeshState,
    gateway_api_resources,
    istio_resources,
    linkerd_resources,
    smi_resources,
)
from maxine_registry.mesh.istio import authorization_policy
from maxine_registry.mesh.linkerd import access_resources
from maxine_registry.mesh.names import dns_label

logger = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "maxine-operator"
DEFAULT_SPLIT_PORT = 80
# The host of the stand-in instances of a split; never contacted, only counted by version.
STAND_IN_HOST = "192.0.2.1"

# Kinds the generators write, by kind: the plural their API serves them under.
PLURALS = {
    "VirtualService": "virtualservices",
    "DestinationRule": "destinationrules",
    "AuthorizationPolicy": "authorizationpolicies",
    "ServiceProfile": "serviceprofiles",
    "HTTPRoute": "httproutes",
    "Server": "servers",
    "MeshTLSAuthentication": "meshtlsauthentications",
    "TrafficSplit": "trafficsplits",
}

# For each mesh, the resource whose presence says the mesh is installed.
MESH_MARKERS: dict[str, tuple[str, str, str]] = {
    "istio": ("networking.istio.io", "v1", "virtualservices"),
    "linkerd": ("linkerd.io", "v1alpha2", "serviceprofiles"),
    "gateway": ("gateway.networking.k8s.io", "v1", "httproutes"),
    "smi": ("split.smi-spec.io", "", "trafficsplits"),  # the version is found at run time
}
SMI_VERSIONS = ("v1alpha4", "v1alpha2")
# The API version the generators write for each group (SMI's is chosen from what the cluster serves).
SERVED_VERSIONS: dict[str, tuple[str, ...]] = {
    "networking.istio.io": ("v1",),
    "security.istio.io": ("v1",),
    "linkerd.io": ("v1alpha2",),
    "policy.linkerd.io": ("v1beta3", "v1alpha1"),
    "gateway.networking.k8s.io": ("v1",),
}


class MeshError(Exception):
    """Mesh objects that could not be written; the custom resource stays synced but not ready."""


@dataclasses.dataclass(frozen=True, slots=True)
class IntentionOwner:
    """An intention resource as the mesh objects of its destination need it: its rule and its owner reference."""

    namespace: str
    source: str
    destination: str
    action: str
    reference: Mapping[str, Any]


def split_state(spec: Mapping[str, Any]) -> MeshState:
    """The generators' input for one traffic split: stand-in instances per version, and the split."""
    service_name = str(spec["serviceName"])
    port = int(spec.get("port") or DEFAULT_SPLIT_PORT)
    versions = sorted(str(split["version"]) for split in spec["splits"])
    instances = tuple(
        MeshInstance(
            node_id=f"{service_name}:{version}",
            host=STAND_IN_HOST,
            port=port,
            version=version,
            weight=1.0,
            healthy=True,
        )
        for version in versions
    )
    distribution = tuple(sorted((str(split["version"]), float(split["weight"])) for split in spec["splits"]))
    return MeshState(services=(MeshService(name=service_name, instances=instances, distribution=distribution),))


def access_state(owners: Iterable[IntentionOwner]) -> AccessRules:
    # TODO: LATER: the registry's INTENTIONS_DEFAULT is taken to be "allow"; a registry run with "deny" needs
    # the operator to learn it (a flag, or the registry exposing it) so that mesh objects deny by default too.
    # TODO: LATER: ACLs and the blacklist are not part of the mesh objects yet, only intentions are.
    intentions = sorted(
        {(owner.source, owner.destination): owner.action for owner in owners}.items(), key=lambda item: item[0]
    )
    return AccessRules(
        intentions=tuple(
            Intention(source=source, destination=destination, action="deny" if action == "deny" else "allow")
            for (source, destination), action in intentions
        )
    )


def describe(obj: Mapping[str, Any]) -> str:
    """An object as ``kind.group/namespace/name`` (``AuthorizationPolicy.security.istio.io/shop/orders``)."""
    metadata = obj.get("metadata") or {}
    group = str(obj.get("apiVersion")).rpartition("/")[0]
    return f"{obj.get('kind')}.{group}/{metadata.get('namespace')}/{metadata.get('name')}"


def merge_patch_between(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (keys absent from ``new`` become None)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            patch[key] = merge_patch_between(old[key], value)
    return patch


class MeshEmitter:
    """Writes the mesh objects of splits and intentions into the cluster, through the operator's client."""

    def __init__(self, *, kube: KubeClient, meshes: Sequence[str]) -> None:
        self.kube = kube
        self.meshes = tuple(meshes)

    def __repr__(self) -> str:
        return f"MeshEmitter(meshes={self.meshes!r})"

    def serves(self, resource: crds.CustomResource) -> bool:
        return bool(self.meshes) and resource in (crds.TRAFFIC_SPLIT, crds.INTENTION)

    async def installed(self) -> dict[str, str]:
        """The enabled meshes whose CRDs the cluster serves, with the API version to use (for SMI)."""
        found: dict[str, str] = {}
        for mesh in self.meshes:
            group, version, plural = MESH_MARKERS[mesh]
            candidates = SMI_VERSIONS if mesh == "smi" else (version,)
            for candidate in candidates:
                if await self.kube.serves(group=group, version=candidate, plural=plural):
                    found[mesh] = candidate
                    break
        return found

    # What to write.

    async def split_objects(self, *, spec: Mapping[str, Any], namespace: str) -> list[dict[str, Any]]:
        state = split_state(spec)
        # TODO: LATER: flags for the mesh's trust domain and the cluster's DNS domain (both cluster.local here).
        options = KubernetesOptions(namespace=namespace)
        installed = await self.installed()
        objects: list[dict[str, Any]] = []
        if "istio" in installed:
            objects += istio_resources(state, options)
        if "linkerd" in installed:
            objects += linkerd_resources(state, options)
        if "gateway" in installed:
            objects += gateway_api_resources(state, options)
        if "smi" in installed:
            objects += smi_resources(state, options, version=installed["smi"])
        return objects

    async def access_objects(
        self, *, destination: str, owners: Sequence[IntentionOwner], namespace: str
    ) -> list[dict[str, Any]]:
        """The access objects of one destination, from every intention that bears on it."""
        rules = access_state(owners)
        state = MeshState(access=rules)
        options = KubernetesOptions(namespace=namespace)
        installed = await self.installed()
        objects: list[dict[str, Any]] = []
        if "istio" in installed:
            policy = authorization_policy(state, destination, options)
            if policy is not None:
                objects.append(policy)
        if "linkerd" in installed:
            ports = await self._service_ports(namespace=namespace, name=dns_label(destination))
            if ports:
                stand_ins = tuple(
                    MeshInstance(
                        node_id=f"{destination}:{port}",
                        host=STAND_IN_HOST,
                        port=port,
                        version="default",
                        weight=1.0,
                        healthy=True,
                    )
                    for port in ports
                )
                service = MeshService(name=destination, instances=stand_ins)
                objects += access_resources(MeshState(services=(service,), access=rules), service, options)
            else:
                logger.info(
                    "No Kubernetes Service %s/%s with ports: Linkerd access objects are skipped.",
                    namespace,
                    destination,
                )
        return objects

    async def _service_ports(self, *, namespace: str, name: str) -> list[int]:
        """The target ports of a Kubernetes Service (what a Linkerd Server selects pods on)."""
        service = await self.kube.get(
            resource_path(group="", version="v1", plural="services", namespace=namespace, name=name)
        )
        ports: set[int] = set()
        for port in ((service or {}).get("spec") or {}).get("ports") or ():
            target = port.get("targetPort")
            value = target if isinstance(target, int) else port.get("port")
            if isinstance(value, int):
                ports.add(value)
        return sorted(ports)

    # Writing.

    async def apply(self, objects: Iterable[Mapping[str, Any]], *, owners: Sequence[Mapping[str, Any]]) -> list[str]:
        """Create or patch each object with these owner references; the objects written, as kind/namespace/name."""
        written: list[str] = []
        try:
            for obj in objects:
                if await self._apply_one(obj, owners=owners):
                    written.append(describe(obj))
        except KubeError as exc:
            raise MeshError(f"Mesh objects could not be written: {exc}") from exc
        return written

    async def _apply_one(self, obj: Mapping[str, Any], *, owners: Sequence[Mapping[str, Any]]) -> bool:
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        plural = PLURALS[str(obj["kind"])]
        if not await self.kube.serves(group=group, version=version, plural=plural):
            logger.debug("Skipping %s: the cluster does not serve %s/%s %s.", describe(obj), group, version, plural)
            return False

        desired = copy.deepcopy(dict(obj))
        metadata = desired.setdefault("metadata", {})
        metadata.setdefault("labels", {})[MANAGED_BY_LABEL] = MANAGED_BY
        metadata["ownerReferences"] = [dict(owner) for owner in owners]
        namespace, name = metadata["namespace"], metadata["name"]
        path = resource_path(group=group, version=version, plural=plural, namespace=namespace, name=name)

        existing = await self.kube.get(path)
        if existing is None:
            await self.kube.create(
                resource_path(group=group, version=version, plural=plural, namespace=namespace), desired
            )
            logger.info("Created %s.", describe(desired))
            return True

        # Only what the generator decides is compared; the server's own metadata is left alone.
        current_meta = existing.get("metadata") or {}
        patch: dict[str, Any] = {}
        for field in ("labels", "annotations", "ownerReferences"):
            if current_meta.get(field) != metadata.get(field):
                patch.setdefault("metadata", {})[field] = metadata.get(field)
        if existing.get("spec") != desired.get("spec"):
            patch["spec"] = merge_patch_between(existing.get("spec") or {}, desired.get("spec") or {})
        if patch:
            await self.kube.merge_patch(path, patch)
            logger.info("Patched %s.", describe(desired))
        return True

    async def delete(self, references: Iterable[str], *, keep: Iterable[str] = ()) -> None:
        """Delete objects named as ``describe`` names them (and ``apply`` returns them), except those in ``keep``."""
        kept = set(keep)
        for reference in references:
            if reference in kept:
                continue
            kind_group, namespace, name = reference.split("/", 2)
            kind, _, group = kind_group.partition(".")
            versions = SMI_VERSIONS if group == MESH_MARKERS["smi"][0] else SERVED_VERSIONS.get(group, ())
            for version in versions:
                if not await self.kube.serves(group=group, version=version, plural=PLURALS[kind]):
                    continue
                path = resource_path(group=group, version=version, plural=PLURALS[kind], namespace=namespace, name=name)
                try:
                    if await self.kube.delete(path):
                        logger.info("Deleted %s, which no longer stands for anything.", reference)
                except KubeError as exc:
                    raise MeshError(f"Mesh object {reference} could not be deleted: {exc}") from exc


def owner_reference(body: Mapping[str, Any], *, controller: bool) -> dict[str, Any]:
    """An owner reference to a custom resource (kopf's builder), for garbage collection with it."""
    raw = cast(kopf.RawBody, dict(body))
    return dict(kopf.build_owner_reference(kopf.Body(raw), controller=controller, block_owner_deletion=True))
