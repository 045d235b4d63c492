"""
Registry events over WebSocket, at ``/ws`` and at the server root.

Each connection is one ``Consumer`` of the transport's ``Fanout`` (see ``subscriptions``): the
bus puts encoded events on the connection's bounded queue, and one sender task per connection
writes them out at the pace of the client. Replies to the client's own messages go through the
same queue, so that a reply never overtakes an event published before it and a client has only
one writer. A client that falls more than ``WS_QUEUE_SIZE`` messages behind is closed with 1013
instead of growing the server's memory; the number of connections is capped by
``WS_MAX_CONNECTIONS`` (503 before the upgrade above it).

Client messages are JSON objects with one key: ``subscribe`` (a filter), ``unsubscribe`` (true,
or one filter), ``auth`` (a token) and ``refresh_token``. With auth on (an ``Authenticator`` on
the operations), the first message must be ``auth`` with a valid token, else the connection is
closed with 4401; until then nothing is delivered. A malformed message gets an error reply and
the connection stays open.

``GET /`` without an upgrade answers a browser with a redirect to the dashboard, and any other
client with a small JSON index of where things are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from maxine_registry import __version__
from maxine_registry.errors import InvalidInput, MaxineError, Unavailable
from maxine_registry.events import Event
from maxine_registry.http.common import JSON, OPERATIONS_KEY
from maxine_registry.identity import Identity
from maxine_registry.operations import Operations
from maxine_registry.subscriptions import Consumer, EventFilter, Fanout, Subscription, event_document

logger = logging.getLogger(__name__)

WS_PATH = "/ws"
# Client messages are small JSON objects; anything bigger is closed with 1009 by aiohttp.
MAX_CLIENT_MESSAGE_BYTES = 4096
# Seconds a client has to send its auth message when auth is on.
AUTH_TIMEOUT = 10.0
# Seconds a close handshake may take before the connection is cut.
CLOSE_TIMEOUT = 5.0
# Seconds between pings; a client that does not answer within half of it is closed.
PING_INTERVAL = 30.0
# A close frame's reason holds at most 123 bytes.
MAX_CLOSE_REASON_BYTES = 123

AUTH_FAILED = 4401
CONSUMER_TOO_SLOW = 1013
GOING_AWAY = 1001

MESSAGE_KINDS = ("subscribe", "unsubscribe", "auth", "refresh_token")


def encode_event(event: Event) -> str:
    return orjson.dumps(event_document(event)).decode()


def encode_reply(document: dict[str, Any]) -> str:
    return orjson.dumps(document).decode()


def error_reply(error: MaxineError) -> str:
    return encode_reply({"type": "error", "error": error.message, "code": error.code})


def user_view(identity: Identity) -> dict[str, Any]:
    return {"subject": identity.subject, "roles": sorted(identity.roles)}


def parse_message(raw: str) -> tuple[str, object]:
    """The kind of a client message and its value; ``InvalidInput`` says what is wrong with it."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The message is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(document, dict) or len(document) != 1:
        raise InvalidInput(
            f"A message must be a JSON object with exactly one of {', '.join(MESSAGE_KINDS)}.", code="invalid_message"
        )
    kind, value = next(iter(document.items()))
    if kind not in MESSAGE_KINDS:
        raise InvalidInput(
            f"Unknown message {kind!r}; expected one of {', '.join(MESSAGE_KINDS)}.", code="unknown_message"
        )
    return kind, value


