"""
Replication latency between Maxine replicas sharing one Redis: how long after replica A answers a
registration can replica B discover it.

The run starts its own ``redis-server`` (no persistence, on a free loopback port) and two Maxine
replicas on it. Each sample registers an instance of a service nobody registered before on A, and
from the moment A answers, asks B for that service in a tight loop on one keep-alive connection
until B answers 200. The time between is the replication latency as a client sees it, including
the polling granularity (one discover round trip, a fraction of a millisecond). Samples run one
after the other, so they measure latency, not throughput.

    python bench/replication.py                   # 500 samples
    python bench/replication.py --samples 2000 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import time
from pathlib import Path

import aiohttp

from harness import (
    LOOPBACK,
    ProcessGroup,
    choose_pinning,
    free_port,
    percentile,
    progress,
    source_revision,
)

DEFAULT_SAMPLES = 500
# A sample that B has not caught up with after this long counts as lost (and fails the run).
SAMPLE_TIMEOUT = 5.0
READY_TIMEOUT = 10.0


def wait_for_redis(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer on port {port} within {READY_TIMEOUT} s.")


async def measure(*, writer_url: str, reader_url: str, samples: int) -> list[float]:
    latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=SAMPLE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as writer, aiohttp.ClientSession(timeout=timeout) as reader:
        for sample in range(samples):
            service = f"replication-{sample}"
            body = {"serviceName": service, "host": "127.0.0.1", "port": 9000, "ttl": 600}
            async with writer.post(writer_url + "/register", json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"Registering {service} on the writer answered {response.status}.")
            acknowledged = time.perf_counter()
            while True:
                async with reader.get(reader_url + "/discover", params={"serviceName": service}) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append((time.perf_counter() - acknowledged) * 1000)
                        break
                if time.perf_counter() - acknowledged > SAMPLE_TIMEOUT:
                    raise RuntimeError(f"The reader did not see {service} within {SAMPLE_TIMEOUT} s.")
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replication latency between two Maxine replicas on one Redis.")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the servers and the load to CPUs")
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"

    pinning = choose_pinning(server_cpu=0, load_cpu=1, enabled=not args.no_pin)
    pinning.pin_this_process()
    with ProcessGroup(pinning=pinning) as group:
        redis_port = free_port()
        command = [binary, "--port", str(redis_port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
        group.start("redis", command, port=redis_port)
        wait_for_redis(redis_port)
        redis_args = ("--persistence-enabled", "--persistence-type", "redis", "--redis-port", str(redis_port))
        writer = group.start_maxine("replica-a", *redis_args, "--no-health-checks")
        reader = group.start_maxine("replica-b", *redis_args, "--no-health-checks")
        progress(f"Measuring {args.samples} registrations on A until B discovers each.")
        latencies = asyncio.run(measure(writer_url=writer.url, reader_url=reader.url, samples=args.samples))

    figures = {
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies), 3),
        "pinning": pinning.how,
        "server_code": source_revision(),
    }
    print("Replication latency, registration answered on replica A -> discoverable on replica B")
    for name, value in figures.items():
        print(f"  {name:12} {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
