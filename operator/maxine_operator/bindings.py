"""
How each custom resource maps onto registry entries: what it puts there, and what it takes away.

A binding turns a resource's ``spec`` into registry writes. Each one answers three questions:

- ``record(spec)``: which registry entries does this spec own? (its identity: the ACL's service, the
  intention's pair, the config's address and keys, the dependency's edges). The operator keeps the
  record it last pushed in ``status.applied``.
- ``push(api, spec)``: write the spec into the registry. Every push is idempotent, so the same spec
  can be pushed by the create handler, the resync timer and the restart watchdog alike.
- ``prune(api, previous=..., current=...)``: remove what ``previous`` owned and ``current`` no longer
  does. A rename (a new service name, a new intention pair) removes the old entry; a deletion is a
  prune with ``current=None``. Entries already gone count as removed.

Keeping the last record in the status, rather than diffing old and new specs, means that a change
made while the operator was down is still cleaned up: the record says what is really in the
registry, whatever happened to the spec in between.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from maxine_operator import crds
from maxine_operator.registry_api import RegistryApi

logger = logging.getLogger(__name__)

Record = dict[str, Any]
Spec = Mapping[str, Any]

DEFAULT_CONFIG_NAMESPACE = "default"


class Binding(abc.ABC):
    """The registry side of one custom resource kind."""

    resource: ClassVar[crds.CustomResource]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.resource.kind!r})"

    @abc.abstractmethod
    def record(self, spec: Spec) -> Record:
        """The registry entries this spec owns, as stored in ``status.applied``."""

    @abc.abstractmethod
    async def push(self, api: RegistryApi, spec: Spec) -> None:
        """Write the spec into the registry (idempotent)."""

    @abc.abstractmethod
    async def prune(self, api: RegistryApi, *, previous: Record, current: Record | None) -> None:
        """Remove what ``previous`` owns and ``current`` does not; ``current=None`` removes everything."""

    def describe(self, spec: Spec) -> str:
        """A few words for status messages and events."""
        return f"service {spec.get('serviceName')!r}"


class AclBinding(Binding):
    resource = crds.ACL

    def record(self, spec: Spec) -> Record:
        return {"serviceName": spec["serviceName"]}

    async def push(self, api: RegistryApi, spec: Spec) -> None:
        await api.set_acl(
            service_name=spec["serviceName"], allow=list(spec.get("allow") or []), deny=list(spec.get("deny") or [])
        )

    async def prune(self, api: RegistryApi, *, previous: Record, current: Record | None) -> None:
        if current != previous:
            await api.delete_acl(service_name=previous["serviceName"])


class IntentionBinding(Binding):
    resource = crds.INTENTION

    def record(self, spec: Spec) -> Record:
        return {"source": spec["source"], "destination": spec["destination"]}

    async def push(self, api: RegistryApi, spec: Spec) -> None:
        await api.set_intention(source=spec["source"], destination=spec["destination"], action=spec["action"])

    async def prune(self, api: RegistryApi, *, previous: Record, current: Record | None) -> None:
        if current != previous:
            await api.delete_intention(source=previous["source"], destination=previous["destination"])

    def describe(self, spec: Spec) -> str:
        return f"intention {spec.get('source')!r} -> {spec.get('destination')!r}: {spec.get('action')}"


def split_distribution(spec: Spec) -> dict[str, float]:
    return {split["version"]: float(split["weight"]) for split in spec["splits"]}


def split_summary(spec: Spec) -> str:
    """The split as ``kubectl get`` shows it: ``v1=90,v2=10``."""
    return ",".join(f"{split['version']}={split['weight']}" for split in spec["splits"])


# TODO: LATER: two resources for the same service (two splits, two ACLs) overwrite each other in the registry,
# last writer wins; the operator could detect the overlap and mark the younger one not Synced.
class TrafficSplitBinding(Binding):
    resource = crds.TRAFFIC_SPLIT

    def record(self, spec: Spec) -> Record:
        return {"serviceName": spec["serviceName"]}

    async def push(self, api: RegistryApi, spec: Spec) -> None:
        await api.set_traffic(service_name=spec["serviceName"], distribution=split_distribution(spec))

    async def prune(self, api: RegistryApi, *, previous: Record, current: Record | None) -> None:
        if current != previous:
            await api.delete_traffic(service_name=previous["serviceName"])


def config_scope(record: Mapping[str, Any]) -> dict[str, str]:
    return {"namespace": record["namespace"], "region": record["region"], "zone": record["zone"]}


class ServiceConfigBinding(Binding):
    resource = crds.SERVICE_CONFIG

    def record(self, spec: Spec) -> Record:
        scope = spec.get("scope") or {}
        return {
            "serviceName": spec["serviceName"],
            "namespace": scope.get("namespace") or DEFAULT_CONFIG_NAMESPACE,
            "region": scope.get("region") or "",
            "zone": scope.get("zone") or "",
            "keys": sorted(spec["values"]),
        }

    async def push(self, api: RegistryApi, spec: Spec) -> None:
        record = self.record(spec)
        scope = config_scope(record)
        for key in record["keys"]:
            await api.set_config(service_name=record["serviceName"], key=key, value=spec["values"][key], scope=scope)

    async def prune(self, api: RegistryApi, *, previous: Record, current: Record | None) -> None:
        # Keys stay only when the address (service and scope) is the same and the key is still there.
        same_address = current is not None and {k: v for k, v in current.items() if k != "keys"} == {
            k: v for k, v in previous.items() if k != "keys"
        }
        kept = set(current["keys"]) if current is not None and same_address else set()
        scope = config_scope(previous)
        for key in previous["keys"]:
            if key not in kept:
                await api.delete_config(service_name=previous["serviceName"], key=key, scope=scope)


class DependencyBinding(Binding):
    resource = crds.DEPENDENCY

    def record(self, spec: Spec) -> Record:
        return {"serviceName": spec["serviceName"], "dependsOn": sorted(set(spec["dependsOn"]))}

    async def push(self, api: RegistryApi, spec: Spec) -> None:
        for depends_on in self.record(spec)["dependsOn"]:
            await api.add_dependency(service_name=spec["serviceName"], depends_on=depends_on)

    async def prune(self, api: RegistryApi, *, previous: Record, current: Record | None) -> None:
        kept: set[str] = set()
        if current is not None and current["serviceName"] == previous["serviceName"]:
            kept = set(current["dependsOn"])
        for depends_on in previous["dependsOn"]:
            if depends_on not in kept:
                await api.remove_dependency(service_name=previous["serviceName"], depends_on=depends_on)


BINDINGS: tuple[Binding, ...] = (
    AclBinding(),
    IntentionBinding(),
    TrafficSplitBinding(),
    ServiceConfigBinding(),
    DependencyBinding(),
)
