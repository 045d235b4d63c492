"""
Live event streams for remote consumers: filters, bounded per-consumer queues, and one fan-out.

The event bus calls its subscribers synchronously inside registry writes, so a remote consumer
(a WebSocket today, a gRPC stream tomorrow) must never be written to from there. Instead the
``Fanout`` subscribes to the bus once, and for every event puts one encoded payload on the
bounded queue of each ``Consumer`` whose ``Subscription`` wants it. The transport drains that
queue at the pace of its client. A client that falls behind by more than its queue holds is not
allowed to grow the server's memory: its consumer is marked overflowed and the transport is told
to drop it. Encoding happens at most once per event, however many consumers receive it.

A subscription starts by receiving everything. Each ``subscribe`` adds a filter, and an event is
delivered when any filter matches it (filters are OR-ed; the fields inside one filter are
AND-ed). ``unsubscribe`` removes one filter or all of them, and a subscription without filters
after an unsubscribe receives nothing until it subscribes again. A consumer that still has to
authenticate starts paused, the same as an emptied subscription.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from maxine_registry.errors import InvalidInput, MaxineError
from maxine_registry.events import Event, EventBus

logger = logging.getLogger(__name__)

# Filters one consumer may hold at once; more is a mistake on the client's side, not a use case.
MAX_FILTERS = 32
# The longest value a filter field accepts (node ids are the longest names in the registry).
MAX_FILTER_VALUE_LENGTH = 512
FILTER_FIELDS = {"event": "event", "serviceName": "service_name", "nodeId": "node_id"}

Payload = TypeVar("Payload")


class TooManyFilters(MaxineError):
    status = 400
    code = "too_many_filters"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What one ``subscribe`` asks for: every given field must match; an empty filter matches every event."""

    event: str | None = None
    service_name: str | None = None
    node_id: str | None = None

    def matches(self, event: Event) -> bool:
        if self.event is not None and event.event != self.event:
            return False
        if self.service_name is not None and event.data.get("serviceName") != self.service_name:
            return False
        # Events about a node carry its node id; the service name is also implied by it.
        return self.node_id is None or event.data.get("nodeId") == self.node_id

    def as_dict(self) -> dict[str, str]:
        return {
            wire: value for wire, attribute in FILTER_FIELDS.items() if (value := getattr(self, attribute)) is not None
        }

    @classmethod
    def parse(cls, document: object) -> EventFilter:
        """A filter from its JSON form; ``InvalidInput`` names a wrong field or value."""
        if not isinstance(document, Mapping):
            raise InvalidInput(f"A filter must be a JSON object with event, serviceName or nodeId, got {document!r}.")
        unknown = sorted(set(document) - set(FILTER_FIELDS))
        if unknown:
            expected = ", ".join(FILTER_FIELDS)
            raise InvalidInput(f"A filter accepts only {expected}; unknown field(s): {', '.join(map(str, unknown))}.")

        values: dict[str, str | None] = {}
        for wire, attribute in FILTER_FIELDS.items():
            value = document.get(wire)
            if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_FILTER_VALUE_LENGTH):
                raise InvalidInput(
                    f"Filter field {wire} must be a string of 1 to {MAX_FILTER_VALUE_LENGTH} characters, got {value!r}."
                )
            values[attribute] = value
        return cls(**values)


class Subscription:
    """Which events one consumer wants: everything (the start), some filters, or nothing (paused)."""

    def __init__(self, *, paused: bool = False) -> None:
        # None means no subscribe has narrowed the stream yet: every event is wanted.
        self._filters: list[EventFilter] | None = [] if paused else None

    def __repr__(self) -> str:
        return f"Subscription(filters={self.filters!r})"

    @property
    def filters(self) -> list[EventFilter] | None:
        """The filters in force; None while the subscription takes every event."""
        return None if self._filters is None else list(self._filters)

    def wants(self, event: Event) -> bool:
        # Called for every event and every consumer, inside registry writes: a plain loop, no generator.
        filters = self._filters
        if filters is None:
            return True
        for event_filter in filters:  # noqa: SIM110 (any() with a generator costs more per event)
            if event_filter.matches(event):
                return True
        return False

    def resume(self) -> None:
        """Take every event again, as a fresh subscription does (after authentication)."""
        self._filters = None

    def subscribe(self, event_filter: EventFilter) -> None:
        if self._filters is None:
            self._filters = []
        if event_filter in self._filters:
            return
        if len(self._filters) >= MAX_FILTERS:
            raise TooManyFilters(f"A connection holds at most {MAX_FILTERS} filters; unsubscribe from some first.")
        self._filters.append(event_filter)

    def unsubscribe(self, event_filter: EventFilter | None = None) -> None:
        """Drop one filter, or all of them with None; either way, unmatched events stop flowing."""
        if event_filter is None:
            self._filters = []
            return
        if self._filters is None or event_filter not in self._filters:
            raise InvalidInput(f"No subscription matches the filter {event_filter.as_dict()!r}.", code="not_subscribed")
        self._filters.remove(event_filter)

    def view(self) -> list[dict[str, str]] | None:
        filters = self.filters
        return None if filters is None else [event_filter.as_dict() for event_filter in filters]


