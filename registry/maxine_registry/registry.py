"""
The registry core: services, their instances and leases, and discovery.

Everything here is synchronous and runs on the event loop's thread, so each operation is atomic
with respect to every other: there are no locks, and no operation can be seen half done. All
transports call these methods and nothing else; they differ only in how they parse and render.

State:
- ``_nodes`` maps each node id to its instance, so heartbeats and deregistrations are one lookup.
- ``_services`` maps a service name to a ``Service``, which holds its instances in registration
  order and a cache of candidate sets per (version, tags) filter, rebuilt lazily after a change.
- ``_by_address`` finds the instance (or instances) at a host and port, for short node ids. Most
  clients only ever send full node ids, so it is built on the first short one and kept up to date
  from then on. It is keyed by the instance's own host string, so an entry allocates no key of its
  own: a host with one instance maps to it, a host with several to a dict by port.
- the lease wheel finds expired leases (see ``leases``).

Every change to a service bumps its ``revision`` from one registry-wide sequence, which later
powers ETags, watches and cache invalidation.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from maxine_registry import events as ev
from maxine_registry.breakers import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, CircuitBreaker
from maxine_registry.errors import Conflict, InvalidInput, NoInstance, NotFound, NotRegistered, Unavailable
from maxine_registry.events import EventBus
from maxine_registry.leases import DEFAULT_RESOLUTION, LeaseWheel
from maxine_registry.model import (
    DEFAULT_VERSION,
    NO_TAGS,
    Instance,
    ParsedMetadata,
    make_node_id,
    node_table,
    parse_node_ref,
)
from maxine_registry.registration import Registration
from maxine_registry.strategies import CandidateSet, PickContext, Strategy
from maxine_registry.traffic import TrafficPolicy

logger = logging.getLogger(__name__)

DEFAULT_TTL = 30.0
# A request handed out and never reported back stops counting as in flight after this long.
DEFAULT_INFLIGHT_TIMEOUT = 30.0
EWMA_ALPHA = 0.3
FAILURE_PENALTY_MS = 1000.0
FLAP_WINDOW = 300.0
FLAP_CHANGES = 4
DEFAULT_MAX_INSTANCES = 1_000_000
# With heartbeat events on, at most one service_heartbeat per node in this many seconds.
DEFAULT_HEARTBEAT_EVENT_INTERVAL = 10.0
# Distinct (version, tags) filters remembered per service; past this the cache starts over, so
# clients sending ever-new tag combinations cannot grow memory without bound.
MAX_CANDIDATE_SETS_PER_SERVICE = 64

CandidateKey = tuple[str | None, frozenset[str]]
# Host, then (where a host runs several instances) port, to the instance or instances there.
AddressIndex = dict[str, Instance | dict[int, Instance | list[Instance]]]


@dataclass(slots=True)
class CacheStats:
    """How often discover found its candidate set ready, and how often it had to build it."""

    hits: int = 0
    misses: int = 0


class Service:
    __slots__ = ("_cache_stats", "_candidate_sets", "_everyone", "instances", "name", "retired", "revision")

    def __init__(self, name: str, *, cache_stats: CacheStats, retired: frozenset[str] = frozenset()) -> None:
        self.name = name
        self._cache_stats = cache_stats
        self.instances: dict[str, Instance] = node_table()
        self.revision = 0
        self.retired = retired
        self._candidate_sets: dict[CandidateKey, CandidateSet] = {}
        # The set for no version and no tags, which nearly every discover asks for: one attribute away.
        self._everyone: CandidateSet | None = None

    def __repr__(self) -> str:
        return f"Service(name={self.name!r}, instances={len(self.instances)}, revision={self.revision})"

    def candidates(self, *, version: str | None, tags: frozenset[str]) -> CandidateSet:
        """
        The instances that may serve this filter, cached until the service's revision moves.

        They are healthy, not behind an open breaker, of a version not retired, and match the
        version and every tag asked for. Anything that changes one of these bumps the revision.
        """
        unfiltered = version is None and not tags
        if unfiltered:
            candidate_set = self._everyone
            if candidate_set is not None and candidate_set.revision == self.revision:
                self._cache_stats.hits += 1
                return candidate_set
        key = (version, tags)
        candidate_set = self._candidate_sets.get(key)
        if candidate_set is not None and candidate_set.revision == self.revision:
            self._cache_stats.hits += 1
            return candidate_set
        self._cache_stats.misses += 1

        retired = self.retired
        matching = tuple(
            instance
            for instance in self.instances.values()
            if instance.admitted
            and (version is None or (instance.parsed.version or DEFAULT_VERSION) == version)
            and tags <= instance.parsed.tags
            and (not retired or (instance.parsed.version or DEFAULT_VERSION) not in retired)
        )
        if candidate_set is None:
            if len(self._candidate_sets) >= MAX_CANDIDATE_SETS_PER_SERVICE:
                self._candidate_sets.clear()
            candidate_set = self._candidate_sets[key] = CandidateSet(matching, self.revision)
        else:
            candidate_set.rebuild(matching, revision=self.revision)
        if unfiltered:
            self._everyone = candidate_set
        return candidate_set

    def versions(self) -> list[str]:
        return sorted({instance.version or DEFAULT_VERSION for instance in self.instances.values()})


class Registry:
    def __init__(
        self,
        *,
        events: EventBus | None = None,
        default_ttl: float = DEFAULT_TTL,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        heartbeat_events: bool = False,
        heartbeat_event_interval: float = DEFAULT_HEARTBEAT_EVENT_INTERVAL,
        lease_resolution: float = DEFAULT_RESOLUTION,
        breaker_policy: BreakerPolicy | None = None,
        inflight_timeout: float = DEFAULT_INFLIGHT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.events = events if events is not None else EventBus(wall=wall)
        self.breaker_policy = breaker_policy if breaker_policy is not None else BreakerPolicy()
        self.inflight_timeout = inflight_timeout
        self.default_ttl = default_ttl
        self.max_instances = max_instances
        self.heartbeat_events = heartbeat_events
        self.heartbeat_event_interval = heartbeat_event_interval
        # When each node last had a heartbeat event, so that heartbeats cannot flood the sinks.
        self._heartbeat_announced: dict[str, float] = {}
        self.clock = clock
        self.wall = wall
        self.rng = rng if rng is not None else random.Random()
        self._services: dict[str, Service] = {}
        self._nodes: dict[str, Instance] = node_table()
        # None until a short node id first needs it (see ``_at_address``).
        self._by_address: AddressIndex | None = None
        self._leases = LeaseWheel(now=clock(), resolution=lease_resolution)
        self._revision = 0
        self._traffic: dict[str, TrafficPolicy] = {}
        # Nodes with requests in flight, and nodes whose breaker waits for a time to pass.
        self._busy: set[Instance] = set()
        self._tripped: set[Instance] = set()
        self.cache_stats = CacheStats()
        # Persistence and federation learn of heartbeats here (a heartbeat publishes no event by default).
        # Listeners run inside the heartbeat, so they must only note the instance, never block.
        self.heartbeat_listeners: list[Callable[[Instance], None]] = []
        # The health checker learns here of instances that are new or whose metadata changed (a
        # re-registration publishes no event), and of instances that are gone. The instance itself
        # is handed over: an event would cost each registration an Event object and a lookup of a
        # node id in a table too large for the CPU cache. Same rules as heartbeat listeners.
        self.instance_listeners: list[Callable[[Instance], None]] = []
        self.removal_listeners: list[Callable[[Instance], None]] = []
        # False when leases are decided elsewhere: with replicas sharing Redis, one leader ends them for all
        # (through ``expire``), and a replica must not end a lease whose heartbeats went to another one.
        self.expires_leases = True

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

    def get_instance(self, node_id: str) -> Instance | None:
        """The instance registered under this exact full node id, or None; no parsing, for internal lookups."""
        return self._nodes.get(node_id)

    def resolve(self, node_ref: object) -> Instance:
        """Find the instance a node id names, full or short; raise ``NotRegistered`` if none."""
        if isinstance(node_ref, str):
            instance = self._nodes.get(node_ref)
            if instance is not None:
                return instance

        ref = parse_node_ref(node_ref)
        if ref.service_name is not None:
            instance = self._nodes.get(make_node_id(ref.service_name, ref.host, ref.port))
            if instance is None:
                raise NotRegistered(f"Node {node_ref!r} is not registered; register it again.")
            return instance

        found = self._at_address(ref.host, ref.port)
        if found is None:
            raise NotRegistered(f"No node is registered at {ref.short}; register it again.")
        if isinstance(found, list):
            names = ", ".join(sorted(instance.node_id for instance in found))
            raise Conflict(
                f"{ref.short} names several nodes ({names}); use the full node id.", code="ambiguous_node_id"
            )
        return found

    # Writes.

    def register(self, registration: Registration) -> Instance:
        """Add the instance, or refresh it when its node id is registered already; return it."""
        now = self.clock()
        ttl = registration.ttl if registration.ttl is not None else self.default_ttl
        service_name = registration.service_name
        node_id = make_node_id(service_name, registration.host, registration.port)
        metadata = registration.metadata
        nodes = self._nodes

        if len(nodes) >= self.max_instances:
            existing = nodes.get(node_id)
            if existing is None:
                raise Unavailable(
                    f"The registry holds its limit of {self.max_instances} instances; none can be added.",
                    code="registry_full",
                )
            return self._refresh(existing, metadata=metadata, ttl=ttl, now=now)

        # One probe of the node table, which outgrows the CPU caches in a big registry: file the new
        # instance unless the node id is taken, and refresh the one there if it is. A re-registration
        # builds an instance for nothing, which costs less than a second probe of every registration.
        # Positional, in the order of Instance's parameters: see Instance for why.
        instance = Instance(
            service_name, registration.host, registration.port, node_id, metadata, ttl, now + ttl, self.wall()
        )
        existing = nodes.setdefault(node_id, instance)
        if existing is not instance:
            return self._refresh(existing, metadata=metadata, ttl=ttl, now=now)

        service = self._services.get(service_name)
        if service is None:
            service = self._services[service_name] = Service(
                service_name, cache_stats=self.cache_stats, retired=self._retired(service_name)
            )
        service.instances[node_id] = instance
        if self._by_address is not None:
            self._index_address(instance, self._by_address)
        self._leases.add(instance)
        self._touch(service)

        listeners = self.instance_listeners
        if listeners:
            for listener in listeners:
                listener(instance)
        self.events.publish_instance(ev.SERVICE_REGISTERED, service_name, node_id)
        return instance

    def _refresh(self, existing: Instance, *, metadata: ParsedMetadata, ttl: float, now: float) -> Instance:
        """A registration of a node id already registered: renew its lease, and take new metadata or ttl."""
        changed = existing.parsed.metadata_json != metadata.metadata_json or existing.ttl != ttl
        shortened = now + ttl < existing.expires_at
        existing.expires_at = now + ttl
        if changed:
            existing.parsed = metadata
            existing.ttl = ttl
            existing.invalidate()
            self._touch(self._services[existing.service_name])
            for listener in self.instance_listeners:
                listener(existing)
        if shortened:
            self._leases.add(existing)
        return existing

    def heartbeat(self, node_ref: object) -> Instance:
        instance = self._nodes.get(node_ref) if isinstance(node_ref, str) else None
        if instance is None:
            instance = self.resolve(node_ref)
        self._renew(instance)
        return instance

    def deregister(self, node_ref: object) -> Instance:
        instance = self.resolve(node_ref)
        self._remove(instance)
        self.events.publish_instance(ev.SERVICE_DEREGISTERED, instance.service_name, instance.node_id)
        return instance

    def set_health(self, instance: Instance, *, healthy: bool, reason: str) -> bool:
        """Record what a health check decided; return True when the instance's health changed."""
        if instance.healthy == healthy or self._nodes.get(instance.node_id) is not instance:
            return False
        instance.healthy = healthy
        instance.invalidate()
        instance.get_runtime().health_changes.append(self.clock())
        self._touch(self._services[instance.service_name])

        event = ev.SERVICE_HEALTHY if healthy else ev.SERVICE_UNHEALTHY
        self.events.publish(event, {"serviceName": instance.service_name, "nodeId": instance.node_id, "reason": reason})
        logger.info(
            "Instance %s is now %s.", instance.node_id, "healthy" if healthy else "unhealthy", extra={"reason": reason}
        )
        return True

    def record_outcome(self, instance: Instance, *, response_ms: float | None, success: bool) -> None:
        """
        Take the outcome of one request served by ``instance``.

        It frees one in-flight slot, feeds the response-time average (a failure counts as at
        least ``FAILURE_PENALTY_MS``, so a node that fails fast never looks fastest), and feeds
        the node's circuit breaker.
        """
        runtime = instance.get_runtime()
        if runtime.inflight:
            runtime.inflight.popleft()
            if not runtime.inflight:
                self._busy.discard(instance)

        if success:
            runtime.successes += 1
        else:
            runtime.failures += 1
        sample = response_ms if success else max(response_ms or 0.0, FAILURE_PENALTY_MS)
        if sample is not None:
            runtime.samples += 1
            previous = runtime.ewma_ms
            runtime.ewma_ms = sample if previous is None else previous + EWMA_ALPHA * (sample - previous)

        breaker = runtime.breaker
        if breaker is None:
            if success:
                return
            breaker = runtime.breaker = CircuitBreaker(policy=self.breaker_policy)
        changed = breaker.record(success=success, now=self.clock(), wall=self.wall())
        if changed is not None and self._nodes.get(instance.node_id) is instance:
            self._breaker_changed(instance, breaker)

    def breaker_view(self, node_ref: object) -> dict[str, Any]:
        instance = self.resolve(node_ref)
        runtime = instance.runtime
        breaker = runtime.breaker if runtime is not None else None
        view = (
            breaker.view(now=self.clock(), wall=self.wall())
            if breaker is not None
            else {
                "state": CLOSED,
                "failures": 0,
                "totalFailures": 0,
                "totalSuccesses": 0,
                "lastFailure": None,
                "nextRetry": None,
            }
        )
        if runtime is not None:
            # Counted since the node was registered, including outcomes from before it had a breaker.
            view["totalFailures"] = runtime.failures
            view["totalSuccesses"] = runtime.successes
        return {"nodeId": instance.node_id, **view}

    def anomalies(self) -> list[dict[str, Any]]:
        """
        Services that look wrong, with the figures that say so.

        ``no_healthy_instance``: instances exist and none can serve. ``high_circuit_failures``: the
        service's nodes together failed at least a breaker threshold's worth of times in a row, or
        a breaker is open. ``flapping``: a node changed health ``FLAP_CHANGES`` times or more within
        ``FLAP_WINDOW`` seconds.
        """
        now = self.clock()
        found: list[dict[str, Any]] = []
        for service in self.services():
            instances = list(service.instances.values())
            if not any(instance.admitted for instance in instances):
                found.append({"serviceName": service.name, "type": "no_healthy_instance", "value": len(instances)})

            failures = 0
            open_breakers = 0
            for instance in instances:
                runtime = instance.runtime
                if runtime is None:
                    continue
                if runtime.breaker is not None:
                    failures += runtime.breaker.consecutive_failures
                    open_breakers += runtime.breaker.state != CLOSED
                changes = sum(1 for moment in runtime.health_changes if now - moment <= FLAP_WINDOW)
                if changes >= FLAP_CHANGES:
                    found.append(
                        {"serviceName": service.name, "type": "flapping", "value": changes, "nodeId": instance.node_id}
                    )
            if open_breakers or failures >= self.breaker_policy.failure_threshold:
                found.append(
                    {
                        "serviceName": service.name,
                        "type": "high_circuit_failures",
                        "value": failures,
                        "openBreakers": open_breakers,
                    }
                )
        return found

    # Traffic policies.

    def traffic(self, service_name: str) -> TrafficPolicy | None:
        return self._traffic.get(service_name)

    def set_traffic(self, service_name: str, distribution: dict[str, float]) -> TrafficPolicy:
        policy = self._policy(service_name)
        policy.set_distribution(distribution)
        self._policy_changed(service_name, policy)
        return policy

    def shift_traffic(self, service_name: str, *, from_version: str, to_version: str, percentage: float) -> float:
        policy = self._policy(service_name)
        moved = policy.shift(from_version=from_version, to_version=to_version, percentage=percentage)
        self._policy_changed(service_name, policy)
        return moved

    def promote(self, service_name: str, version: str) -> TrafficPolicy:
        policy = self._policy(service_name)
        policy.promote(version)
        self._policy_changed(service_name, policy)
        return policy

    def retire(self, service_name: str, version: str) -> TrafficPolicy:
        policy = self._policy(service_name)
        policy.retire(version)
        self._policy_changed(service_name, policy)
        return policy

    def clear_traffic(self, service_name: str) -> TrafficPolicy:
        """Drop the service's split and retirements: discovery goes back to every version, as before any policy."""
        policy = self._traffic.get(service_name)
        if policy is None:
            raise NotFound(f"Service {service_name!r} has no traffic policy.", code="traffic_not_found")
        policy.set_distribution({})
        policy.retired.clear()
        self._policy_changed(service_name, policy)
        return policy

    def put_traffic(self, service_name: str, *, distribution: Mapping[str, float], retired: Collection[str]) -> None:
        """
        Give one service this whole policy at once, as a replica or a journal replay receives it.

        The input must already be valid (a distribution sums to 100, or is empty); an empty policy
        drops the service's. Publishes ``traffic_changed`` as any other change does.
        """
        if not distribution and not retired and service_name not in self._traffic:
            return
        policy = self._policy(service_name)
        policy.set_distribution(dict(distribution))
        policy.retired = set(retired)
        self._policy_changed(service_name, policy)

    def export_traffic(self) -> dict[str, dict[str, Any]]:
        """Every traffic policy, by service name, as ``TrafficPolicy.view`` shows it (for backups)."""
        return {service_name: policy.view() for service_name, policy in sorted(self._traffic.items())}

    def replace_traffic(self, policies: Mapping[str, tuple[Mapping[str, float], Collection[str]]]) -> None:
        """
        Put these policies, (distribution, retired versions) by service, in place of all current ones.

        For restores: the input must already be valid (distributions summing to 100). Each service
        whose policy changes or goes away publishes ``traffic_changed`` as any other change does.
        """
        previous = set(self._traffic)
        self._traffic = {}
        for service_name in sorted(previous | set(policies)):
            distribution, retired = policies.get(service_name, ({}, ()))
            policy = self._policy(service_name)
            policy.set_distribution(distribution)
            policy.retired = set(retired)
            self._policy_changed(service_name, policy)

    def expire_due(self) -> list[Instance]:
        """
        Remove every instance whose lease has ended; called by the sweeper a few times a second.

        The same tick lets go of in-flight slots nobody reported back and moves breakers whose
        open period has ended to half-open.
        """
        now = self.clock()
        self._release_stale_slots(now)
        self._tick_breakers(now)
        expired = self._leases.sweep(now, is_current=lambda instance: self._nodes.get(instance.node_id) is instance)
        if not self.expires_leases:
            # The wheel has let go of them; whoever decides leases calls ``expire`` when one really ends.
            return []
        for instance in expired:
            self._remove(instance)
            self.events.publish(
                ev.SERVICE_UNHEALTHY,
                {"serviceName": instance.service_name, "nodeId": instance.node_id, "reason": "lease_expired"},
            )
        if expired:
            logger.info("Leases ended for %d instance(s); they left discovery.", len(expired))
        return expired

    def expire(self, node_id: str) -> Instance | None:
        """
        End one lease now, as the sweeper does when it finds it over; None when the node is not here.

        For leases decided outside this process (a leader replica on Redis): the instance leaves
        discovery and ``service_unhealthy`` with reason ``lease_expired`` is published.
        """
        instance = self._nodes.get(node_id)
        if instance is None:
            return None
        self._remove(instance)
        self.events.publish(
            ev.SERVICE_UNHEALTHY,
            {"serviceName": instance.service_name, "nodeId": instance.node_id, "reason": "lease_expired"},
        )
        return instance

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

        if version is None:
            # Most registries have no traffic policy at all: then there is nothing to look up.
            policy = self._traffic.get(service_name) if self._traffic else None
            if policy is not None and policy.distribution:
                version = self._split_version(service, policy, tags=tags)
        elif version in service.retired:
            raise NoInstance(f"Version {version!r} of {service_name!r} is retired.", code="version_retired")

        candidates = service.candidates(version=version, tags=tags)
        if not candidates.instances:
            self._explain_empty(service, version=version, tags=tags)
        if context is None:
            context = PickContext(rng=self.rng)
        instance = strategy(candidates, context)

        runtime = instance.runtime
        if context.hold_slot:
            runtime = instance.get_runtime()
            runtime.inflight.append(self.clock() + self.inflight_timeout)
            self._busy.add(instance)
        if runtime is not None:
            breaker = runtime.breaker
            # When the last half-open trial is out, keep the node back until its outcome arrives.
            if breaker is not None and breaker.state == HALF_OPEN and breaker.take_trial(now=self.clock()):
                self._tripped.add(instance)
                self._touch(service)
        return instance

    def _split_version(self, service: Service, policy: TrafficPolicy, *, tags: frozenset[str]) -> str | None:
        servable = [
            version for version in policy.distribution if service.candidates(version=version, tags=tags).instances
        ]
        return policy.choose_version(servable)

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

    def _retired(self, service_name: str) -> frozenset[str]:
        policy = self._traffic.get(service_name)
        return frozenset(policy.retired) if policy is not None else frozenset()

    def _policy(self, service_name: str) -> TrafficPolicy:
        policy = self._traffic.get(service_name)
        if policy is None:
            policy = self._traffic[service_name] = TrafficPolicy()
        return policy

    def _policy_changed(self, service_name: str, policy: TrafficPolicy) -> None:
        self.events.publish(ev.TRAFFIC_CHANGED, {"serviceName": service_name, **policy.view()})
        if policy.is_empty:
            del self._traffic[service_name]
        service = self._services.get(service_name)
        if service is not None:
            service.retired = frozenset(policy.retired)
            self._touch(service)

    def _breaker_changed(self, instance: Instance, breaker: CircuitBreaker) -> None:
        self._touch(self._services[instance.service_name])
        data = {
            "serviceName": instance.service_name,
            "nodeId": instance.node_id,
            "failures": breaker.consecutive_failures,
        }
        if breaker.state == OPEN:
            self._tripped.add(instance)
            self.events.publish(ev.CIRCUIT_OPEN, data)
            logger.warning(
                "Circuit breaker for %s opened after %d failures.", instance.node_id, breaker.consecutive_failures
            )
        elif breaker.state == CLOSED:
            self._tripped.discard(instance)
            self.events.publish(ev.CIRCUIT_CLOSE, data)
            logger.info("Circuit breaker for %s closed again.", instance.node_id)
        else:
            self.events.publish(ev.CIRCUIT_HALF_OPEN, data)

    def _tick_breakers(self, now: float) -> None:
        for instance in list(self._tripped):
            if self._nodes.get(instance.node_id) is not instance:
                self._tripped.discard(instance)
                continue
            breaker = instance.runtime.breaker if instance.runtime is not None else None
            if breaker is None:
                self._tripped.discard(instance)
                continue
            if breaker.tick(now=now) is not None:
                self._tripped.discard(instance)
                self._breaker_changed(instance, breaker)

    def _release_stale_slots(self, now: float) -> None:
        for instance in list(self._busy):
            runtime = instance.runtime
            if runtime is None:
                self._busy.discard(instance)
                continue
            slots = runtime.inflight
            while slots and slots[0] <= now:
                slots.popleft()
            if not slots or self._nodes.get(instance.node_id) is not instance:
                self._busy.discard(instance)

    def _touch(self, service: Service) -> None:
        self._revision += 1
        service.revision = self._revision

    def _remove(self, instance: Instance) -> None:
        self._busy.discard(instance)
        self._tripped.discard(instance)
        self._heartbeat_announced.pop(instance.node_id, None)
        del self._nodes[instance.node_id]
        if self._by_address is not None:
            self._unindex_address(instance, self._by_address)
        service = self._services[instance.service_name]
        del service.instances[instance.node_id]
        self._touch(service)
        if not service.instances:
            del self._services[service.name]
        for listener in self.removal_listeners:
            listener(instance)

    @staticmethod
    def _index_address(instance: Instance, by_address: AddressIndex) -> None:
        # Most hosts run one instance: the host maps straight to it. Once a second one arrives the
        # host maps to a dict by port, whose values are lists only where several services share a port.
        host = instance.host
        found = by_address.get(host)
        if found is None:
            by_address[host] = instance
            return
        if not isinstance(found, dict):
            found = by_address[host] = {found.port: found}
        at_port = found.get(instance.port)
        if at_port is None:
            found[instance.port] = instance
        elif isinstance(at_port, list):
            at_port.append(instance)
        else:
            found[instance.port] = [at_port, instance]

    @staticmethod
    def _unindex_address(instance: Instance, by_address: AddressIndex) -> None:
        host = instance.host
        found = by_address.get(host)
        if found is instance:
            del by_address[host]
            return
        if not isinstance(found, dict):
            return
        at_port = found.get(instance.port)
        if at_port is instance:
            del found[instance.port]
        elif isinstance(at_port, list):
            at_port.remove(instance)
            if len(at_port) == 1:
                found[instance.port] = at_port[0]
        if not found:
            del by_address[host]

    def _at_address(self, host: str, port: int) -> Instance | list[Instance] | None:
        """The instance at this address, the list of them when several services share it, or None."""
        by_address = self._by_address
        if by_address is None:
            # The first short node id: index every instance now; registrations keep it current from here.
            by_address = self._by_address = {}
            for instance in self._nodes.values():
                self._index_address(instance, by_address)
            logger.debug("Indexed instances by address for short node ids.", extra={"nodes": len(self._nodes)})

        found = by_address.get(host)
        if isinstance(found, dict):
            return found.get(port)
        if found is not None and found.port == port:
            return found
        return None

    def _explain_empty(self, service: Service, *, version: str | None, tags: frozenset[str]) -> None:
        matching = [
            instance
            for instance in service.instances.values()
            if (version is None or (instance.version or DEFAULT_VERSION) == version) and tags <= instance.tags
        ]
        if matching and all((instance.version or DEFAULT_VERSION) in service.retired for instance in matching):
            raise NoInstance(
                f"Every matching instance of {service.name!r} runs a retired version "
                f"({', '.join(sorted(service.retired))}).",
                code="version_retired",
            )
        if matching:
            raise Unavailable(
                f"Service {service.name!r} has matching instances, but none is healthy.", code="no_healthy_instance"
            )
        wanted = []
        if version is not None:
            wanted.append(f"version {version!r}")
        if tags:
            wanted.append(f"tags {sorted(tags)}")
        raise NoInstance(f"Service {service.name!r} has no instance with {' and '.join(wanted)}.")

    def renew_exact(self, node_id: str) -> Instance | None:
        """
        ``heartbeat`` for a full node id only, answering None where ``heartbeat`` would raise ``NotRegistered``.

        For transports that take heartbeats in bulk (UDP): the lookup is one dictionary access, and a
        node that has left costs no exception. Short ids still go through ``heartbeat``. What a
        renewal does after the lookup is the same as there: the lease, the heartbeat event, the listeners.
        """
        instance = self._nodes.get(node_id)
        if instance is not None:
            self._renew(instance)
        return instance

    def _renew(self, instance: Instance) -> None:
        """A heartbeat after the lookup: the lease, the heartbeat event now and then, the listeners."""
        # Read as an attribute, then called: CPython cannot specialise ``self.clock()`` on an instance attribute.
        clock = self.clock
        now = clock()
        instance.expires_at = now + instance.ttl
        if self.heartbeat_events:
            last = self._heartbeat_announced.get(instance.node_id)
            if last is None or now - last >= self.heartbeat_event_interval:
                self._heartbeat_announced[instance.node_id] = now
                self.events.publish_instance(ev.SERVICE_HEARTBEAT, instance.service_name, instance.node_id)
        listeners = self.heartbeat_listeners
        if listeners:  # most registries have none, and looping over an empty list still builds an iterator
            for listener in listeners:
                listener(instance)


def parse_tag_filter(value: str | None) -> frozenset[str]:
    """Tags as a discover query gives them: comma-separated, blanks ignored."""
    if not value:
        return NO_TAGS
    tags = frozenset(tag.strip() for tag in value.split(",") if tag.strip())
    if len(tags) > 32:
        raise InvalidInput("A discover request may filter on at most 32 tags.")
    return tags
