"""
WatchServices: one service's registrations, deregistrations and health changes, as a gRPC stream.

The event bus calls its subscribers inside registry writes, so a stream is never written to from
there. As for WebSockets, one ``Fanout`` subscribes to the bus and puts each event that a stream's
filters want on that stream's bounded queue, encoded once as a ``ServiceEvent`` message; the
stream's handler writes the queue out at the pace of its client. The message is built when the
event is published, so the instance it carries is the instance as it was at that moment.

A stream whose client falls more than its queue holds behind is ended with RESOURCE_EXHAUSTED
(``consumer_too_slow``) instead of growing the server's memory; the client may watch again,
asking for the current state first to catch up. Ending it means cancelling the handler's task,
since a handler blocked on a client that reads nothing would otherwise never look at its queue.

With ``include_current``, the instances the service has when the watch starts come first, each
as ``service_registered`` with ``initial`` set, then one ``initial_state_done``. Joining the fan-out
and taking that snapshot happen in one step of the event loop, so no change can fall between
them or be sent twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from maxine_registry import events as ev
from maxine_registry.errors import MaxineError, Unavailable
from maxine_registry.events import Event
from maxine_registry.grpc_api import maxine_pb2 as pb
from maxine_registry.grpc_api.messages import instance_message
from maxine_registry.registry import Registry
from maxine_registry.subscriptions import Consumer, EventFilter, Fanout, Subscription

logger = logging.getLogger(__name__)

WATCHED_EVENTS = (ev.SERVICE_REGISTERED, ev.SERVICE_DEREGISTERED, ev.SERVICE_UNHEALTHY, ev.SERVICE_HEALTHY)
INITIAL_STATE_DONE = "initial_state_done"


class ConsumerTooSlow(MaxineError):
    """A watch stream's client fell further behind than its queue holds (RESOURCE_EXHAUSTED over gRPC)."""

    status = 429
    code = "consumer_too_slow"


class WatchStream:
    """One WatchServices call: its consumer of the fan-out, the task that writes it, and why it ended."""

    def __init__(self, *, service_name: str, queue_size: int, task: asyncio.Task[Any]) -> None:
        self.service_name = service_name
        self.task = task
        subscription = Subscription()
        for event in WATCHED_EVENTS:
            subscription.subscribe(EventFilter(event=event, service_name=service_name))
        self.consumer: Consumer[pb.ServiceEvent] = Consumer(
            queue_size=queue_size, subscription=subscription, on_overflow=self._overflowed
        )
        # Set when the server ends the stream; the handler then reports it as the call's status.
        self.ended_by: MaxineError | None = None

    def __repr__(self) -> str:
        return f"WatchStream(service_name={self.service_name!r}, ended_by={self.ended_by!r}, {self.consumer!r})"

    async def next_event(self) -> pb.ServiceEvent:
        return await self.consumer.queue.get()

    def end(self, error: MaxineError) -> None:
        """Stop the stream from outside its handler: the handler's task is cancelled and reports ``error``."""
        if self.ended_by is not None:
            return
        self.ended_by = error
        self.task.cancel()

    def _overflowed(self) -> None:
        self.end(
            ConsumerTooSlow(
                f"The watch of {self.service_name!r} fell {self.consumer.queue.maxsize} events behind and was ended; "
                "watch again with include_current to catch up."
            )
        )


class WatchHub:
    """Every open watch stream, the fan-out that feeds them, and the limit on how many may be open."""

    def __init__(self, *, registry: Registry, max_watches: int, queue_size: int) -> None:
        self.registry = registry
        self.queue_size = queue_size
        self.fanout: Fanout[pb.ServiceEvent] = Fanout(
            events=registry.events, encode=self._encode, max_consumers=max_watches
        )
        self.streams: set[WatchStream] = set()
        # Streams ended for falling behind, since start.
        self.dropped = 0

    def __repr__(self) -> str:
        return f"WatchHub(streams={len(self.streams)}, dropped={self.dropped}, {self.fanout!r})"

    def start(self) -> None:
        self.fanout.start()

    def stop(self) -> None:
        """End every stream (UNAVAILABLE, ``shutting_down``) and leave the bus."""
        for stream in list(self.streams):
            stream.end(Unavailable("The registry is shutting down; watch again later.", code="shutting_down"))
        self.fanout.stop()

    def open(self, stream: WatchStream, *, include_current: bool) -> list[pb.ServiceEvent]:
        """Join the fan-out; return the initial messages when asked for. Synchronous, so nothing slips between."""
        if self.fanout.full:
            raise Unavailable(
                f"The registry holds its limit of {self.fanout.max_consumers} watch streams; try again later.",
                code="too_many_watches",
            )
        self.fanout.add(stream.consumer)
        self.streams.add(stream)
        if not include_current:
            return []

        service = self.registry.get_service(stream.service_name)
        instances = list(service.instances.values()) if service is not None else []
        initial = [
            pb.ServiceEvent(
                event=ev.SERVICE_REGISTERED,
                service_name=instance.service_name,
                node_id=instance.node_id,
                timestamp=int(instance.registered_at * 1000),
                instance=instance_message(instance.view()),
                initial=True,
            )
            for instance in instances
        ]
        now_ms = int(self.registry.wall() * 1000)
        initial.append(pb.ServiceEvent(event=INITIAL_STATE_DONE, service_name=stream.service_name, timestamp=now_ms))
        return initial

    def close(self, stream: WatchStream) -> None:
        self.fanout.discard(stream.consumer)
        self.streams.discard(stream)
        if isinstance(stream.ended_by, ConsumerTooSlow):
            self.dropped += 1

    def _encode(self, event: Event) -> pb.ServiceEvent:
        data = event.data
        message = pb.ServiceEvent(
            event=event.event,
            service_name=str(data.get("serviceName", "")),
            node_id=str(data.get("nodeId", "")),
            reason=str(data.get("reason") or ""),
            seq=event.seq,
            timestamp=event.timestamp,
        )
        instance = self.registry.get_instance(message.node_id)
        if instance is not None:
            message.instance.CopyFrom(instance_message(instance.view()))
        return message
