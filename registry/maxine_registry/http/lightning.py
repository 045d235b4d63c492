"""
The lightning path: a lean HTTP/1.1 front for the hot endpoints, with aiohttp behind it for the rest.

Every connection to Maxine's port starts here. The protocol frames requests itself: it finds the
end of each header block, reads the request line, and decides. A well-formed request for a hot
route (register, heartbeat, deregister, discover, health, on both surfaces) with a
``Content-Length`` body is validated by httptools, answered by the same ``Operations`` method the
aiohttp handler would call, and written back at once. Anything else (another route, a chunked
body, an upgrade, ``Expect``, a wrong method) hands the connection over to aiohttp at the exact
byte where that request starts, and aiohttp serves it and the rest of the connection as usual.
Because the hand-over happens on a message boundary that this module computed itself, nothing
the client sent is lost or reordered, and both paths answer every request the same way.

Framing by hand is what makes the hand-over exact: httptools alone consumes whole chunks and
cannot say where a request began. httptools still checks every header block and body fed to it,
so a malformed request is refused with a JSON 400 exactly as strictly as a real parser would.

Limits: a header block larger than ``MAX_HEADER_BYTES`` is refused with 431, a body larger than
the server's ``max_body_bytes`` with 413 (without reading it), a request whose headers or body do
not arrive within ``REQUEST_TIMEOUT`` gets 408, and an idle keep-alive connection is closed after
``KEEPALIVE_TIMEOUT``. Past ``max_connections`` open connections a new one gets 503 and is closed.
Responses are written in request order; when the client stops reading them, reading its requests
pauses too, so a client cannot grow the server's buffers by pipelining without reading.

The path serves only while no feature wraps requests in middleware (auth, rate limits, tracing):
then every connection goes to aiohttp, so those features see every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from maxine_registry.errors import InvalidInput, MaxineError, PayloadTooLarge
from maxine_registry.http.common import SERVICEOPS_PREFIX
from maxine_registry.identity import CALLER_HEADER, caller_name
from maxine_registry.operations import Operations, Reply, decode_body, error_body

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 75.0
# Timeouts are enforced by one sweep over the connections this often, not by a timer per request.
REAP_INTERVAL = 0.25
DEFAULT_MAX_CONNECTIONS = 10_000

HotHandler = Callable[[Operations, "ParsedRequest"], Reply]


class ParsedRequest:
    """What the hot handlers need from one request; filled in by httptools callbacks."""

    __slots__ = ("body", "forwarded_for", "headers", "keep_alive", "peer", "query", "url")

    def __init__(self, *, peer: str | None) -> None:
        self.peer = peer
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.keep_alive = True
        self.query: dict[str, str] = {}
        self.forwarded_for: str | None = None


def _register(operations: Operations, request: ParsedRequest) -> Reply:
    return operations.register(decode_body(request.body))


def _heartbeat(operations: Operations, request: ParsedRequest) -> Reply:
    return operations.heartbeat(decode_body(request.body), request.query)


def _deregister(operations: Operations, request: ParsedRequest) -> Reply:
    return operations.deregister(decode_body(request.body), request.query)


def _discover(operations: Operations, request: ParsedRequest) -> Reply:
    # Header names are kept in lower case here; caller_name asks in the canonical spelling.
    declared = request.headers.get(CALLER_HEADER.lower())
    headers = {CALLER_HEADER: declared} if declared is not None else {}
    caller = caller_name(identity=None, headers=headers, query=request.query)
    return operations.discover(
        request.query, client_ip=request.peer, forwarded_for=request.forwarded_for, caller=caller
    )


def _health(operations: Operations, request: ParsedRequest) -> Reply:
    return operations.health()


def _hot_routes() -> dict[tuple[bytes, bytes], HotHandler]:
    service_routes: list[tuple[bytes, bytes, HotHandler]] = [
        (b"POST", b"/register", _register),
        (b"POST", b"/heartbeat", _heartbeat),
        (b"PUT", b"/heartbeat", _heartbeat),
        (b"DELETE", b"/deregister", _deregister),
        (b"GET", b"/discover", _discover),
    ]
    routes: dict[tuple[bytes, bytes], HotHandler] = {(b"GET", b"/health"): _health}
    for method, path, handler in service_routes:
        routes[(method, path)] = handler
        routes[(method, SERVICEOPS_PREFIX.encode() + path)] = handler
    return routes


HOT_ROUTES = _hot_routes()
_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus}
# Headers that ask for something the lean path does not do; aiohttp does them.
_HAND_OVER_HEADERS = frozenset({"transfer-encoding", "expect", "upgrade"})


def render(status: int, body: bytes, *, keep_alive: bool) -> bytes:
    head = _STATUS_LINES[status] + b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
    if not keep_alive:
        head += b"\r\nConnection: close"
    return head + b"\r\n\r\n" + body


class JsonErrorRequestHandler(RequestHandler):
    """
    aiohttp's connection handler, answering its own protocol errors in Maxine's JSON shape.

    aiohttp refuses a request it cannot parse (a bad chunk size, a malformed header after the
    hand-over) before any route or middleware runs, with a plain-text page and an ERROR log line
    with a traceback. A malformed request is the client's mistake: it gets the JSON error every
    other refusal gets, and the log gets one debug line.
    """

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        logger.debug("Refused a malformed request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("The answer has begun; no error can be sent any more.")
        error = MaxineError(
            f"The request is malformed: {exc or message or HTTPStatus(status).phrase}.",
            code="bad_request",
            status=status,
        )
        response = web.Response(status=status, body=error_body(error), content_type="application/json")
        response.force_close()
        return response


def json_error_protocol(server: web.Server) -> RequestHandler:
    """An aiohttp connection handler for ``server``, as ``server()`` would make, with JSON protocol errors."""
    return JsonErrorRequestHandler(server, loop=server._loop, **server._kwargs)


class LightningServer:
    """The listener: counts connections, builds protocols, and knows the aiohttp protocol factory."""

    def __init__(
        self,
        *,
        operations: Operations,
        fallback: web.Server,
        serve_hot_routes: bool,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.operations = operations
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.fallback = fallback
        self.serve_hot_routes = serve_hot_routes
        self.max_connections = max_connections
        self.connections: set[LightningProtocol] = set()
        self.closing = False
        self._drained = asyncio.Event()
        self._reaper: asyncio.TimerHandle | None = None

    def __call__(self) -> LightningProtocol:
        return LightningProtocol(server=self)

    @property
    def open_connections(self) -> int:
        """Connections the lightning path serves plus those handed to aiohttp."""
        return len(self.connections) + len(self.fallback.connections)

    def close_idle(self) -> None:
        """Shutting down: stop reading new requests, close connections with nothing in progress."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()
        self.forget(None)

    def track(self, connection: LightningProtocol) -> None:
        self.connections.add(connection)
        if self._reaper is None:
            self._reaper = connection.loop.call_later(REAP_INTERVAL, self._reap, connection.loop)

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        """Time out connections whose deadline passed; one pass for all, a few times a second."""
        self._reaper = None
        now = loop.time()
        for connection in list(self.connections):
            if 0 < connection.deadline <= now:
                connection.on_timeout()
        if self.connections:
            self._reaper = loop.call_later(REAP_INTERVAL, self._reap, loop)

    def forget(self, connection: LightningProtocol | None) -> None:
        if connection is not None:
            self.connections.discard(connection)
        if self.closing and not self.connections:
            self._drained.set()

    async def drain(self, *, grace: float) -> None:
        """Wait until every connection the lightning path still serves has finished, or the grace is over."""
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            for connection in list(self.connections):
                connection.close_now()