class EventConnection:
    """One WebSocket client: its consumer, its sender task, its identity, and how it ends."""

    def __init__(self, *, hub: WebSocketHub, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.hub = hub
        self.ws = ws
        self.request = request
        self.peer = request.remote
        self.identity: Identity | None = None
        self.auth_required = hub.operations.authenticator is not None
        self.consumer: Consumer[str] = Consumer(
            queue_size=hub.operations.settings.ws_queue_size,
            subscription=Subscription(paused=self.auth_required),
            on_overflow=self._overflowed,
        )
        self._sender: asyncio.Task[None] | None = None
        # Closes started from places that must not wait (the bus callback, message handling).
        self._steps: set[asyncio.Task[None]] = set()
        self._closing = False

    def __repr__(self) -> str:
        subject = self.identity.subject if self.identity is not None else None
        return f"EventConnection(peer={self.peer!r}, subject={subject!r}, {self.consumer!r})"

    async def run(self) -> None:
        """Serve the client until it leaves or is closed; never raises for what the client does."""
        self._sender = asyncio.create_task(self._send_forever(), name="maxine-ws-sender")
        try:
            if self.auth_required and not await self._authenticate_first():
                return
            async for message in self.ws:
                if message.type is WSMsgType.TEXT:
                    self._handle(message.data)
                elif message.type is WSMsgType.BINARY:
                    self.reply_error(InvalidInput("Send JSON text messages; binary ones are not read.", code="binary"))
                else:
                    # An error frame (a message above the size limit, a broken frame): aiohttp has closed already.
                    break
        finally:
            await self._finish()

    def reply(self, document: dict[str, Any]) -> None:
        self.consumer.offer(encode_reply(document))

    def reply_error(self, error: MaxineError) -> None:
        self.consumer.offer(error_reply(error))

    async def close(self, *, code: int, reason: str) -> None:
        """Close once; cut the connection if the client does not complete the close in time."""
        if self._closing:
            return
        self._closing = True
        if self._sender is not None and self._sender is not asyncio.current_task():
            self._sender.cancel()
        message = reason.encode()[:MAX_CLOSE_REASON_BYTES]
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message), timeout=CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            # A client that reads nothing never takes the close frame either; let go of its socket.
            logger.debug("WebSocket client %s did not complete the close; its connection is cut.", self.peer)
            if self.request.transport is not None:
                self.request.transport.abort()

    # Steps of a connection's life.

    async def _authenticate_first(self) -> bool:
        try:
            message = await self.ws.receive(timeout=AUTH_TIMEOUT)
        except TimeoutError:
            await self.close(code=AUTH_FAILED, reason=f"No auth message within {AUTH_TIMEOUT:g} s.")
            return False
        if message.type is not WSMsgType.TEXT:
            await self.close(code=AUTH_FAILED, reason='Authentication required: send {"auth": "<token>"} first.')
            return False
        try:
            kind, value = parse_message(message.data)
        except MaxineError:
            kind, value = "", None
        if kind != "auth":
            await self.close(code=AUTH_FAILED, reason='Authentication required: send {"auth": "<token>"} first.')
            return False
        try:
            self._authenticate(value)
        except MaxineError as error:
            await self.close(code=AUTH_FAILED, reason=f"Authentication failed: {error.message}")
            return False
        return True

    def _authenticate(self, token: object) -> None:
        """Verify a token and take its identity; with auth off, acknowledge and ignore it."""
        authenticator = self.hub.operations.authenticator
        if authenticator is None:
            self.reply({"type": "authenticated", "user": None, "authEnabled": False})
            return
        try:
            if not isinstance(token, str) or not token:
                raise InvalidInput("The auth message must carry the token as a string.")
            identity = authenticator.verify(token)
        except MaxineError as error:
            logger.info("WebSocket client %s failed to authenticate: %s", self.peer, error.message)
            raise
        # TODO: LATER: every authenticated role sees every event, and a connection outlives its
        # token's expiry; per-role event visibility and closing at expiry need claims the
        # Identity does not carry yet.
        if self.identity is None:
            self.consumer.subscription.resume()
        self.identity = identity
        self.reply({"type": "authenticated", "user": user_view(identity)})

    def _handle(self, raw: str) -> None:
        try:
            kind, value = parse_message(raw)
            if kind == "subscribe":
                event_filter = EventFilter.parse(value)
                self.consumer.subscription.subscribe(event_filter)
                self.reply(
                    {
                        "type": "subscribed",
                        "filter": event_filter.as_dict(),
                        "filters": self.consumer.subscription.view(),
                    }
                )
            elif kind == "unsubscribe":
                self._unsubscribe(value)
            elif kind == "auth":
                self._reauthenticate(value)
            else:
                self._refresh(value)
        except MaxineError as error:
            self.reply_error(error)

    def _reauthenticate(self, token: object) -> None:
        """A later auth message swaps the identity (after a refresh); a bad token ends the connection."""
        try:
            self._authenticate(token)
        except MaxineError as error:
            self._start(self.close(code=AUTH_FAILED, reason=f"Authentication failed: {error.message}"))

    def _unsubscribe(self, value: object) -> None:
        if value is True:
            self.consumer.subscription.unsubscribe()
        elif isinstance(value, dict):
            self.consumer.subscription.unsubscribe(EventFilter.parse(value))
        else:
            raise InvalidInput(f"unsubscribe takes true or one filter object, got {value!r}.")
        self.reply({"type": "unsubscribed", "filters": self.consumer.subscription.view()})

    def _refresh(self, value: object) -> None:
        if value is not True:
            raise InvalidInput(f"refresh_token takes true, got {value!r}.")
        authenticator = self.hub.operations.authenticator
        if authenticator is None or self.identity is None:
            raise InvalidInput("Authentication is off on this registry; there is no token to refresh.", code="auth_off")
        self.reply({"type": "token_refreshed", "token": authenticator.issue(self.identity)})

    async def _send_forever(self) -> None:
        queue = self.consumer.queue
        try:
            while True:
                await self.ws.send_str(await queue.get())
        except ConnectionError:
            # The client went away; the receiving side sees the same and ends the connection.
            logger.debug("WebSocket client %s is gone; stopped sending.", self.peer)

    def _overflowed(self) -> None:
        self.hub.dropped += 1
        queued = self.consumer.queue.maxsize
        self._start(self.close(code=CONSUMER_TOO_SLOW, reason=f"Too slow: {queued} messages waited to be sent."))

    def _start(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a step that must not wait inside the caller (a bus callback, the receive loop)."""
        task = asyncio.create_task(step, name="maxine-ws-close")
        self._steps.add(task)
        task.add_done_callback(self._steps.discard)

    async def _finish(self) -> None:
        self.hub.forget(self)
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        for step in list(self._steps):
            with contextlib.suppress(asyncio.CancelledError):
                await step
        if not self.ws.closed:
            await self.close(code=GOING_AWAY, reason="The connection ends.")


class WebSocketHub:
    """The WebSocket transport's state: the fan-out and the open connections, counted for /metrics."""

    def __init__(self, *, operations: Operations) -> None:
        self.operations = operations
        self.fanout: Fanout[str] = Fanout(
            events=operations.registry.events, encode=encode_event, max_consumers=operations.settings.ws_max_connections
        )
        self.connections: set[EventConnection] = set()
        # Clients closed for falling too far behind, since start.
        self.dropped = 0

    def __repr__(self) -> str:
        return f"WebSocketHub(connections={len(self.connections)}, dropped={self.dropped}, {self.fanout!r})"

    def view(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "maxConnections": self.fanout.max_consumers,
            "queueSize": self.operations.settings.ws_queue_size,
            "dropped": self.dropped,
        }

    def admit(self, connection: EventConnection) -> None:
        self.fanout.add(connection.consumer)
        self.connections.add(connection)
        self.operations.stats.ws_connections = len(self.connections)

    def forget(self, connection: EventConnection) -> None:
        self.fanout.discard(connection.consumer)
        self.connections.discard(connection)
        self.operations.stats.ws_connections = len(self.connections)

    async def on_startup(self, app: web.Application) -> None:
        self.fanout.start()

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every client before aiohttp waits for handlers, so that shutdown never waits on a socket."""
        connections = list(self.connections)
        if connections:
            logger.info("Closing %d WebSocket connection(s) for shutdown.", len(connections))
        await asyncio.gather(
            *(connection.close(code=GOING_AWAY, reason="The registry is shutting down.") for connection in connections)
        )

    async def on_cleanup(self, app: web.Application) -> None:
        self.fanout.stop()
        for connection in list(self.connections):
            if connection.request.transport is not None:
                connection.request.transport.abort()
            self.forget(connection)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.fanout.full:
            raise Unavailable(
                f"The registry holds its limit of {self.fanout.max_consumers} WebSocket connections; try again later.",
                code="too_many_connections",
            )
        ws = web.WebSocketResponse(
            timeout=CLOSE_TIMEOUT, heartbeat=PING_INTERVAL, max_msg_size=MAX_CLIENT_MESSAGE_BYTES, compress=False
        )
        await ws.prepare(request)

        connection = EventConnection(hub=self, ws=ws, request=request)
        self.admit(connection)
        logger.debug("WebSocket client %s connected.", connection.peer)
        await connection.run()
        logger.debug("WebSocket client %s left with code %s.", connection.peer, ws.close_code)
        return ws


HUB_KEY = web.AppKey("maxine.websocket", WebSocketHub)


async def events_socket(request: web.Request) -> web.StreamResponse:
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise InvalidInput(
            f"{request.path} is a WebSocket endpoint; connect with an Upgrade request.", code="no_upgrade"
        )
    return await request.app[HUB_KEY].handle(request)


async def root(request: web.Request) -> web.StreamResponse:
    """The root: WebSocket events on upgrade, else the dashboard for browsers and an index for the rest."""
    if web.WebSocketResponse().can_prepare(request).ok:
        return await request.app[HUB_KEY].handle(request)
    if "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPFound("/dashboard")
    operations = request.app[OPERATIONS_KEY]
    index = {
        "name": "maxine",
        "version": __version__,
        "instanceId": operations.instance_id,
        "dashboard": "/dashboard",
        "events": WS_PATH,
        "health": "/health",
        "metrics": "/metrics",
    }
    return web.Response(body=orjson.dumps(index), content_type=JSON)


def setup(app: web.Application, operations: Operations) -> None:
    hub = WebSocketHub(operations=operations)
    app[HUB_KEY] = hub
    app.router.add_get("/", root)
    app.router.add_get(WS_PATH, events_socket)
    app.on_startup.append(hub.on_startup)
    app.on_shutdown.append(hub.on_shutdown)
    app.on_cleanup.append(hub.on_cleanup)
