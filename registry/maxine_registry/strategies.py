"""
Load-balancing strategies: pure choices of one instance from a candidate set.

The registry core narrows a service to its candidates (healthy, matching version and tags, inside
the traffic split) and keeps them in a ``CandidateSet``, rebuilt whenever the service changes. A
strategy is a function ``pick(candidates, context) -> Instance``; what it remembers between calls
lives on the candidate set (``cursor`` survives rebuilds, ``derived`` is cleared by them), and what
it knows about the caller comes in the ``PickContext``. Strategies never see unhealthy instances,
so adding a strategy never needs to repeat the health rules.

What each one measures:

- ``round-robin``: nothing; instances in registration order, in turn.
- ``random``: nothing; uniform.
- ``weighted-random``: ``metadata.weight``; chosen in proportion to it.
- ``least-connections``: requests in flight per instance. A discover with this strategy (and every
  proxied request) counts as in flight until its outcome is reported to ``/record-response-time``
  (or the proxy sees the answer), or until the in-flight timeout passes. Ties go round-robin.
- ``weighted-least-connections``: the smallest ``(in flight + 1) / weight``.
- ``consistent-hash``: a hash ring with ``VIRTUAL_NODES`` points per instance, keyed by the
  request's ``key`` (the client address when there is none). When one of N instances joins or
  leaves, only about 1/N of the keys move.
- ``ip-hash``: the same ring, keyed by the client address only (``X-Forwarded-For`` counts only
  when the direct peer is a trusted proxy).
- ``geo-aware``: the caller's ``zone`` and ``region`` against ``metadata.zone`` and
  ``metadata.region``: same zone first, then same region, then any; round-robin within the tier.
- ``least-response-time``: the exponentially weighted mean response time reported per instance
  (failures count as slow), times one plus the requests in flight, so a fast node is not buried;
  instances never measured come first, so every new instance gets measured.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maxine_registry.errors import InvalidInput
from maxine_registry.model import Instance

ROUND_ROBIN = "round-robin"
DEFAULT_STRATEGY = ROUND_ROBIN


@dataclass(slots=True)
class PickContext:
    """What a strategy may know about the request that asks."""

    rng: random.Random
    client_ip: str | None = None
    key: str | None = None
    region: str | None = None
    zone: str | None = None
    # Count the pick as a request in flight until its outcome is reported (proxy, least-connections).
    hold_slot: bool = False


@dataclass(slots=True)
class CandidateSet:
    instances: tuple[Instance, ...]
    revision: int
    cursor: int = 0
    derived: dict[str, Any] = field(default_factory=dict)

    def rebuild(self, instances: tuple[Instance, ...], *, revision: int) -> None:
        self.instances = instances
        self.revision = revision
        self.derived.clear()


Strategy = Callable[[CandidateSet, PickContext], Instance]


def pick_round_robin(candidates: CandidateSet, context: PickContext) -> Instance:
    instances = candidates.instances
    cursor = candidates.cursor
    candidates.cursor = cursor + 1
    return instances[cursor % len(instances)]


def pick_random(candidates: CandidateSet, context: PickContext) -> Instance:
    instances = candidates.instances
    return instances[int(context.rng.random() * len(instances))]


def pick_weighted_random(candidates: CandidateSet, context: PickContext) -> Instance:
    cumulative: list[float] | None = candidates.derived.get("cumulative_weights")
    if cumulative is None:
        cumulative = list(itertools.accumulate(instance.parsed.weight for instance in candidates.instances))
        candidates.derived["cumulative_weights"] = cumulative
    point = context.rng.random() * cumulative[-1]
    index = bisect.bisect_right(cumulative, point)
    return candidates.instances[min(index, len(cumulative) - 1)]


def _lowest(candidates: CandidateSet, score: Callable[[Instance], float]) -> Instance:
    """The instance with the lowest score; among equals, the next in turn, so ties spread out."""
    instances = candidates.instances
    count = len(instances)
    start = candidates.cursor % count
    candidates.cursor = start + 1
    best = instances[start]
    best_score = score(best)
    for offset in range(1, count):
        instance = instances[(start + offset) % count]
        value = score(instance)
        if value < best_score:
            best, best_score = instance, value
    return best


def pick_least_connections(candidates: CandidateSet, context: PickContext) -> Instance:
    return _lowest(candidates, lambda instance: instance.inflight)


def pick_weighted_least_connections(candidates: CandidateSet, context: PickContext) -> Instance:
    return _lowest(candidates, lambda instance: (instance.inflight + 1) / instance.parsed.weight)


def pick_least_response_time(candidates: CandidateSet, context: PickContext) -> Instance:
    def score(instance: Instance) -> float:
        runtime = instance.runtime
        if runtime is None or runtime.ewma_ms is None:
            return -1.0
        return runtime.ewma_ms * (1 + len(runtime.inflight))

    return _lowest(candidates, score)


VIRTUAL_NODES = 100


def hash_point(text: str) -> int:
    # A stable hash: Python's own is salted per process, and rings must agree across restarts.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _ring(candidates: CandidateSet) -> tuple[list[int], list[Instance]]:
    ring: tuple[list[int], list[Instance]] | None = candidates.derived.get("ring")
    if ring is None:
        points = sorted(
            (hash_point(f"{instance.node_id}#{replica}"), index)
            for index, instance in enumerate(candidates.instances)
            for replica in range(VIRTUAL_NODES)
        )
        ring = ([point for point, _ in points], [candidates.instances[index] for _, index in points])
        candidates.derived["ring"] = ring
    return ring


def _on_ring(candidates: CandidateSet, key: str) -> Instance:
    points, owners = _ring(candidates)
    index = bisect.bisect_left(points, hash_point(key))
    return owners[index % len(owners)]


def pick_consistent_hash(candidates: CandidateSet, context: PickContext) -> Instance:
    key = context.key or context.client_ip
    if not key:
        return pick_round_robin(candidates, context)
    return _on_ring(candidates, key)


def pick_ip_hash(candidates: CandidateSet, context: PickContext) -> Instance:
    if not context.client_ip:
        return pick_round_robin(candidates, context)
    return _on_ring(candidates, context.client_ip)


def _localities(candidates: CandidateSet) -> tuple[dict[str, CandidateSet], dict[str, CandidateSet]]:
    """Candidates grouped by zone and by region, each group with its own round-robin cursor."""
    groups: tuple[dict[str, CandidateSet], dict[str, CandidateSet]] | None = candidates.derived.get("localities")
    if groups is None:
        by_zone: dict[str, list[Instance]] = {}
        by_region: dict[str, list[Instance]] = {}
        for instance in candidates.instances:
            metadata = instance.metadata
            zone, region = metadata.get("zone"), metadata.get("region")
            if isinstance(zone, str):
                by_zone.setdefault(zone, []).append(instance)
            if isinstance(region, str):
                by_region.setdefault(region, []).append(instance)
        groups = (
            {zone: CandidateSet(tuple(members), candidates.revision) for zone, members in by_zone.items()},
            {region: CandidateSet(tuple(members), candidates.revision) for region, members in by_region.items()},
        )
        candidates.derived["localities"] = groups
    return groups


def pick_geo_aware(candidates: CandidateSet, context: PickContext) -> Instance:
    by_zone, by_region = _localities(candidates)
    tier = None
    if context.zone:
        tier = by_zone.get(context.zone)
    if tier is None and context.region:
        tier = by_region.get(context.region)
    return pick_round_robin(tier if tier is not None else candidates, context)


STRATEGIES: dict[str, Strategy] = {
    "round-robin": pick_round_robin,
    "random": pick_random,
    "weighted-random": pick_weighted_random,
    "least-connections": pick_least_connections,
    "weighted-least-connections": pick_weighted_least_connections,
    "consistent-hash": pick_consistent_hash,
    "ip-hash": pick_ip_hash,
    "geo-aware": pick_geo_aware,
    "least-response-time": pick_least_response_time,
}

# Strategies that need to know what is in flight: a pick counts until its outcome is reported.
HOLDS_SLOTS = frozenset({"least-connections", "weighted-least-connections", "least-response-time"})
# Strategies that read the caller's address from the context; the others never look at it.
READS_CLIENT_ADDRESS = frozenset({"consistent-hash", "ip-hash"})


def resolve_strategy(name: str | None) -> Strategy:
    if not name:
        return STRATEGIES[DEFAULT_STRATEGY]
    strategy = STRATEGIES.get(name)
    if strategy is None:
        raise InvalidInput(
            f"Unknown load-balancing strategy {name!r}; expected one of {', '.join(STRATEGIES)}.",
            code="unknown_strategy",
        )
    return strategy
