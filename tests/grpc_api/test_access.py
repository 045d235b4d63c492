"""Who may call what over gRPC: tokens and roles as on the HTTP routes, ACLs and intentions as for discovery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maxine_registry.auth import SERVICE
from maxine_registry.grpc_api import maxine_pb2 as pb
from maxine_registry.identity import ADMIN, READ_ONLY, Identity
from maxine_registry.server import MaxineServer
from tests.conftest import LOOPBACK
from tests.grpc_api.conftest import GrpcClient, maxine_code

ORDERS = pb.RegisterRequest(service_name="orders", host="10.0.0.5", port=8080)


async def set_acl(server: MaxineServer, document: dict[str, Any], *, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"http://{LOOPBACK}:{server.port}/api/maxine/serviceops/acl/set"
    async with aiohttp.ClientSession() as session, session.post(url, json=document, headers=headers) as response:
        assert response.status == 200, await response.text()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def caller(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-maxine-caller", name),)


@pytest.fixture
async def auth_server(
    maxine_server: Callable[..., Awaitable[MaxineServer]], auth_overrides: dict[str, Any]
) -> MaxineServer:
    return await maxine_server(**auth_overrides)


@pytest.fixture
def tokens(auth_server: MaxineServer) -> dict[str, str]:
    """A valid token per role, signed by the server's own authenticator."""
    authenticator = auth_server.operations.authenticator
    assert authenticator is not None
    return {
        role: authenticator.issue(Identity(subject=f"test-{role}", roles=frozenset({role}), verified=True))
        for role in (ADMIN, READ_ONLY, SERVICE)
    }


@pytest.fixture
def auth_client(auth_server: MaxineServer, grpc_client: Callable[[MaxineServer], GrpcClient]) -> GrpcClient:
    return grpc_client(auth_server)


async def test_with_auth_on_a_call_without_a_token_is_unauthenticated(auth_client: GrpcClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_client.stub.Register(ORDERS)

    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.UNAUTHENTICATED, "missing_token")


@pytest.mark.parametrize("header", ["Bearer not-a-token", "Basic YWRtaW46YWRtaW4=", "Bearer"])
async def test_with_auth_on_a_bad_token_is_unauthenticated(auth_client: GrpcClient, header: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_client.stub.Discover(
            pb.DiscoverRequest(service_name="orders"), metadata=(("authorization", header),)
        )

    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_token")


async def test_a_reader_may_discover_but_not_register(auth_client: GrpcClient, tokens: dict[str, str]) -> None:
    await auth_client.stub.Register(ORDERS, metadata=bearer(tokens[SERVICE]))

    found = await auth_client.stub.Discover(
        pb.DiscoverRequest(service_name="orders"), metadata=bearer(tokens[READ_ONLY])
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_client.stub.Heartbeat(pb.HeartbeatRequest(node_id=found.node_id), metadata=bearer(tokens[READ_ONLY]))

    assert found.node_id == "orders:10.0.0.5:8080"
    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.PERMISSION_DENIED, "forbidden")


@pytest.mark.parametrize("role", [SERVICE, ADMIN])
async def test_workloads_and_admins_may_register_heartbeat_and_deregister(
    auth_client: GrpcClient, tokens: dict[str, str], role: str
) -> None:
    metadata = bearer(tokens[role])

    registered = await auth_client.stub.Register(ORDERS, metadata=metadata)
    await auth_client.stub.Heartbeat(pb.HeartbeatRequest(node_id=registered.node_id), metadata=metadata)
    removed = await auth_client.stub.Deregister(pb.DeregisterRequest(node_id=registered.node_id), metadata=metadata)

    assert removed.deregistered


async def test_with_auth_on_a_watch_needs_a_token_too(auth_client: GrpcClient, tokens: dict[str, str]) -> None:
    refused = auth_client.stub.WatchServices(pb.WatchRequest(service_name="orders"))
    allowed = auth_client.stub.WatchServices(
        pb.WatchRequest(service_name="orders", include_current=True), metadata=bearer(tokens[READ_ONLY])
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await refused.read()
    first = await allowed.read()
    allowed.cancel()

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(first, pb.ServiceEvent) and first.event == "initial_state_done"


async def test_with_auth_on_the_health_service_needs_no_token(auth_client: GrpcClient) -> None:
    answer = await health_pb2_grpc.HealthStub(auth_client.channel).Check(health_pb2.HealthCheckRequest())

    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_acl_refusal_is_permission_denied(client: GrpcClient, registry_server: MaxineServer) -> None:
    await client.stub.Register(ORDERS)
    await set_acl(registry_server, {"serviceName": "orders", "allow": ["web"]})

    allowed = await client.stub.Discover(pb.DiscoverRequest(service_name="orders"), metadata=caller("web"))
    with pytest.raises(grpc.aio.AioRpcError) as named:
        await client.stub.Discover(pb.DiscoverRequest(service_name="orders"), metadata=caller("batch"))
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await client.stub.Discover(pb.DiscoverRequest(service_name="orders"))

    assert allowed.node_id == "orders:10.0.0.5:8080"
    for refused in (named.value, anonymous.value):
        assert (refused.code(), maxine_code(refused)) == (grpc.StatusCode.PERMISSION_DENIED, "access_denied")


async def test_an_acl_refusal_stops_a_watch_too(client: GrpcClient, registry_server: MaxineServer) -> None:
    await set_acl(registry_server, {"serviceName": "orders", "deny": ["batch"]})

    stream = client.stub.WatchServices(pb.WatchRequest(service_name="orders"), metadata=caller("batch"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()

    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.PERMISSION_DENIED, "access_denied")


async def test_with_auth_on_the_acl_sees_the_tokens_subject_not_the_declared_caller(
    auth_client: GrpcClient, auth_server: MaxineServer, tokens: dict[str, str]
) -> None:
    await auth_client.stub.Register(ORDERS, metadata=bearer(tokens[SERVICE]))
    await set_acl(auth_server, {"serviceName": "orders", "allow": ["web"]}, token=tokens[ADMIN])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_client.stub.Discover(
            pb.DiscoverRequest(service_name="orders"), metadata=(*bearer(tokens[READ_ONLY]), *caller("web"))
        )

    assert (caught.value.code(), maxine_code(caught.value)) == (grpc.StatusCode.PERMISSION_DENIED, "access_denied")
    assert "test-read-only" in (caught.value.details() or "")
