"""
The ceiling: the fastest HTTP/1.1 server one Python process can be, to measure Maxine against.

It does nothing but parse requests with httptools and answer each one with the same small JSON
body on a uvloop event loop, keeping the connection open as HTTP/1.1 allows. Whatever Maxine
spends beyond this (routing, its middleware, the registry core, building responses) shows up as
the gap between the two in ``bench/run.py``. Absolute numbers depend on the machine; the ratio
between the two, measured in one run, is what travels.

Run it as ``python bench/ceiling.py --port 8181``; it serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import cast

import httptools
import uvloop

logger = logging.getLogger(__name__)

BODY = b'{"serviceName":"ceiling","address":"127.0.0.1:9000"}'
RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(BODY)
KEEP_ALIVE_RESPONSE = RESPONSE_HEAD + b"\r\n" + BODY
CLOSING_RESPONSE = RESPONSE_HEAD + b"Connection: close\r\n\r\n" + BODY


class FixedResponder(asyncio.Protocol):
    """One connection: feed bytes to the parser, answer each complete request with the fixed body."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            # A client that sends garbage gets no answer at all: the ceiling only serves valid HTTP.
            if self._transport is not None:
                self._transport.close()

    # The parser calls this once per request; pipelined requests get their answers in order.
    def on_message_complete(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._parser.should_keep_alive():
            self._transport.write(KEEP_ALIVE_RESPONSE)
        else:
            self._transport.write(CLOSING_RESPONSE)
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(*, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)

    server = await loop.create_server(FixedResponder, host, port, reuse_address=True, backlog=1024)
    logger.info("The ceiling responder is listening on %s:%d.", host, port)
    try:
        await stopping.wait()
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description="A minimal uvloop + httptools responder: the ceiling for Maxine.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8181, help="Port to listen on (default: 8181).")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(serve(host=args.host, port=args.port))


if __name__ == "__main__":
    main()
