"""
The in-process event bus: every change the registry makes becomes one ``Event``.

Publishing appends to a bounded history ring (served at ``/events``) and hands the event to each
subscriber synchronously. Subscribers are sinks such as WebSocket fan-out or MQTT publishing; they
must only enqueue, never block, because publishing happens inside registry writes. A subscriber
that raises is logged and otherwise ignored: a broken sink never fails a registration.

The ring holds plain tuples, made into ``Event`` objects only when history is read: the garbage
collector stops tracking a tuple of strings and numbers, whereas a thousand live ``Event`` objects,
renewed with every registration, kept feeding its full passes (about 1.5 microseconds a registration).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_SIZE = 1000

SERVICE_REGISTERED = "service_registered"
SERVICE_DEREGISTERED = "service_deregistered"
SERVICE_HEARTBEAT = "service_heartbeat"
SERVICE_UNHEALTHY = "service_unhealthy"
SERVICE_HEALTHY = "service_healthy"
CIRCUIT_OPEN = "circuit_open"
CIRCUIT_HALF_OPEN = "circuit_half_open"
CIRCUIT_CLOSE = "circuit_close"
TRAFFIC_CHANGED = "traffic_changed"
CONFIG_CHANGED = "config_changed"
CONFIG_DELETED = "config_deleted"


@dataclass(slots=True)
class Event:
    """
    One change, as the history ring keeps it and every subscriber receives it; only ever read.

    Not frozen, and built positionally: a frozen dataclass sets each field through
    ``object.__setattr__``, and a class called with keywords gets them as a dict; either makes
    publishing, done inside every registry write, several times slower.
    """

    seq: int
    event: str
    data: dict[str, Any]
    timestamp: int  # milliseconds since the epoch

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.event, "data": self.data, "timestamp": self.timestamp, "seq": self.seq}


Subscriber = Callable[[Event], None]

# An event as the history ring keeps it: (seq, event, data, timestamp). The data of an event about
# one instance is kept as the pair (serviceName, nodeId), and made a dict only when read.
_Record = tuple[int, str, "dict[str, Any] | tuple[str, str]", int]


class EventBus:
    def __init__(self, *, history_size: int = DEFAULT_HISTORY_SIZE, wall: Callable[[], float] = time.time) -> None:
        self._history: deque[_Record] = deque(maxlen=history_size)
        # Replaced, never changed in place: a subscriber may come or go while an event is delivered.
        self._subscribers: tuple[Subscriber, ...] = ()
        self._wall = wall
        self._seq = 0
        # Events published, by name. A plain dict: ``Counter``'s ``+=`` costs a registration twice as much.
        self.counts: dict[str, int] = {}

    def publish(self, event: str, data: dict[str, Any]) -> None:
        seq, timestamp = self._record(event, data)
        if self._subscribers:  # the usual case is nobody watching: no Event object to build
            self._deliver(Event(seq, event, data, timestamp))

    def publish_instance(self, event: str, service_name: str, node_id: str) -> None:
        """
        ``publish`` an event about one instance, whose data is its service and node id.

        Registrations publish one each, so the ring keeps the two strings rather than a dict: one
        allocation fewer per registration, and one fewer to free when the ring drops it.
        """
        seq, timestamp = self._record(event, (service_name, node_id))
        if self._subscribers:
            self._deliver(Event(seq, event, {"serviceName": service_name, "nodeId": node_id}, timestamp))

    def _record(self, event: str, kept: dict[str, Any] | tuple[str, str]) -> tuple[int, int]:
        """Number the event, keep it in the history ring and count it; its sequence number and timestamp."""
        seq = self._seq = self._seq + 1
        timestamp = int(self._wall() * 1000)
        self._history.append((seq, event, kept, timestamp))
        counts = self.counts
        counts[event] = counts.get(event, 0) + 1
        return seq, timestamp

    def _deliver(self, published: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(published)
            except Exception:
                logger.exception(
                    "Event subscriber %r failed on %s; the event is kept in history.", subscriber, published.event
                )

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a sink; return the function that removes it again."""
        self._subscribers = (*self._subscribers, subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                remaining = list(self._subscribers)
                remaining.remove(subscriber)
                self._subscribers = tuple(remaining)

        return unsubscribe

    @property
    def published(self) -> int:
        return self._seq

    def history(self, *, since: int | None = None, limit: int = 100) -> list[Event]:
        """
        At most ``limit`` events, oldest first: the first ones after ``since`` (milliseconds), or the latest.
        """
        records = list(self._history)
        if since is None:
            start = max(len(records) - limit, 0)
        else:
            start = bisect.bisect_right(records, since, key=lambda record: record[3])
        return [
            Event(seq=seq, event=event, data=_data(data), timestamp=timestamp)
            for seq, event, data, timestamp in records[start : start + limit]
        ]


def _data(kept: dict[str, Any] | tuple[str, str]) -> dict[str, Any]:
    if isinstance(kept, tuple):
        service_name, node_id = kept
        return {"serviceName": service_name, "nodeId": node_id}
    return kept
