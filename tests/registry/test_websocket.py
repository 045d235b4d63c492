"""The WebSocket event stream: what a client receives, how it filters, authenticates, and where the limits are."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from maxine_registry.errors import Unauthorized
from maxine_registry.events import EventBus
from maxine_registry.http import websocket
from maxine_registry.http.common import OPERATIONS_KEY
from maxine_registry.identity import Identity
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings

from .conftest import FakeClock

Client = TestClient[object, object]
AppClient = Callable[..., Awaitable[Client]]
RECEIVE_TIMEOUT = 5.0


class StubAuthenticator:
    """Accepts tokens of the form ``valid:<subject>:<role>,<role>[:<anything>]`` and refuses the rest."""

    def __init__(self) -> None:
        self.issued = 0

    def verify(self, token: str) -> Identity:
        parts = token.split(":")
        if len(parts) < 3 or parts[0] != "valid":
            raise Unauthorized("The token is not valid.", code="invalid_token")
        return Identity(subject=parts[1], roles=frozenset(filter(None, parts[2].split(","))), verified=True)

    def issue(self, identity: Identity) -> str:
        self.issued += 1
        return f"valid:{identity.subject}:{','.join(sorted(identity.roles))}:refreshed-{self.issued}"


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=RECEIVE_TIMEOUT)
    assert message.type is WSMsgType.TEXT, f"expected a text message, got {message!r}"
    document: dict[str, Any] = message.json()
    return document


async def send(ws: aiohttp.ClientWebSocketResponse, document: object) -> dict[str, Any]:
    """Send a message and return the server's reply to it."""
    await ws.send_json(document)
    return await receive_json(ws)


async def register(api: Client, service_name: str, port: int) -> str:
    response = await api.post("/register", json={"serviceName": service_name, "host": "10.0.0.1", "port": port})
    assert response.status == 200
    node_id: str = (await response.json())["nodeId"]
    return node_id


async def deregister(api: Client, node_id: str) -> None:
    response = await api.delete("/deregister", json={"nodeId": node_id})
    assert response.status == 200


async def ws_count(api: Client) -> int:
    metrics = await (await api.get("/metrics")).json()
    count: int = metrics["wsConnections"]
    return count


async def wait_for_count(api: Client, count: int) -> None:
    for _ in range(200):
        if await ws_count(api) == count:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"wsConnections never became {count}.")


async def slow_clients_dropped(api: Client) -> int:
    state = await (await api.get("/dashboard/state")).json()
    dropped: int = state["websocket"]["dropped"]
    return dropped


# What every client receives.