class PayloadQueue(Generic[Payload]):
    """
    A bounded first-in-first-out queue with a single reader: what an ``asyncio.Queue`` does here, for less.

    ``put_nowait`` runs for every event and every consumer inside registry writes (a sweep that
    ends a thousand leases puts a thousand payloads at once), and ``asyncio.Queue`` spends more
    there on bookkeeping for many getters and ``join`` than the rest of the delivery costs. This
    queue is a deque and at most one waiting future; the one reader is the transport's sender.
    """

    def __init__(self, *, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Payload] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"PayloadQueue(queued={len(self._items)}, maxsize={self.maxsize})"

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Payload) -> None:
        """Queue an item; ``asyncio.QueueFull`` when ``maxsize`` are queued already."""
        if len(self._items) >= self.maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Payload:
        """The oldest item, waiting for one when none is queued."""
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError(f"{self!r} already has a reader waiting; it serves one reader.")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Consumer(Generic[Payload]):
    """
    One remote reader: its subscription and a bounded queue of payloads waiting to be sent.

    ``on_overflow`` is how the transport learns that the reader fell too far behind; it runs
    once, inside the publishing call, so it may only schedule the close, never wait for it.
    """

    def __init__(
        self, *, queue_size: int, subscription: Subscription, on_overflow: Callable[[], None] | None = None
    ) -> None:
        self.subscription = subscription
        self.queue: PayloadQueue[Payload] = PayloadQueue(maxsize=queue_size)
        self.overflowed = False
        self._on_overflow = on_overflow

    def __repr__(self) -> str:
        return f"Consumer(queued={self.queue.qsize()}, overflowed={self.overflowed}, {self.subscription!r})"

    def offer(self, payload: Payload) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.overflowed = True
            logger.warning(
                "An event consumer fell %d events behind; it is dropped.",
                self.queue.maxsize,
                extra={"consumer": repr(self)},
            )
            if self._on_overflow is not None:
                self._on_overflow()


class Fanout(Generic[Payload]):
    """The one bus subscriber that feeds every consumer of one transport, up to ``max_consumers``."""

    def __init__(self, *, events: EventBus, encode: Callable[[Event], Payload], max_consumers: int) -> None:
        self._events = events
        self._encode = encode
        self.max_consumers = max_consumers
        self._consumers: set[Consumer[Payload]] = set()
        # What delivery iterates over: a consumer added or dropped during a delivery waits for the next event.
        self._delivering: tuple[Consumer[Payload], ...] = ()
        # Started, it listens to the bus while it has consumers: a transport nobody watches costs
        # every event nothing.
        self._started = False
        self._unsubscribe: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"Fanout(consumers={len(self._consumers)}, max_consumers={self.max_consumers})"

    def __len__(self) -> int:
        return len(self._consumers)

    @property
    def full(self) -> bool:
        return len(self._consumers) >= self.max_consumers

    def start(self) -> None:
        self._started = True
        self._listen()

    def stop(self) -> None:
        self._started = False
        self._listen()

    def add(self, consumer: Consumer[Payload]) -> None:
        if self.full:
            raise RuntimeError(f"{self!r} holds its limit of consumers; check .full before adding one.")
        self._consumers.add(consumer)
        self._delivering = tuple(self._consumers)
        self._listen()

    def discard(self, consumer: Consumer[Payload]) -> None:
        self._consumers.discard(consumer)
        self._delivering = tuple(self._consumers)
        self._listen()

    def _listen(self) -> None:
        """Be on the bus exactly while started with at least one consumer."""
        wanted = self._started and bool(self._consumers)
        if wanted and self._unsubscribe is None:
            self._unsubscribe = self._events.subscribe(self._deliver)
        elif not wanted and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _deliver(self, event: Event) -> None:
        encoded: list[Payload] = []
        for consumer in self._delivering:
            if consumer.overflowed or not consumer.subscription.wants(event):
                continue
            if not encoded:
                encoded.append(self._encode(event))
            consumer.offer(encoded[0])


def event_document(event: Event) -> dict[str, Any]:
    """An event as remote consumers receive it; ``seq`` lets a reader join ``/events`` history without doubles."""
    return {"event": event.event, "data": event.data, "timestamp": event.timestamp, "seq": event.seq}
