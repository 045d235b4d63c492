"""
The registry's operations as every transport offers them: decoded input in, ``Reply`` out.

A transport (the aiohttp app, the lightning path, gRPC, UDP) parses bytes into a body object and
a query mapping, calls one method here, and writes out the reply or the ``MaxineError`` raised.
Validation, defaults and response shapes therefore exist once, and two transports cannot drift
apart in what they accept or answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from maxine_registry import __version__
from maxine_registry.errors import InvalidInput, MaxineError
from maxine_registry.model import validate_service_name
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry, parse_tag_filter
from maxine_registry.settings import Settings
from maxine_registry.strategies import PickContext, resolve_strategy

MAX_EVENTS_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


def ok(document: Any, *, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(document))


def error_body(error: MaxineError) -> bytes:
    return orjson.dumps(error.as_dict())


@dataclass(slots=True)
class RequestStats:
    """Counters the transports keep for ``/metrics``."""

    requests: int = 0
    errors: int = 0
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

    def register(self, body: object) -> Reply:
        registration = parse_registration(body, max_metadata_bytes=self.settings.max_metadata_bytes)
        result = self.registry.register(registration)
        instance = result.instance
        return ok({"nodeId": instance.node_id, "address": instance.address, "ttl": instance.ttl})

    def heartbeat(self, body: object, query: Mapping[str, str]) -> Reply:
        instance = self.registry.heartbeat(_node_ref(body, query))
        return ok({"nodeId": instance.node_id, "ttl": instance.ttl})

    def deregister(self, body: object, query: Mapping[str, str]) -> Reply:
        instance = self.registry.deregister(_node_ref(body, query))
        return ok({"nodeId": instance.node_id, "deregistered": True})

    def discover(self, query: Mapping[str, str], *, client_ip: str | None = None) -> Reply:
        service_name = validate_service_name(query.get("serviceName"))
        strategy = resolve_strategy(query.get("loadBalancing") or query.get("strategy"))
        context = PickContext(
            rng=self.registry.rng,
            client_ip=client_ip,
            key=query.get("key"),
            region=query.get("region"),
            zone=query.get("zone"),
        )
        instance = self.registry.discover(
            service_name,
            strategy=strategy,
            version=query.get("version") or None,
            tags=parse_tag_filter(query.get("tags")),
            context=context,
        )
        return Reply(200, instance.payload)

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
                "persistenceEnabled": False,
                "persistenceType": "none",
                "wsConnections": 0,
                "eventsBroadcasted": registry.events.published,
                "cacheHits": registry.cache_stats.hits,
                "cacheMisses": registry.cache_stats.misses,
            }
        )

    def events(self, query: Mapping[str, str]) -> Reply:
        since = _int_param(query, "since", default=0, low=0, high=2**53)
        limit = _int_param(query, "limit", default=100, low=1, high=MAX_EVENTS_LIMIT)
        history = self.registry.events.history(since=since, limit=limit)
        return ok({"events": [event.as_dict() for event in history], "count": len(history)})
