"""
Maxine's benchmark suite: throughput and latency against a ceiling, memory per instance, expiry lateness.

Throughput means little as an absolute number (it follows the machine), so every figure is measured
in the same run as a ceiling: a minimal uvloop + httptools responder (``ceiling.py``), the most one
Python process can answer, and a bare aiohttp handler (``bare_aiohttp.py``), the most an aiohttp
server can. Maxine is then loaded with 1000 services of 3 instances each and driven by wrk through
the scripts in ``wrk/``: discover (rotating over all 1000 services), heartbeat (rotating over all
3000 instances) and register (a new instance every request).

Two more measurements run on fresh servers so that nothing from the load runs blurs them:
- memory: the registry's resident set empty, with 100,000 instances, and once each was discovered;
- expiry: instances with 1-2 s leases that never heartbeat; how long after its lease ended each
  one's ``service_unhealthy`` event appears on ``GET /events``.

Run it by hand (never from tests) as ``python bench/run.py``; see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from harness import (
    DEFAULT_LOAD_CPU,
    DEFAULT_SERVER_CPU,
    REQUEST_TIMEOUT,
    ForeignLoad,
    Pinning,
    ProcessGroup,
    ServiceLayout,
    WrkResult,
    WrkSettings,
    busy_fraction,
    choose_pinning,
    get_all,
    get_json,
    loopback_host,
    node_count,
    percentile,
    populate,
    progress,
    register_all,
    rss_bytes,
    run_wrk,
    source_revision,
)

logger = logging.getLogger(__name__)

DEFAULT_DURATION = 10.0
DEFAULT_CONNECTIONS = 50
DEFAULT_THREADS = 1
DEFAULT_WARMUP = 2.0
QUICK_DURATION = 3.0
QUICK_WARMUP = 1.0
DEFAULT_ROUNDS = 3
MAX_ROUNDS = 20
BUSY_SAMPLE = 1.0
BUSY_WARNING = 0.10

POPULATE_CONCURRENCY = 64
POPULATE_TIMEOUT = 600.0

REGISTER_SERVICES = 100
REGISTER_PREFIX = "bench-reg-"
REGISTER_TTL = 3600
# The second octet of the first host register.lua invents; see ``register_octet``.
REGISTER_FIRST_OCTET = 100

MEMORY_INSTANCES = 100_000
QUICK_MEMORY_INSTANCES = 20_000
MEMORY_SERVICES = 1000
MEMORY_SETTLE = 1.0
MIB = 1024 * 1024

EXPIRY_INSTANCES = 2000
QUICK_EXPIRY_INSTANCES = 500
EXPIRY_SERVICES = 20
EXPIRY_MIN_TTL = 1.0
EXPIRY_TTL_SPREAD = 1.0
EXPIRY_CONCURRENCY = 32
EXPIRY_POLL_INTERVAL = 0.05
EXPIRY_POLL_LIMIT = 1000
# How long to wait for the last event after the last lease ended, before calling the rest missing.
EXPIRY_PATIENCE = 10.0


@dataclass(frozen=True, slots=True)
class SuiteConfig:
    wrk: WrkSettings
    warmup: float
    rounds: int
    memory_instances: int
    expiry_instances: int
    # Extra flags for the Maxine under load (the memory and expiry servers use the defaults).
    maxine_args: tuple[str, ...] = ()


# Throughput.


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    server: str
    path: str
    script: str
    args: tuple[str, ...] = ()
    # register.lua is told which block of loopback hosts to use, so that no run repeats another's.
    fresh_hosts: bool = False


def scenarios(layout: ServiceLayout) -> list[Scenario]:
    register_args = (str(REGISTER_SERVICES), REGISTER_PREFIX, str(REGISTER_TTL))
    return [
        Scenario("ceiling (uvloop + httptools)", "ceiling", "/", "ceiling.lua"),
        Scenario("bare aiohttp handler", "bare-aiohttp", "/", "ceiling.lua"),
        Scenario("GET /discover", "maxine", "/discover", "discover.lua", tuple(layout.discover_args())),
        Scenario("POST /heartbeat", "maxine", "/heartbeat", "heartbeat.lua", tuple(layout.heartbeat_args())),
        Scenario("POST /register (new instance)", "maxine", "/register", "register.lua", register_args, True),
    ]


def register_octet(*, round_index: int, warmup: bool, threads: int) -> int:
    """The second octet of the hosts register.lua invents in one run: one block of ``threads`` per run."""
    octet = REGISTER_FIRST_OCTET + (2 * round_index + int(warmup)) * threads
    if octet + threads > 255:
        raise ValueError(f"Too many rounds x threads for distinct register hosts: octet {octet} + {threads} > 255.")
    return octet


@dataclass(slots=True)
class ScenarioResult:
    """Every measured round of one scenario; the best one stands for it, the others show the noise."""

    name: str
    rounds: list[WrkResult] = field(default_factory=list)

    @property
    def best(self) -> WrkResult:
        return max(self.rounds, key=lambda result: result.requests_per_s)

    @property
    def median_requests_per_s(self) -> float:
        return statistics.median(result.requests_per_s for result in self.rounds)

    def as_dict(self, *, ceiling: ScenarioResult) -> dict[str, Any]:
        best, reference = self.best, ceiling.best
        return {
            "name": self.name,
            "best": best.as_dict(),
            "median_requests_per_s": round(self.median_requests_per_s, 1),
            "rounds_requests_per_s": [round(result.requests_per_s, 1) for result in self.rounds],
            "ratio_requests_per_s": round(best.requests_per_s / reference.requests_per_s, 4),
            "ratio_median_requests_per_s": round(self.median_requests_per_s / ceiling.median_requests_per_s, 4),
            "ratio_p50": round(best.p50_ms / reference.p50_ms, 2) if reference.p50_ms else None,
            "ratio_p99": round(best.p99_ms / reference.p99_ms, 2) if reference.p99_ms else None,
        }


def run_throughput(group: ProcessGroup, *, config: SuiteConfig) -> list[ScenarioResult]:
    progress("Starting the ceiling responder, the bare aiohttp handler and Maxine.")
    servers = {
        "ceiling": group.start_script("ceiling", "ceiling.py"),
        "bare-aiohttp": group.start_script("bare-aiohttp", "bare_aiohttp.py"),
        "maxine": group.start_maxine("maxine-throughput", *config.maxine_args),
    }
    maxine_url = servers["maxine"].url

    layout = ServiceLayout()
    total = layout.services * layout.per_service
    progress(f"Registering {layout.services} services x {layout.per_service} instances in Maxine.")
    started = time.monotonic()
    populate(
        base_url=maxine_url,
        registrations=layout.registrations(),
        concurrency=POPULATE_CONCURRENCY,
        time_limit=POPULATE_TIMEOUT,
    )
    if node_count(maxine_url) != total:
        raise RuntimeError(f"Maxine holds {node_count(maxine_url)} instances after registering {total}.")
    progress(f"Registered {total} instances in {time.monotonic() - started:.1f}s.")

    # Rounds go through every scenario in turn, so that a burst of noise from elsewhere on the
    # machine hits one round of each rather than every round of one.
    results = {scenario.name: ScenarioResult(scenario.name) for scenario in scenarios(layout)}
    for round_index in range(config.rounds):
        for scenario in scenarios(layout):
            url = servers[scenario.server].url + scenario.path
            if round_index == 0 and config.warmup > 0:
                progress(f"Warming up {scenario.name} for {config.warmup:g}s.")
                run_wrk(
                    scenario.name,
                    url=url,
                    script=scenario.script,
                    script_args=_script_args(scenario, round_index=round_index, warmup=True, config=config),
                    settings=config.wrk,
                    pinning=group.pinning,
                    duration=config.warmup,
                )

            nodes_before = node_count(maxine_url)
            progress(
                f"Round {round_index + 1}/{config.rounds}: measuring {scenario.name} for {config.wrk.duration:g}s."
            )
            with ForeignLoad(server_pid=servers[scenario.server].pid) as foreign:
                result = run_wrk(
                    scenario.name,
                    url=url,
                    script=scenario.script,
                    script_args=_script_args(scenario, round_index=round_index, warmup=False, config=config),
                    settings=config.wrk,
                    pinning=group.pinning,
                )
            result.extra["foreign_cpu"] = round(foreign.fraction, 3)
            nodes_after = node_count(maxine_url)
            if scenario.fresh_hosts:
                result.extra["new_instances"] = nodes_after - nodes_before
            elif nodes_after != nodes_before:
                # Discover and heartbeat must neither add nor lose instances (leases are an hour long).
                raise RuntimeError(f"{scenario.name} changed the instance count from {nodes_before} to {nodes_after}.")
            progress(
                f"  {result.requests_per_s:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                f"non-2xx {result.non_2xx_3xx}, socket errors {result.socket_errors}, "
                f"CPU taken by other processes {foreign.fraction:.0%}."
            )
            results[scenario.name].rounds.append(result)

    for server in servers.values():
        group.stop(server)
    return list(results.values())


def _script_args(scenario: Scenario, *, round_index: int, warmup: bool, config: SuiteConfig) -> list[str]:
    if not scenario.fresh_hosts:
        return list(scenario.args)
    octet = register_octet(round_index=round_index, warmup=warmup, threads=config.wrk.threads)
    return [*scenario.args, str(octet)]


# Memory.


@dataclass(slots=True)
class MemoryResult:
    """The registry's RSS empty, with the instances registered, and after each was discovered once."""

    instances: int
    rss_before: int
    rss_registered: int
    rss_discovered: int

    def per_100k_mib(self, rss: int) -> float:
        return (rss - self.rss_before) / MIB * 100_000 / self.instances

    def per_instance_bytes(self, rss: int) -> float:
        return (rss - self.rss_before) / self.instances

    def as_dict(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "rss_before_mib": round(self.rss_before / MIB, 1),
            "rss_registered_mib": round(self.rss_registered / MIB, 1),
            "rss_discovered_mib": round(self.rss_discovered / MIB, 1),
            "mib_per_100k_instances_registered": round(self.per_100k_mib(self.rss_registered), 1),
            "mib_per_100k_instances_discovered": round(self.per_100k_mib(self.rss_discovered), 1),
            "bytes_per_instance_registered": round(self.per_instance_bytes(self.rss_registered)),
            "bytes_per_instance_discovered": round(self.per_instance_bytes(self.rss_discovered)),
        }


