"""
The Maxine gRPC service: each RPC parses its message, calls ``Operations``, and renders the answer.

Every unary RPC does what its HTTP route does, by calling the same ``Operations`` method with the
same body or query (see ``messages``), so validation, limits, guards and errors exist once. Who
may call what is decided by the HTTP route table too: an RPC needs the roles that its route,
named in ``ROUTES``, needs there (``http.auth.required_access``), so the two transports cannot
drift apart on access either. Without auth every call is anonymous, and a caller may name
itself for ACLs and intentions with the ``x-maxine-caller`` metadata, as with the HTTP header.

A refusal ends the call through ``status.abort``; an unexpected exception is logged with its
traceback and answered INTERNAL (``internal_error``), as the HTTP layer answers 500.

TODO: LATER: what the HTTP layer does in middlewares does not happen here yet: calls are not
rate-limited, not written to the audit log and not traced, because those features hook into
aiohttp; they need a place in ``Operations`` (or a gRPC interceptor each) first.
TODO: LATER: a write answers once the registry has changed; with persistence on it should also
wait until the change is durable, as the HTTP routes will.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
import orjson

from maxine_registry.errors import Forbidden, MaxineError, Unauthorized
from maxine_registry.grpc_api import maxine_pb2 as pb
from maxine_registry.grpc_api import maxine_pb2_grpc
from maxine_registry.grpc_api.messages import discover_query, instance_message, node_body, registration_body
from maxine_registry.grpc_api.status import abort
from maxine_registry.grpc_api.watch import WatchHub, WatchStream
from maxine_registry.http.auth import ALLOWED_ROLES, Access, bearer_token, required_access
from maxine_registry.identity import CALLER_HEADER, Identity, caller_name
from maxine_registry.model import validate_service_name
from maxine_registry.operations import Operations

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Answer = TypeVar("Answer")

AUTHORIZATION_METADATA = "authorization"
CALLER_METADATA = CALLER_HEADER.lower()
FORWARDED_FOR_METADATA = "x-forwarded-for"

# The HTTP route whose access rule each RPC follows. A watch shows what discovery shows, continuously.
ROUTES: dict[str, tuple[str, str]] = {
    "Register": ("POST", "/register"),
    "Discover": ("GET", "/discover"),
    "Heartbeat": ("POST", "/heartbeat"),
    "Deregister": ("DELETE", "/deregister"),
    "WatchServices": ("GET", "/discover"),
}


def peer_address(peer: str | None) -> str | None:
    """The client's IP address from ``context.peer()`` (``ipv4:10.0.0.5:51234``, ``ipv6:%5B::1%5D:51234``)."""
    if not peer:
        return None
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = rest.rpartition(":")[0]
    return host.removeprefix("[").removesuffix("]") or None


