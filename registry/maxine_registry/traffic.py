"""
Traffic policies per service: canary splits between versions, promotion and retirement.

A split maps versions to percentages that sum to 100. Discovery without an explicit version
first picks a version by the split, then an instance of that version by the strategy. Versions are
picked by smooth weighted round-robin rather than at random, so an 80/20 split serves exactly
four of one for every one of the other over any run of five, not just on average.

If none of the split's versions has an instance that can serve, discovery falls back to every
version not retired: a registry that answers with some healthy instance is more useful than one
that holds to a split nobody can serve. A retired version is never handed out.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from maxine_registry.errors import InvalidInput
from maxine_registry.registration import parse_version

MAX_SPLIT_VERSIONS = 100
PERCENT_TOLERANCE = 0.01


def parse_distribution(value: object) -> dict[str, float]:
    """A split as clients send it: ``{"1.0": 80, "2.0": 20}``; percentages that sum to 100."""
    if not isinstance(value, dict) or not value:
        raise InvalidInput("distribution must be a non-empty object of version to percentage.")
    if len(value) > MAX_SPLIT_VERSIONS:
        raise InvalidInput(f"distribution may name at most {MAX_SPLIT_VERSIONS} versions.")

    split: dict[str, float] = {}
    for version, percent in value.items():
        name = parse_version(version, field="each version of distribution")
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not math.isfinite(percent):
            raise InvalidInput(f"distribution[{version!r}] must be a number, got {percent!r}.")
        if not 0 <= percent <= 100:
            raise InvalidInput(f"distribution[{version!r}] must be from 0 to 100, got {percent!r}.")
        assert name is not None
        split[name] = float(percent)

    total = sum(split.values())
    if abs(total - 100) > PERCENT_TOLERANCE:
        raise InvalidInput(f"distribution percentages must sum to 100, got {total:g}.")
    return split


class TrafficPolicy:
    __slots__ = ("_current", "distribution", "retired")

    def __init__(self) -> None:
        self.distribution: dict[str, float] = {}
        self.retired: set[str] = set()
        self._current: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"TrafficPolicy(distribution={self.distribution!r}, retired={sorted(self.retired)!r})"

    @property
    def is_empty(self) -> bool:
        return not self.distribution and not self.retired

    def set_distribution(self, split: Mapping[str, float]) -> None:
        self.distribution = {version: percent for version, percent in split.items()}
        self.retired -= {version for version, percent in split.items() if percent > 0}
        self._current.clear()

    def promote(self, version: str) -> None:
        self.set_distribution({version: 100.0})

    def retire(self, version: str) -> None:
        """Take a version out of discovery; its share goes to the rest of the split, in proportion."""
        self.retired.add(version)
        share = self.distribution.pop(version, 0.0)
        remaining = sum(self.distribution.values())
        if share and remaining:
            self.distribution = {v: p + share * p / remaining for v, p in self.distribution.items()}
        self._current.clear()

    def shift(self, *, from_version: str, to_version: str, percentage: float) -> float:
        """Move up to ``percentage`` points from one version to another; return the points moved."""
        if not self.distribution:
            # No split yet: all traffic is the source version's to give.
            self.distribution = {from_version: 100.0}
        if from_version not in self.distribution and to_version not in self.distribution:
            # Neither end is part of the split: most likely a typo, which a silent "0 moved" would
            # hide. A source already drained into the target still answers 0, so that a rollout
            # may repeat its step until nothing moves.
            held = ", ".join(sorted(self.distribution))
            raise InvalidInput(
                f"Neither {from_version!r} nor {to_version!r} is part of the split; it holds {held}.",
                code="version_not_in_split",
            )
        available = self.distribution.get(from_version, 0.0)
        moved = min(available, percentage)
        if moved <= 0:
            return 0.0
        left = available - moved
        if left > PERCENT_TOLERANCE:
            self.distribution[from_version] = left
        else:
            del self.distribution[from_version]
        self.distribution[to_version] = self.distribution.get(to_version, 0.0) + moved
        self.retired.discard(to_version)
        self._current.clear()
        return moved

    def choose_version(self, servable: Collection[str]) -> str | None:
        """The next version by the split, among those that can serve; None if none of them can."""
        best: str | None = None
        total = 0.0
        current = self._current
        for version, percent in self.distribution.items():
            if percent <= 0 or version not in servable:
                continue
            total += percent
            weight = current.get(version, 0.0) + percent
            current[version] = weight
            if best is None or weight > current[best]:
                best = version
        if best is not None:
            current[best] -= total
        return best

    def view(self) -> dict[str, Any]:
        return {
            "distribution": {version: round(percent, 4) for version, percent in self.distribution.items()},
            "retired": sorted(self.retired),
        }