def memory_registrations(count: int) -> Iterator[dict[str, Any]]:
    """Instances as a real fleet has them: a distinct address each, versions and tags from small sets."""
    for index in range(count):
        yield {
            "serviceName": f"mem-svc-{index % MEMORY_SERVICES:04d}",
            "host": loopback_host(index),
            "port": 8080,
            "ttl": 3600,
            "metadata": {"version": f"2.{index % 4}.0", "tags": [f"team-{index % 7}", f"zone-{index % 3}"]},
        }


def run_memory(group: ProcessGroup, *, config: SuiteConfig) -> MemoryResult:
    server = group.start_maxine("maxine-memory")
    count = config.memory_instances
    time.sleep(MEMORY_SETTLE)
    rss_before = rss_bytes(server.pid)

    progress(f"Registering {count:,} instances (a version and 2 tags each) in a fresh Maxine.")
    step = max(count // 10, 1)

    def report(done: int) -> None:
        if done % step == 0:
            progress(f"  {done:,} of {count:,} registered; RSS {rss_bytes(server.pid) / MIB:.1f} MiB.")

    populate(
        base_url=server.url,
        registrations=memory_registrations(count),
        concurrency=POPULATE_CONCURRENCY,
        time_limit=POPULATE_TIMEOUT,
        on_progress=report,
    )
    if node_count(server.url) != count:
        raise RuntimeError(f"Maxine holds {node_count(server.url)} instances after registering {count}.")
    time.sleep(MEMORY_SETTLE)
    rss_registered = rss_bytes(server.pid)

    # Discover builds each instance's answer once and keeps it: what a live registry holds.
    per_service = -(-count // MEMORY_SERVICES)
    services = min(count, MEMORY_SERVICES)
    progress(f"Discovering each instance once: {per_service} round-robin discovers per service, {services} services.")
    paths = (
        f"/discover?serviceName=mem-svc-{service:04d}&loadBalancing=round-robin"
        for _ in range(per_service)
        for service in range(services)
    )
    get_all(base_url=server.url, paths=paths, concurrency=POPULATE_CONCURRENCY, time_limit=POPULATE_TIMEOUT)
    time.sleep(MEMORY_SETTLE)
    rss_discovered = rss_bytes(server.pid)
    group.stop(server)
    return MemoryResult(
        instances=count, rss_before=rss_before, rss_registered=rss_registered, rss_discovered=rss_discovered
    )


# Expiry lateness.


@dataclass(slots=True)
class ExpiryResult:
    instances: int
    lateness_ms: list[float] = field(default_factory=list)
    missing: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        lateness = self.lateness_ms
        return {
            "instances": self.instances,
            "seen": len(lateness),
            "missing": self.missing,
            "lateness_min_ms": round(min(lateness), 1) if lateness else None,
            "lateness_p50_ms": round(percentile(lateness, 50), 1) if lateness else None,
            "lateness_p99_ms": round(percentile(lateness, 99), 1) if lateness else None,
            "lateness_max_ms": round(max(lateness), 1) if lateness else None,
            "note": self.note,
        }


def expiry_registrations(count: int) -> Iterator[dict[str, Any]]:
    # Leases spread evenly over [1 s, 2 s), so that the expiries spread over several sweeps.
    for index in range(count):
        yield {
            "serviceName": f"expiry-svc-{index % EXPIRY_SERVICES:02d}",
            "host": loopback_host(index),
            "port": 9000,
            "ttl": EXPIRY_MIN_TTL + EXPIRY_TTL_SPREAD * (index % 1000) / 1000,
        }


class EventFollower:
    """
    Follow ``GET /events`` and keep the timestamp of each ``service_unhealthy`` per node id.

    ``since`` filters by timestamp (milliseconds), and several events can share one; each poll
    therefore asks again from one millisecond before the newest event seen and skips the sequence
    numbers it already has, so that no event cut off at a page boundary is lost.
    """

    def __init__(self, *, base_url: str, since_ms: int) -> None:
        self.base_url = base_url
        self.since_ms = since_ms
        self.unhealthy_at: dict[str, int] = {}
        self._seen: set[int] = set()
        self.stuck = False

    async def poll(self, session: aiohttp.ClientSession) -> bool:
        """Read one page; return whether it was full (more may be waiting right away)."""
        url = f"{self.base_url}/events?since={self.since_ms}&limit={EXPIRY_POLL_LIMIT}"
        page = await get_json(session, url)
        events: list[dict[str, Any]] = page["events"]
        for event in events:
            if event["seq"] in self._seen:
                continue
            self._seen.add(event["seq"])
            if event["event"] == "service_unhealthy":
                self.unhealthy_at.setdefault(event["data"]["nodeId"], event["timestamp"])
        if not events:
            return False
        full = len(events) >= EXPIRY_POLL_LIMIT
        if full and events[0]["timestamp"] == events[-1]["timestamp"]:
            # A whole page within one millisecond: ``since`` cannot move past it.
            self.stuck = True
        self.since_ms = max(self.since_ms, events[-1]["timestamp"] - 1)
        return full


async def measure_expiry(*, base_url: str, count: int) -> ExpiryResult:
    registrations = list(expiry_registrations(count))
    follower = EventFollower(base_url=base_url, since_ms=int(time.time() * 1000) - 1)
    registering_done = asyncio.Event()
    last_due = 0.0

    async def follow(session: aiohttp.ClientSession) -> None:
        # Bounded by the deadline: the last lease's end plus some patience, measured once registration is done.
        while not follower.stuck:
            full = await follower.poll(session)
            if len(follower.unhealthy_at) >= count:
                return
            if registering_done.is_set() and time.time() > last_due + EXPIRY_PATIENCE:
                return
            if not full:
                await asyncio.sleep(EXPIRY_POLL_INTERVAL)

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        following = asyncio.create_task(follow(session))
        try:
            async with asyncio.timeout(POPULATE_TIMEOUT):
                acked = await register_all(
                    base_url=base_url, registrations=registrations, concurrency=EXPIRY_CONCURRENCY
                )
            # A lease ends ttl after the registration; the ack is the latest moment that can have been.
            due = {f"{reg['serviceName']}:{reg['host']}:{reg['port']}": ack + reg["ttl"] for reg, ack in acked}
            last_due = max(due.values())
            registering_done.set()
            await following
        finally:
            following.cancel()

    result = ExpiryResult(instances=count)
    for node_id, due_at in due.items():
        event_ms = follower.unhealthy_at.get(node_id)
        if event_ms is None:
            result.missing += 1
        else:
            result.lateness_ms.append(event_ms - due_at * 1000)
    if follower.stuck:
        result.note = (
            f"GET /events returned {EXPIRY_POLL_LIMIT} events within one millisecond; later ones were not read."
        )
    return result


def run_expiry(group: ProcessGroup, *, config: SuiteConfig) -> ExpiryResult:
    count = config.expiry_instances
    # Room for every registration and expiry event of the run, so none leaves the ring before it is read.
    server = group.start_maxine("maxine-expiry", "--event-history", str(4 * count + 1000))
    progress(f"Registering {count:,} instances with 1-2 s leases that are never renewed; following GET /events.")
    result = asyncio.run(measure_expiry(base_url=server.url, count=count))
    group.stop(server)
    return result


# The report.


@dataclass(slots=True)
class Report:
    meta: dict[str, Any]
    throughput: list[ScenarioResult]
    memory: MemoryResult
    expiry: ExpiryResult

    def as_dict(self) -> dict[str, Any]:
        ceiling = self.throughput[0]
        return {
            "meta": self.meta,
            "throughput": [scenario.as_dict(ceiling=ceiling) for scenario in self.throughput],
            "memory": self.memory.as_dict(),
            "expiry": self.expiry.as_dict(),
        }


def _times(value: float, reference: float) -> str:
    return f"x{value / reference:.1f}" if reference else "-"


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f} ms"


def render(report: Report) -> str:
    meta = report.meta
    ceiling = report.throughput[0]
    lines = [
        f"Maxine benchmark, {meta['date']}",
        f"  python {meta['python']}, aiohttp {meta['aiohttp']}, {meta['wrk_version']}, {meta['cpus']} CPUs",
        f"  wrk: {meta['threads']} thread(s), {meta['connections']} connections, {meta['rounds']} round(s) of "
        f"{meta['duration_s']:g} s per run, after a {meta['warmup_s']:g} s warm-up",
        f"  pinning: {meta['pinning']}",
        f"  server code: {meta['source']}",
        f"  CPU busy with other work just before the run: {meta['busy_before_start']:.0%}",
        f"  discover: {meta['discover']}",
        f"  Maxine under load started with: {meta['maxine_args']}",
        f"  command: {meta['command']}",
        "",
        "Throughput and latency: the best round of each run (latencies from that round); median over rounds beside it.",
        "'other CPU': share of all CPUs that processes outside the benchmark took during the best round.",
    ]

    header = (
        f"{'run':<31} {'req/s':>9} {'vs ceil':>8} {'median':>9} {'vs ceil':>8}"
        f" {'p50 ms':>7} {'x ceil':>7} {'p99 ms':>7} {'x ceil':>7} {'non-2xx':>8} {'sock err':>8} {'other CPU':>9}"
    )
    lines += [header, "-" * len(header)]
    reference = ceiling.best
    for scenario in report.throughput:
        best = scenario.best
        median = scenario.median_requests_per_s
        lines.append(
            f"{scenario.name:<31} {best.requests_per_s:>9,.0f} {best.requests_per_s / reference.requests_per_s:>8.1%}"
            f" {median:>9,.0f} {median / ceiling.median_requests_per_s:>8.1%}"
            f" {best.p50_ms:>7.2f} {_times(best.p50_ms, reference.p50_ms):>7}"
            f" {best.p99_ms:>7.2f} {_times(best.p99_ms, reference.p99_ms):>7}"
            f" {sum(r.non_2xx_3xx for r in scenario.rounds):>8} {sum(r.socket_errors for r in scenario.rounds):>8}"
            f" {best.extra.get('foreign_cpu', 0.0):>9.0%}"
        )
    for scenario in report.throughput:
        added = [result.extra["new_instances"] for result in scenario.rounds if "new_instances" in result.extra]
        if added:
            requests = sum(result.requests for result in scenario.rounds)
            lines.append(
                f"  ({scenario.name}: {sum(added):,} instances added by {requests:,} requests over all rounds)"
            )

    memory = report.memory
    lines += [
        "",
        f"memory: {memory.instances:,} instances (a version and 2 tags each) in a fresh Maxine, "
        f"whose RSS was {memory.rss_before / MIB:.1f} MiB empty",
    ]
    for label, rss in (("registered", memory.rss_registered), ("and each discovered once", memory.rss_discovered)):
        lines.append(
            f"  {label + ':':<26} RSS {rss / MIB:>6.1f} MiB, {memory.per_100k_mib(rss):>6.1f} MiB per 100k instances"
            f" ({memory.per_instance_bytes(rss):,.0f} bytes each)"
        )

    expiry = report.expiry.as_dict()
    lines += [
        "",
        f"lease expiry: {expiry['instances']:,} instances with leases of 1-2 s, never renewed; "
        f"service_unhealthy seen for {expiry['seen']:,}, missing {expiry['missing']}",
        f"  lateness after the lease ended: p50 {_ms(expiry['lateness_p50_ms'])}, p99 {_ms(expiry['lateness_p99_ms'])},"
        f" max {_ms(expiry['lateness_max_ms'])} (min {_ms(expiry['lateness_min_ms'])})",
    ]
    if report.expiry.note:
        lines.append(f"  note: {report.expiry.note}")
    return "\n".join(lines)


def describe_environment(
    *, config: SuiteConfig, pinning: Pinning, argv: list[str], busy_before_start: float
) -> dict[str, Any]:
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "wrk_version": " ".join(wrk_version.split()[:2]) or "wrk (version unknown)",
        "cpus": os.cpu_count(),
        "threads": config.wrk.threads,
        "connections": config.wrk.connections,
        "duration_s": config.wrk.duration,
        "warmup_s": config.warmup,
        "rounds": config.rounds,
        "busy_before_start": busy_before_start,
        "pinning": pinning.how,
        "source": source_revision(),
        "command": " ".join(["python", *argv]),
        "discover": "rotating over all 1000 services (bench/wrk/discover.lua)",
        "maxine_args": " ".join(config.maxine_args) or "(defaults)",
    }


