"""
The input of every mesh generator: a ``MeshState``, a frozen snapshot of what the registry knows.

Generators are pure functions of this snapshot, so that the HTTP endpoints, the xDS server and the
operator (which builds the same snapshot from its custom resources) produce the same resources
from the same state. ``build_mesh_state`` takes the snapshot from a live registry and its
governance rules; everything in it is sorted, so two snapshots of the same state are equal and
every generator's output is stable.

What a snapshot holds:

- services, each with its instances (sorted by node id), its traffic policy (distribution and
  retired versions) and its mesh settings, read from the instances' ``metadata.mesh``;
- the access rules: intentions, ACLs, the blacklist and the intentions' default, with
  ``AccessRules.allows`` deciding exactly as discovery does;
- the circuit-breaker policy, which generators map to outlier detection.

``metadata.mesh`` is the one place a service says how meshes should treat it::

    {"mesh": {"timeoutMs": 2000, "perTryTimeoutMs": 500, "retries": 2,
              "retryOn": ["5xx", "connect-failure"], "loadBalancing": "least-connections"}}

Instances of one service may disagree (during a rolling update, say); the settings of the instance
whose node id sorts first win, so the choice is stable. ``validate_mesh_metadata`` is a
registration guard that refuses a malformed ``mesh`` object at registration, with a clear error.

A service's routing plan (``routing_plan``) says where its traffic goes, in the registry's own
terms: every instance not retired (``ALL``), the versions of a split (``SPLIT``), the versions not
retired in proportion to their instances' weights when there is no split but some version is
retired (``VERSIONS``), or nowhere (``NONE``). As in discovery, a split none of whose versions has
an instance falls back to every version not retired.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from maxine_registry.breakers import BreakerPolicy
from maxine_registry.errors import InvalidInput
from maxine_registry.governance import ALLOW, ANY, DENY, Acl, Action, Governance, Intention
from maxine_registry.mesh.names import label_value
from maxine_registry.model import DEFAULT_VERSION, format_address
from maxine_registry.registration import Registration
from maxine_registry.registry import Registry
from maxine_registry.strategies import DEFAULT_STRATEGY, STRATEGIES

logger = logging.getLogger(__name__)

MESH_METADATA_KEY = "mesh"
MAX_TIMEOUT_MS = 3_600_000
MAX_RETRIES = 10
# The retry conditions a service may ask for: the ones Envoy, Istio and Linkerd all understand.
RETRY_CONDITIONS = ("5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream")
DEFAULT_RETRY_ON = ("5xx", "connect-failure", "reset")
MESH_SETTING_KEYS = ("timeoutMs", "perTryTimeoutMs", "retries", "retryOn", "loadBalancing")


# Mesh settings from metadata.


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """How a mesh should call a service: timeouts, retries and the load-balancing strategy."""

    timeout_ms: int | None = None
    per_try_timeout_ms: int | None = None
    retries: int = 0
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    load_balancing: str = DEFAULT_STRATEGY


DEFAULT_MESH_SETTINGS = MeshSettings()


def _milliseconds(value: object, *, field_name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"metadata.mesh.{field_name} must be a number of milliseconds, got {value!r}.")
    if not 1 <= value <= MAX_TIMEOUT_MS or value != int(value):
        raise InvalidInput(
            f"metadata.mesh.{field_name} must be a whole number from 1 to {MAX_TIMEOUT_MS}, got {value!r}."
        )
    return int(value)


def parse_mesh_settings(value: object) -> MeshSettings:
    """``metadata.mesh`` as a client sends it, validated completely; ``InvalidInput`` names what is wrong."""
    if value is None:
        return DEFAULT_MESH_SETTINGS
    if not isinstance(value, dict):
        raise InvalidInput(f"metadata.mesh must be an object, got {value!r}.")
    unknown = sorted(set(value) - set(MESH_SETTING_KEYS))
    if unknown:
        raise InvalidInput(f"metadata.mesh has unknown keys {unknown}; expected some of {list(MESH_SETTING_KEYS)}.")

    retries = value.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise InvalidInput(f"metadata.mesh.retries must be a whole number from 0 to {MAX_RETRIES}, got {retries!r}.")

    retry_on = value.get("retryOn", list(DEFAULT_RETRY_ON))
    if (
        not isinstance(retry_on, list)
        or not retry_on
        or not all(isinstance(item, str) and item in RETRY_CONDITIONS for item in retry_on)
    ):
        raise InvalidInput(
            f"metadata.mesh.retryOn must be a non-empty list of {list(RETRY_CONDITIONS)}, got {retry_on!r}."
        )

    load_balancing = value.get("loadBalancing", DEFAULT_STRATEGY)
    # The type first: a list or object cannot be looked up in the table of names.
    if not isinstance(load_balancing, str) or load_balancing not in STRATEGIES:
        raise InvalidInput(
            f"metadata.mesh.loadBalancing must be one of {', '.join(STRATEGIES)}, got {load_balancing!r}."
        )

    return MeshSettings(
        timeout_ms=_milliseconds(value.get("timeoutMs"), field_name="timeoutMs"),
        per_try_timeout_ms=_milliseconds(value.get("perTryTimeoutMs"), field_name="perTryTimeoutMs"),
        retries=retries,
        # The order a client wrote them in does not matter; a sorted set keeps the output stable.
        retry_on=tuple(sorted(set(retry_on))),
        load_balancing=str(load_balancing),
    )


def validate_mesh_metadata(registration: Registration) -> None:
    """A registration guard: refuse an instance whose ``metadata.mesh`` is malformed."""
    # Most registrations carry no mesh settings; skip the parse for them.
    if MESH_METADATA_KEY not in registration.metadata.keys:
        return
    metadata = orjson.loads(registration.metadata.metadata_json)
    if isinstance(metadata, dict):
        parse_mesh_settings(metadata.get(MESH_METADATA_KEY))


# The snapshot.


@dataclass(frozen=True, slots=True)
class MeshInstance:
    node_id: str
    host: str
    port: int
    version: str
    weight: float
    healthy: bool
    region: str | None = None
    zone: str | None = None

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


@dataclass(frozen=True, slots=True)
class MeshService:
    """One service as the meshes see it. ``distribution`` is sorted by version; percentages sum to 100."""

    name: str
    instances: tuple[MeshInstance, ...] = ()
    distribution: tuple[tuple[str, float], ...] = ()
    retired: frozenset[str] = frozenset()
    settings: MeshSettings = DEFAULT_MESH_SETTINGS
    revision: int = 0

    def serving(self, *, version: str | None = None) -> tuple[MeshInstance, ...]:
        """Healthy instances of versions not retired (of one version, if given): what may take traffic."""
        return tuple(
            instance
            for instance in self.instances
            if instance.healthy
            and instance.version not in self.retired
            and (version is None or instance.version == version)
        )

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the service's instances listen on, most used first (ties: lowest first)."""
        counts: dict[int, int] = {}
        for instance in self.instances:
            counts[instance.port] = counts.get(instance.port, 0) + 1
        return tuple(sorted(counts, key=lambda port: (-counts[port], port)))

    @property
    def port(self) -> int | None:
        """The port a Kubernetes Service for it would expose: the one most instances use."""
        ports = self.ports
        return ports[0] if ports else None