def invocation_metadata(context: Context) -> dict[str, str]:
    """The call's metadata as a dictionary; names are lowercase in gRPC, binary values are left out."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


class MaxineServicer(maxine_pb2_grpc.MaxineServicer):
    def __init__(self, *, operations: Operations, watches: WatchHub) -> None:
        self.operations = operations
        self.watches = watches
        # None for a public RPC, else the roles that may call it when auth is on.
        self.roles: dict[str, frozenset[str] | None] = {}
        for rpc, (method, route) in ROUTES.items():
            access = required_access(method, route)
            self.roles[rpc] = None if access in (Access.PUBLIC, Access.PAGE) else ALLOWED_ROLES[access]

    def __repr__(self) -> str:
        return f"MaxineServicer({self.watches!r})"

    # Unary RPCs.

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.RegisterResponse:
        def answer(identity: Identity | None) -> pb.RegisterResponse:
            document = orjson.loads(self.operations.register(registration_body(request)).body)
            return pb.RegisterResponse(node_id=document["nodeId"], address=document["address"], ttl=document["ttl"])

        return await self._serve(context, rpc="Register", answer=answer, durable=True)

    async def Discover(self, request: pb.DiscoverRequest, context: Context) -> pb.Instance:
        def answer(identity: Identity | None) -> pb.Instance:
            metadata = invocation_metadata(context)
            reply = self.operations.discover(
                discover_query(request),
                client_ip=peer_address(context.peer()),
                forwarded_for=metadata.get(FORWARDED_FOR_METADATA),
                caller=self._caller(identity, metadata),
            )
            return instance_message(orjson.loads(reply.body))

        return await self._serve(context, rpc="Discover", answer=answer)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Context) -> pb.HeartbeatResponse:
        def answer(identity: Identity | None) -> pb.HeartbeatResponse:
            document = orjson.loads(self.operations.heartbeat(node_body(request.node_id), {}).body)
            return pb.HeartbeatResponse(node_id=document["nodeId"], ttl=document["ttl"])

        return await self._serve(context, rpc="Heartbeat", answer=answer)

    async def Deregister(self, request: pb.DeregisterRequest, context: Context) -> pb.DeregisterResponse:
        def answer(identity: Identity | None) -> pb.DeregisterResponse:
            document = orjson.loads(self.operations.deregister(node_body(request.node_id), {}).body)
            return pb.DeregisterResponse(node_id=document["nodeId"], deregistered=document["deregistered"])

        return await self._serve(context, rpc="Deregister", answer=answer, durable=True)

    # The stream.

    # The generated base class declares a handler that returns an iterator; grpc.aio equally takes
    # one that writes with ``context.write`` and returns None, which a watch needs: it must know
    # whether a write is in progress when the stream is ended from outside.
    async def WatchServices(self, request: pb.WatchRequest, context: Context) -> None:  # type: ignore[override]
        stats = self.operations.stats
        stats.requests += 1
        task = asyncio.current_task()
        assert task is not None
        try:
            identity = self._authorize(context, rpc="WatchServices")
            service_name = validate_service_name(request.service_name)
            metadata = invocation_metadata(context)
            self.operations.guard_discovery(
                service_name, caller=self._caller(identity, metadata), client_ip=peer_address(context.peer())
            )
        except MaxineError as error:
            stats.errors += 1
            await abort(context, error)

        # The headers go out before the stream can be ended from outside: a task cancelled in the
        # middle of the call's first write leaves the call without a status.
        await context.send_initial_metadata(())
        stream = WatchStream(service_name=service_name, queue_size=self.watches.queue_size, task=task)
        try:
            initial = self.watches.open(stream, include_current=request.include_current)
        except MaxineError as error:
            stats.errors += 1
            await abort(context, error)

        try:
            for message in initial:
                await context.write(message)
            while True:
                await context.write(await stream.next_event())
        except asyncio.CancelledError:
            # The client went away or the server is stopping without a word for it: nothing to send.
            if stream.ended_by is None:
                raise
            task.uncancel()
        finally:
            self.watches.close(stream)

        ended_by = stream.ended_by
        assert ended_by is not None
        stats.errors += 1
        await abort(context, ended_by)

    # Shared steps.

    async def _serve(
        self, context: Context, *, rpc: str, answer: Callable[[Identity | None], Answer], durable: bool = False
    ) -> Answer:
        """
        Count the call, check who calls, and run ``answer``; a refusal or a failure ends the call.

        A ``durable`` call (one that changes state) is answered only once persistence holds the
        change, as the HTTP transports do.
        """
        stats = self.operations.stats
        stats.requests += 1
        try:
            result = answer(self._authorize(context, rpc=rpc))
            if durable:
                await self.operations.persist()
            return result
        except MaxineError as error:
            refusal = error
        except Exception:
            logger.exception("gRPC call %s failed unexpectedly.", rpc)
            refusal = MaxineError("The registry failed to handle this call; it is logged.")
        stats.errors += 1
        await abort(context, refusal)

    def _authorize(self, context: Context, *, rpc: str) -> Identity | None:
        """The caller's verified identity when auth is on; ``Unauthorized`` or ``Forbidden`` if it may not call."""
        authenticator = self.operations.authenticator
        roles = self.roles[rpc]
        if authenticator is None or roles is None:
            return None
        header = invocation_metadata(context).get(AUTHORIZATION_METADATA)
        if header is None:
            raise Unauthorized(
                "This call needs a token in the 'authorization: Bearer <token>' metadata; sign in at POST /signin.",
                code="missing_token",
            )
        identity = authenticator.verify(bearer_token(header))
        if not identity.roles & roles:
            raise Forbidden(
                f"{rpc} is for the roles {', '.join(sorted(roles))}; "
                f"the token of {identity.subject!r} has {', '.join(sorted(identity.roles))}.",
                code="forbidden",
            )
        return identity

    @staticmethod
    def _caller(identity: Identity | None, metadata: Mapping[str, str]) -> str | None:
        return caller_name(identity=identity, headers={CALLER_HEADER: metadata.get(CALLER_METADATA, "")}, query={})