class LightningProtocol(asyncio.Protocol):
    def __init__(self, *, server: LightningServer) -> None:
        self.server = server
        self.operations = server.operations
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self._buffer = bytearray()
        self._parser = httptools.HttpRequestParser(self)
        self._request: ParsedRequest | None = None
        self._message_complete = False
        self.loop = asyncio.get_running_loop()
        # When the connection times out, on the loop's clock; 0 when no timeout runs.
        self.deadline = 0.0
        self._request_pending = False
        self._handed_over = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = peer[0] if peer else None

        server = self.server
        if server.open_connections >= server.max_connections or server.closing:
            error = MaxineError(
                "The registry has too many open connections; try again.", code="too_many_connections", status=503
            )
            self.transport.write(render(503, error_body(error), keep_alive=False))
            self.transport.close()
            return
        if not server.serve_hot_routes:
            self._hand_over(0)
            return
        server.track(self)
        self._arm(self.server.keepalive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.server.forget(self)

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its requests until it does.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._serve_buffered()

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._request is not None
        # The first of repeated headers counts, as with aiohttp's ``headers.get``.
        self._request.headers.setdefault(name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete, llhttp has already reset for the next one.
        assert self._request is not None
        self._request.keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._message_complete = True

    # Framing and dispatch.

    def _serve_buffered(self) -> None:
        buffer = self._buffer
        offset = 0
        while offset < len(buffer) and not self._handed_over and self.transport is not None:
            head_end = buffer.find(b"\r\n\r\n", offset)
            if head_end < 0:
                if len(buffer) - offset > MAX_HEADER_BYTES:
                    self._refuse(431, "The request headers are too large.", code="headers_too_large")
                    return
                self._arm_request()
                break
            head_end += 4
            if head_end - offset > MAX_HEADER_BYTES:
                self._refuse(431, "The request headers are too large.", code="headers_too_large")
                return

            # Route on the request line alone; anything not hot goes to aiohttp from this byte on.
            line_end = buffer.find(b"\r\n", offset)
            parts = bytes(buffer[offset:line_end]).split(b" ")
            if len(parts) != 3:
                self._refuse(400, "The request line is malformed.", code="bad_request")
                return
            method, target, _version = parts
            path = target.split(b"?", 1)[0]
            handler = HOT_ROUTES.get((method, path))
            if handler is None:
                self._hand_over(offset)
                return

            request = self._request = ParsedRequest(peer=self.peer)
            self._message_complete = False
            try:
                self._parser.feed_data(bytes(buffer[offset:head_end]))
            except httptools.HttpParserError as exc:
                self._refuse(400, f"The request is malformed: {exc}.", code="bad_request")
                return
            if _HAND_OVER_HEADERS.intersection(request.headers):
                self._hand_over(offset)
                return

            length_text = request.headers.get("content-length", "0")
            if not length_text.isdigit():
                self._refuse(400, "Content-Length is not a number.", code="bad_request")
                return
            length = int(length_text)
            limit = self.operations.settings.max_body_bytes
            if length > limit:
                error = PayloadTooLarge(f"The request body is {length} bytes; the limit is {limit} bytes.")
                self._refuse(413, error.message, code=error.code)
                return
            if len(buffer) < head_end + length:
                # The body is still on its way; the header block is parsed again once it is here.
                self._parser = httptools.HttpRequestParser(self)
                self._arm_request()
                break
            if length:
                request.body = bytes(buffer[head_end : head_end + length])
                try:
                    self._parser.feed_data(request.body)
                except httptools.HttpParserError as exc:
                    self._refuse(400, f"The request body is malformed: {exc}.", code="bad_request")
                    return
            if not self._message_complete:
                self._refuse(400, "The request could not be framed.", code="bad_request")
                return

            request.keep_alive = request.keep_alive and not self.server.closing
            offset = head_end + length
            self._answer(handler, request, target=target)
            if not request.keep_alive:
                self._close_after_write()
                return

        del buffer[:offset]
        if not buffer and not self._handed_over:
            self._arm(self.server.keepalive_timeout)

    def _answer(self, handler: HotHandler, request: ParsedRequest, *, target: bytes) -> None:
        operations = self.operations
        stats = operations.stats
        stats.requests += 1
        try:
            request.query = _query(target)
            request.forwarded_for = request.headers.get("x-forwarded-for")
            reply = handler(operations, request)
            status, body = reply.status, reply.body
        except MaxineError as error:
            stats.errors += 1
            status, body = error.status, error_body(error)
        except Exception:
            stats.errors += 1
            logger.exception("Request %s failed unexpectedly on the lightning path.", target[:200])
            status, body = 500, error_body(MaxineError("The registry failed to handle this request; it is logged."))
        assert self.transport is not None
        self.transport.write(render(status, body, keep_alive=request.keep_alive))

    def _hand_over(self, offset: int) -> None:
        """Give the connection, from the request starting at ``offset``, to aiohttp."""
        transport = self.transport
        assert transport is not None
        self._disarm()
        self._handed_over = True
        self.server.forget(self)
        pending = bytes(self._buffer[offset:])
        self._buffer.clear()

        protocol = json_error_protocol(self.server.fallback)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if pending:
            protocol.data_received(pending)

    def _refuse(self, status: int, message: str, *, code: str) -> None:
        error = InvalidInput(message, code=code, status=status)
        self.operations.stats.requests += 1
        self.operations.stats.errors += 1
        if self.transport is not None:
            self.transport.write(render(status, error_body(error), keep_alive=False))
        self._buffer.clear()
        self._close_after_write()

    def _close_after_write(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.close()  # flushes what is written, then closes

    def close_if_idle(self) -> None:
        if not self._buffer and self.transport is not None:
            self._close_after_write()

    def close_now(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds
        self._request_pending = False

    def _arm_request(self) -> None:
        """Start the clock of a request that has begun to arrive, unless it is running already."""
        if not self._request_pending:
            self.deadline = self.loop.time() + self.server.request_timeout
            self._request_pending = True

    def _disarm(self) -> None:
        self.deadline = 0.0
        self._request_pending = False

    def on_timeout(self) -> None:
        self.deadline = 0.0
        if self.transport is None or self._handed_over:
            return
        if self._buffer:
            self._refuse(408, "The request did not arrive in time.", code="request_timeout")
        else:
            self.transport.close()


def _query(target: bytes) -> dict[str, str]:
    """The query string as aiohttp's ``request.query.get`` reads it: the first value of each name."""
    _, _, raw = target.partition(b"?")
    if not raw:
        return {}
    query: dict[str, str] = {}
    if b"%" not in raw and b"+" not in raw:
        # Nothing to unescape (the usual discover query): a plain split gives what parse_qsl would.
        for pair in raw.decode("utf-8", "replace").split("&"):
            if pair:
                name, _, value = pair.partition("=")
                query.setdefault(name, value)
        return query
    for name, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
        query.setdefault(name, value)
    return query


def describe(server: LightningServer) -> dict[str, Any]:
    return {"serveHotRoutes": server.serve_hot_routes, "openConnections": server.open_connections}
