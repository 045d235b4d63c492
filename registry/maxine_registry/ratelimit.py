"""
Rate limits: one token bucket per caller, in bounded memory.

Each key (a caller name, or a client address for callers without one) owns a bucket that holds up
to ``burst`` tokens and refills at ``rate`` tokens a second. A request takes one token; a request
that finds less than one is refused and told how long until a token is back. A new key starts
with a full bucket, so a caller may send ``burst`` requests at once and then ``rate`` a second.

Buckets live in an insertion-ordered map kept in order of last use, so the least recently used is
always first. Memory stays bounded in two ways, both O(1) per request and without a background
task:

- A bucket idle for ``burst / rate`` seconds has refilled completely and behaves exactly like a
  new one, so it can be dropped without anyone noticing. Each request drops a few such buckets
  from the front of the order.
- When ``max_buckets`` are live anyway, the least recently used one makes room. That bucket's
  owner gets a full bucket when it returns: with more active callers than the bound, limits
  loosen for the quietest of them rather than memory growing without end.

The clock is injectable so that tests move time by hand instead of sleeping.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_MAX_BUCKETS = 100_000
# How many fully refilled buckets one request may drop; more than one, so the idle drain outpaces arrivals.
IDLE_EVICTIONS_PER_REQUEST = 2


@dataclass(slots=True)
class TokenBucket:
    tokens: float
    updated: float  # the clock reading when ``tokens`` was last brought up to date


def retry_after_seconds(wait: float) -> int:
    """The ``Retry-After`` value for a wait: whole seconds, rounded up, at least one."""
    return max(1, math.ceil(wait))


class RateLimiter:
    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be more than 0 requests a second, got {rate!r}.")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}.")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets!r}.")
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self.clock = clock
        # Seconds after which an untouched bucket is full again.
        self.refill_time = burst / rate
        # Live buckets dropped to make room: the bound was too small for the callers at hand.
        self.evicted = 0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"RateLimiter(rate={self.rate}, burst={self.burst}, buckets={len(self._buckets)}, "
            f"max_buckets={self.max_buckets})"
        )

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when granted, otherwise the seconds until one is available."""
        now = self.clock()
        self._drop_idle(now)

        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._buckets.popitem(last=False)
                if not self.evicted:
                    logger.warning(
                        "Rate limiting tracks its limit of %d callers; the least recently seen now lose their "
                        "buckets early (raise RATE_LIMIT_MAX_BUCKETS if this persists).",
                        self.max_buckets,
                    )
                self.evicted += 1
            bucket = self._buckets[key] = TokenBucket(tokens=float(self.burst), updated=now)
        else:
            self._buckets.move_to_end(key)
            # A clock that stepped back refills nothing rather than draining the bucket.
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now

        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _drop_idle(self, now: float) -> None:
        for _ in range(IDLE_EVICTIONS_PER_REQUEST):
            if not self._buckets:
                return
            key, bucket = next(iter(self._buckets.items()))
            if now - bucket.updated < self.refill_time:
                return
            del self._buckets[key]
