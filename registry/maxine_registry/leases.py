"""
Lease expiry on a timing wheel: precise to a fraction of a second, and O(1) per heartbeat.

A periodic sweep over every instance is either imprecise (sweep rarely) or expensive (sweep
often). Instead each instance sits in the bucket of the tick at which its lease, as last seen,
ends. A heartbeat only moves ``instance.expires_at`` forward and leaves the bucket alone; when a
bucket comes due, each instance in it is either really expired (the caller removes it) or was
renewed meanwhile and is put into the bucket of its new expiry. Every instance is thus looked at
about once per lease period, however often it heartbeats, and an expired one is found no later
than one tick plus one bucket width after its lease ended.

Instances removed from the registry are not taken out of their bucket; the caller tells them apart
when their bucket comes due (lazy deletion), which keeps deregistration O(1) as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from maxine_registry.model import Instance

DEFAULT_RESOLUTION = 0.25


class LeaseWheel:
    def __init__(self, *, now: float, resolution: float = DEFAULT_RESOLUTION) -> None:
        self.resolution = resolution
        self._buckets_per_second = 1 / resolution
        self._buckets: dict[int, list[Instance]] = {}
        # Every bucket below this key has been handed out already.
        self._next_due = math.floor(now / resolution)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, instance: Instance) -> None:
        # Once per registration: a comparison instead of ``max()``, and a product instead of a quotient.
        key = math.ceil(instance.expires_at * self._buckets_per_second)
        if key < self._next_due:  # noqa: PLR1730 - see above
            key = self._next_due
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [instance]
        else:
            bucket.append(instance)

    def due(self, now: float) -> Iterator[Instance]:
        """Hand out every instance whose bucket is due at ``now``; the caller re-adds those still alive."""
        last = math.floor(now / self.resolution)
        while self._next_due <= last:
            bucket = self._buckets.pop(self._next_due, None)
            self._next_due += 1
            if bucket:
                yield from bucket

    def sweep(self, now: float, *, is_current: Callable[[Instance], bool]) -> list[Instance]:
        """Return the instances whose lease has ended by ``now``, re-filing the ones renewed meanwhile."""
        expired: list[Instance] = []
        renewed: list[Instance] = []
        seen: set[int] = set()
        for instance in self.due(now):
            # An instance may have been filed twice (a re-registration shortened its lease); handle it once.
            if id(instance) in seen or not is_current(instance):
                continue
            seen.add(id(instance))
            if instance.expires_at <= now:
                expired.append(instance)
            else:
                renewed.append(instance)
        for instance in renewed:
            self.add(instance)
        return expired
