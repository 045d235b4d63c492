"""
The registry's own part of a snapshot: its instances and its traffic policies.

An instance is saved as a client would register it (service, host, port, metadata, ttl), and
restored through the same validation and the same ``Registry.register`` a registration takes, so
a snapshot cannot put into the registry anything a client could not. A restored instance starts
a fresh lease of its ttl: its owner has that long to heartbeat before it expires, as after any
registration. Health, circuit breakers and response-time averages are runtime observations and
are not saved; health checks and outcome reports rebuild them.

Restoring replaces: the instances and policies present before are removed (and their removal
published as events), then the snapshot's are put in place. Registration guards (ACLs,
blacklists) are not consulted: a restore is an admin putting back a state, not a client joining.
"""

from __future__ import annotations

from typing import Any

from maxine_registry.errors import InvalidInput, MaxineError, Unavailable
from maxine_registry.model import validate_service_name
from maxine_registry.registration import Registration, parse_registration, parse_version
from maxine_registry.registry import Registry
from maxine_registry.snapshots import Apply
from maxine_registry.traffic import parse_distribution

PART_NAME = "registry"


def _where(field: str, error: MaxineError) -> InvalidInput:
    return InvalidInput(f"{field}: {error.message}", code=error.code)


class RegistrySnapshotPart:
    def __init__(self, registry: Registry, *, max_metadata_bytes: int) -> None:
        self.registry = registry
        self.max_metadata_bytes = max_metadata_bytes

    def __repr__(self) -> str:
        return f"RegistrySnapshotPart(registry={self.registry!r})"

    def export(self) -> dict[str, Any]:
        instances = [
            {
                "serviceName": instance.service_name,
                "host": instance.host,
                "port": instance.port,
                "metadata": instance.metadata,
                "ttl": instance.ttl,
            }
            for service in self.registry.services()
            for instance in service.instances.values()
        ]
        return {"instances": instances, "traffic": self.registry.export_traffic()}

    def prepare(self, data: Any) -> Apply:
        if not isinstance(data, dict):
            raise InvalidInput("The registry part must be an object with instances and traffic.")
        registrations = self._registrations(data.get("instances", []))
        policies = self._policies(data.get("traffic", {}))
        registry = self.registry

        def apply() -> None:
            for service in registry.services():
                for instance in list(service.instances.values()):
                    registry.deregister(instance.node_id)
            registry.replace_traffic(policies)
            for registration in registrations:
                registry.register(registration)

        return apply

    def _registrations(self, items: object) -> list[Registration]:
        if not isinstance(items, list):
            raise InvalidInput("instances must be a list of registrations.")
        registrations: list[Registration] = []
        for index, item in enumerate(items):
            try:
                registrations.append(parse_registration(item, max_metadata_bytes=self.max_metadata_bytes))
            except MaxineError as error:
                raise _where(f"instances[{index}]", error) from None

        # Once the present instances are gone, every distinct one in the snapshot must fit.
        distinct = {(item.service_name, item.host, item.port) for item in registrations}
        limit = self.registry.max_instances
        if len(distinct) > limit:
            raise Unavailable(
                f"The snapshot holds {len(distinct)} instances; this registry holds at most {limit}.",
                code="registry_full",
            )
        return registrations

    def _policies(self, items: object) -> dict[str, tuple[dict[str, float], set[str]]]:
        if not isinstance(items, dict):
            raise InvalidInput("traffic must be an object of service name to policy.")
        policies: dict[str, tuple[dict[str, float], set[str]]] = {}
        for service_name, policy in items.items():
            try:
                name = validate_service_name(service_name)
                if not isinstance(policy, dict):
                    raise InvalidInput("a policy must be an object with distribution and retired.")
                split = policy.get("distribution") or {}
                distribution = parse_distribution(split) if split else {}
                retired_versions = policy.get("retired") or []
                if not isinstance(retired_versions, list):
                    raise InvalidInput("retired must be a list of versions.")
                retired = {version for version in map(parse_version, retired_versions) if version is not None}
            except MaxineError as error:
                raise _where(f"traffic[{service_name!r}]", error) from None
            policies[name] = (distribution, retired)
        return policies
