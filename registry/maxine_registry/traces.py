"""
Manual traces: a client names an operation, adds timestamped events to it, ends it, and reads it back.

This is the contract's small tracing API (``/trace/start``, ``/trace/event``, ``/trace/end``,
``/trace/{id}``), kept in memory. A trace records its operation, when it started and ended (wall
clock, milliseconds since the epoch) and its events, each with its offset from the start; durations
are measured on the monotonic clock so that a clock step does not bend them.

The store is bounded three ways: at most ``max_traces`` traces (the one least recently written makes
room for a new one), at most ``max_events`` events per trace (more are refused), and a trace
nobody wrote to for ``ttl`` seconds is forgotten (reading it does not keep it). Eviction is lazy,
on the next write, so the store needs no timer of its own.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maxine_registry.errors import Conflict, InvalidInput, NotFound

logger = logging.getLogger(__name__)

DEFAULT_MAX_TRACES = 10_000
DEFAULT_MAX_EVENTS = 1000
DEFAULT_TTL = 3600.0
MAX_ID_LENGTH = 128
MAX_OPERATION_LENGTH = 128
MAX_EVENT_LENGTH = 1024

_ID_RE = re.compile(r"[A-Za-z0-9._:-]+")


@dataclass(frozen=True, slots=True)
class TraceEvent:
    event: str
    timestamp: int  # milliseconds since the epoch
    offset_ms: float


@dataclass(slots=True)
class Trace:
    trace_id: str
    operation: str
    started_at: int  # milliseconds since the epoch
    started_monotonic: float
    touched: float  # monotonic; what the ttl counts from
    ended_at: int | None = None
    duration_ms: float | None = None
    events: list[TraceEvent] = field(default_factory=list)

    def view(self, *, now: float) -> dict[str, Any]:
        running = self.ended_at is None
        return {
            "id": self.trace_id,
            "operation": self.operation,
            "status": "running" if running else "ended",
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "durationMs": self.duration_ms,
            # While a trace runs, how long it has been running; the duration once it has ended.
            "elapsedMs": round((now - self.started_monotonic) * 1000, 3) if running else self.duration_ms,
            "events": [
                {"event": event.event, "timestamp": event.timestamp, "offsetMs": event.offset_ms}
                for event in self.events
            ],
        }


def _text(value: object, *, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} is required and must be a non-empty string, got {value!r}.")
    if len(value) > limit:
        raise InvalidInput(f"{name} is longer than {limit} characters.")
    return value


def parse_trace_id(value: object) -> str:
    trace_id = _text(value, name="id", limit=MAX_ID_LENGTH)
    if not _ID_RE.fullmatch(trace_id):
        raise InvalidInput(f"id {trace_id!r} is not valid: use letters, digits, '.', '_', ':' and '-'.")
    return trace_id


def parse_operation(value: object) -> str:
    return _text(value, name="operation", limit=MAX_OPERATION_LENGTH)


def parse_event(value: object) -> str:
    return _text(value, name="event", limit=MAX_EVENT_LENGTH)


class TraceStore:
    def __init__(
        self,
        *,
        max_traces: int = DEFAULT_MAX_TRACES,
        max_events: int = DEFAULT_MAX_EVENTS,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.max_traces = max_traces
        self.max_events = max_events
        self.ttl = ttl
        self._clock = clock
        self._wall = wall
        # Least recently written first, which is also oldest ``touched`` first.
        self._traces: OrderedDict[str, Trace] = OrderedDict()
        self.evicted = 0

    def __repr__(self) -> str:
        return f"TraceStore(traces={len(self._traces)}, max_traces={self.max_traces}, evicted={self.evicted})"

    def __len__(self) -> int:
        return len(self._traces)

    def start(self, trace_id: str, operation: str) -> Trace:
        now = self._clock()
        self._expire(now)
        if trace_id in self._traces:
            raise Conflict(f"Trace {trace_id!r} already exists; use a new id.", code="trace_exists")
        while len(self._traces) >= self.max_traces:
            evicted_id, _ = self._traces.popitem(last=False)
            self.evicted += 1
            logger.debug("Trace %s was evicted to make room.", evicted_id)

        trace = Trace(
            trace_id=trace_id,
            operation=operation,
            started_at=int(self._wall() * 1000),
            started_monotonic=now,
            touched=now,
        )
        self._traces[trace_id] = trace
        return trace

    def add_event(self, trace_id: str, event: str) -> Trace:
        now = self._clock()
        self._expire(now)
        trace = self._running(trace_id)
        if len(trace.events) >= self.max_events:
            raise Conflict(f"Trace {trace_id!r} holds {self.max_events} events, the limit.", code="trace_full")
        offset = round((now - trace.started_monotonic) * 1000, 3)
        trace.events.append(TraceEvent(event=event, timestamp=int(self._wall() * 1000), offset_ms=offset))
        self._touch(trace, now)
        return trace

    def end(self, trace_id: str) -> Trace:
        now = self._clock()
        self._expire(now)
        trace = self._running(trace_id)
        trace.ended_at = int(self._wall() * 1000)
        trace.duration_ms = round((now - trace.started_monotonic) * 1000, 3)
        self._touch(trace, now)
        return trace

    def get(self, trace_id: str) -> Trace:
        trace = self._traces.get(trace_id)
        if trace is None or self._clock() - trace.touched > self.ttl:
            raise NotFound(f"No trace has id {trace_id!r}; it never started or was forgotten.", code="trace_not_found")
        return trace

    def view(self, trace: Trace) -> dict[str, Any]:
        return trace.view(now=self._clock())

    def _running(self, trace_id: str) -> Trace:
        trace = self.get(trace_id)
        if trace.ended_at is not None:
            raise Conflict(f"Trace {trace_id!r} has ended; start a new one.", code="trace_ended")
        return trace

    def _touch(self, trace: Trace, now: float) -> None:
        trace.touched = now
        self._traces.move_to_end(trace.trace_id)

    def _expire(self, now: float) -> None:
        while self._traces:
            oldest = next(iter(self._traces.values()))
            if now - oldest.touched <= self.ttl:
                return
            del self._traces[oldest.trace_id]
            self.evicted += 1
