"""
The registry core: services, their instances and leases, and discovery.

Everything here is synchronous and runs on the event loop's thread, so each operation is atomic
with respect to every other: there are no locks, and no operation can be seen half done. All
transports call these methods and nothing else; they differ only in how they parse and render.

State:
- ``_nodes`` maps each node id to its instance, so heartbeats and deregistrations are one lookup.
- ``_services`` maps a service name to a ``Service``, which holds its instances in registration
  order and a cache of candidate sets per (version, tags) filter, rebuilt lazily after a change.
- ``_by_address`` maps ``host:port`` to the instance (or instances) there, for short node ids.
- the lease wheel finds expired leases (see ``leases``).

Every change to a service bumps its ``revision`` from one registry-wide sequence, which later
powers ETags, watches and cache invalidation.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from maxine_registry import events as ev
from maxine_registry.errors import Conflict, InvalidInput, NoInstance, NotFound, NotRegistered, Unavailable
from maxine_registry.events import EventBus
from maxine_registry.leases import DEFAULT_RESOLUTION, LeaseWheel
from maxine_registry.model import DEFAULT_VERSION, NO_TAGS, Instance, format_address, parse_node_ref
from maxine_registry.registration import Registration
from maxine_registry.strategies import CandidateSet, PickContext, Strategy

logger = logging.getLogger(__name__)

DEFAULT_TTL = 30.0
DEFAULT_MAX_INSTANCES = 1_000_000
# Distinct (version, tags) filters remembered per service; past this the cache starts over, so
# clients sending ever-new tag combinations cannot grow memory without bound.
MAX_CANDIDATE_SETS_PER_SERVICE = 64

CandidateKey = tuple[str | None, frozenset[str]]


@dataclass(slots=True)
class CacheStats:
    """How often discover found its candidate set ready, and how often it had to build it."""

    hits: int = 0
    misses: int = 0


class Service:
    __slots__ = ("_cache_stats", "_candidate_sets", "instances", "name", "revision")

    def __init__(self, name: str, *, cache_stats: CacheStats) -> None:
        self.name = name
        self._cache_stats = cache_stats
        self.instances: dict[str, Instance] = {}
        self.revision = 0
        self._candidate_sets: dict[CandidateKey, CandidateSet] = {}

    def __repr__(self) -> str:
        return f"Service(name={self.name!r}, instances={len(self.instances)}, revision={self.revision})"

    def candidates(self, *, version: str | None, tags: frozenset[str]) -> CandidateSet:
        """The healthy instances matching the filter, cached until the service's revision moves."""
        key = (version, tags)
        candidate_set = self._candidate_sets.get(key)
        if candidate_set is not None and candidate_set.revision == self.revision:
            self._cache_stats.hits += 1
            return candidate_set
        self._cache_stats.misses += 1

        matching = tuple(
            instance
            for instance in self.instances.values()
            if instance.healthy
            and (version is None or (instance.version or DEFAULT_VERSION) == version)
            and tags <= instance.tags
        )
        if candidate_set is None:
            if len(self._candidate_sets) >= MAX_CANDIDATE_SETS_PER_SERVICE:
                self._candidate_sets.clear()
            candidate_set = self._candidate_sets[key] = CandidateSet(matching, self.revision)
        else:
            candidate_set.rebuild(matching, revision=self.revision)
        return candidate_set

    def versions(self) -> list[str]:
        return sorted({instance.version or DEFAULT_VERSION for instance in self.instances.values()})


@dataclass(frozen=True, slots=True)
class RegisterResult:
    instance: Instance
    created: bool


