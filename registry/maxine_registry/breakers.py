"""
Circuit breakers per node: stop handing out an instance that keeps failing, then try it again.

A breaker counts consecutive failures reported for its node (through ``/record-response-time`` or
seen by the proxy). At the threshold it opens: the node leaves every candidate set. When the open
period ends, the breaker is half-open: the node is handed out for a few trial requests; a trial
that succeeds closes the breaker, one that fails opens it again for twice as long (up to a cap).
A trial whose outcome never arrives counts as neither; the breaker returns to half-open after one
more open period, so a client that forgets to report cannot keep a node out forever.

The breaker is a plain state machine on the registry's monotonic clock; the registry asks it what
to do and publishes the events. Time moves only through the ``now`` arguments, so tests drive it
by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

State = Literal["closed", "open", "half-open"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    open_seconds: float = 30.0
    max_open_seconds: float = 300.0
    half_open_trials: int = 1


class CircuitBreaker:
    __slots__ = (
        "_open_for",
        "consecutive_failures",
        "last_failure_wall",
        "next_retry",
        "policy",
        "state",
        "total_failures",
        "total_successes",
        "trials_left",
    )

    def __init__(self, *, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state: State = CLOSED
        self.consecutive_failures = 0
        self.total_failures = 0
        self.total_successes = 0
        self.last_failure_wall: float | None = None
        self.next_retry: float | None = None  # monotonic; when an open breaker turns half-open
        self.trials_left = 0
        self._open_for = policy.open_seconds

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, consecutive_failures={self.consecutive_failures})"

    @property
    def admits(self) -> bool:
        """May the node be handed out now? (Closed, or half-open with a trial left.)"""
        return self.state == CLOSED or (self.state == HALF_OPEN and self.trials_left > 0)

    def record(self, *, success: bool, now: float, wall: float) -> State | None:
        """Take one outcome; return the new state when it changed."""
        if success:
            self.total_successes += 1
            self.consecutive_failures = 0
            if self.state != CLOSED:
                self.state = CLOSED
                self.next_retry = None
                self._open_for = self.policy.open_seconds
                return CLOSED
            return None

        self.total_failures += 1
        self.consecutive_failures += 1
        self.last_failure_wall = wall
        if self.state == HALF_OPEN:
            self._open_for = min(self._open_for * 2, self.policy.max_open_seconds)
            return self._open(now)
        if self.state == CLOSED and self.consecutive_failures >= self.policy.failure_threshold:
            return self._open(now)
        return None

    def take_trial(self, *, now: float) -> bool:
        """Account for a half-open node being handed out; True when that used the last trial."""
        if self.state != HALF_OPEN:
            return False
        self.trials_left -= 1
        if self.trials_left <= 0:
            # Wait for the outcome, but not forever.
            self.next_retry = now + self._open_for
            return True
        return False

    def tick(self, *, now: float) -> State | None:
        """Move on with time: an open period that ended makes the breaker half-open."""
        if self.state == CLOSED or self.next_retry is None or now < self.next_retry:
            return None
        self.state = HALF_OPEN
        self.trials_left = self.policy.half_open_trials
        self.next_retry = None
        return HALF_OPEN

    def _open(self, now: float) -> State:
        self.state = OPEN
        self.trials_left = 0
        self.next_retry = now + self._open_for
        return OPEN

    def view(self, *, now: float, wall: float) -> dict[str, Any]:
        next_retry = None
        if self.next_retry is not None:
            next_retry = int((wall + (self.next_retry - now)) * 1000)
        return {
            "state": self.state,
            "failures": self.consecutive_failures,
            "totalFailures": self.total_failures,
            "totalSuccesses": self.total_successes,
            "lastFailure": int(self.last_failure_wall * 1000) if self.last_failure_wall is not None else None,
            "nextRetry": next_retry,
        }