async def test_a_client_without_filters_receives_every_event_with_its_data_and_timestamp(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        node_id = await register(api, "orders", 8080)
        await deregister(api, node_id)

        registered = await receive_json(ws)
        deregistered = await receive_json(ws)

    assert registered["event"] == "service_registered"
    assert registered["data"] == {"serviceName": "orders", "nodeId": node_id}
    assert isinstance(registered["timestamp"], int)
    assert deregistered["event"] == "service_deregistered"
    assert deregistered["data"]["nodeId"] == node_id
    assert deregistered["seq"] > registered["seq"]


async def test_the_server_root_serves_the_same_stream_on_upgrade(api: Client) -> None:
    async with api.ws_connect("/") as ws:
        await register(api, "orders", 8080)

        event = await receive_json(ws)

    assert event["event"] == "service_registered"


async def test_a_plain_get_of_the_root_sends_browsers_to_the_dashboard_and_others_an_index(api: Client) -> None:
    browser = await api.get("/", headers={"Accept": "text/html,application/xhtml+xml"}, allow_redirects=False)
    program = await api.get("/")

    assert browser.status == 302
    assert browser.headers["Location"] == "/dashboard"
    assert program.status == 200
    index = await program.json()
    assert index["events"] == "/ws"
    assert index["dashboard"] == "/dashboard"


async def test_a_plain_get_of_ws_is_a_clear_error(api: Client) -> None:
    response = await api.get("/ws")

    assert response.status == 400
    assert (await response.json())["code"] == "no_upgrade"


# Filters.


async def test_a_subscription_by_event_receives_only_that_event(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        reply = await send(ws, {"subscribe": {"event": "service_deregistered"}})
        node_id = await register(api, "orders", 8080)
        await deregister(api, node_id)

        event = await receive_json(ws)

    assert reply == {
        "type": "subscribed",
        "filter": {"event": "service_deregistered"},
        "filters": [{"event": "service_deregistered"}],
    }
    # The registration came first; had it passed the filter, it would have arrived first.
    assert event["event"] == "service_deregistered"
    assert event["data"]["nodeId"] == node_id


async def test_a_subscription_by_service_name_receives_only_that_services_events(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        await send(ws, {"subscribe": {"serviceName": "payments"}})
        await register(api, "orders", 8080)
        await register(api, "payments", 9000)

        event = await receive_json(ws)

    assert event["event"] == "service_registered"
    assert event["data"]["serviceName"] == "payments"


async def test_a_subscription_by_node_id_receives_only_that_nodes_events(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        await send(ws, {"subscribe": {"nodeId": "orders:10.0.0.1:8081"}})
        await register(api, "orders", 8080)
        await register(api, "orders", 8081)

        event = await receive_json(ws)

    assert event["data"]["nodeId"] == "orders:10.0.0.1:8081"


async def test_the_fields_of_one_filter_must_all_match(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        await send(ws, {"subscribe": {"event": "service_deregistered", "serviceName": "payments"}})
        orders = await register(api, "orders", 8080)
        payments = await register(api, "payments", 9000)
        await deregister(api, orders)
        await deregister(api, payments)

        event = await receive_json(ws)

    assert (event["event"], event["data"]["nodeId"]) == ("service_deregistered", payments)


async def test_several_subscriptions_add_up(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        await send(ws, {"subscribe": {"serviceName": "orders"}})
        reply = await send(ws, {"subscribe": {"serviceName": "payments"}})
        await register(api, "orders", 8080)
        await register(api, "inventory", 7000)
        await register(api, "payments", 9000)

        first = await receive_json(ws)
        second = await receive_json(ws)

    assert reply["filters"] == [{"serviceName": "orders"}, {"serviceName": "payments"}]
    assert [first["data"]["serviceName"], second["data"]["serviceName"]] == ["orders", "payments"]


async def test_unsubscribe_stops_the_stream_until_the_next_subscribe(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        reply = await send(ws, {"unsubscribe": True})
        await register(api, "orders", 8080)
        again = await send(ws, {"subscribe": {"serviceName": "payments"}})
        await register(api, "payments", 9000)

        event = await receive_json(ws)

    assert reply == {"type": "unsubscribed", "filters": []}
    # Nothing came between the two replies: the orders registration was not delivered.
    assert again["type"] == "subscribed"
    assert event["data"]["serviceName"] == "payments"


async def test_unsubscribing_one_filter_keeps_the_others(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        await send(ws, {"subscribe": {"serviceName": "orders"}})
        await send(ws, {"subscribe": {"serviceName": "payments"}})
        reply = await send(ws, {"unsubscribe": {"serviceName": "orders"}})
        await register(api, "orders", 8080)
        await register(api, "payments", 9000)

        event = await receive_json(ws)

    assert reply == {"type": "unsubscribed", "filters": [{"serviceName": "payments"}]}
    assert event["data"]["serviceName"] == "payments"


# Bad messages: an error reply, and the connection stays.


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"subscribe": {}, "unsubscribe": true}', "invalid_message"),
        ('{"hello": true}', "unknown_message"),
        ('{"subscribe": "orders"}', "invalid_input"),
        ('{"subscribe": {"service": "orders"}}', "invalid_input"),
        ('{"subscribe": {"serviceName": 42}}', "invalid_input"),
        ('{"subscribe": {"event": ""}}', "invalid_input"),
        ('{"unsubscribe": "yes"}', "invalid_input"),
        ('{"unsubscribe": {"serviceName": "never-subscribed"}}', "not_subscribed"),
        ('{"refresh_token": true}', "auth_off"),
    ],
)
async def test_a_malformed_message_gets_an_error_reply_and_the_connection_stays(
    api: Client, raw: str, code: str
) -> None:
    async with api.ws_connect("/ws") as ws:
        await ws.send_str(raw)
        error = await receive_json(ws)
        await register(api, "orders", 8080)
        event = await receive_json(ws)

    assert error["type"] == "error"
    assert error["code"] == code
    assert error["error"]
    assert event["event"] == "service_registered"


async def test_a_binary_message_gets_an_error_reply(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        await ws.send_bytes(b'{"subscribe": {}}')
        error = await receive_json(ws)

    assert (error["type"], error["code"]) == ("error", "binary")


async def test_a_connection_holds_a_bounded_number_of_filters(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        replies = [await send(ws, {"subscribe": {"serviceName": f"service-{index}"}}) for index in range(33)]

    assert all(reply["type"] == "subscribed" for reply in replies[:32])
    assert replies[32]["code"] == "too_many_filters"


async def test_a_message_above_the_size_limit_closes_the_connection(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        await ws.send_str('{"subscribe": {"serviceName": "' + "x" * 8000 + '"}}')
        message = await ws.receive(timeout=RECEIVE_TIMEOUT)

    assert message.type is WSMsgType.CLOSE
    assert message.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


# Authentication.


async def test_with_auth_off_an_auth_message_is_acknowledged_and_ignored(api: Client) -> None:
    async with api.ws_connect("/ws") as ws:
        reply = await send(ws, {"auth": "anything"})
        await register(api, "orders", 8080)
        event = await receive_json(ws)

    assert reply == {"type": "authenticated", "user": None, "authEnabled": False}
    assert event["event"] == "service_registered"


async def test_with_auth_on_a_valid_token_first_opens_the_stream(app_client: AppClient) -> None:
    api = await app_client(authenticator=StubAuthenticator())

    async with api.ws_connect("/ws") as ws:
        reply = await send(ws, {"auth": "valid:alice:admin,read-only"})
        await register(api, "orders", 8080)
        event = await receive_json(ws)

    assert reply == {"type": "authenticated", "user": {"subject": "alice", "roles": ["admin", "read-only"]}}
    assert event["event"] == "service_registered"


async def test_with_auth_on_a_bad_token_closes_the_connection_with_4401(app_client: AppClient) -> None:
    api = await app_client(authenticator=StubAuthenticator())

    async with api.ws_connect("/ws") as ws:
        await ws.send_json({"auth": "forged"})
        message = await ws.receive(timeout=RECEIVE_TIMEOUT)

    assert message.type is WSMsgType.CLOSE
    assert message.data == 4401
    assert "Authentication failed" in message.extra


@pytest.mark.parametrize("first", [{"subscribe": {}}, "not json", {"auth": 42}])
async def test_with_auth_on_any_other_first_message_closes_the_connection_with_4401(
    app_client: AppClient, first: object
) -> None:
    api = await app_client(authenticator=StubAuthenticator())

    async with api.ws_connect("/ws") as ws:
        if isinstance(first, str):
            await ws.send_str(first)
        else:
            await ws.send_json(first)
        message = await ws.receive(timeout=RECEIVE_TIMEOUT)

    assert (message.type, message.data) == (WSMsgType.CLOSE, 4401)


async def test_with_auth_on_a_client_that_never_authenticates_is_closed_with_4401(
    app_client: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websocket, "AUTH_TIMEOUT", 0.2)
    api = await app_client(authenticator=StubAuthenticator())

    async with api.ws_connect("/ws") as ws:
        message = await ws.receive(timeout=RECEIVE_TIMEOUT)

    assert (message.type, message.data) == (WSMsgType.CLOSE, 4401)
    assert "No auth message" in message.extra


async def test_with_auth_on_nothing_is_delivered_before_authentication(app_client: AppClient) -> None:
    api = await app_client(authenticator=StubAuthenticator())

    async with api.ws_connect("/ws") as ws:
        await register(api, "orders", 8080)
        reply = await send(ws, {"auth": "valid:alice:"})
        await register(api, "payments", 9000)
        event = await receive_json(ws)

    assert reply["type"] == "authenticated"
    assert event["data"]["serviceName"] == "payments"


async def test_with_auth_on_a_client_can_refresh_its_token(app_client: AppClient) -> None:
    api = await app_client(authenticator=StubAuthenticator())

    async with api.ws_connect("/ws") as ws:
        await send(ws, {"auth": "valid:alice:admin"})
        refreshed = await send(ws, {"refresh_token": True})
        again = await send(ws, {"auth": refreshed["token"]})

    assert refreshed == {"type": "token_refreshed", "token": "valid:alice:admin:refreshed-1"}
    assert again["user"] == {"subject": "alice", "roles": ["admin"]}


async def test_with_auth_on_a_later_bad_token_closes_the_connection(app_client: AppClient) -> None:
    api = await app_client(authenticator=StubAuthenticator())

    async with api.ws_connect("/ws") as ws:
        await send(ws, {"auth": "valid:alice:admin"})
        await ws.send_json({"auth": "expired"})
        message = await ws.receive(timeout=RECEIVE_TIMEOUT)

    assert (message.type, message.data) == (WSMsgType.CLOSE, 4401)


async def test_with_the_real_authenticator_a_signed_in_token_opens_the_stream_at_the_root(
    auth_api: Client, tokens: dict[str, str]
) -> None:
    async with auth_api.ws_connect("/") as ws:
        reply = await send(ws, {"auth": tokens["read-only"]})
        refreshed = await send(ws, {"refresh_token": True})

    assert reply == {"type": "authenticated", "user": {"subject": "test-read-only", "roles": ["read-only"]}}
    assert refreshed["type"] == "token_refreshed"
    assert auth_api.app[OPERATIONS_KEY].authenticator.verify(refreshed["token"]).subject == "test-read-only"


# Limits.


async def test_a_client_that_never_reads_is_closed_instead_of_growing_memory(app_client: AppClient) -> None:
    queue_size = 50
    api = await app_client(Settings(ws_queue_size=queue_size))
    events = api.app[OPERATIONS_KEY].registry.events

    async with api.ws_connect("/ws") as ws:
        # Publish in small bursts (each smaller than the queue), letting the server send between
        # them, until the sockets' buffers are full and the queue overflows; bounded either way.
        published = 0
        while await slow_clients_dropped(api) == 0 and published < 400_000:
            for _ in range(40):
                for _ in range(25):
                    node_id = f"flood:10.0.0.1:{published}"
                    events.publish("service_registered", {"serviceName": "flood", "nodeId": node_id})
                    published += 1
                await asyncio.sleep(0)

        received = 0
        while True:
            message = await ws.receive(timeout=RECEIVE_TIMEOUT)
            if message.type is not WSMsgType.TEXT:
                break
            received += 1

    assert (message.type, message.data) == (WSMsgType.CLOSE, 1013)
    assert "Too slow" in message.extra
    assert received < published
    await wait_for_count(api, 0)


async def test_a_burst_larger_than_the_queue_closes_the_client_with_1013(app_client: AppClient) -> None:
    api = await app_client(Settings(ws_queue_size=10))
    events = api.app[OPERATIONS_KEY].registry.events

    async with api.ws_connect("/ws") as ws:
        for index in range(1000):
            events.publish("service_registered", {"serviceName": "burst", "nodeId": f"burst:10.0.0.1:{index}"})
        messages = []
        while (message := await ws.receive(timeout=RECEIVE_TIMEOUT)).type is WSMsgType.TEXT:
            messages.append(message)

    assert (message.type, message.data) == (WSMsgType.CLOSE, 1013)
    assert len(messages) <= 10


async def test_connections_above_the_limit_are_refused_with_503(app_client: AppClient) -> None:
    api = await app_client(Settings(ws_max_connections=2))

    first = await api.ws_connect("/ws")
    second = await api.ws_connect("/ws")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.ws_connect("/ws")
    await first.close()
    await wait_for_count(api, 1)
    third = await api.ws_connect("/ws")

    assert refused.value.status == 503
    assert await ws_count(api) == 2
    await second.close()
    await third.close()


async def test_metrics_count_the_open_connections(api: Client) -> None:
    before = await ws_count(api)
    first = await api.ws_connect("/ws")
    second = await api.ws_connect("/")
    during = await ws_count(api)
    await first.close()
    await second.close()
    await wait_for_count(api, 0)

    assert (before, during) == (0, 2)


async def test_shutting_the_app_down_closes_every_client_with_1001(app_client: AppClient) -> None:
    api = await app_client()
    ws = await api.ws_connect("/ws")

    await api.server.close()
    message = await ws.receive(timeout=RECEIVE_TIMEOUT)

    assert (message.type, message.data) == (WSMsgType.CLOSE, aiohttp.WSCloseCode.GOING_AWAY)


# Which events the bus carries for the sinks.


async def test_heartbeat_events_come_at_most_once_per_node_per_interval(clock: FakeClock) -> None:
    registry = Registry(
        events=EventBus(wall=lambda: clock.now), clock=clock, heartbeat_events=True, heartbeat_event_interval=5.0
    )
    seen: list[str] = []
    registry.events.subscribe(lambda event: seen.append(event.event) if event.event == "service_heartbeat" else None)
    registration = parse_registration(
        {"serviceName": "orders", "host": "10.0.0.1", "port": 8080}, max_metadata_bytes=1024
    )
    node_id = registry.register(registration).node_id

    for _ in range(10):  # ten heartbeats within one second
        registry.heartbeat(node_id)
        clock.advance(0.1)
    clock.advance(5.0)
    registry.heartbeat(node_id)

    assert seen == ["service_heartbeat", "service_heartbeat"]
