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
from typing import cast
from urllib.parse import parse_qsl

import httptools
from aiohttp import web

from maxine_registry.errors import InvalidInput, MaxineError, PayloadTooLarge
from maxine_registry.http.common import SERVICEOPS_PREFIX
from maxine_registry.http.protocol_errors import HEADERS_TOO_LARGE, json_error_protocol
from maxine_registry.identity import CALLER_HEADER, caller_name
from maxine_registry.operations import DiscoveryPlan, Operations, decode_body, error_body

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 75.0
# Timeouts are enforced by one sweep over the connections this often, not by a timer per request.
REAP_INTERVAL = 0.25
DEFAULT_MAX_CONNECTIONS = 10_000

# A hot handler gets the parsed head, the body and the peer's address, and answers with a status
# and a JSON body: a plain tuple, which costs a tenth of building a Reply (a Reply is one too).
HotHandler = Callable[[Operations, "Frame", bytes, "str | None"], tuple[int, bytes]]

# Heads up to this size are remembered once parsed: clients repeat the same bytes (a sidecar's
# heartbeat, a client's discover), and a remembered head skips the parser altogether.
MAX_CACHED_HEAD_BYTES = 1024
HEAD_CACHE_SIZE = 4096


class Frame:
    """
    What one request head says, for the hot handlers: route, query, the headers that matter.

    A frame depends on the head's bytes alone, so byte-identical heads share one frame (see
    ``HEAD_CACHE_SIZE``); nothing in it may depend on the connection or on the registry's state.
    """

    __slots__ = (
        "caller",
        "forwarded_for",
        "handler",
        "keep_alive",
        "length",
        "plan",
        "query",
        "target",
    )

    def __init__(self, *, handler: HotHandler, target: bytes, headers: dict[str, str], keep_alive: bool) -> None:
        self.handler = handler
        self.target = target
        self.keep_alive = keep_alive
        self.length = 0
        self.query = _query(target)
        self.forwarded_for = headers.get("x-forwarded-for")
        # Header names are kept in lower case here; caller_name asks in the canonical spelling.
        declared = headers.get(CALLER_HEADER.lower())
        self.caller = caller_name(
            identity=None, headers={CALLER_HEADER: declared} if declared is not None else {}, query=self.query
        )
        # The checked discover query, made on first use (see ``Operations.plan_discovery``).
        self.plan: DiscoveryPlan | None = None


def _register(operations: Operations, frame: Frame, body: bytes, peer: str | None) -> tuple[int, bytes]:
    return 200, operations.register_body(decode_body(body))


def _heartbeat(operations: Operations, frame: Frame, body: bytes, peer: str | None) -> tuple[int, bytes]:
    return 200, operations.heartbeat_body(decode_body(body), frame.query)


def _deregister(operations: Operations, frame: Frame, body: bytes, peer: str | None) -> tuple[int, bytes]:
    return operations.deregister(decode_body(body), frame.query)


def _discover(operations: Operations, frame: Frame, body: bytes, peer: str | None) -> tuple[int, bytes]:
    plan = frame.plan
    if plan is None:
        plan = frame.plan = operations.plan_discovery(frame.query)
    return 200, operations.discover_planned(
        plan, client_ip=peer, forwarded_for=frame.forwarded_for, caller=frame.caller
    )


def _health(operations: Operations, frame: Frame, body: bytes, peer: str | None) -> tuple[int, bytes]:
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


def _head(status: int, length: int, *, keep_alive: bool) -> bytes:
    head = _STATUS_LINES[status] + b"Content-Type: application/json\r\nContent-Length: " + str(length).encode()
    if not keep_alive:
        head += b"\r\nConnection: close"
    return head + b"\r\n\r\n"


def render_closing(status: int, body: bytes) -> bytes:
    """An answer after which the connection closes."""
    return _head(status, len(body), keep_alive=False) + body


# Response heads of keep-alive answers by body length (200) or by status and length (the rest):
# answers repeat their sizes. Most answers are 200s, and an int key spares building and hashing a
# tuple on each of them.
_OK_HEADS: dict[int, bytes] = {}
_HEADS: dict[tuple[int, int], bytes] = {}
MAX_CACHED_HEADS = 4096