@dataclass(frozen=True, slots=True)
class AccessRules:
    """Governance's rules, frozen; ``allows`` decides as discovery's guards do."""

    intentions: tuple[Intention, ...] = ()
    acls: tuple[Acl, ...] = ()
    blacklist: frozenset[str] = frozenset()
    default: Action = ALLOW
    _intention_index: dict[tuple[str, str], Intention] = field(init=False, repr=False, compare=False)
    _acl_index: dict[str, Acl] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_intention_index", {(rule.source, rule.destination): rule for rule in self.intentions}
        )
        object.__setattr__(self, "_acl_index", {acl.service_name: acl for acl in self.acls})

    def intention_action(self, *, source: str | None, destination: str) -> Action:
        """The action of the most specific intention, in ``Governance.decide``'s order; else the default."""
        keys: tuple[tuple[str, str], ...]
        if source is not None and source != ANY:
            keys = ((source, destination), (ANY, destination), (source, ANY), (ANY, ANY))
        else:
            keys = ((ANY, destination), (ANY, ANY))
        for key in keys:
            rule = self._intention_index.get(key)
            if rule is not None:
                return rule.action
        return self.default

    def allows(self, *, source: str | None, destination: str) -> bool:
        """May ``source`` (None: an anonymous caller) reach ``destination``? Blacklist, ACL, intentions."""
        if destination in self.blacklist:
            return False
        acl = self._acl_index.get(destination)
        if acl is not None and not acl.permits(source):
            return False
        return self.intention_action(source=source, destination=destination) == ALLOW

    def named_sources(self, destination: str) -> tuple[str, ...]:
        """Every caller a rule about ``destination`` names, sorted: the ones whose answer may differ."""
        names = {rule.source for rule in self.intentions if rule.destination in (destination, ANY)}
        acl = self._acl_index.get(destination)
        if acl is not None:
            names.update(acl.allow)
            names.update(acl.deny)
        names.discard(ANY)
        return tuple(sorted(names))

    def destinations(self) -> tuple[str, ...]:
        """Every service some rule names as a destination."""
        names = {rule.destination for rule in self.intentions} | set(self._acl_index) | set(self.blacklist)
        names.discard(ANY)
        return tuple(sorted(names))

    @property
    def restricts(self) -> bool:
        """Could any caller be refused anywhere? When not, meshes need no access resources at all."""
        return bool(
            self.blacklist or self.acls or self.default == DENY or any(r.action == DENY for r in self.intentions)
        )


