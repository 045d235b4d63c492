"""
Load-balancing strategies: pure choices of one instance from a candidate set.

The registry core narrows a service to its candidates (healthy, matching version and tags, inside
the traffic split) and keeps them in a ``CandidateSet``, rebuilt whenever the service changes. A
strategy is a function ``pick(candidates, context) -> Instance``; what it remembers between calls
lives on the candidate set (``cursor`` survives rebuilds, ``derived`` is cleared by them), and what
it knows about the caller comes in the ``PickContext``. Strategies never see unhealthy instances,
so adding a strategy never needs to repeat the health rules.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maxine_registry.errors import InvalidInput
from maxine_registry.model import Instance

ROUND_ROBIN = "round-robin"
DEFAULT_STRATEGY = ROUND_ROBIN

# The names the API contract knows; ``STRATEGIES`` holds those implemented.
KNOWN_STRATEGIES = (
    "round-robin",
    "random",
    "weighted-random",
    "least-connections",
    "weighted-least-connections",
    "consistent-hash",
    "ip-hash",
    "geo-aware",
    "least-response-time",
)


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
        cumulative = list(itertools.accumulate(instance.weight for instance in candidates.instances))
        candidates.derived["cumulative_weights"] = cumulative
    point = context.rng.random() * cumulative[-1]
    index = bisect.bisect_right(cumulative, point)
    return candidates.instances[min(index, len(cumulative) - 1)]


STRATEGIES: dict[str, Strategy] = {
    "round-robin": pick_round_robin,
    "random": pick_random,
    "weighted-random": pick_weighted_random,
}


def resolve_strategy(name: str | None) -> Strategy:
    if not name:
        return STRATEGIES[DEFAULT_STRATEGY]
    strategy = STRATEGIES.get(name)
    if strategy is None:
        if name in KNOWN_STRATEGIES:
            raise InvalidInput(f"Load-balancing strategy {name!r} is not available yet.", code="unsupported_strategy")
        raise InvalidInput(
            f"Unknown load-balancing strategy {name!r}; expected one of {', '.join(STRATEGIES)}.",
            code="unknown_strategy",
        )
    return strategy
