"""
Maxine's benchmark suite: every figure of the speed targets, in one run, ending with a table of targets met.

Throughput means little as an absolute number (it follows the machine), so every figure is measured
in the same run as a ceiling: a minimal uvloop + httptools responder (``ceiling.py``), the most one
Python process can answer, and a bare aiohttp handler (``bare_aiohttp.py``), the most an aiohttp
server can. Maxine is then loaded with 1000 services of 3 instances each and driven by wrk through
the scripts in ``wrk/``: discover (rotating over all 1000 services), heartbeat (rotating over all
3000 instances) and register (a new instance every request).

The other measurements run on fresh servers so that nothing from the load runs blurs them:
- memory: the registry's resident set empty, with 100,000 instances, and once each was discovered;
- UDP heartbeats (``udp.py``'s measuring functions): datagrams a second against a bare receiver,
  and heartbeats lost below that rate;
- lease expiry (``expiry.py``): 100,000 leases ending over 20 s while 10,000 heartbeats a second
  arrive; how late each instance left, and the sweeper's share of a core;
- event push (``events_push.py``): registrations at 1,000 a second, and how long until a WebSocket
  subscriber holds each one's event.

The run ends with the targets table: each figure, the target it is held to, and whether it is met.

Run it by hand (never from tests) as ``python bench/run.py``; see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
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

import udp
from events_push import PushResult, run_event_push
from events_push import render as push_render
from expiry import QUICK_EXPIRING, QUICK_WINDOW, ExpiryPlan, ExpiryResult, run_expiry
from expiry import render as expiry_render
from harness import (
    DEFAULT_LOAD_CPU,
    DEFAULT_SERVER_CPU,
    ForeignLoad,
    Pinning,
    ProcessGroup,
    ServiceLayout,
    WrkResult,
    WrkSettings,
    busy_fraction,
    choose_pinning,
    get_all,
    loopback_host,
    node_count,
    populate,
    progress,
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
# Room for every registration of a round and its warm-up (about 50k a second).
REGISTER_MAX_INSTANCES = 10_000_000
# The second octet of the first host register.lua invents; see ``register_octet``.
REGISTER_FIRST_OCTET = 100

MEMORY_INSTANCES = 100_000
QUICK_MEMORY_INSTANCES = 20_000
MEMORY_SERVICES = 1000
MEMORY_SETTLE = 1.0
MIB = 1024 * 1024

UDP_DURATION = 4.0
QUICK_UDP_DURATION = 2.0
UDP_ROUNDS = 3
PUSH_DURATION = 10.0
QUICK_PUSH_DURATION = 3.0


@dataclass(frozen=True, slots=True)
class SuiteConfig:
    wrk: WrkSettings
    warmup: float
    rounds: int
    memory_instances: int
    expiry: ExpiryPlan
    udp_duration: float
    udp_rounds: int
    push_duration: float
    quick: bool
    # Extra flags for the Maxine under load (the other servers use the defaults).
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
        Scenario("POST /register (new instance)", "maxine-register", "/register", "register.lua", register_args, True),
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
            if scenario.server == "maxine-register":
                # Registrations get a registry of their own, fresh each round: a round adds hundreds
                # of thousands of instances, and a registry that large, left running on the server
                # CPU, would take from the rounds of the other scenarios that follow it.
                servers[scenario.server] = group.start_maxine(
                    "maxine-register", "--max-instances", str(REGISTER_MAX_INSTANCES), *config.maxine_args
                )
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

            server_url = servers[scenario.server].url
            nodes_before = node_count(server_url) if scenario.server.startswith("maxine") else 0
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
            nodes_after = node_count(server_url) if scenario.server.startswith("maxine") else 0
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
            if scenario.server == "maxine-register":
                group.stop(servers.pop(scenario.server))

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


# UDP heartbeats, with the measuring functions of udp.py.


@dataclass(slots=True)
class UdpFigures:
    """Both receivers' capacity rounds (the bare one first) and the paced run to Maxine below its capacity."""

    capacity: list[udp.Capacity]
    paced: udp.Run
    paced_fraction: float

    @property
    def ratio(self) -> float:
        bare, maxine = self.capacity[0].best.processed_per_s, self.capacity[1].best.processed_per_s
        return maxine / bare if bare else float("nan")

    @property
    def paced_lost(self) -> int:
        return self.paced.sent - self.paced.renewed

    def as_dict(self) -> dict[str, Any]:
        return {
            "capacity": [
                {"receiver": result.receiver, "rounds": [run.as_dict() for run in result.rounds]}
                for result in self.capacity
            ],
            "ratio_to_bare": round(self.ratio, 4),
            "paced": {"fraction": self.paced_fraction, **self.paced.as_dict()},
        }