@dataclass(frozen=True, slots=True)
class Access:
    """Who may reach one destination, in the three classes meshes can tell apart."""

    destination: str
    allowed: tuple[str, ...]  # named callers let in
    denied: tuple[str, ...]  # named callers kept out
    others: bool  # callers no rule names, with an identity
    anonymous: bool  # callers without any identity

    @property
    def open(self) -> bool:
        """Is everyone let in? Then there is nothing to enforce."""
        return self.others and self.anonymous and not self.denied


def access_for(rules: AccessRules, destination: str) -> Access:
    # A name no rule mentions stands for every caller that is neither named nor anonymous.
    named = rules.named_sources(destination)
    decisions = {name: rules.allows(source=name, destination=destination) for name in named}
    unnamed = "maxine.mesh.unnamed-caller"
    return Access(
        destination=destination,
        allowed=tuple(name for name in named if decisions[name]),
        denied=tuple(name for name in named if not decisions[name]),
        others=rules.allows(source=unnamed, destination=destination),
        anonymous=rules.allows(source=None, destination=destination),
    )


@dataclass(frozen=True, slots=True)
class MeshState:
    services: tuple[MeshService, ...] = ()
    access: AccessRules = field(default_factory=AccessRules)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    revision: int = 0

    def service(self, name: str) -> MeshService | None:
        return next((service for service in self.services if service.name == name), None)

    def routable(self) -> tuple[MeshService, ...]:
        """Services that meshes should route to: all but the blacklisted, which discovery hides."""
        return tuple(service for service in self.services if service.name not in self.access.blacklist)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _mesh_settings(instances: Iterable[tuple[str, Mapping[str, Any]]]) -> MeshSettings:
    """The settings of the first instance (by node id) that declares valid ones."""
    for node_id, metadata in instances:
        if MESH_METADATA_KEY not in metadata:
            continue
        try:
            return parse_mesh_settings(metadata[MESH_METADATA_KEY])
        except InvalidInput as error:
            # Registration refuses these; an instance from an older snapshot may still carry them.
            logger.warning("Instance %s has mesh settings that are not valid; they are ignored: %s", node_id, error)
    return DEFAULT_MESH_SETTINGS


def build_mesh_state(*, registry: Registry, governance: Governance | None) -> MeshState:
    """The snapshot of a live registry and its governance rules (None: no rules, everyone allowed)."""
    services: list[MeshService] = []
    for service in sorted(registry.services(), key=lambda item: item.name):
        registered = sorted(service.instances.values(), key=lambda item: item.node_id)
        metadata = [(instance.node_id, instance.metadata) for instance in registered]
        instances = tuple(
            MeshInstance(
                node_id=instance.node_id,
                host=instance.host,
                port=instance.port,
                version=instance.version or DEFAULT_VERSION,
                weight=instance.weight,
                healthy=instance.healthy,
                region=_text(data.get("region")),
                zone=_text(data.get("zone")),
            )
            for instance, (_, data) in zip(registered, metadata, strict=True)
        )
        policy = registry.traffic(service.name)
        services.append(
            MeshService(
                name=service.name,
                instances=instances,
                distribution=tuple(sorted(policy.distribution.items())) if policy is not None else (),
                retired=frozenset(policy.retired) if policy is not None else frozenset(),
                settings=_mesh_settings(metadata),
                revision=service.revision,
            )
        )

    access = AccessRules()
    if governance is not None:
        access = AccessRules(
            intentions=tuple(sorted(governance.intentions(), key=lambda rule: (rule.source, rule.destination))),
            acls=tuple(governance.acls()),
            blacklist=frozenset(governance.blacklist()),
            default=governance.intentions_default,
        )
    return MeshState(
        services=tuple(services), access=access, breaker=registry.breaker_policy, revision=registry.revision
    )