class Registry:
    def __init__(
        self,
        *,
        events: EventBus | None = None,
        default_ttl: float = DEFAULT_TTL,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        heartbeat_events: bool = False,
        lease_resolution: float = DEFAULT_RESOLUTION,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.events = events if events is not None else EventBus(wall=wall)
        self.default_ttl = default_ttl
        self.max_instances = max_instances
        self.heartbeat_events = heartbeat_events
        self.clock = clock
        self.wall = wall
        self.rng = rng if rng is not None else random.Random()
        self._services: dict[str, Service] = {}
        self._nodes: dict[str, Instance] = {}
        self._by_address: dict[str, Instance | list[Instance]] = {}
        self._leases = LeaseWheel(now=clock(), resolution=lease_resolution)
        self._revision = 0
        self.cache_stats = CacheStats()

    def __repr__(self) -> str:
        return f"Registry(services={len(self._services)}, nodes={len(self._nodes)}, revision={self._revision})"

    # Counts and lookups.

    @property
    def service_count(self) -> int:
        return len(self._services)

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    @property
    def revision(self) -> int:
        return self._revision

    def services(self) -> Iterator[Service]:
        return iter(list(self._services.values()))

    def get_service(self, name: str) -> Service | None:
        return self._services.get(name)

    def resolve(self, node_ref: object) -> Instance:
        """Find the instance a node id names, full or short; raise ``NotRegistered`` if none."""
        if isinstance(node_ref, str):
            instance = self._nodes.get(node_ref)
            if instance is not None:
                return instance

        ref = parse_node_ref(node_ref)
        if ref.service_name is not None:
            instance = self._nodes.get(f"{ref.service_name}:{ref.host}:{ref.port}")
            if instance is None:
                raise NotRegistered(f"Node {node_ref!r} is not registered; register it again.")
            return instance

        found = self._by_address.get(ref.short)
        if found is None:
            raise NotRegistered(f"No node is registered at {ref.short}; register it again.")
        if isinstance(found, list):
            names = ", ".join(sorted(instance.node_id for instance in found))
            raise Conflict(
                f"{ref.short} names several nodes ({names}); use the full node id.", code="ambiguous_node_id"
            )
        return found

    # Writes.

    def register(self, registration: Registration) -> RegisterResult:
        now = self.clock()
        ttl = registration.ttl if registration.ttl is not None else self.default_ttl
        node_id = f"{registration.service_name}:{registration.host}:{registration.port}"

        existing = self._nodes.get(node_id)
        if existing is not None:
            changed = existing.metadata_json != registration.metadata_json or existing.ttl != ttl
            shortened = now + ttl < existing.expires_at
            existing.expires_at = now + ttl
            if changed:
                existing.metadata_json = registration.metadata_json
                existing.version = registration.version
                existing.tags = registration.tags
                existing.weight = registration.weight
                existing.ttl = ttl
                existing.invalidate()
                self._touch(self._services[existing.service_name])
            if shortened:
                self._leases.add(existing)
            return RegisterResult(existing, created=False)

        if len(self._nodes) >= self.max_instances:
            raise Unavailable(
                f"The registry holds its limit of {self.max_instances} instances; none can be added.",
                code="registry_full",
            )

        instance = Instance(
            service_name=registration.service_name,
            host=registration.host,
            port=registration.port,
            metadata_json=registration.metadata_json,
            version=registration.version,
            tags=registration.tags or NO_TAGS,
            weight=registration.weight,
            ttl=ttl,
            expires_at=now + ttl,
            registered_at=self.wall(),
        )
        service = self._services.get(instance.service_name)
        if service is None:
            service = self._services[instance.service_name] = Service(
                instance.service_name, cache_stats=self.cache_stats
            )
        service.instances[node_id] = instance
        self._nodes[node_id] = instance
        self._index_address(instance)
        self._leases.add(instance)
        self._touch(service)

        self.events.publish(ev.SERVICE_REGISTERED, {"serviceName": instance.service_name, "nodeId": node_id})
        return RegisterResult(instance, created=True)

    def heartbeat(self, node_ref: object) -> Instance:
        instance = self._nodes.get(node_ref) if isinstance(node_ref, str) else None
        if instance is None:
            instance = self.resolve(node_ref)
        instance.expires_at = self.clock() + instance.ttl
        if self.heartbeat_events:
            self.events.publish(
                ev.SERVICE_HEARTBEAT, {"serviceName": instance.service_name, "nodeId": instance.node_id}
            )
        return instance

    def deregister(self, node_ref: object) -> Instance:
        instance = self.resolve(node_ref)
        self._remove(instance)
        self.events.publish(ev.SERVICE_DEREGISTERED, {"serviceName": instance.service_name, "nodeId": instance.node_id})
        return instance

    def expire_due(self) -> list[Instance]:
        """Remove every instance whose lease has ended; called by the sweeper a few times a second."""
        now = self.clock()
        expired = self._leases.sweep(now, is_current=lambda instance: self._nodes.get(instance.node_id) is instance)
        for instance in expired:
            self._remove(instance)
            self.events.publish(
                ev.SERVICE_UNHEALTHY,
                {"serviceName": instance.service_name, "nodeId": instance.node_id, "reason": "lease_expired"},
            )
        if expired:
            logger.info("Leases ended for %d instance(s); they left discovery.", len(expired))
        return expired

    # Reads.

    def discover(
        self,
        service_name: str,
        *,
        strategy: Strategy,
        version: str | None = None,
        tags: frozenset[str] = NO_TAGS,
        context: PickContext | None = None,
    ) -> Instance:
        service = self._services.get(service_name)
        if service is None:
            raise NotFound(f"Service {service_name!r} has no registered instances.", code="service_not_found")

        candidates = service.candidates(version=version, tags=tags)
        if not candidates.instances:
            self._explain_empty(service, version=version, tags=tags)
        return strategy(candidates, context if context is not None else PickContext(rng=self.rng))

    def versions(self, service_name: str) -> list[str]:
        service = self._services.get(service_name)
        return service.versions() if service is not None else []

    def lease_view(self, instance: Instance) -> dict[str, Any]:
        """Lease details for listings: when it ends, seen from now."""
        return {
            "ttl": instance.ttl,
            "expiresIn": round(max(instance.expires_at - self.clock(), 0.0), 3),
            "registeredAt": int(instance.registered_at * 1000),
        }

    # Internals.

    def _touch(self, service: Service) -> None:
        self._revision += 1
        service.revision = self._revision

    def _remove(self, instance: Instance) -> None:
        del self._nodes[instance.node_id]
        self._unindex_address(instance)
        service = self._services[instance.service_name]
        del service.instances[instance.node_id]
        self._touch(service)
        if not service.instances:
            del self._services[service.name]

    def _index_address(self, instance: Instance) -> None:
        address = format_address(instance.host, instance.port)
        found = self._by_address.get(address)
        if found is None:
            self._by_address[address] = instance
        elif isinstance(found, list):
            found.append(instance)
        else:
            self._by_address[address] = [found, instance]

    def _unindex_address(self, instance: Instance) -> None:
        address = format_address(instance.host, instance.port)
        found = self._by_address.get(address)
        if found is instance:
            del self._by_address[address]
        elif isinstance(found, list):
            found.remove(instance)
            if len(found) == 1:
                self._by_address[address] = found[0]

    def _explain_empty(self, service: Service, *, version: str | None, tags: frozenset[str]) -> None:
        if any(
            (version is None or (instance.version or DEFAULT_VERSION) == version) and tags <= instance.tags
            for instance in service.instances.values()
        ):
            raise Unavailable(
                f"Service {service.name!r} has matching instances, but none is healthy.", code="no_healthy_instance"
            )
        wanted = []
        if version is not None:
            wanted.append(f"version {version!r}")
        if tags:
            wanted.append(f"tags {sorted(tags)}")
        raise NoInstance(f"Service {service.name!r} has no instance with {' and '.join(wanted)}.")


def parse_tag_filter(value: str | None) -> frozenset[str]:
    """Tags as a discover query gives them: comma-separated, blanks ignored."""
    if not value:
        return NO_TAGS
    tags = frozenset(tag.strip() for tag in value.split(",") if tag.strip())
    if len(tags) > 32:
        raise InvalidInput("A discover request may filter on at most 32 tags.")
    return tags
