"""
Event push: how long from a registration until a WebSocket subscriber holds its ``service_registered`` event.

A client registers fresh instances at a steady 1,000 a second (one keep-alive HTTP connection, a
request every millisecond, never waiting for the previous answer), and a WebSocket subscriber on
``/ws``, filtered to ``service_registered``, receives the events. Both clients live in this
process, on the load CPU, and the server has its own CPU, so

    latency = time the subscriber read the event - time the registration request was written

is measured on one clock. It covers the whole path: the request on the wire, the registration,
the fan-out to the subscriber's queue, the WebSocket frame, and this process noticing it. The
answer to the registration itself is timed the same way (request written to answer read), which
gives the share of that path the event push does not add, and shows this process's own stalls:
they delay both figures alike.

Run it on its own with ``python bench/events_push.py [--quick]``; ``bench/run.py`` includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import orjson

from harness import (
    DEFAULT_LOAD_CPU,
    DEFAULT_SERVER_CPU,
    LOOPBACK,
    REQUEST_TIMEOUT,
    ProcessGroup,
    Server,
    choose_pinning,
    loopback_host,
    percentile,
    progress,
)
from pipelined import OnAnswer, close_connections, drain, open_connections, paced, post_json

logger = logging.getLogger(__name__)

RATE = 1000.0
DURATION = 10.0
QUICK_DURATION = 3.0
# A second of registrations first, unmeasured: connections, caches and the allocator settle.
WARMUP = 1.0
SERVICES = 20
TTL = 600
# After the last registration, how long to wait for events still on their way.
PATIENCE = 5.0


@dataclass(slots=True)
class PushResult:
    rate: float
    duration: float
    sent: int = 0
    event_ms: list[float] = field(default_factory=list)
    answer_ms: list[float] = field(default_factory=list)
    failed: int = 0
    first_failure: str = ""
    missing: int = 0
    seconds: float = 0.0

    @property
    def p99_ms(self) -> float:
        return percentile(self.event_ms, 99)

    def as_dict(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float | None]:
            if not values:
                return {"p50": None, "p99": None, "max": None}
            return {
                "p50": round(percentile(values, 50), 3),
                "p99": round(percentile(values, 99), 3),
                "max": round(max(values), 3),
            }

        return {
            "rate": self.rate,
            "duration_s": self.duration,
            "sent": self.sent,
            "sent_per_s": round(self.sent / self.seconds, 1) if self.seconds else None,
            "failed": self.failed,
            "first_failure": self.first_failure,
            "missing": self.missing,
            "event_ms": stats(self.event_ms),
            "answer_ms": stats(self.answer_ms),
        }


def registration(index: int) -> dict[str, Any]:
    return {"serviceName": f"push-svc-{index % SERVICES:02d}", "host": loopback_host(index), "port": 7000, "ttl": TTL}


async def subscribe(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str(orjson.dumps({"subscribe": {"event": "service_registered"}}).decode())
    async with asyncio.timeout(REQUEST_TIMEOUT):
        while True:
            message = await ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"The event socket closed before confirming the subscription: {message!r}")
            if orjson.loads(message.data).get("type") == "subscribed":
                return


async def measure(server: Server, *, rate: float, duration: float) -> PushResult:
    result = PushResult(rate=rate, duration=duration)
    written: dict[str, float] = {}
    received: dict[str, float] = {}
    measured_from = 0
    everything_in = asyncio.Event()

    async def follow(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            at = time.time()
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"The event socket ended: {message!r} (close code {ws.close_code}).")
            document = orjson.loads(message.data)
            if document.get("event") == "service_registered":
                received[document["data"]["nodeId"]] = at
                if len(received) == len(written) and result.sent:
                    everything_in.set()

    def on_answer_for(index: int, sent_at: float) -> OnAnswer:
        def answered(status: int, body: bytes, at: float) -> None:
            if status != 200:
                result.failed += 1
                result.first_failure = result.first_failure or f"{status} {body[:200]!r}"
            elif index >= measured_from:
                result.answer_ms.append((at - sent_at) * 1000)

        return answered

    connections = await open_connections(host=LOOPBACK, port=server.port, count=1)
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        ws = await session.ws_connect(f"{server.url}/ws")
        await subscribe(ws)
        following = asyncio.create_task(follow(ws))
        try:
            measured_from = int(rate * WARMUP)
            progress(
                f"Registering {rate:,.0f} instances a second for {WARMUP + duration:g} s (the first {WARMUP:g} s "
                "unmeasured); a WebSocket subscriber takes the events."
            )
            index = 0
            started = time.monotonic()
            async for due in paced(rate=rate, duration=WARMUP + duration):
                batch = []
                for _ in range(due):
                    document = registration(index)
                    request = post_json("/register", orjson.dumps(document), host=LOOPBACK)
                    sent_at = time.time()
                    node = f"{document['serviceName']}:{document['host']}:{document['port']}"
                    written[node] = sent_at
                    batch.append((request, on_answer_for(index, sent_at)))
                    index += 1
                connections[0].send(batch)
            result.sent = index
            result.seconds = time.monotonic() - started
            await drain(connections, within=PATIENCE)
            if len(received) < len(written):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(everything_in.wait(), timeout=PATIENCE)
            if following.done():
                following.result()
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await ws.close()
            await close_connections(connections)

    for position, (node, sent_at) in enumerate(written.items()):
        at = received.get(node)
        if at is None:
            result.missing += 1
        elif position >= measured_from:
            result.event_ms.append((at - sent_at) * 1000)
    return result


def run_event_push(group: ProcessGroup, *, duration: float, rate: float = RATE) -> PushResult:
    """Measure on a fresh Maxine, stopped afterwards."""
    server = group.start_maxine("maxine-events")
    try:
        return asyncio.run(measure(server, rate=rate, duration=duration))
    finally:
        group.stop(server)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def render(result: PushResult) -> str:
    document = result.as_dict()
    event, answer = document["event_ms"], document["answer_ms"]
    return "\n".join(
        [
            f"event push: registrations at {result.rate:,.0f}/s for {result.duration:g} s over one keep-alive "
            f"connection ({document['sent_per_s'] or 0:,.0f}/s reached), a WebSocket subscriber to service_registered",
            f"  {result.sent:,} sent, {result.failed} refused, {result.missing} events missing (both should be 0)",
            f"  request written -> event read:  p50 {_ms(event['p50'])}, p99 {_ms(event['p99'])},"
            f" max {_ms(event['max'])}",
            f"  request written -> answer read: p50 {_ms(answer['p50'])}, p99 {_ms(answer['p99'])},"
            f" max {_ms(answer['max'])}",
        ]
        + ([f"  first refusal: {result.first_failure}"] if result.first_failure else [])
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Registration to WebSocket event latency at a steady rate.")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION:g} s instead of {DURATION:g} s.")
    parser.add_argument("--rate", type=float, default=RATE, help="Registrations a second (default 1000).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--server-cpu", type=int, default=DEFAULT_SERVER_CPU, help="CPU for the server (default 0).")
    parser.add_argument("--load-cpu", type=int, default=DEFAULT_LOAD_CPU, help="CPU for the clients (default 1).")
    parser.add_argument("--no-pin", action="store_true", help="Do not pin processes to CPUs.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 1 <= args.rate <= 20_000:
        parser.error(f"--rate must be from 1 to 20000 a second, got {args.rate:g}.")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    pinning = choose_pinning(server_cpu=args.server_cpu, load_cpu=args.load_cpu, enabled=not args.no_pin)
    pinning.pin_this_process()
    progress(f"Pinning: {pinning.how}.")
    try:
        with ProcessGroup(pinning=pinning) as group:
            result = run_event_push(group, duration=QUICK_DURATION if args.quick else DURATION, rate=args.rate)
    except KeyboardInterrupt:
        progress("Interrupted; every server started has been stopped.")
        return 130
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
