"""
The client's defaults and its retry policy: when to try a request again, and how long to wait first.

A request that could not reach the registry (refused connection, reset, timeout) or that the
registry answered with 429 or a 5xx is worth another try; any other answer is final. Between tries
the client waits with exponential backoff and full jitter: a delay drawn uniformly from zero up to
``min(cap, base * 2**attempt)``. The jitter matters more than the exponent here: when a registry
restarts, every service that lost it retries at once, and only random delays spread that crowd out.

When the registry says how long to wait (``Retry-After``), that wins over the backoff, as long as
it fits under the cap; a longer wait is the registry asking the caller to come back much later, so
the client stops retrying and reports the answer instead of blocking past its own bounds.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_BASE = 0.1
DEFAULT_BACKOFF_CAP = 5.0

# Past this exponent ``base * 2**attempt`` is above any sensible cap anyway; stopping here keeps
# the float arithmetic finite however long a keep-alive loop has been failing.
_MAX_EXPONENT = 32


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """
    The wait before retry number ``attempt`` (0 for the first retry), with full jitter.

    The result is uniform in ``[0, min(cap, base * 2**attempt)]``.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, got {attempt!r}.")
    ceiling = min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """
    Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable.

    ``now`` (seconds since the epoch) is only for tests; by default it is the current time.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(text)

    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read the same way
        return None
    current = time.time() if now is None else now
    return max(moment.timestamp() - current, 0.0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times a request is retried, and the bounds of the waits between tries."""

    retries: int = DEFAULT_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer of 0 or more, got {self.retries!r}.")
        if not math.isfinite(self.backoff_base) or self.backoff_base <= 0:
            raise ValueError(f"backoff_base must be a positive number of seconds, got {self.backoff_base!r}.")
        if not math.isfinite(self.backoff_cap) or self.backoff_cap < self.backoff_base:
            raise ValueError(
                f"backoff_cap must be a number of seconds no smaller than backoff_base ({self.backoff_base!r}), "
                f"got {self.backoff_cap!r}."
            )

    @property
    def attempts(self) -> int:
        """Tries in all: the first one and the retries."""
        return self.retries + 1

    def backoff(self, attempt: int, *, rng: random.Random) -> float:
        return backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_cap, rng=rng)

    def delay(self, attempt: int, *, rng: random.Random, retry_after: float | None = None) -> float | None:
        """
        The wait before retry number ``attempt``, or None if the request must not be retried.

        None means: no attempts are left, or the registry asked for a longer wait than the cap allows.
        """
        if attempt >= self.retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.backoff_cap else None
        return self.backoff(attempt, rng=rng)
