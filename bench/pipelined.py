"""
A keep-alive HTTP/1.1 client that pipelines: light enough to drive a server at tens of thousands of requests a second.

aiohttp's client spends more CPU on one request than Maxine's lightning path spends answering
it, so a load generator built on it measures mostly itself, and its own stalls end up in every
latency it reports. This client writes raw requests on a few persistent connections and reads
the answers back in order (an HTTP/1.1 server answers pipelined requests in the order they
came), parsing only what it needs: the status and a body framed by ``Content-Length``, which
every answer of Maxine's carries. A chunked or unframed answer is an error here, not a guess.

The client runs in the benchmark process, pinned to the load CPU. Each request can carry a
callback that gets the status, the body and the wall-clock time at which the answer was parsed;
``in_flight`` lets a paced sender see that the server has fallen behind instead of queueing
without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

logger = logging.getLogger(__name__)

# Answers larger than this are not what a registry's hot routes send; the connection is broken.
MAX_ANSWER_BYTES = 1024 * 1024
# A paced sender re-checks the clock this often (seconds); asyncio cannot sleep much less anyway.
DEFAULT_TICK = 0.001

# status, body, and the wall clock (time.time()) when the answer was parsed: comparable with the
# timestamps of the server's events, which are wall-clock milliseconds on the same machine.
OnAnswer = Callable[[int, bytes, float], None]


class ProtocolError(RuntimeError):
    """The server answered something this client does not read (no Content-Length, a broken status line)."""


def post_json(path: str, body: bytes, *, host: str) -> bytes:
    """One POST request with a JSON body, as bytes ready to write."""
    return b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        host.encode(),
        len(body),
        body,
    )


def _ignore(status: int, body: bytes, at: float) -> None:
    pass


class PipelinedConnection(asyncio.Protocol):
    """One keep-alive connection; answers are handed to the callbacks of the requests in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: deque[OnAnswer] = deque()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answered = 0
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"PipelinedConnection(in_flight={self.in_flight}, answered={self.answered}, error={self.error!r})"

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiting and self.error is None:
            self.error = exc or ConnectionError(f"The server closed the connection with {self.in_flight} unanswered.")
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, requests: Sequence[tuple[bytes, OnAnswer | None]]) -> None:
        """Write requests back to back in one write; each callback gets its answer later."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError(f"{self!r} is not open.")
        for _, on_answer in requests:
            self._waiting.append(on_answer or _ignore)
        self._transport.write(b"".join(request for request, _ in requests))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        now = time.time()
        try:
            while True:
                end = buffer.find(b"\r\n\r\n", start)
                if end < 0:
                    break
                head = bytes(buffer[start:end])
                length = _content_length(head)
                body_start = end + 4
                if len(buffer) < body_start + length:
                    break
                status = int(head[9:12])
                body = bytes(buffer[body_start : body_start + length])
                start = body_start + length
                self.answered += 1
                if not self._waiting:
                    raise ProtocolError(f"An answer arrived for no request: {head[:80]!r}.")
                self._waiting.popleft()(status, body, now)
        except (ProtocolError, ValueError) as exc:
            self.error = exc
            assert self._transport is not None
            self._transport.abort()
            return
        del buffer[:start]
        if len(buffer) > MAX_ANSWER_BYTES:
            self.error = ProtocolError(f"An answer grew past {MAX_ANSWER_BYTES} bytes.")
            assert self._transport is not None
            self._transport.abort()


def _content_length(head: bytes) -> int:
    if not head.startswith(b"HTTP/1.1 "):
        raise ProtocolError(f"Not an HTTP/1.1 status line: {head[:80]!r}.")
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ProtocolError(f"An answer without Content-Length: {head[:200]!r}.")
    line_end = lower.find(b"\r\n", at + 2)
    return int(lower[at + 17 : line_end if line_end >= 0 else None])


async def open_connections(*, host: str, port: int, count: int) -> list[PipelinedConnection]:
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(count):
        _, protocol = await loop.create_connection(PipelinedConnection, host, port)
        connections.append(protocol)
    return connections


async def close_connections(connections: Sequence[PipelinedConnection]) -> None:
    for connection in connections:
        connection.close()
    await asyncio.gather(*(connection.closed for connection in connections))


async def drain(connections: Sequence[PipelinedConnection], *, within: float) -> None:
    """Wait until every request sent has its answer; raise the first connection's error, or on timeout."""
    deadline = time.monotonic() + within
    while any(connection.in_flight for connection in connections):
        for connection in connections:
            if connection.error is not None:
                raise connection.error
        if time.monotonic() > deadline:
            left = sum(connection.in_flight for connection in connections)
            raise TimeoutError(f"{left} request(s) still unanswered after {within:g}s.")
        await asyncio.sleep(0.002)


async def paced(*, rate: float, duration: float, tick: float = DEFAULT_TICK) -> AsyncIterator[int]:
    """
    Yield how many requests are due now, so that ``rate`` a second go out for ``duration`` seconds.

    The count is computed from the clock at each tick, so a late tick catches up in one batch
    instead of drifting. A loop that cannot keep up stops at three times the duration: whatever
    went out by then counts, and the caller sees from its own count that the rate was not reached.
    """
    total = int(rate * duration)
    started = time.monotonic()
    due_so_far = 0
    while due_so_far < total:
        elapsed = time.monotonic() - started
        if elapsed > 3 * duration:
            logger.warning("The paced sender fell behind; it stops after %d of %d.", due_so_far, total)
            return
        due = min(total, int(elapsed * rate) + 1)
        if due > due_so_far:
            yield due - due_so_far
            due_so_far = due
        await asyncio.sleep(tick)


async def send_all(
    connections: Sequence[PipelinedConnection],
    *,
    count: int,
    build: Callable[[int], tuple[bytes, OnAnswer | None]],
    window: int,
    time_limit: float,
) -> None:
    """
    Send ``count`` requests, built one by one as they go out, with at most ``window`` unanswered per connection.

    ``build(i)`` runs just before request ``i`` is written, so a request may depend on the time it
    leaves (a lease that must end at a planned moment). A connection is topped up once half its
    window has been answered, so that each write carries many requests; the whole batch is given up
    after ``time_limit`` seconds, and a connection's error stops it at once.
    """
    next_index = 0
    refill_at = max(1, window // 2)

    async def feed(connection: PipelinedConnection) -> None:
        nonlocal next_index
        while next_index < count:
            if connection.error is not None:
                raise connection.error
            room = window - connection.in_flight
            if room >= refill_at:
                # The shared counter hands each index to exactly one connection: the loop is single-threaded.
                batch: list[tuple[bytes, OnAnswer | None]] = []
                while len(batch) < room and next_index < count:
                    batch.append(build(next_index))
                    next_index += 1
                connection.send(batch)
            await asyncio.sleep(0.0005)

    async with asyncio.timeout(time_limit):
        await asyncio.gather(*(feed(connection) for connection in connections))
        await drain(connections, within=time_limit)