def render_kept(status: int, body: bytes) -> bytes:
    """An answer on a connection that stays open, with the head built once per status and size."""
    length = len(body)
    if status == 200:
        head = _OK_HEADS.get(length)
        if head is None:
            head = _head(200, length, keep_alive=True)
            if len(_OK_HEADS) < MAX_CACHED_HEADS:
                _OK_HEADS[length] = head
        return head + body

    key = (status, length)
    head = _HEADS.get(key)
    if head is None:
        head = _head(status, length, keep_alive=True)
        if len(_HEADS) < MAX_CACHED_HEADS:
            _HEADS[key] = head
    return head + body


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
        # Parsed request heads by their bytes, shared by every connection (see ``Frame``).
        self.head_cache: dict[bytes, Frame] = {}
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
        # The start of a request that has not fully arrived; empty between requests.
        self._buffer = bytearray()
        # How many buffered bytes complete that request, once its head is known; 0 while it is not.
        self._need = 0
        self._head_cache = server.head_cache
        # Made when a head is first parsed; dropped when a body was announced, as it then expects one.
        self._parser: httptools.HttpRequestParser | None = None
        self._headers: dict[str, str] = {}
        self._keep_alive = True
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
            self.transport.write(render_closing(503, error_body(error)))
            self.transport.close()
            return
        if not server.serve_hot_routes:
            self._hand_over(b"")
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
        buffer = self._buffer
        if buffer:
            # Part of a request came earlier. Serve only once it can be complete, so a client that
            # sends a byte at a time costs an append per byte, not a new copy of all it sent.
            scan_from = max(len(buffer) - 3, 0)
            buffer += data
            if self._need:
                if len(buffer) < self._need:
                    return
            elif buffer.find(b"\r\n\r\n", scan_from) < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    self._refuse(431, HEADERS_TOO_LARGE, code="headers_too_large")
                return
            data = bytes(buffer)
            buffer.clear()
            self._need = 0
        self._serve(data)

    # httptools callbacks, called only while a head is parsed for the first time.

    def on_header(self, name: bytes, value: bytes) -> None:
        # The first of repeated headers counts, as with aiohttp's ``headers.get``.
        self._headers.setdefault(name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete, llhttp has already reset for the next one.
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._message_complete = True

    # Framing and dispatch.

    def _serve(self, data: bytes) -> None:
        """Answer every complete request in ``data``; keep an incomplete one for later."""
        offset = 0
        size = len(data)
        cache = self._head_cache
        while offset < size:
            head_end = data.find(b"\r\n\r\n", offset)
            if head_end < 0:
                if size - offset > MAX_HEADER_BYTES:
                    self._refuse(431, HEADERS_TOO_LARGE, code="headers_too_large")
                    return
                self._keep(data, offset, need=0)
                return
            head_end += 4
            if head_end - offset > MAX_HEADER_BYTES:
                self._refuse(431, HEADERS_TOO_LARGE, code="headers_too_large")
                return

            # A head seen before is not parsed again: the same bytes say the same things.
            head = data[offset:head_end]
            frame = cache.get(head)
            if frame is None:
                frame = self._parse_head(head, data=data, offset=offset)
                if frame is None:
                    return  # refused, or handed over to aiohttp
                if len(head) <= MAX_CACHED_HEAD_BYTES:
                    if len(cache) >= HEAD_CACHE_SIZE:
                        cache.clear()
                    cache[head] = frame

            end = head_end + frame.length
            if end > size:
                self._keep(data, offset, need=end - offset)
                return
            body = data[head_end:end] if frame.length else b""
            offset = end
            if not self._answer(frame, body):
                self._close_after_write()
                return

        # Everything sent so far is answered: the connection is idle until the next request.
        self.deadline = self.loop.time() + self.server.keepalive_timeout
        self._request_pending = False

    def _parse_head(self, head: bytes, *, data: bytes, offset: int) -> Frame | None:
        """Route and check a head the first time it is seen; None when it was refused or handed over."""
        # Route on the request line alone; anything not hot goes to aiohttp from this byte on.
        parts = head[: head.find(b"\r\n")].split(b" ")
        if len(parts) != 3:
            self._refuse(400, "The request line is malformed.", code="bad_request")
            return None
        method, target, _version = parts
        handler = HOT_ROUTES.get((method, target.split(b"?", 1)[0]))
        if handler is None:
            self._hand_over(data[offset:])
            return None

        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        headers = self._headers = {}
        self._message_complete = False
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            # A protocol switch (WebSocket, h2c) is aiohttp's to answer, like every other upgrade.
            self._parser = None
            self._hand_over(data[offset:])
            return None
        except httptools.HttpParserError as exc:
            self._refuse(400, f"The request is malformed: {exc}.", code="bad_request")
            return None
        if _HAND_OVER_HEADERS.intersection(headers):
            self._hand_over(data[offset:])
            return None

        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            self._refuse(400, "Content-Length is not a number.", code="bad_request")
            return None
        length = int(length_text)
        limit = self.operations.settings.max_body_bytes
        if length > limit:
            error = PayloadTooLarge(f"The request body is {length} bytes; the limit is {limit} bytes.")
            self._refuse(413, error.message, code=error.code)
            return None
        if length:
            # The parser now waits for the body, which is framed by its length alone: start afresh next time.
            self._parser = None
        elif not self._message_complete:
            self._refuse(400, "The request could not be framed.", code="bad_request")
            return None

        frame = Frame(handler=handler, target=target, headers=headers, keep_alive=self._keep_alive)
        frame.length = length
        return frame

    def _answer(self, frame: Frame, body: bytes) -> bool:
        """Answer one request; True when the connection stays open for the next."""
        operations = self.operations
        stats = operations.stats
        stats.requests += 1
        try:
            status, payload = frame.handler(operations, frame, body, self.peer)
        except MaxineError as error:
            stats.errors += 1
            status, payload = error.status, error_body(error)
        except Exception:
            stats.errors += 1
            logger.exception("Request %s failed unexpectedly on the lightning path.", frame.target[:200])
            status, payload = 500, error_body(MaxineError("The registry failed to handle this request; it is logged."))

        assert self.transport is not None
        if frame.keep_alive and not self.server.closing:
            self.transport.write(render_kept(status, payload))
            return True
        self.transport.write(render_closing(status, payload))
        return False

    def _keep(self, data: bytes, offset: int, *, need: int) -> None:
        """Hold on to an incomplete request until more of it arrives, with its clock running."""
        self._buffer += memoryview(data)[offset:]
        self._need = need
        self._arm_request()

    def _hand_over(self, pending: bytes) -> None:
        """Give the connection to aiohttp, starting with ``pending``: the request not served here and what follows."""
        transport = self.transport
        assert transport is not None
        self._disarm()
        self._handed_over = True
        self.server.forget(self)
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
            self.transport.write(render_closing(status, error_body(error)))
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
