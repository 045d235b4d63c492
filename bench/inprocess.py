"""
The Python cost of one request on the lean path, without the kernel: a steady figure on a noisy machine.

Throughput under wrk moves with everything else the machine does, and on a VM with its
neighbours too. This script takes the network out: it feeds the same requests wrk sends (discover
rotating over 1000 services of 3 instances, heartbeats naming those instances, registrations of
new instances) straight into the lean path's protocol, on a transport that only counts what is
written, and reports the process CPU time per request. The ceiling responder gets the discover
requests the same way, so the two figures are directly comparable: the gap between them is what
Maxine's own Python adds to each request.

Run it by hand as ``python bench/inprocess.py [ceiling|discover|heartbeat|register ...]``; each
figure is the best of 3 rounds (100,000 requests, 30,000 for register).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson
import uvloop

from ceiling import FixedResponder
from harness import ServiceLayout
from maxine_registry.events import EventBus
from maxine_registry.http import create_app
from maxine_registry.http.lightning import LightningServer
from maxine_registry.operations import Operations
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings

ROUNDS = 3
REQUESTS = 100_000
REGISTRATIONS = 30_000
WARMUP = 2000
SCENARIOS = ("ceiling", "discover", "heartbeat", "register")


class CountingTransport:
    """What a protocol needs of a transport: it takes writes and counts them."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class NoFallback:
    """The lean path asks its fallback how many connections it holds; here there is none."""

    # A list, as aiohttp's own: the compiled lean path checks the type it was declared with.
    connections: list[object] = []


def request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n".encode()
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def registration(number: int) -> bytes:
    document = {
        "serviceName": f"bench-reg-{number % 100:03d}",
        "host": f"127.100.{number // 256 % 256}.{number % 256}",
        "port": 8000 + number // 65536,
        "ttl": 3600,
        "metadata": {"version": f"1.{number % 4}.0", "tags": ["bench", f"zone-{number % 3}"]},
    }
    return request("POST", "/register", orjson.dumps(document))


def time_per_request(feed: Callable[[bytes], None], requests: list[bytes], *, count: int) -> float:
    """Microseconds of process time per request, best of ``ROUNDS``; each round takes the next ``count``."""
    for raw in requests[:WARMUP]:
        feed(raw)
    best = float("inf")
    start = WARMUP
    for _ in range(ROUNDS):
        began = time.process_time()
        for index in range(start, start + count):
            feed(requests[index % len(requests)])
        best = min(best, (time.process_time() - began) / count * 1e6)
        start += count
    return best


async def measure(scenarios: list[str]) -> dict[str, float]:
    layout = ServiceLayout()
    operations = Operations(registry=Registry(events=EventBus()), settings=Settings())
    # The app's features add their guards to the operations, as in a running server.
    create_app(operations)
    for document in layout.registrations():
        operations.register(document)
    lean = LightningServer(operations=operations, fallback=NoFallback(), serve_hot_routes=True)  # type: ignore[arg-type]

    discovers = [request("GET", f"/discover?serviceName={layout.service_name(i)}") for i in range(layout.services)]
    heartbeats = [
        request("POST", "/heartbeat", orjson.dumps({"nodeId": f"{doc['serviceName']}:{doc['host']}:{doc['port']}"}))
        for doc in layout.registrations()
    ]
    results: dict[str, float] = {}
    for name in scenarios:
        transport = CountingTransport()
        protocol: Any = FixedResponder() if name == "ceiling" else lean()
        protocol.connection_made(transport)
        if name == "register":
            fresh = [registration(number) for number in range(WARMUP + ROUNDS * REGISTRATIONS)]
            results[name] = time_per_request(protocol.data_received, fresh, count=REGISTRATIONS)
        else:
            stream = heartbeats if name == "heartbeat" else discovers
            results[name] = time_per_request(protocol.data_received, stream, count=REQUESTS)
        if transport.writes == 0:
            raise RuntimeError(f"{name}: nothing was answered.")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Python cost per request on the lean path, in one process.")
    parser.add_argument("scenarios", nargs="*", help=f"Any of {', '.join(SCENARIOS)} (default: all).")
    args = parser.parse_args()
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}.")
    results = uvloop.run(measure(list(args.scenarios) or list(SCENARIOS)))
    for name, micros in results.items():
        print(f"{name:<10} {micros:6.2f} µs of Python per request")


if __name__ == "__main__":
    main()
