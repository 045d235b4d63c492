"""
Registry events published to an MQTT broker, at least once, without ever slowing the registry.

The event bus hands each event to ``MqttPublisher.enqueue``, which only appends it to a bounded
queue: a registration never waits for the broker. One background task owns the connection. It
publishes the queue in order, each event as JSON on ``<topic>/<event>`` with QoS 1, and removes
an event only once the broker acknowledged it, so an event in flight when the connection drops
is sent again after the reconnect (at least once). While the broker is unreachable the queue
keeps the newest events: when it is full the oldest is dropped and counted. The task reconnects
with exponential backoff and jitter, and logs a line when the connection comes or goes, not for
every failed attempt.

MQTT is off unless ``MQTT_ENABLED`` is set; the default broker is on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import aiomqtt
import orjson
from aiohttp import web

from maxine_registry.events import Event, EventBus
from maxine_registry.model import format_address
from maxine_registry.operations import Operations
from maxine_registry.settings import BrokerAddress, parse_broker_url
from maxine_registry.subscriptions import event_document

logger = logging.getLogger(__name__)

QOS = 1
# The first wait after a failed connection; it doubles up to the configured maximum.
RECONNECT_BASE = 0.5
# Seconds for a CONNACK or a PUBACK before the connection counts as broken.
BROKER_TIMEOUT = 10.0
# Seconds the publisher gets to disconnect cleanly when the registry stops.
STOP_TIMEOUT = 3.0
KEEPALIVE = 30


def backoff_delay(attempt: int, *, maximum: float, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Exponential backoff with jitter: from half to all of ``base * 2**(attempt - 1)``, capped at ``maximum``."""
    ceiling = min(maximum, RECONNECT_BASE * 2 ** min(attempt - 1, 32))
    return rng(ceiling / 2, ceiling)


