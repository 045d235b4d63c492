"""gRPC's unary calls: the HTTP API's operations, validation and refusals, with gRPC status codes."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maxine_registry.grpc_api import maxine_pb2 as pb
from maxine_registry.server import MaxineServer
from maxine_registry.settings import Settings
from tests.conftest import LOOPBACK
from tests.grpc_api.conftest import GrpcClient, maxine_code


def http_base(server: MaxineServer) -> str:
    return f"http://{LOOPBACK}:{server.port}"


async def refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call ends with; fails the test if it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_register_discover_heartbeat_and_deregister_round_trip(client: GrpcClient) -> None:
    stub = client.stub
    metadata = {"version": "1.2", "tags": ["eu", "web"], "weight": 2, "replicas": 3}

    registered = await stub.Register(
        pb.RegisterRequest(
            service_name="orders", host="10.0.0.5", port=8080, metadata_json=orjson.dumps(metadata).decode(), ttl=15
        )
    )
    found = await stub.Discover(pb.DiscoverRequest(service_name="orders", tags=["eu"]))
    renewed = await stub.Heartbeat(pb.HeartbeatRequest(node_id=registered.node_id))
    removed = await stub.Deregister(pb.DeregisterRequest(node_id=registered.node_id))

    assert (registered.node_id, registered.address, registered.ttl) == ("orders:10.0.0.5:8080", "10.0.0.5:8080", 15.0)
    assert (found.node_id, found.host, found.port, found.address) == (
        "orders:10.0.0.5:8080",
        "10.0.0.5",
        8080,
        "10.0.0.5:8080",
    )
    assert (found.version, list(found.tags), found.weight, found.healthy) == ("1.2", ["eu", "web"], 2.0, True)
    # Numbers keep their type: metadata travels as JSON text, not as a protobuf Struct.
    assert orjson.loads(found.metadata_json) == metadata
    assert (renewed.node_id, renewed.ttl) == ("orders:10.0.0.5:8080", 15.0)
    assert (removed.node_id, removed.deregistered) == ("orders:10.0.0.5:8080", True)
    gone = await refusal(stub.Discover(pb.DiscoverRequest(service_name="orders")))
    assert (gone.code(), maxine_code(gone)) == (grpc.StatusCode.NOT_FOUND, "service_not_found")


async def test_an_instance_registered_over_grpc_is_the_one_http_discovers(
    client: GrpcClient, registry_server: MaxineServer
) -> None:
    await client.stub.Register(pb.RegisterRequest(service_name="orders", host="10.0.0.5", port=8080))

    async with (
        aiohttp.ClientSession() as session,
        session.get(http_base(registry_server) + "/discover", params={"serviceName": "orders"}) as response,
    ):
        document = await response.json()

    assert response.status == 200
    assert document["nodeId"] == "orders:10.0.0.5:8080"
    assert document["metadata"] == {}


async def test_an_unset_ttl_gives_the_registry_default(client: GrpcClient, registry_server: MaxineServer) -> None:
    registered = await client.stub.Register(pb.RegisterRequest(service_name="orders", host="10.0.0.5", port=8080))

    assert registered.ttl == registry_server.settings.heartbeat_timeout


async def test_a_heartbeat_of_an_unknown_node_is_not_found_with_not_registered(client: GrpcClient) -> None:
    error = await refusal(client.stub.Heartbeat(pb.HeartbeatRequest(node_id="orders:10.0.0.9:8080")))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert maxine_code(error) == "not_registered"
    assert ("maxine-status", "404") in tuple(error.trailing_metadata() or ())
    assert "register it again" in (error.details() or "")


@pytest.mark.parametrize(
    ("request_fields", "status", "code"),
    [
        (
            {"service_name": "bad name", "host": "10.0.0.5", "port": 80},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_input",
        ),
        ({"service_name": "orders", "host": "", "port": 80}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"),
        ({"service_name": "orders", "host": "10.0.0.5", "port": 0}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"),
        (
            {"service_name": "orders", "host": "10.0.0.5", "port": 70000},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_input",
        ),
        (
            {"service_name": "orders", "host": "10.0.0.5", "port": 80, "ttl": 0.5},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_input",
        ),
        (
            {"service_name": "orders", "host": "10.0.0.5", "port": 80, "metadata_json": "{not json"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_json",
        ),
        (
            {"service_name": "orders", "host": "10.0.0.5", "port": 80, "metadata_json": "[1, 2]"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_input",
        ),
        (
            {"service_name": "orders", "host": "10.0.0.5", "port": 80, "metadata_json": '{"tags": "eu"}'},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_input",
        ),
        (
            # Above MAX_METADATA_BYTES (1024 here), within the message limit (MAX_BODY_BYTES, 4096 here).
            {
                "service_name": "orders",
                "host": "10.0.0.5",
                "port": 80,
                "metadata_json": "{" + '"x":"' + "y" * 2000 + '"}',
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "metadata_too_large",
        ),
    ],
)
async def test_a_refused_registration_maps_to_a_status_code_with_maxine_code(
    client: GrpcClient, request_fields: dict[str, Any], status: grpc.StatusCode, code: str
) -> None:
    error = await refusal(client.stub.Register(pb.RegisterRequest(**request_fields)))

    assert (error.code(), maxine_code(error)) == (status, code)
    assert await client.stub.Register(pb.RegisterRequest(service_name="probe", host="10.0.0.1", port=1))
    servers = client.server.registry
    assert servers.get_service("orders") is None, "a refused registration must change nothing"


async def test_a_message_above_the_body_limit_is_refused_by_grpc_itself(client: GrpcClient) -> None:
    huge = orjson.dumps({"x": "y" * 10_000}).decode()

    error = await refusal(
        client.stub.Register(pb.RegisterRequest(service_name="orders", host="10.0.0.5", port=80, metadata_json=huge))
    )

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("request_fields", "status", "code"),
    [
        ({"service_name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"),
        ({"service_name": "nobody"}, grpc.StatusCode.NOT_FOUND, "service_not_found"),
        ({"service_name": "orders", "load_balancing": "telepathy"}, grpc.StatusCode.INVALID_ARGUMENT, None),
        ({"service_name": "orders", "version": "9.9"}, grpc.StatusCode.NOT_FOUND, "no_instance"),
    ],
)
async def test_a_refused_discovery_maps_to_a_status_code_with_maxine_code(
    client: GrpcClient, request_fields: dict[str, Any], status: grpc.StatusCode, code: str | None
) -> None:
    await client.stub.Register(pb.RegisterRequest(service_name="orders", host="10.0.0.5", port=80))

    error = await refusal(client.stub.Discover(pb.DiscoverRequest(**request_fields)))

    assert error.code() == status
    if code is not None:
        assert maxine_code(error) == code
    else:
        assert maxine_code(error), "every refusal carries a maxine-code"


async def test_discovery_with_no_healthy_instance_is_unavailable(client: GrpcClient) -> None:
    registered = await client.stub.Register(pb.RegisterRequest(service_name="orders", host="10.0.0.5", port=80))
    registry = client.server.registry
    instance = registry.get_instance(registered.node_id)
    assert instance is not None
    registry.set_health(instance, healthy=False, reason="probe failed")

    error = await refusal(client.stub.Discover(pb.DiscoverRequest(service_name="orders")))

    assert (error.code(), maxine_code(error)) == (grpc.StatusCode.UNAVAILABLE, "no_healthy_instance")


async def test_an_empty_node_id_is_an_invalid_argument(client: GrpcClient) -> None:
    heartbeat = await refusal(client.stub.Heartbeat(pb.HeartbeatRequest(node_id="")))
    deregister = await refusal(client.stub.Deregister(pb.DeregisterRequest(node_id="not a node")))

    assert heartbeat.code() == deregister.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_short_node_id_naming_two_nodes_is_a_failed_precondition(client: GrpcClient) -> None:
    for service in ("orders", "billing"):
        await client.stub.Register(pb.RegisterRequest(service_name=service, host="10.0.0.5", port=80))

    error = await refusal(client.stub.Heartbeat(pb.HeartbeatRequest(node_id="10.0.0.5:80")))

    assert (error.code(), maxine_code(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "ambiguous_node_id")


async def test_calls_are_counted_in_the_registry_metrics(client: GrpcClient) -> None:
    stats = client.server.operations.stats
    before = (stats.requests, stats.errors)

    await client.stub.Register(pb.RegisterRequest(service_name="orders", host="10.0.0.5", port=80))
    await refusal(client.stub.Heartbeat(pb.HeartbeatRequest(node_id="orders:10.0.0.9:80")))

    assert (stats.requests - before[0], stats.errors - before[1]) == (2, 1)


async def test_the_health_service_answers_serving(client: GrpcClient) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)

    overall = await health.Check(health_pb2.HealthCheckRequest())
    maxine = await health.Check(health_pb2.HealthCheckRequest(service="maxine.v1.Maxine"))
    unknown = await refusal(health.Check(health_pb2.HealthCheckRequest(service="nothing.Here")))

    assert overall.status == maxine.status == health_pb2.HealthCheckResponse.SERVING
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_a_grpc_port_in_use_stops_the_start_with_an_error_naming_grpc(
    maxine_server: Callable[..., Awaitable[MaxineServer]],
) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(OSError, match="gRPC port"):
            await maxine_server(grpc_port=port)


async def test_grpc_is_off_unless_enabled(maxine_server: Callable[..., Awaitable[MaxineServer]]) -> None:
    server = await maxine_server(grpc_enabled=Settings().grpc_enabled)

    assert server.grpc is None
