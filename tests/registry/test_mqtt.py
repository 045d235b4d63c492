"""MQTT publishing against a real mosquitto: what subscribers receive, and what a broker outage does (nothing bad)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.events import Event, EventBus
from maxine_registry.mqtt import MqttPublisher, backoff_delay
from maxine_registry.settings import Settings, SettingsError, load_settings, parse_broker_url
from tests.conftest import MosquittoBroker

Client = TestClient[object, object]
AppClient = Callable[..., Awaitable[Client]]
TOPIC = "maxine/registry/events"
RECEIVE_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def subscribed(broker: MosquittoBroker, topic: str = f"{TOPIC}/#") -> AsyncIterator[aiomqtt.Client]:
    """A subscriber on the broker that has its subscription acknowledged before the block runs."""
    async with aiomqtt.Client(hostname=broker.host, port=broker.port, timeout=RECEIVE_TIMEOUT) as subscriber:
        await subscriber.subscribe(topic, qos=1)
        yield subscriber


async def next_message(subscriber: aiomqtt.Client) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(subscriber.messages), timeout=RECEIVE_TIMEOUT)


def payload_of(message: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(message.payload, (bytes, bytearray)), f"expected a JSON payload, got {message.payload!r}"
    document: dict[str, Any] = json.loads(message.payload)
    return document


async def message_about(subscriber: aiomqtt.Client, service_name: str) -> tuple[aiomqtt.Message, dict[str, Any]]:
    """The first message whose event concerns ``service_name``, skipping others (events queued earlier)."""
    while True:
        message = await next_message(subscriber)
        document = payload_of(message)
        if document["data"].get("serviceName") == service_name:
            return message, document


async def register(api: Client, service_name: str, port: int = 8080) -> None:
    response = await api.post("/register", json={"serviceName": service_name, "host": "10.0.0.1", "port": port})
    assert response.status == 200


async def mqtt_state(api: Client) -> dict[str, Any]:
    state: dict[str, Any] = (await (await api.get("/dashboard/state")).json())["mqtt"]
    return state


async def wait_for_connected(api: Client, connected: bool) -> None:
    for _ in range(500):
        if (await mqtt_state(api))["connected"] is connected:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"The MQTT publisher never became connected={connected}.")


def mqtt_settings(broker: MosquittoBroker, **overrides: Any) -> Settings:
    return Settings(mqtt_enabled=True, mqtt_broker=broker.url, mqtt_reconnect_max=0.5, **overrides)


async def test_a_registration_is_published_to_the_event_topic_with_qos_1(
    app_client: AppClient, mosquitto: MosquittoBroker
) -> None:
    api = await app_client(mqtt_settings(mosquitto))
    await wait_for_connected(api, True)

    async with subscribed(mosquitto) as subscriber:
        await register(api, "orders")
        message = await next_message(subscriber)

    document = payload_of(message)
    assert message.topic.value == f"{TOPIC}/service_registered"
    assert message.qos == 1
    assert document["event"] == "service_registered"
    assert document["data"] == {"serviceName": "orders", "nodeId": "orders:10.0.0.1:8080"}
    assert isinstance(document["timestamp"], int)


async def test_every_event_goes_to_its_own_subtopic_under_the_configured_topic(
    app_client: AppClient, mosquitto: MosquittoBroker
) -> None:
    api = await app_client(mqtt_settings(mosquitto, mqtt_topic="acme/maxine"))
    await wait_for_connected(api, True)

    async with subscribed(mosquitto, "acme/maxine/#") as subscriber:
        await register(api, "orders")
        deregistered = await api.delete("/deregister", json={"nodeId": "orders:10.0.0.1:8080"})
        topics = [(await next_message(subscriber)).topic.value for _ in range(2)]

    assert deregistered.status == 200
    assert topics == ["acme/maxine/service_registered", "acme/maxine/service_deregistered"]


async def test_a_broker_outage_leaves_requests_answering_and_publishing_resumes_after_it(
    app_client: AppClient, mosquitto: MosquittoBroker
) -> None:
    api = await app_client(mqtt_settings(mosquitto))
    await wait_for_connected(api, True)

    mosquitto.kill()
    await wait_for_connected(api, False)
    statuses = []
    for port in range(9000, 9020):
        response = await api.post("/register", json={"serviceName": "during", "host": "10.0.0.1", "port": port})
        statuses.append(response.status)
    discovered = await api.get("/discover", params={"serviceName": "during"})

    mosquitto.start()
    async with subscribed(mosquitto) as subscriber:
        await register(api, "after")
        message, document = await message_about(subscriber, "after")

    assert statuses == [200] * 20
    assert discovered.status == 200
    assert message.topic.value == f"{TOPIC}/service_registered"
    assert document["data"]["nodeId"] == "after:10.0.0.1:8080"
    assert (await mqtt_state(api))["connected"] is True


async def test_the_queue_keeps_the_newest_events_and_counts_the_dropped_ones(mosquitto: MosquittoBroker) -> None:
    events = EventBus()
    publisher = MqttPublisher(
        events=events,
        broker=parse_broker_url(mosquitto.url),
        topic=TOPIC,
        client_id="maxine-test-queue",
        queue_size=3,
        reconnect_max=0.5,
    )
    # Not started yet: events wait in the queue as they would while the broker is away.
    for index in range(5):
        publisher.enqueue(Event(index + 1, "service_registered", {"serviceName": f"service-{index}"}, 0))

    async with subscribed(mosquitto) as subscriber:
        publisher.start()
        try:
            names = [payload_of(await next_message(subscriber))["data"]["serviceName"] for _ in range(3)]
        finally:
            await publisher.stop()

    assert names == ["service-2", "service-3", "service-4"]
    assert (publisher.dropped, publisher.published) == (2, 3)


async def test_the_password_is_never_logged(
    app_client: AppClient, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = mqtt_settings(mosquitto, mqtt_username="maxine", mqtt_password="s3cret-passw0rd")

    api = await app_client(settings)
    await wait_for_connected(api, True)
    mosquitto.kill()
    await wait_for_connected(api, False)

    assert "s3cret-passw0rd" not in caplog.text
    assert "s3cret-passw0rd" not in json.dumps(settings.public())
    assert "s3cret-passw0rd" not in repr(settings)
    assert "Lost the MQTT broker" in caplog.text


async def test_mqtt_is_off_by_default(app_client: AppClient) -> None:
    api = await app_client()

    assert await mqtt_state(api) is None


@pytest.mark.parametrize(
    "broker",
    ["http://127.0.0.1:1883", "mqtt://user:pass@127.0.0.1:1883", "mqtt://127.0.0.1:99999", "mqtt://127.0.0.1/x"],
)
def test_a_broker_url_that_is_not_scheme_host_port_stops_the_server_at_start(broker: str) -> None:
    with pytest.raises(SettingsError, match="MQTT_BROKER"):
        load_settings([], environ={"MQTT_BROKER": broker})


def test_a_topic_with_wildcards_is_refused() -> None:
    with pytest.raises(SettingsError, match="MQTT_TOPIC"):
        load_settings([], environ={"MQTT_TOPIC": "maxine/#"})


def test_reconnect_waits_grow_with_jitter_up_to_the_maximum() -> None:
    highest = [backoff_delay(attempt, maximum=30.0, rng=lambda low, high: high) for attempt in range(1, 10)]
    lowest = [backoff_delay(attempt, maximum=30.0, rng=lambda low, high: low) for attempt in range(1, 10)]

    assert highest == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert lowest == [value / 2 for value in highest]
