"""
Fixtures for the gRPC tests: a registry in-process with gRPC on a free loopback port, and a client of it.

The client is the real thing: a ``grpc.aio`` channel with the stubs generated from
``api/maxine.proto``, as any user would build. The registry is ``MaxineServer``, so HTTP, gRPC and
UDP share one registry, and a test can change the registry from inside (a health check's verdict)
or over HTTP (an ACL) and watch the gRPC side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import bcrypt
import grpc
import pytest

from maxine_registry.grpc_api import maxine_pb2_grpc
from maxine_registry.server import MaxineServer
from tests.conftest import LOOPBACK

JWT_TEST_SECRET = "a-grpc-test-signing-key-longer-than-32-bytes"
# bcrypt's cheapest cost: these tests check who may call what, not the hashing work.
TEST_BCRYPT_ROUNDS = 4
# How long a test waits for something the server does in a fraction of it.
EVENTUALLY = 10.0


class GrpcClient:
    """A channel to one registry's gRPC port, with the Maxine stub on it."""

    def __init__(self, *, server: MaxineServer) -> None:
        assert server.grpc is not None and server.grpc.port is not None
        self.server = server
        self.target = f"{LOOPBACK}:{server.grpc.port}"
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = maxine_pb2_grpc.MaxineStub(self.channel)

    def __repr__(self) -> str:
        return f"GrpcClient(target={self.target!r})"

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def grpc_client() -> AsyncIterator[Callable[[MaxineServer], GrpcClient]]:
    """Factory of clients of a given server; their channels are closed at teardown."""
    clients: list[GrpcClient] = []

    def connect(server: MaxineServer) -> GrpcClient:
        client = GrpcClient(server=server)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


@pytest.fixture
async def registry_server(maxine_server: Callable[..., Awaitable[MaxineServer]]) -> MaxineServer:
    """A registry with default settings (auth off), every listener on a free loopback port."""
    return await maxine_server(max_body_bytes=4096, max_metadata_bytes=1024)


@pytest.fixture
def client(registry_server: MaxineServer, grpc_client: Callable[[MaxineServer], GrpcClient]) -> GrpcClient:
    return grpc_client(registry_server)


@pytest.fixture(scope="session")
def admin_password_hash() -> str:
    return bcrypt.hashpw(b"the admin's password", bcrypt.gensalt(rounds=TEST_BCRYPT_ROUNDS)).decode()


@pytest.fixture
def auth_overrides(admin_password_hash: str) -> dict[str, Any]:
    """Settings that turn auth on."""
    return {"auth_enabled": True, "jwt_secret": JWT_TEST_SECRET, "admin_password_hash": admin_password_hash}


def maxine_code(error: grpc.aio.AioRpcError) -> str | None:
    """The Maxine error code a refused call carries in its trailing metadata."""
    for key, value in error.trailing_metadata() or ():
        if key == "maxine-code":
            return str(value)
    return None
