"""
The gRPC server's lifecycle: bind, serve the Maxine and health services, then end streams and stop.

``GrpcServer`` is built over the same ``Operations`` as the HTTP app, after the app's features have
equipped it (guards, the authenticator), and started and stopped by ``MaxineServer`` next to the
HTTP listener. Two server options matter beyond the defaults:

- ``grpc.so_reuseport`` is turned off. gRPC turns it on by default on Linux, which would let a
  second registry bind the same port and silently take half of the first one's calls; with it
  off, a port in use stops the start with an error, as for HTTP.
- The largest message a client may send is ``MAX_BODY_BYTES``, the HTTP body limit; gRPC refuses
  a larger one with RESOURCE_EXHAUSTED before Maxine reads it.

Keepalive pings find clients that vanished without closing their connection, so a watch stream
of a dead client does not hold its place for ever.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from maxine_registry.grpc_api import maxine_pb2, maxine_pb2_grpc
from maxine_registry.grpc_api.servicer import MaxineServicer
from maxine_registry.grpc_api.watch import WatchHub
from maxine_registry.model import format_address
from maxine_registry.operations import Operations

logger = logging.getLogger(__name__)

SERVICE_NAME = maxine_pb2.DESCRIPTOR.services_by_name["Maxine"].full_name
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000


class GrpcServer:
    def __init__(
        self,
        *,
        operations: Operations,
        host: str,
        port: int,
        max_watches: int,
        watch_queue_size: int,
        shutdown_timeout: float,
    ) -> None:
        self.operations = operations
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.shutdown_timeout = shutdown_timeout
        self.watches = WatchHub(registry=operations.registry, max_watches=max_watches, queue_size=watch_queue_size)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None

    def __repr__(self) -> str:
        return f"GrpcServer(host={self.host!r}, port={self.port}, {self.watches!r})"

    @property
    def address(self) -> str:
        return format_address(self.host, self.port if self.port is not None else self.requested_port)

    async def start(self) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.operations.settings.max_body_bytes),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ]
        server = grpc.aio.server(options=options)
        maxine_pb2_grpc.add_MaxineServicer_to_server(
            MaxineServicer(operations=self.operations, watches=self.watches), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)

        address = format_address(self.host, self.requested_port)
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            # gRPC says only "Failed to bind"; the port is the usual reason, and the operator needs its number.
            raise OSError(errno.EADDRINUSE, f"the gRPC port cannot be bound at {address} ({exc})") from None
        await server.start()
        self._server = server
        self.watches.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        logger.info("gRPC is listening on %s.", self.address)

    async def stop(self) -> None:
        """Report NOT_SERVING, end every watch, then let unary calls in flight finish within the shutdown timeout."""
        server, self._server = self._server, None
        if server is None:
            return
        await self.health.enter_graceful_shutdown()
        self.watches.stop()
        await server.stop(self.shutdown_timeout)
        logger.info("gRPC has stopped.")
