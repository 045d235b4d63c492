"""
What persistence costs a write: registrations a second, and their latency, for each store.

Each scenario starts a fresh Maxine and sends it new registrations with wrk (``wrk/register.lua``:
every request registers an instance never seen before). The scenarios:

- ``memory``: no persistence, the lightning path on (the default server);
- ``memory-aiohttp``: no persistence, ``--no-lightning`` (durable writes go through aiohttp too,
  so this is the fair baseline for the next three);
- ``file-flush-0``: every registration fsynced to the journal before its answer (group commit);
- ``file-flush-50``: registrations grouped, written every 50 ms (the lightning path stays on);
- ``redis``: every registration in Redis before its answer (a ``redis-server`` of the run's own).

It also times one full snapshot of 100k instances, what a compaction costs, to show why every
write is journaled rather than written as a whole new file.

    python bench/persistence.py                 # 5 s per scenario
    python bench/persistence.py --duration 10 --connections 100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    LOOPBACK,
    ProcessGroup,
    WrkSettings,
    choose_pinning,
    free_port,
    progress,
    run_wrk,
    source_revision,
)
from replication import wait_for_redis

SNAPSHOT_INSTANCES = 100_000


def scenarios(data_dir: Path, redis_port: int) -> dict[str, list[str]]:
    return {
        "memory": [],
        "memory-aiohttp": ["--no-lightning"],
        "file-flush-0": ["--persistence-enabled", "--persistence-file", str(data_dir / "flush0") + "/"],
        "file-flush-50": [
            "--persistence-enabled", "--persistence-file", str(data_dir / "flush50") + "/",
            "--persistence-flush-ms", "50",
        ],
        "redis": ["--persistence-enabled", "--persistence-type", "redis", "--redis-port", str(redis_port)],
    }  # fmt: skip


def time_snapshot() -> dict[str, Any]:
    """Build, encode and write one snapshot of ``SNAPSHOT_INSTANCES`` instances, as a compaction does."""
    from maxine_registry.persistence.file_store import _write_atomically  # noqa: PLC0415
    from maxine_registry.persistence.state import ChangeTracker, StateModel  # noqa: PLC0415
    from maxine_registry.registration import parse_registration  # noqa: PLC0415
    from maxine_registry.registry import Registry  # noqa: PLC0415

    registry = Registry()
    for index in range(SNAPSHOT_INSTANCES):
        body = {
            "serviceName": f"svc-{index % 100:03d}",
            "host": f"127.1.{index // 256 % 256}.{index % 256}",
            "port": 8000 + index // 65536,
            "metadata": {"version": "1.0.0", "tags": ["bench", "zone-a"]},
        }
        registry.register(parse_registration(body))
    model = StateModel(
        registry=registry, parts={}, tracker=ChangeTracker(events=registry.events), max_metadata_bytes=16384
    )
    started = time.perf_counter()
    document = model.document(created_at=0)
    built = time.perf_counter()
    import orjson  # noqa: PLC0415

    data = orjson.dumps(document)
    encoded = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        _write_atomically(Path(folder) / "registry.json", data)
    written = time.perf_counter()
    return {
        "instances": SNAPSHOT_INSTANCES,
        "bytes": len(data),
        "build_ms": round((built - started) * 1000, 1),
        "encode_ms": round((encoded - built) * 1000, 1),
        "write_fsync_ms": round((written - encoded) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Registrations a second with each persistence store.")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the servers and the load to CPUs")
    args = parser.parse_args(argv)
    pinning = choose_pinning(server_cpu=0, load_cpu=1, enabled=not args.no_pin)
    settings = WrkSettings(duration=args.duration, connections=args.connections, threads=1)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"

    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="maxine-persistence-bench-") as folder,
        ProcessGroup(pinning=pinning) as group,
    ):
        redis_port = free_port()
        redis_command = [binary, "--port", str(redis_port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
        for octet, (name, flags) in enumerate(scenarios(Path(folder), redis_port).items(), start=100):
            redis_server = group.start("redis", redis_command, port=redis_port) if name == "redis" else None
            if redis_server is not None:
                wait_for_redis(redis_port)
            server = group.start_maxine(name, *flags, "--no-health-checks")
            progress(f"{name}: registering for {args.duration:g} s with {args.connections} connections.")
            measured = run_wrk(
                name,
                url=server.url,
                script="register.lua",
                script_args=["100", "bench-reg-", "3600", str(octet)],
                settings=settings,
                pinning=pinning,
            )
            results.append(measured.as_dict())
            group.stop(server)
            if redis_server is not None:
                group.stop(redis_server)

    progress(f"Timing one snapshot of {SNAPSHOT_INSTANCES} instances.")
    snapshot = time_snapshot()
    print(f"Registrations a second by store ({args.connections} connections, 1 wrk thread, {args.duration:g} s each)")
    print(f"{'scenario':16} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for result in results:
        print(
            f"{result['name']:16} {result['requests_per_s']:>10.0f} {result['p50_ms']:>8.2f} "
            f"{result['p99_ms']:>8.2f} {result['non_2xx_3xx']:>8}"
        )
    print(f"One snapshot of {snapshot['instances']} instances: {snapshot}")
    print(f"pinning: {pinning.how}; server code: {source_revision()}")
    if args.json is not None:
        args.json.write_text(json.dumps({"scenarios": results, "snapshot": snapshot}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