class MqttPublisher:
    def __init__(
        self,
        *,
        events: EventBus,
        broker: BrokerAddress,
        topic: str,
        username: str | None = None,
        password: str | None = None,
        client_id: str,
        queue_size: int,
        reconnect_max: float,
    ) -> None:
        self.events = events
        self.broker = broker
        self.topic = topic.rstrip("/")
        self.username = username
        self._password = password
        self.client_id = client_id
        self.queue_size = queue_size
        self.reconnect_max = reconnect_max
        self.published = 0
        self.dropped = 0
        # None until the first attempt tells whether the broker answers.
        self.connected: bool | None = None
        self._queue: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._dropped_unreported = 0
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (
            f"MqttPublisher(broker={self.where!r}, topic={self.topic!r}, connected={self.connected}, "
            f"queued={len(self._queue)}, published={self.published}, dropped={self.dropped})"
        )

    @property
    def where(self) -> str:
        scheme = "mqtts" if self.broker.tls else "mqtt"
        return f"{scheme}://{format_address(self.broker.host, self.broker.port)}"

    @property
    def queued(self) -> int:
        return len(self._queue)

    # TODO: LATER: these counters are in /dashboard/state only; /metrics could carry them too.
    def view(self) -> dict[str, Any]:
        return {
            "broker": self.where,
            "topic": self.topic,
            "connected": bool(self.connected),
            "queued": self.queued,
            "published": self.published,
            "dropped": self.dropped,
        }

    # Lifecycle.

    def start(self) -> None:
        if self._task is not None:
            return
        self._unsubscribe = self.events.subscribe(self.enqueue)
        self._task = asyncio.create_task(self._run(), name="maxine-mqtt-publisher")
        logger.info("MQTT publishing to %s under %s/<event> is on.", self.where, self.topic)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._task, timeout=STOP_TIMEOUT)
        self._task = None
        if self._queue:
            logger.warning("MQTT publishing stopped with %d event(s) not yet delivered.", len(self._queue))

    # The bus side: never waits, never raises.

    def enqueue(self, event: Event) -> None:
        if len(self._queue) >= self.queue_size:
            self._queue.popleft()
            self.dropped += 1
            if self._dropped_unreported == 0:
                logger.warning(
                    "The MQTT queue holds its limit of %d events; the oldest are dropped until %s takes them.",
                    self.queue_size,
                    self.where,
                )
            self._dropped_unreported += 1
        self._queue.append(event)
        self._wakeup.set()

    # The connection side.

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async with self._client() as client:
                    attempt = 0
                    self._state_changed(connected=True)
                    await self._serve(client)
            except aiomqtt.MqttError as error:
                self._state_changed(connected=False, error=error)
            except Exception:
                # A bug here must not end publishing for the life of the process.
                logger.exception("MQTT publishing failed unexpectedly; it reconnects.")
                self._state_changed(connected=False)
            attempt += 1
            delay = backoff_delay(attempt, maximum=self.reconnect_max)
            logger.debug("MQTT reconnect attempt %d in %.2f s.", attempt, delay)
            await asyncio.sleep(delay)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            hostname=self.broker.host,
            port=self.broker.port,
            username=self.username or None,
            password=self._password or None,
            identifier=self.client_id,
            timeout=BROKER_TIMEOUT,
            keepalive=KEEPALIVE,
            tls_context=ssl.create_default_context() if self.broker.tls else None,
        )

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish until the connection breaks; a watcher notices a broken idle connection at once."""
        publisher = asyncio.create_task(self._publish_forever(client), name="maxine-mqtt-publish")
        watcher = asyncio.create_task(self._watch(client), name="maxine-mqtt-watch")
        try:
            done, _ = await asyncio.wait({publisher, watcher}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (publisher, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task

    async def _publish_forever(self, client: aiomqtt.Client) -> None:
        # TODO: LATER: one message in flight at a time caps throughput at one broker round trip per
        # event (thousands a second on a LAN); a window of in-flight messages would lift it.
        queue = self._queue
        while True:
            while not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            event = queue[0]
            payload = orjson.dumps(event_document(event))
            await client.publish(f"{self.topic}/{event.event}", payload=payload, qos=QOS, timeout=BROKER_TIMEOUT)
            # The queue may have dropped this event as the oldest while it was in flight.
            if queue and queue[0] is event:
                queue.popleft()
            self.published += 1

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # Nothing is subscribed, so the iterator yields nothing and ends with MqttError on disconnection.
        async for _ in client.messages:
            pass

    def _state_changed(self, *, connected: bool, error: BaseException | None = None) -> None:
        was = self.connected
        self.connected = connected
        if connected and was is not True:
            logger.info("Connected to the MQTT broker at %s.", self.where)
            if self._dropped_unreported:
                logger.warning(
                    "%d event(s) were dropped while the MQTT broker was unreachable.", self._dropped_unreported
                )
                self._dropped_unreported = 0
        elif not connected and was is True:
            logger.warning(
                "Lost the MQTT broker at %s (%s); up to %d events wait while reconnecting.",
                self.where,
                error,
                self.queue_size,
            )
        elif not connected and was is None:
            logger.warning("Cannot reach the MQTT broker at %s (%s); retrying with backoff.", self.where, error)


MQTT_KEY = web.AppKey("maxine.mqtt", MqttPublisher)


def setup(app: web.Application, operations: Operations) -> None:
    settings = operations.settings
    if not settings.mqtt_enabled:
        return
    publisher = MqttPublisher(
        events=operations.registry.events,
        broker=parse_broker_url(settings.mqtt_broker),
        topic=settings.mqtt_topic,
        username=settings.mqtt_username,
        password=settings.mqtt_password,
        client_id=f"maxine-{operations.instance_id[:16]}",
        queue_size=settings.mqtt_queue_size,
        reconnect_max=settings.mqtt_reconnect_max,
    )
    app[MQTT_KEY] = publisher

    async def start(app: web.Application) -> None:
        publisher.start()

    async def stop(app: web.Application) -> None:
        await publisher.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
