"""WatchServices: one service's changes, in order, after its current state; slow readers are let go."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from maxine_registry.grpc_api import maxine_pb2 as pb
from maxine_registry.registry import Registry
from maxine_registry.server import MaxineServer
from tests.grpc_api.conftest import EVENTUALLY, GrpcClient, maxine_code

Stream = Any  # grpc.aio's UnaryStreamCall


async def next_event(stream: Stream) -> pb.ServiceEvent:
    event = await asyncio.wait_for(stream.read(), timeout=EVENTUALLY)
    assert event is not grpc.aio.EOF, "the stream ended early"
    assert isinstance(event, pb.ServiceEvent)
    return event


async def watch_from_now(client: GrpcClient, service_name: str) -> tuple[Stream, list[pb.ServiceEvent]]:
    """Open a watch with the current state; return it once the current state has been read."""
    stream = client.stub.WatchServices(pb.WatchRequest(service_name=service_name, include_current=True))
    initial = []
    while (event := await next_event(stream)).event != "initial_state_done":
        initial.append(event)
    return stream, initial


def register(registry_server: MaxineServer, service_name: str, host: str, port: int = 80) -> str:
    """Register from inside, as any transport would; the node id."""
    body = {"serviceName": service_name, "host": host, "port": port}
    registry_server.operations.register(body)
    return f"{service_name}:{host}:{port}"


def set_health(registry: Registry, node_id: str, *, healthy: bool) -> None:
    instance = registry.get_instance(node_id)
    assert instance is not None
    registry.set_health(instance, healthy=healthy, reason="health check")


async def test_a_watch_gets_its_services_changes_only_and_in_order(
    client: GrpcClient, registry_server: MaxineServer
) -> None:
    registry = registry_server.registry
    stream, initial = await watch_from_now(client, "orders")

    first = register(registry_server, "orders", "10.0.0.1")
    register(registry_server, "payments", "10.0.0.9")
    second = register(registry_server, "orders", "10.0.0.2")
    set_health(registry, second, healthy=False)
    set_health(registry, second, healthy=True)
    registry.deregister("payments:10.0.0.9:80")
    registry.deregister(first)

    received = [await next_event(stream) for _ in range(5)]
    stream.cancel()

    assert initial == []
    assert [(event.event, event.node_id) for event in received] == [
        ("service_registered", first),
        ("service_registered", second),
        ("service_unhealthy", second),
        ("service_healthy", second),
        ("service_deregistered", first),
    ]
    assert {event.service_name for event in received} == {"orders"}
    sequence = [event.seq for event in received]
    assert sequence == sorted(sequence) and len(set(sequence)) == 5
    assert received[2].reason == "health check"
    assert received[2].instance.healthy is False
    assert received[0].instance.address == "10.0.0.1:80"
    assert not received[4].HasField("instance"), "a deregistered instance is gone from the registry"


async def test_include_current_sends_the_instances_first_then_a_marker(
    client: GrpcClient, registry_server: MaxineServer
) -> None:
    register(registry_server, "orders", "10.0.0.1")
    register(registry_server, "orders", "10.0.0.2")
    register(registry_server, "payments", "10.0.0.9")

    stream, initial = await watch_from_now(client, "orders")
    third = register(registry_server, "orders", "10.0.0.3")
    change = await next_event(stream)
    stream.cancel()

    assert sorted(event.node_id for event in initial) == ["orders:10.0.0.1:80", "orders:10.0.0.2:80"]
    assert all(event.initial and event.event == "service_registered" for event in initial)
    assert all(event.instance.service_name == "orders" for event in initial)
    assert (change.event, change.node_id, change.initial) == ("service_registered", third, False)


async def test_a_lease_that_runs_out_arrives_as_unhealthy_with_its_reason(
    client: GrpcClient, registry_server: MaxineServer
) -> None:
    stream, _ = await watch_from_now(client, "orders")
    registry_server.operations.register({"serviceName": "orders", "host": "10.0.0.1", "port": 80, "ttl": 1})

    registered = await next_event(stream)
    expired = await next_event(stream)
    stream.cancel()

    assert registered.event == "service_registered"
    assert (expired.event, expired.node_id, expired.reason) == (
        "service_unhealthy",
        "orders:10.0.0.1:80",
        "lease_expired",
    )


async def test_a_watch_needs_a_valid_service_name(client: GrpcClient) -> None:
    stream = client.stub.WatchServices(pb.WatchRequest(service_name=""))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()

    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_input")


async def test_a_watch_that_falls_behind_its_queue_is_ended_with_resource_exhausted(
    maxine_server: Callable[..., Awaitable[MaxineServer]], grpc_client: Callable[[MaxineServer], GrpcClient]
) -> None:
    server = await maxine_server(grpc_watch_queue_size=4)
    client = grpc_client(server)
    stream, _ = await watch_from_now(client, "orders")

    # Twenty changes within one step of the event loop: the stream cannot send any before its queue is full.
    for index in range(20):
        register(server, "orders", f"10.0.1.{index}")
    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await next_event(stream):
            received += 1

    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "consumer_too_slow")
    assert received <= 5
    assert server.grpc is not None
    assert (len(server.grpc.watches.streams), server.grpc.watches.dropped) == (0, 1)


async def test_a_watch_whose_client_reads_nothing_is_ended_instead_of_queueing_without_end(
    maxine_server: Callable[..., Awaitable[MaxineServer]], grpc_client: Callable[[MaxineServer], GrpcClient]
) -> None:
    server = await maxine_server(grpc_watch_queue_size=16)
    assert server.grpc is not None
    watches = server.grpc.watches
    client = grpc_client(server)
    stream, _ = await watch_from_now(client, "orders")

    # One change per step of the loop, so the server writes as fast as the connection lets it, until
    # the client's flow-control window is full and the queue behind it fills up too.
    deadline = time.monotonic() + EVENTUALLY
    published = 0
    while watches.streams and published < 50_000 and time.monotonic() < deadline:
        register(server, "orders", f"10.{published // 65536}.{published // 256 % 256}.{published % 256}")
        published += 1
        await asyncio.sleep(0)

    assert not watches.streams, f"the stream was still open after {published} changes"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await next_event(stream):
            pass
    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "consumer_too_slow")


async def test_watches_above_the_limit_are_unavailable(
    maxine_server: Callable[..., Awaitable[MaxineServer]], grpc_client: Callable[[MaxineServer], GrpcClient]
) -> None:
    server = await maxine_server(grpc_max_watches=1)
    client = grpc_client(server)
    first, _ = await watch_from_now(client, "orders")

    second = client.stub.WatchServices(pb.WatchRequest(service_name="orders"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.read()
    first.cancel()

    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.UNAVAILABLE, "too_many_watches")


async def test_a_client_that_cancels_its_watch_frees_its_place(client: GrpcClient) -> None:
    assert client.server.grpc is not None
    watches = client.server.grpc.watches
    stream, _ = await watch_from_now(client, "orders")
    assert len(watches.streams) == 1

    stream.cancel()

    deadline = time.monotonic() + EVENTUALLY
    while watches.streams:
        assert time.monotonic() < deadline, "the stream was still open after its client cancelled it"
        await asyncio.sleep(0.02)


async def test_stopping_the_registry_ends_watches_with_unavailable(
    maxine_server: Callable[..., Awaitable[MaxineServer]], grpc_client: Callable[[MaxineServer], GrpcClient]
) -> None:
    server = await maxine_server()
    client = grpc_client(server)
    stream, _ = await watch_from_now(client, "orders")

    reading = asyncio.ensure_future(next_event(stream))
    await server.stop()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reading
    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.UNAVAILABLE, "shutting_down")
