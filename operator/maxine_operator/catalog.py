"""
Catalog sync: Kubernetes Services annotated ``maxine.io/register: "true"`` appear in the registry.

For each such Service the operator runs one loop (a kopf daemon). Each round it reads the
Service's EndpointSlices, takes the addresses that are ready, and registers each as an instance
of the Maxine service (the ``maxine.io/service-name`` annotation, else the Service's name) with a
lease of ``catalog_ttl`` seconds. Registering is idempotent and renews the lease, so the same call
is both "add" and "heartbeat"; an address that left the slices is deregistered. Rounds run every
third of the lease, and at once when an EndpointSlice of the Service changes (a poke).

When the Service is deleted or loses the annotation, its instances are deregistered. When the
operator stops or hands over to another replica, they are left to their leases: the next active
operator registers them again within one round, and nothing flaps in between.

The port is ``maxine.io/port`` (a number, or the name of an EndpointSlice port), else the first
port of each slice. Addresses of every type are taken (IPv4, IPv6; FQDN slices are skipped, since
the registry wants a host it can print as an address, and an FQDN slice names no pod).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from maxine_operator.registry_api import RegistryApi, RegistryError

logger = logging.getLogger(__name__)

REGISTER_ANNOTATION = "maxine.io/register"
SERVICE_NAME_ANNOTATION = "maxine.io/service-name"
PORT_ANNOTATION = "maxine.io/port"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ENDPOINTSLICE_GROUP = "discovery.k8s.io"
ENDPOINTSLICE_VERSION = "v1"
SKIPPED_ADDRESS_TYPES = frozenset({"FQDN"})


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One address that should be an instance in the registry."""

    host: str
    port: int
    pod: str | None = None
    zone: str | None = None


def maxine_service_name(*, name: str, annotations: Mapping[str, str]) -> str:
    return annotations.get(SERVICE_NAME_ANNOTATION) or name


def _slice_port(slice_ports: Iterable[Mapping[str, Any]], wanted: str | None) -> int | None:
    ports = [port for port in slice_ports if isinstance(port.get("port"), int)]
    if wanted is None:
        return int(ports[0]["port"]) if ports else None
    if wanted.isdigit():
        return int(wanted)
    return next((int(port["port"]) for port in ports if port.get("name") == wanted), None)


# TODO: LATER: one port per Service is registered; a Service with several named ports would need one
# registration per port, or ports in the instance metadata.
def ready_endpoints(slices: Iterable[Mapping[str, Any]], *, port: str | None) -> list[Endpoint]:
    """The ready addresses of these EndpointSlices, with the port chosen as the module docstring says."""
    found: set[Endpoint] = set()
    for endpoint_slice in slices:
        if endpoint_slice.get("addressType") in SKIPPED_ADDRESS_TYPES:
            continue
        slice_port = _slice_port(endpoint_slice.get("ports") or (), port)
        if slice_port is None or not 0 < slice_port < 65536:
            continue
        for endpoint in endpoint_slice.get("endpoints") or ():
            # The API says an absent "ready" is to be read as ready.
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            target = endpoint.get("targetRef") or {}
            for address in endpoint.get("addresses") or ():
                found.add(Endpoint(host=address, port=slice_port, pod=target.get("name"), zone=endpoint.get("zone")))
    return sorted(found)


class ServiceCatalog:
    """The registry instances one Kubernetes Service stands for, and the node ids registered so far."""

    def __init__(self, *, api: RegistryApi, namespace: str, name: str, ttl: float) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.ttl = ttl
        self.registered: set[str] = set()

    def __repr__(self) -> str:
        return f"ServiceCatalog(service={self.namespace}/{self.name}, registered={len(self.registered)})"

    async def sync(self, *, service_name: str, endpoints: Iterable[Endpoint]) -> None:
        """Register (renew) every endpoint, then deregister the node ids that are no longer among them."""
        current: set[str] = set()
        for endpoint in endpoints:
            metadata: dict[str, Any] = {"kubernetes": {"namespace": self.namespace, "service": self.name}}
            if endpoint.pod:
                metadata["kubernetes"]["pod"] = endpoint.pod
            if endpoint.zone:
                metadata["zone"] = endpoint.zone
            node_id = await self.api.register(
                service_name=service_name, host=endpoint.host, port=endpoint.port, ttl=self.ttl, metadata=metadata
            )
            current.add(node_id)
        gone = self.registered - current
        self.registered = current | gone
        for node_id in sorted(gone):
            await self.api.deregister(node_id=node_id)
            self.registered.discard(node_id)
        if gone:
            logger.info("Service %s/%s: deregistered %d address(es) that left.", self.namespace, self.name, len(gone))

    async def deregister_all(self) -> None:
        """Take every instance of this Service out of the registry; failures leave them to their leases."""
        for node_id in sorted(self.registered):
            try:
                await self.api.deregister(node_id=node_id)
            except RegistryError as exc:
                logger.warning("Node %s stays until its lease ends: it could not be deregistered: %s", node_id, exc)
        self.registered.clear()