# The command line.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Maxine's benchmarks: throughput, latency, memory, expiry lateness.")
    parser.add_argument(
        "--duration", type=float, default=None, help=f"Seconds per wrk run (default {DEFAULT_DURATION:g})."
    )
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS, help="wrk connections (default 50).")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="wrk threads (default 1).")
    parser.add_argument(
        "--warmup", type=float, default=None, help=f"Seconds of warm-up per run (default {DEFAULT_WARMUP:g})."
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"Measured rounds per run, interleaved; the best is reported (default {DEFAULT_ROUNDS}, quick 1).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"Short runs ({QUICK_DURATION:g} s), {QUICK_MEMORY_INSTANCES:,} instances for memory, "
        f"{QUICK_EXPIRY_INSTANCES} for expiry: a smoke test, not a measurement.",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--server-cpu", type=int, default=DEFAULT_SERVER_CPU, help="CPU for the servers (default 0).")
    parser.add_argument(
        "--load-cpu", type=int, default=DEFAULT_LOAD_CPU, help="CPU for wrk and the client (default 1)."
    )
    parser.add_argument("--no-pin", action="store_true", help="Do not pin processes to CPUs.")
    parser.add_argument(
        "--maxine-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="An extra command-line argument for the Maxine under load (repeatable), e.g. --maxine-arg=--no-lightning.",
    )
    args = parser.parse_args(argv)
    if args.duration is not None and not 1 <= args.duration <= 600:
        parser.error(f"--duration must be from 1 to 600 seconds, got {args.duration:g}.")
    if not 1 <= args.connections <= 10_000 or not 1 <= args.threads <= args.connections:
        parser.error("--connections must be from 1 to 10000, and --threads from 1 to the number of connections.")
    if args.rounds is not None and not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be from 1 to {MAX_ROUNDS}, got {args.rounds}.")
    rounds = args.rounds if args.rounds is not None else DEFAULT_ROUNDS
    try:
        register_octet(round_index=rounds - 1, warmup=True, threads=args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def build_config(args: argparse.Namespace) -> SuiteConfig:
    quick: bool = args.quick
    duration = args.duration if args.duration is not None else (QUICK_DURATION if quick else DEFAULT_DURATION)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if quick else DEFAULT_WARMUP)
    return SuiteConfig(
        wrk=WrkSettings(duration=duration, connections=args.connections, threads=args.threads),
        warmup=warmup,
        rounds=args.rounds if args.rounds is not None else (1 if quick else DEFAULT_ROUNDS),
        memory_instances=QUICK_MEMORY_INSTANCES if quick else MEMORY_INSTANCES,
        expiry_instances=QUICK_EXPIRY_INSTANCES if quick else EXPIRY_INSTANCES,
        maxine_args=tuple(args.maxine_arg),
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Treated like Ctrl-C, so the servers are stopped on the way out.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    config = build_config(args)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian package 'wrk').", file=sys.stderr)
        return 2
    # Ctrl-C must stop the run even where SIGINT arrives ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    pinning = choose_pinning(server_cpu=args.server_cpu, load_cpu=args.load_cpu, enabled=not args.no_pin)
    pinning.pin_this_process()
    progress(f"Pinning: {pinning.how}.")
    busy = busy_fraction(interval=BUSY_SAMPLE)
    if busy > BUSY_WARNING:
        progress(f"Warning: the CPUs are {busy:.0%} busy with other work; throughput figures will be noisy.")
    meta = describe_environment(config=config, pinning=pinning, argv=[sys.argv[0], *argv], busy_before_start=busy)

    try:
        with ProcessGroup(pinning=pinning) as group:
            throughput = run_throughput(group, config=config)
            memory = run_memory(group, config=config)
            expiry = run_expiry(group, config=config)
    except KeyboardInterrupt:
        progress("Interrupted; every server started has been stopped.")
        return 130

    report = Report(meta=meta, throughput=throughput, memory=memory, expiry=expiry)
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        progress(f"Wrote {args.json}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