# Routing plans.


class Plan(Enum):
    ALL = "all"  # every instance not retired; no subsets needed
    SPLIT = "split"  # the versions of the traffic split, by its percentages
    VERSIONS = "versions"  # every version not retired, by the weight of its instances
    NONE = "none"  # nothing may take traffic


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    kind: Plan
    shares: tuple[tuple[str, float], ...] = ()  # (version, share) sorted by version; shares sum to 100

    @property
    def by_version(self) -> bool:
        return self.kind in (Plan.SPLIT, Plan.VERSIONS)


def routing_plan(service: MeshService) -> RoutingPlan:
    """Where the service's traffic goes; see the module docstring."""
    present: dict[str, float] = {}
    for instance in service.instances:
        if instance.version not in service.retired:
            present[instance.version] = present.get(instance.version, 0.0) + instance.weight

    split = {version: percent for version, percent in service.distribution if percent > 0 and version in present}
    if split:
        total = sum(split.values())
        return RoutingPlan(Plan.SPLIT, tuple((version, split[version] * 100 / total) for version in sorted(split)))
    if not present:
        return RoutingPlan(Plan.NONE)
    if not service.retired:
        return RoutingPlan(Plan.ALL)
    total = sum(present.values())
    return RoutingPlan(Plan.VERSIONS, tuple((version, present[version] * 100 / total) for version in sorted(present)))


def integer_weights(shares: Iterable[tuple[str, float]], *, total: int) -> tuple[tuple[str, int], ...]:
    """
    Shares as whole weights that sum to exactly ``total``, by the largest-remainder method.

    Ties go to the version that sorts first, so the answer is stable. Versions whose weight
    rounds to 0 are left out: meshes take a zero weight as "never", which is what it would mean.
    """
    items = sorted(shares)
    whole = sum(share for _, share in items)
    if not items or whole <= 0:
        return ()
    exact = [(version, share * total / whole) for version, share in items]
    floors = {version: math.floor(value) for version, value in exact}
    left = total - sum(floors.values())
    by_remainder = sorted(exact, key=lambda item: (-(item[1] - math.floor(item[1])), item[0]))
    for version, _ in by_remainder[:left]:
        floors[version] += 1
    return tuple((version, floors[version]) for version, _ in items if floors[version] > 0)


def top_shares(shares: Iterable[tuple[str, float]], *, limit: int) -> tuple[tuple[str, float], ...]:
    """The ``limit`` largest shares (ties: first by version), sorted by version; for meshes that cap backends."""
    kept = sorted(shares, key=lambda item: (-item[1], item[0]))[:limit]
    return tuple(sorted(kept))


# What every Kubernetes generator shares.

DEFAULT_NAMESPACE = "default"
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
# Pod labels the generated selectors use: the pods of a service carry ``app`` and ``version``.
APP_LABEL = "app"
VERSION_LABEL = "version"
MANAGED_BY = {"app.kubernetes.io/managed-by": "maxine"}
SERVICE_LABEL = "maxine.io/service"
SERVICE_ANNOTATION = "maxine.io/service-name"


@dataclass(frozen=True, slots=True)
class KubernetesOptions:
    """Where the resources go: the namespace, the mesh's trust domain and the cluster's DNS domain."""

    namespace: str = DEFAULT_NAMESPACE
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN


def object_meta(*, name: str, service_name: str, options: KubernetesOptions) -> dict[str, Any]:
    """Metadata of a generated object: its name, namespace, and labels that say Maxine made it and for whom."""
    return {
        "name": name,
        "namespace": options.namespace,
        "labels": {**MANAGED_BY, SERVICE_LABEL: label_value(service_name)},
        "annotations": {SERVICE_ANNOTATION: service_name},
    }


def protobuf_duration(milliseconds: int) -> str:
    """A duration as protobuf's JSON writes it (``2.500s``), which Envoy and Istio read."""
    return f"{milliseconds // 1000}.{milliseconds % 1000:03d}s"


def go_duration(milliseconds: int) -> str:
    """A duration as Go parses it (``2500ms``), which Linkerd reads."""
    return f"{milliseconds}ms"
