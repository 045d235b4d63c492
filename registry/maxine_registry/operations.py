"""
The registry's operations as every transport offers them: decoded input in, ``Reply`` out.

A transport (the aiohttp app, the lightning path, gRPC, UDP) parses bytes into a body object and
a query mapping, calls one method here, and writes out the reply or the ``MaxineError`` raised.
Validation, defaults and response shapes therefore exist once, and two transports cannot drift
apart in what they accept or answer.
"""

from __future__ import annotations

import ipaddress
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from maxine_registry import __version__
from maxine_registry.auth_protocol import Authenticator
from maxine_registry.errors import InvalidInput, MaxineError
from maxine_registry.model import validate_service_name
from maxine_registry.registration import Registration, parse_registration, parse_version
from maxine_registry.registry import Registry, parse_tag_filter
from maxine_registry.settings import Settings
from maxine_registry.snapshots import SnapshotPart
from maxine_registry.strategies import (
    DEFAULT_STRATEGY,
    HOLDS_SLOTS,
    READS_CLIENT_ADDRESS,
    PickContext,
    Strategy,
    resolve_strategy,
)
from maxine_registry.traffic import parse_distribution

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_EVENTS_LIMIT = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryPlan:
    """A discover query, parsed and checked; see ``Operations.plan_discovery``."""

    service_name: str
    strategy: Strategy
    version: str | None
    tags: frozenset[str]
    key: str | None
    region: str | None
    zone: str | None
    hold_slot: bool
    # The pick context when the strategy does not depend on the caller's address, else None.
    shared_context: PickContext | None


class Reply(NamedTuple):
    """A status and a JSON body. A tuple, not a frozen dataclass: it is made once per request, and cheaper."""

    status: int
    body: bytes


def ok(document: Any, *, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(document))


def error_body(error: MaxineError) -> bytes:
    return orjson.dumps(error.as_dict())


_WHITESPACE = b" \t\r\n"


def decode_body(raw: bytes) -> object:
    """A request body as every transport decodes it: None when blank, ``invalid_json`` when not JSON."""
    # Only a body that starts with white space can be blank; strip() would copy every body.
    if not raw or (raw[0] in _WHITESPACE and not raw.strip()):
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None


# A guard may refuse a request by raising a MaxineError (Forbidden, RateLimited, ...).
# Discovery guards get (serviceName, caller name or None, client address or None).
DiscoveryGuard = Callable[[str, str | None, str | None], None]
# Registration guards get the validated registration.
RegistrationGuard = Callable[[Registration], None]


class Persistence(Protocol):
    """What a persistence store offers the transports; see ``maxine_registry.persistence``."""

    @property
    def kind(self) -> str:
        """``file`` or ``redis``, as ``/metrics`` reports it."""

    async def commit(self) -> None:
        """Return once every change made so far is durable; raise ``PersistenceUnavailable`` when it cannot be."""


@dataclass(slots=True)
class RequestStats:
    """Counters the transports keep for ``/metrics``."""

    requests: int = 0
    errors: int = 0
    # Open WebSocket event connections; the WebSocket transport keeps it current.
    ws_connections: int = 0
    # Lease sweeps run, and the CPU seconds they took (the server's sweeper keeps these).
    sweeps: int = 0
    sweep_cpu_seconds: float = 0.0
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic


def _node_ref(body: object, query: Mapping[str, str]) -> object:
    """The node id from a JSON body, or from the query string for clients that cannot send one."""
    if isinstance(body, dict) and "nodeId" in body:
        return body["nodeId"]
    if "nodeId" in query:
        return query["nodeId"]
    if body is not None and not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object with a nodeId.")
    raise InvalidInput("nodeId is required (in the JSON body, or as a query parameter).")