def run_udp(group: ProcessGroup, *, config: SuiteConfig) -> UdpFigures:
    """udp.py's two runs (capacity against a bare receiver, then paced below it), on fresh servers."""
    fraction = udp.DEFAULT_PACED_FRACTION
    capacity, paced_run, _ = udp.run_both(
        group, rounds=config.udp_rounds, duration=config.udp_duration, fraction=fraction
    )
    return UdpFigures(capacity=capacity, paced=paced_run, paced_fraction=fraction)


# The report.


@dataclass(slots=True)
class Report:
    meta: dict[str, Any]
    throughput: list[ScenarioResult]
    memory: MemoryResult
    udp: UdpFigures
    expiry: ExpiryResult
    push: PushResult

    def as_dict(self) -> dict[str, Any]:
        ceiling = self.throughput[0]
        return {
            "meta": self.meta,
            "throughput": [scenario.as_dict(ceiling=ceiling) for scenario in self.throughput],
            "memory": self.memory.as_dict(),
            "udp": self.udp.as_dict(),
            "expiry": self.expiry.as_dict(),
            "event_push": self.push.as_dict(),
            "targets": [target.as_dict() for target in targets(self)],
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

    udp_figures = report.udp
    lines += ["", "UDP heartbeats (udp.py): capacity, as fast as the sender goes; best round, median beside it"]
    for capacity in udp_figures.capacity:
        strongest = capacity.best
        lost = strongest.lost / strongest.sent if strongest.sent else 0.0
        lines.append(
            f"  {capacity.receiver:<32} {strongest.processed_per_s:>10,.0f} received/s"
            f" (median {capacity.median_per_s:,.0f}), sent {strongest.sent_per_s:,.0f}/s, lost {lost:.1%}"
        )
    paced_run = udp_figures.paced
    lines.append(
        f"  paced at {udp_figures.paced_fraction:.0%} of min(Maxine's best, 0.8 x bare): {paced_run.sent:,} sent"
        f" ({paced_run.sent_per_s:,.0f}/s), {paced_run.renewed:,} renewed a lease, {udp_figures.paced_lost:,} lost"
    )

    lines += ["", expiry_render(report.expiry), "", push_render(report.push), ""]
    lines += render_targets(targets(report), quick=bool(meta.get("quick")))
    return "\n".join(lines)


# The targets table.


@dataclass(frozen=True, slots=True)
class Target:
    figure: str
    measured: str
    target: str
    # None when the run could not measure the figure (a server without the counter, nothing seen).
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {"figure": self.figure, "measured": self.measured, "target": self.target, "met": self.met}


def _at_least(value: float, bound: float) -> bool | None:
    return None if math.isnan(value) else value >= bound


def _at_most(value: float, bound: float) -> bool | None:
    return None if math.isnan(value) else value <= bound


def targets(report: Report) -> list[Target]:
    """Every figure the speed targets name, measured in this run, against its target."""
    by_name = {scenario.name: scenario for scenario in report.throughput}
    ceiling = report.throughput[0].best.requests_per_s
    ceiling_median = report.throughput[0].median_requests_per_s
    rows: list[Target] = []
    for name, share, label in (
        ("GET /discover", 0.7, "GET /discover (1000 services x 3)"),
        ("POST /heartbeat", 0.7, "POST /heartbeat"),
        ("POST /register (new instance)", 0.5, "POST /register (fresh instances)"),
    ):
        result = by_name[name]
        best = result.best
        ratio = best.requests_per_s / ceiling if ceiling else float("nan")
        median_ratio = result.median_requests_per_s / ceiling_median if ceiling_median else float("nan")
        # Judged on the medians: the ceiling outruns one wrk thread, so its best round says as much
        # about wrk's luck as about the ceiling. Any error answer fails the row.
        met = _at_least(median_ratio, share)
        if best.non_2xx_3xx or best.socket_errors:
            met = False
        rows.append(
            Target(
                f"{label}: req/s",
                f"{median_ratio:.2f} x ceiling, median ({ratio:.2f} best/best, {best.requests_per_s:,.0f}/s)",
                f">= {share:.2f} x ceiling",
                met,
            )
        )
        if share == 0.7:
            rows.append(Target(f"{label}: p99", f"{best.p99_ms:.2f} ms", "<= 2 ms", _at_most(best.p99_ms, 2.0)))

    udp_figures = report.udp
    rows.append(
        Target(
            "UDP heartbeats: datagrams/s",
            f"{udp_figures.ratio:.2f} x bare receiver",
            ">= 0.80 x bare receiver",
            _at_least(udp_figures.ratio, 0.8),
        )
    )
    rows.append(
        Target(
            "UDP heartbeats: lost below capacity",
            f"{udp_figures.paced_lost:,} of {udp_figures.paced.sent:,}",
            "0",
            udp_figures.paced_lost == 0,
        )
    )

    memory = report.memory
    estimated = "" if memory.instances == 100_000 else f" (from {memory.instances:,})"
    whole = memory.rss_before / MIB + memory.per_100k_mib(memory.rss_registered)
    rows.append(
        Target("memory, 100k instances registered", f"{whole:.1f} MiB RSS{estimated}", "<= 100 MiB", whole <= 100)
    )
    # Not a target: each discovered instance keeps its answer ready (about 300 bytes), which is
    # what makes a discover cheap. Shown so that the price of that choice stays visible.
    whole = memory.rss_before / MIB + memory.per_100k_mib(memory.rss_discovered)
    rows.append(
        Target(
            "memory, 100k instances then each discovered", f"{whole:.1f} MiB RSS{estimated}", "(shown, no target)", None
        )
    )

    expiry = report.expiry
    lateness_p99 = expiry.p99_ms
    rows.append(
        Target(
            "lease expiry: p99 lateness",
            f"{lateness_p99:,.0f} ms" if not math.isnan(lateness_p99) else "nothing seen",
            "<= 1000 ms",
            _at_most(lateness_p99, 1000.0) if not expiry.missing else False,
        )
    )
    sweeper = expiry.sweeper_share
    rate = expiry.plan.expiring / expiry.plan.window
    rows.append(
        Target(
            "lease expiry: sweeper CPU",
            "not exposed" if sweeper is None else f"{sweeper:.1%} of a core at {rate:,.0f} expiries/s",
            "<= 5% of a core",
            None if sweeper is None else sweeper <= 0.05,
        )
    )
    push_p99 = report.push.p99_ms
    rows.append(
        Target(
            "event push: register -> WebSocket, p99",
            f"{push_p99:.2f} ms at {report.push.rate:,.0f}/s" if not math.isnan(push_p99) else "nothing received",
            "<= 10 ms",
            _at_most(push_p99, 10.0) if not report.push.missing else False,
        )
    )
    return rows


def render_targets(rows: list[Target], *, quick: bool) -> list[str]:
    lines = ["Targets" + (" (--quick: a smoke test; judge targets by a full run)" if quick else "")]
    header = f"{'figure':<44} {'measured':<58} {'target':<24} {'met':<4}"
    lines += [header, "-" * len(header)]
    for row in rows:
        met = "-" if row.met is None else ("yes" if row.met else "NO")
        lines.append(f"{row.figure:<44} {row.measured:<58} {row.target:<24} {met:<4}")
    return lines


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
        "quick": config.quick,
    }


# The command line.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Maxine's benchmarks: throughput, latency, memory, UDP, expiry lateness, event push; the targets."
    )
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
        f"{QUICK_EXPIRING:,} expiring leases over {QUICK_WINDOW:g} s: a smoke test, not a measurement.",
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
        expiry=ExpiryPlan.quick() if quick else ExpiryPlan(),
        udp_duration=QUICK_UDP_DURATION if quick else UDP_DURATION,
        udp_rounds=1 if quick else UDP_ROUNDS,
        push_duration=QUICK_PUSH_DURATION if quick else PUSH_DURATION,
        quick=quick,
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
            udp_figures = run_udp(group, config=config)
            progress("Lease expiry at scale, under heartbeats.")
            expiry = run_expiry(group, plan=config.expiry)
            progress("Event push: registrations to a WebSocket subscriber.")
            push = run_event_push(group, duration=config.push_duration)
    except KeyboardInterrupt:
        progress("Interrupted; every server started has been stopped.")
        return 130

    report = Report(meta=meta, throughput=throughput, memory=memory, udp=udp_figures, expiry=expiry, push=push)
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        progress(f"Wrote {args.json}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