def _object(body: object, fields: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput(f"The body must be a JSON object with {fields}.")
    return body


def _version(value: object, field_name: str) -> str:
    if value is None:
        raise InvalidInput(f"{field_name} is required.")
    version = parse_version(value, field=field_name)
    assert version is not None
    return version


def _number(value: object, field_name: str, *, low: float, high: float, required: bool = True) -> float | None:
    if value is None:
        if required:
            raise InvalidInput(f"{field_name} is required.")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{field_name} must be a number, got {value!r}.")
    if not low <= value <= high:
        raise InvalidInput(f"{field_name} must be from {low:g} to {high:g}, got {value!r}.")
    return float(value)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR blocks, as the trusted-proxies setting gives them."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _is_trusted(address: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _int_param(query: Mapping[str, str], name: str, *, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {text!r}.") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be from {low} to {high}, got {value}.")
    return value


class Operations:
    def __init__(self, *, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.stats = RequestStats()
        self.instance_id = uuid.uuid4().hex
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        # Features that govern access (blacklists, ACLs, intentions, ...) add themselves here;
        # every transport that discovers or registers goes through them.
        self.discovery_guards: list[DiscoveryGuard] = []
        self.registration_guards: list[RegistrationGuard] = []
        # Set by the auth feature when auth is on.
        self.authenticator: Authenticator | None = None
        # Stateful features add their part for backup, restore and persistence.
        self.snapshot_parts: dict[str, SnapshotPart] = {}
        # Set by the persistence feature when it is on.
        self.persistence: Persistence | None = None

    async def persist(self) -> None:
        """
        Wait until the changes made so far are durable (on disk, or in Redis); without persistence, return at once.

        Every transport awaits this after a write and before it answers, so that an acknowledged
        write survives a crash; it raises ``PersistenceUnavailable`` (503) when the store cannot take it.
        """
        if self.persistence is not None:
            await self.persistence.commit()

    def guard_discovery(self, service_name: str, *, caller: str | None, client_ip: str | None) -> None:
        for guard in self.discovery_guards:
            guard(service_name, caller, client_ip)

    def register(self, body: object) -> Reply:
        return Reply(200, self.register_body(body))

    def register_body(self, body: object) -> bytes:
        """The answer to a registration that was taken; ``register`` without the Reply, for hot transports."""
        registration = parse_registration(body, max_metadata_bytes=self.settings.max_metadata_bytes)
        for guard in self.registration_guards:
            guard(registration)
        instance = self.registry.register(registration)
        return orjson.dumps({"nodeId": instance.node_id, "address": instance.address, "ttl": instance.ttl})

    def heartbeat(self, body: object, query: Mapping[str, str]) -> Reply:
        return Reply(200, self.heartbeat_body(body, query))

    def heartbeat_body(self, body: object, query: Mapping[str, str]) -> bytes:
        """The answer to a heartbeat that renewed its lease; ``heartbeat`` without the Reply, for hot transports."""
        instance = self.registry.heartbeat(_node_ref(body, query))
        return orjson.dumps({"nodeId": instance.node_id, "ttl": instance.ttl})

    def deregister(self, body: object, query: Mapping[str, str]) -> Reply:
        instance = self.registry.deregister(_node_ref(body, query))
        return ok({"nodeId": instance.node_id, "deregistered": True})

    def discover(
        self,
        query: Mapping[str, str],
        *,
        client_ip: str | None = None,
        forwarded_for: str | None = None,
        caller: str | None = None,
    ) -> Reply:
        plan = self.plan_discovery(query)
        return Reply(200, self.discover_planned(plan, client_ip=client_ip, forwarded_for=forwarded_for, caller=caller))

    def plan_discovery(self, query: Mapping[str, str]) -> DiscoveryPlan:
        """
        Everything a discover query says, checked once: which service, strategy, version and tags.

        A plan depends on the query alone, never on what is registered, so a transport that sees
        the same query again (a sidecar asks for the same service over and over) may keep the plan
        and skip the parsing and checks.
        """
        service_name = validate_service_name(query.get("serviceName"))
        strategy_name = query.get("loadBalancing") or query.get("strategy") or DEFAULT_STRATEGY
        strategy = resolve_strategy(strategy_name)
        tags = parse_tag_filter(query.get("tags"))
        key = query.get("key") or None
        region = query.get("region") or None
        zone = query.get("zone") or None
        hold_slot = strategy_name in HOLDS_SLOTS

        # A strategy that never reads the caller's address gets one context for every request.
        shared_context = (
            None
            if strategy_name in READS_CLIENT_ADDRESS
            else PickContext(rng=self.registry.rng, key=key, region=region, zone=zone, hold_slot=hold_slot)
        )
        return DiscoveryPlan(
            service_name=service_name,
            strategy=strategy,
            version=query.get("version") or None,
            tags=tags,
            key=key,
            region=region,
            zone=zone,
            hold_slot=hold_slot,
            shared_context=shared_context,
        )

    def discover_planned(
        self,
        plan: DiscoveryPlan,
        *,
        client_ip: str | None = None,
        forwarded_for: str | None = None,
        caller: str | None = None,
    ) -> bytes:
        """The instance a planned discover picks, as the JSON a 200 answer carries."""
        if forwarded_for:
            client_ip = self.client_address(client_ip, forwarded_for)
        if self.discovery_guards:
            self.guard_discovery(plan.service_name, caller=caller, client_ip=client_ip)
        context = plan.shared_context
        if context is None:
            context = PickContext(
                rng=self.registry.rng,
                client_ip=client_ip,
                key=plan.key,
                region=plan.region,
                zone=plan.zone,
                hold_slot=plan.hold_slot,
            )
        instance = self.registry.discover(
            plan.service_name, strategy=plan.strategy, version=plan.version, tags=plan.tags, context=context
        )
        return instance.payload

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """
        The caller's address: the direct peer, unless that peer is a trusted proxy.

        Behind trusted proxies, ``X-Forwarded-For`` is read from the right and the first address
        that is not itself a trusted proxy is the client; anything further left could be forged.
        """
        if not forwarded_for or not self.trusted_proxies or not _is_trusted(peer, self.trusted_proxies):
            return peer
        for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
            if not _is_trusted(hop, self.trusted_proxies):
                return hop or peer
        return peer

    def record_response_time(self, body: object) -> Reply:
        if not isinstance(body, dict):
            raise InvalidInput("The body must be a JSON object with nodeId and responseTime.")
        instance = self.registry.resolve(_node_ref(body, {}))
        response_ms = _number(body.get("responseTime"), "responseTime", low=0, high=3_600_000, required=False)
        outcome = body.get("outcome", "success")
        if outcome not in ("success", "failure"):
            raise InvalidInput(f"outcome must be 'success' or 'failure', got {outcome!r}.")
        if response_ms is None and outcome == "success":
            raise InvalidInput("responseTime is required for a successful outcome.")

        self.registry.record_outcome(instance, response_ms=response_ms, success=outcome == "success")
        runtime = instance.get_runtime()
        return ok(
            {
                "nodeId": instance.node_id,
                "averageResponseTime": round(runtime.ewma_ms, 3) if runtime.ewma_ms is not None else None,
                "samples": runtime.samples,
                "inflight": len(runtime.inflight),
                "circuitBreaker": runtime.breaker.state if runtime.breaker is not None else "closed",
            }
        )

    def circuit_breaker(self, node_id: str) -> Reply:
        return ok(self.registry.breaker_view(node_id))

    def anomalies(self) -> Reply:
        return ok({"anomalies": self.registry.anomalies()})

    def traffic(self, query: Mapping[str, str]) -> Reply:
        service_name = validate_service_name(query.get("serviceName"))
        policy = self.registry.traffic(service_name)
        view = policy.view() if policy is not None else {"distribution": {}, "retired": []}
        return ok({"serviceName": service_name, **view})

    def set_traffic(self, body: object) -> Reply:
        document = _object(body, "serviceName and distribution")
        service_name = validate_service_name(document.get("serviceName"))
        distribution = parse_distribution(document.get("distribution"))
        policy = self.registry.set_traffic(service_name, distribution)
        return ok({"serviceName": service_name, **policy.view()})

    def clear_traffic(self, query: Mapping[str, str]) -> Reply:
        service_name = validate_service_name(query.get("serviceName"))
        self.registry.clear_traffic(service_name)
        return ok({"serviceName": service_name, "distribution": {}, "retired": [], "deleted": True})

    def shift_traffic(self, body: object) -> Reply:
        document = _object(body, "serviceName, fromVersion, toVersion and percentage")
        service_name = validate_service_name(document.get("serviceName"))
        from_version = _version(document.get("fromVersion"), "fromVersion")
        to_version = _version(document.get("toVersion"), "toVersion")
        if from_version == to_version:
            raise InvalidInput("fromVersion and toVersion must differ.")
        percentage = _number(document.get("percentage"), "percentage", low=0, high=100)
        assert percentage is not None
        moved = self.registry.shift_traffic(
            service_name, from_version=from_version, to_version=to_version, percentage=percentage
        )
        policy = self.registry.traffic(service_name)
        view = policy.view() if policy is not None else {"distribution": {}, "retired": []}
        return ok({"serviceName": service_name, "moved": moved, **view})

    def promote(self, body: object) -> Reply:
        document = _object(body, "serviceName and version")
        service_name = validate_service_name(document.get("serviceName"))
        policy = self.registry.promote(service_name, _version(document.get("version"), "version"))
        return ok({"serviceName": service_name, **policy.view()})

    def retire(self, body: object) -> Reply:
        document = _object(body, "serviceName and version")
        service_name = validate_service_name(document.get("serviceName"))
        policy = self.registry.retire(service_name, _version(document.get("version"), "version"))
        return ok({"serviceName": service_name, **policy.view()})

    def servers(self) -> Reply:
        registry = self.registry
        services = {
            service.name: {
                "revision": service.revision,
                "nodes": [instance.view() | registry.lease_view(instance) for instance in service.instances.values()],
            }
            for service in registry.services()
        }
        return ok({"services": services, "serviceCount": registry.service_count, "nodeCount": registry.node_count})

    def versions(self, query: Mapping[str, str]) -> Reply:
        service_name = validate_service_name(query.get("serviceName"))
        return ok({"serviceName": service_name, "versions": self.registry.versions(service_name)})

    def health(self) -> Reply:
        return ok(
            {
                "status": "ok",
                "services": self.registry.service_count,
                "nodes": self.registry.node_count,
                "uptime": round(self.stats.uptime, 3),
                "instanceId": self.instance_id,
                "startedAt": int(self.stats.started_at * 1000),
                "version": __version__,
            }
        )

    def metrics(self) -> Reply:
        registry = self.registry
        return ok(
            {
                "uptime": round(self.stats.uptime, 3),
                "requests": self.stats.requests,
                "errors": self.stats.errors,
                "services": registry.service_count,
                "nodes": registry.node_count,
                "persistenceEnabled": self.persistence is not None,
                "persistenceType": self.persistence.kind if self.persistence is not None else "none",
                "wsConnections": self.stats.ws_connections,
                "sweeps": self.stats.sweeps,
                "sweepCpuSeconds": round(self.stats.sweep_cpu_seconds, 6),
                "eventsBroadcasted": registry.events.published,
                "cacheHits": registry.cache_stats.hits,
                "cacheMisses": registry.cache_stats.misses,
            }
        )

    def events(self, query: Mapping[str, str]) -> Reply:
        # Without ``since``, the latest events; with it, the ones after it (a client paging forward).
        since = _int_param(query, "since", default=0, low=0, high=2**53) if "since" in query else None
        limit = _int_param(query, "limit", default=100, low=1, high=MAX_EVENTS_LIMIT)
        history = self.registry.events.history(since=since, limit=limit)
        return ok({"events": [event.as_dict() for event in history], "count": len(history)})
