"""
Lease expiry at scale: how late instances leave a registry of 100k while it serves 10k heartbeats a second.

The registry holds two populations. A live one (10,000 instances, 5 s leases) receives 10,000
HTTP heartbeats a second, so each is renewed about once a second and none may ever expire. An
expiring one (100,000 instances) never heartbeats; each gets a lease chosen when its registration
leaves the client, so that the lease ends at a planned moment and the ends are spread evenly over
a window (20 s: 5,000 expiries a second, about 1,250 per sweep). The sweeper thus works at scale,
under a steady request load, with every kind of lease it meets in production: renewed, ending,
and long.

Heartbeats go over HTTP keep-alive connections, pipelined by ``pipelined.py``, rather than as UDP
datagrams: HTTP is what every client library sends by default, it costs the server more per
heartbeat (so the sweeper competes with more work on the event loop), and each heartbeat gets an
answer, so one that failed is counted rather than lost silently.

Lateness is observed through a WebSocket subscriber filtered to ``service_unhealthy``. The event
carries the wall-clock millisecond at which the registry removed the instance (it is published
in the same sweep, right after the removal), so

    lateness = event timestamp - (time the registration was sent + ttl)

does not depend on when the event reached the client. The registration happened between its
send and its answer, so lateness is overstated by at most the send-to-answer time, which the
report gives (p99 and max), and timestamps are whole milliseconds (understated by under 1 ms).
Polling ``GET /events`` would work too, but needs a history ring of 200k events and a copy of it
per poll, which would load the very server being measured.

The sweeper's CPU share comes from the server itself: every sweep adds its thread CPU time to
``sweepCpuSeconds`` in ``GET /metrics``. The run reads it, with the server process's whole CPU
time from ``/proc``, over two phases: a baseline with the heartbeat load and no expiries, and the
expiry window. Thread CPU time is unaffected by other processes taking the CPU, which makes it
the steadiest figure of this run on a shared machine.

Run it on its own with ``python bench/expiry.py [--quick]``; ``bench/run.py`` includes it.
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
from collections.abc import Callable
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
    get_json,
    loopback_host,
    percentile,
    process_cpu_seconds,
    progress,
)
from pipelined import PipelinedConnection, close_connections, open_connections, paced, post_json, send_all

logger = logging.getLogger(__name__)

EXPIRING = 100_000
QUICK_EXPIRING = 20_000
WINDOW = 20.0
QUICK_WINDOW = 6.0
BASELINE = 3.0
QUICK_BASELINE = 2.0
HEARTBEAT_RATE = 10_000.0
LIVE = 10_000
# A live instance is renewed about once a second: five chances before its lease could end.
LIVE_TTL = 5.0
SERVICES = 100
MIN_TTL = 1.0

REGISTER_CONNECTIONS = 4
# Unanswered registrations per connection: enough to keep the server busy, few enough that the
# send-to-answer time (this measurement's error) stays at a few milliseconds.
REGISTER_WINDOW = 32
HEARTBEAT_CONNECTIONS = 8
# Past this many unanswered heartbeats on a connection the server is behind; more would only queue.
HEARTBEAT_MAX_IN_FLIGHT = 2000
# The baseline starts this long after the live leases were first due, so that it includes the
# sweeper's steady work for them: finding each renewed lease in its bucket and filing it anew.
WARMUP = 0.5
# After the last planned lease end, how long to wait for the remaining events.
PATIENCE = 5.0
# A sweep can expire well over the default WebSocket queue (1000) at once; the subscriber must keep up.
WS_QUEUE_SIZE = 200_000
# The whole measurement is given up after this long.
TIME_LIMIT = 300.0


@dataclass(frozen=True, slots=True)
class ExpiryPlan:
    expiring: int = EXPIRING
    window: float = WINDOW
    baseline: float = BASELINE
    heartbeat_rate: float = HEARTBEAT_RATE
    live: int = LIVE

    @classmethod
    def quick(cls) -> ExpiryPlan:
        return cls(expiring=QUICK_EXPIRING, window=QUICK_WINDOW, baseline=QUICK_BASELINE)


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the server's counters: wall clock, process CPU, sweeper CPU (None if not exposed)."""

    at: float
    server_cpu: float
    sweep_cpu: float | None
    sweeps: int | None


@dataclass(frozen=True, slots=True)
class Phase:
    """CPU shares over the span between two samples, as fractions of one core."""

    seconds: float
    server_share: float
    sweeper_share: float | None
    sweeper_seconds: float | None
    sweeps: int | None

    @classmethod
    def between(cls, first: Sample, last: Sample) -> Phase:
        seconds = max(last.at - first.at, 1e-9)
        sweeper = None
        if first.sweep_cpu is not None and last.sweep_cpu is not None:
            sweeper = last.sweep_cpu - first.sweep_cpu
        sweeps = None if first.sweeps is None or last.sweeps is None else last.sweeps - first.sweeps
        return cls(
            seconds=seconds,
            server_share=(last.server_cpu - first.server_cpu) / seconds,
            sweeper_share=None if sweeper is None else sweeper / seconds,
            sweeper_seconds=sweeper,
            sweeps=sweeps,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "server_cpu_share": round(self.server_share, 4),
            "sweeper_cpu_share": None if self.sweeper_share is None else round(self.sweeper_share, 5),
            "sweeper_cpu_seconds": None if self.sweeper_seconds is None else round(self.sweeper_seconds, 6),
            "sweeps": self.sweeps,
        }


@dataclass(slots=True)
class HeartbeatLoad:
    """What the heartbeat generator did: sent, answered 200, answered otherwise, not sent because the server lagged."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    first_failure: str = ""
    seconds: float = 0.0

    def on_answer(self, status: int, body: bytes, at: float) -> None:
        if status == 200:
            self.ok += 1
            return
        self.failed += 1
        if not self.first_failure:
            self.first_failure = f"{status} {body[:200]!r}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "sent_per_s": round(self.sent / self.seconds, 1) if self.seconds else None,
            "first_failure": self.first_failure,
        }


@dataclass(slots=True)
class ExpiryResult:
    plan: ExpiryPlan
    lateness_ms: list[float] = field(default_factory=list)
    # Registration send-to-answer times: the bound on how much the lateness is overstated.
    register_rtt_ms: list[float] = field(default_factory=list)
    # Event received by the subscriber minus its timestamp: delivery, for information.
    delivery_ms: list[float] = field(default_factory=list)
    missing: int = 0
    live_expired: int = 0
    due_while_registering: int = 0
    register_per_s: float = 0.0
    heartbeats: HeartbeatLoad = field(default_factory=HeartbeatLoad)
    baseline: Phase | None = None
    window: Phase | None = None

    @property
    def p99_ms(self) -> float:
        return percentile(self.lateness_ms, 99)

    @property
    def sweeper_share(self) -> float | None:
        return None if self.window is None else self.window.sweeper_share

    @property
    def sweep_us_per_expiry(self) -> float | None:
        """Sweeper CPU per lease ended in the window: the figure that scales to other expiry rates."""
        if self.window is None or self.window.sweeper_seconds is None:
            return None
        ended = self.plan.expiring - self.due_while_registering - self.missing
        return self.window.sweeper_seconds / ended * 1e6 if ended > 0 else None

    def as_dict(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float | None]:
            if not values:
                return {"p50": None, "p99": None, "max": None, "min": None}
            return {
                "p50": round(percentile(values, 50), 1),
                "p99": round(percentile(values, 99), 1),
                "max": round(max(values), 1),
                "min": round(min(values), 1),
            }

        return {
            "expiring": self.plan.expiring,
            "live": self.plan.live,
            "window_s": self.plan.window,
            "heartbeat_rate": self.plan.heartbeat_rate,
            "seen": len(self.lateness_ms),
            "missing": self.missing,
            "live_expired": self.live_expired,
            "due_while_registering": self.due_while_registering,
            "register_per_s": round(self.register_per_s, 1),
            "lateness_ms": stats(self.lateness_ms),
            "register_rtt_ms": stats(self.register_rtt_ms),
            "delivery_ms": stats(self.delivery_ms),
            "heartbeats": self.heartbeats.as_dict(),
            "baseline": None if self.baseline is None else self.baseline.as_dict(),
            "window": None if self.window is None else self.window.as_dict(),
            "sweeper_us_per_expiry": None if (cost := self.sweep_us_per_expiry) is None else round(cost, 2),
        }


def node_id(service: str, host: str, port: int) -> str:
    return f"{service}:{host}:{port}"


def live_registration(index: int) -> dict[str, Any]:
    return {
        "serviceName": f"live-svc-{index % SERVICES:02d}",
        "host": loopback_host(index),
        "port": 9100,
        "ttl": LIVE_TTL,
    }


def expiring_registration(index: int, *, ttl: float) -> dict[str, Any]:
    return {"serviceName": f"exp-svc-{index % SERVICES:02d}", "host": loopback_host(index), "port": 9000, "ttl": ttl}


async def sample(session: aiohttp.ClientSession, server: Server) -> Sample:
    metrics = await get_json(session, f"{server.url}/metrics")
    sweep_cpu = metrics.get("sweepCpuSeconds")
    sweeps = metrics.get("sweeps")
    return Sample(
        at=time.monotonic(),
        server_cpu=process_cpu_seconds(server.pid),
        sweep_cpu=float(sweep_cpu) if sweep_cpu is not None else None,
        sweeps=int(sweeps) if sweeps is not None else None,
    )


async def heartbeat_forever(
    connections: list[PipelinedConnection], *, rate: float, node_ids: list[str], load: HeartbeatLoad
) -> None:
    """Send ``rate`` heartbeats a second, over the live instances in turn, until cancelled (or TIME_LIMIT)."""
    requests = [post_json("/heartbeat", orjson.dumps({"nodeId": node}), host=LOOPBACK) for node in node_ids]
    on_answer = load.on_answer
    turn = 0
    started = time.monotonic()
    try:
        async for due in paced(rate=rate, duration=TIME_LIMIT):
            # One connection per tick, in turn: each write carries that tick's heartbeats.
            connection = connections[turn % len(connections)]
            turn += 1
            if connection.in_flight > HEARTBEAT_MAX_IN_FLIGHT:
                load.skipped += due
                continue
            batch = [(requests[(load.sent + k) % len(requests)], on_answer) for k in range(due)]
            connection.send(batch)
            load.sent += due
    finally:
        load.seconds = time.monotonic() - started


class ExpiryFollower:
    """A WebSocket subscriber to ``service_unhealthy``: each node's event timestamp, and when it arrived."""

    def __init__(self) -> None:
        self.removed_at_ms: dict[str, int] = {}
        self.received_at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str(orjson.dumps({"subscribe": {"event": "service_unhealthy"}}).decode())
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while True:
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"The event socket closed before confirming the subscription: {message!r}")
                if orjson.loads(message.data).get("type") == "subscribed":
                    return

    async def follow(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"The event socket ended: {message!r} (close code {ws.close_code}).")
            document = orjson.loads(message.data)
            if document.get("event") != "service_unhealthy":
                continue
            node = document["data"]["nodeId"]
            self.removed_at_ms.setdefault(node, document["timestamp"])
            self.received_at.setdefault(node, time.time())
            self.changed.set()


async def measure(server: Server, plan: ExpiryPlan) -> ExpiryResult:
    result = ExpiryResult(plan=plan)
    live_ids = [node_id(r["serviceName"], r["host"], r["port"]) for r in map(live_registration, range(plan.live))]
    follower = ExpiryFollower()
    # Each expiring node's lease end, as the client sees it: sent at + ttl (see the module docstring).
    deadline: dict[str, float] = {}
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT)
    register_connections = await open_connections(host=LOOPBACK, port=server.port, count=REGISTER_CONNECTIONS)
    heartbeat_connections = await open_connections(host=LOOPBACK, port=server.port, count=HEARTBEAT_CONNECTIONS)
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        try:
            # The live instances first; their registration rate predicts how long the expiring ones take.
            progress(f"Registering {plan.live:,} live instances ({LIVE_TTL:g} s leases).")
            started = time.monotonic()
            await register(register_connections, plan.live, lambda index: (live_registration(index), None))
            live_registered = time.monotonic()
            live_rate = plan.live / (live_registered - started)

            ws = await session.ws_connect(f"{server.url}/ws", max_msg_size=0)
            await follower.subscribe(ws)
            tasks.append(asyncio.create_task(follower.follow(ws)))
            tasks.append(
                asyncio.create_task(
                    heartbeat_forever(
                        heartbeat_connections, rate=plan.heartbeat_rate, node_ids=live_ids, load=result.heartbeats
                    )
                )
            )

            progress(f"Heartbeats at {plan.heartbeat_rate:,.0f}/s; baseline without expiries for {plan.baseline:g} s.")
            await asyncio.sleep(max(0.0, live_registered + LIVE_TTL + WARMUP - time.monotonic()))
            before = await sample(session, server)
            await asyncio.sleep(plan.baseline)
            result.baseline = Phase.between(before, await sample(session, server))

            # Plan the lease ends: evenly over the window, which opens once registration should be over.
            expected = plan.expiring / live_rate
            window_start = time.time() + 2.5 * expected + 1.0
            progress(
                f"Registering {plan.expiring:,} instances whose leases end evenly over {plan.window:g} s, "
                f"from {window_start - time.time():.1f} s from now."
            )

            def expiring(index: int) -> tuple[dict[str, Any], Callable[[int, bytes, float], None] | None]:
                now = time.time()
                planned = window_start + plan.window * (index + 0.5) / plan.expiring
                ttl = round(max(MIN_TTL, planned - now), 3)
                registration = expiring_registration(index, ttl=ttl)
                node = node_id(registration["serviceName"], registration["host"], registration["port"])
                deadline[node] = now + ttl

                def acked(status: int, body: bytes, at: float) -> None:
                    result.register_rtt_ms.append((at - now) * 1000)

                return registration, acked

            started = time.monotonic()
            await register(register_connections, plan.expiring, expiring)
            registered_at = time.time()
            result.register_per_s = plan.expiring / (time.monotonic() - started)
            result.due_while_registering = sum(1 for due in deadline.values() if due < registered_at)

            # The window: from the first planned lease end (or the end of registration) to the last event.
            await asyncio.sleep(max(0.0, window_start - time.time()))
            first = await sample(session, server)
            give_up = window_start + plan.window + PATIENCE
            while time.time() < give_up and not all(node in follower.removed_at_ms for node in deadline):
                follower.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(follower.changed.wait(), timeout=0.5)
                for task in tasks:
                    if task.done():
                        task.result()  # a failed follower or heartbeat load stops the run with its error
            result.window = Phase.between(first, await sample(session, server))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await close_connections([*register_connections, *heartbeat_connections])

    for node, due in deadline.items():
        removed = follower.removed_at_ms.get(node)
        if removed is None:
            result.missing += 1
            continue
        result.lateness_ms.append(removed - due * 1000)
        result.delivery_ms.append(follower.received_at[node] * 1000 - removed)
    result.live_expired = sum(1 for node in live_ids if node in follower.removed_at_ms)
    return result


async def register(
    connections: list[PipelinedConnection],
    count: int,
    build: Callable[[int], tuple[dict[str, Any], Callable[[int, bytes, float], None] | None]],
) -> None:
    """Register ``count`` instances over the pipelined connections; any refusal stops the run."""
    refusals: list[str] = []

    def request(index: int) -> tuple[bytes, Callable[[int, bytes, float], None]]:
        registration, then = build(index)

        def answered(status: int, body: bytes, at: float) -> None:
            if status != 200:
                refusals.append(f"{status} {body[:200]!r}")
            elif then is not None:
                then(status, body, at)

        return post_json("/register", orjson.dumps(registration), host=LOOPBACK), answered

    await send_all(connections, count=count, build=request, window=REGISTER_WINDOW, time_limit=TIME_LIMIT)
    if refusals:
        raise RuntimeError(f"{len(refusals)} registration(s) refused, the first: {refusals[0]}")


def run_expiry(group: ProcessGroup, *, plan: ExpiryPlan) -> ExpiryResult:
    """Measure on a fresh Maxine, stopped afterwards."""
    server = group.start_maxine("maxine-expiry", "--ws-queue-size", str(WS_QUEUE_SIZE))
    try:
        return asyncio.run(measure(server, plan))
    finally:
        group.stop(server)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _share(value: float | None) -> str:
    return "not exposed by this server" if value is None else f"{value:.2%} of a core"


def render(result: ExpiryResult) -> str:
    document = result.as_dict()
    lateness, rtt, delivery = document["lateness_ms"], document["register_rtt_ms"], document["delivery_ms"]
    heartbeats = result.heartbeats
    lines = [
        f"lease expiry: {result.plan.expiring:,} leases ending evenly over {result.plan.window:g} s, beside "
        f"{result.plan.live:,} live instances heartbeating at {result.plan.heartbeat_rate:,.0f}/s over HTTP",
        f"  seen {len(result.lateness_ms):,}, missing {result.missing}, live instances expired {result.live_expired}"
        f" (both should be 0); {result.due_while_registering:,} leases ended while registration still ran",
        f"  lateness: p50 {_ms(lateness['p50'])}, p99 {_ms(lateness['p99'])}, max {_ms(lateness['max'])}"
        f" (min {_ms(lateness['min'])})",
        f"  overstated by at most the registration's send-to-answer time: p99 {_ms(rtt['p99'])}, max {_ms(rtt['max'])}"
        f"; events reached the subscriber {_ms(delivery['p50'])} (p50), {_ms(delivery['p99'])} (p99) after removal",
        f"  heartbeats: {heartbeats.sent:,} sent ({heartbeats.sent / max(heartbeats.seconds, 1e-9):,.0f}/s), "
        f"{heartbeats.ok:,} answered 200, {heartbeats.failed} otherwise,"
        f" {heartbeats.skipped} held back (server behind)",
    ]
    for label, phase in (("baseline, no expiries", result.baseline), ("expiry window", result.window)):
        if phase is not None:
            lines.append(
                f"  {label + ':':<23} {phase.seconds:5.1f} s, server CPU {phase.server_share:.0%} of a core,"
                f" sweeper {_share(phase.sweeper_share)} ({phase.sweeps} sweeps)"
            )
    if result.sweep_us_per_expiry is not None:
        lines.append(f"  sweeper CPU per lease ended in the window: {result.sweep_us_per_expiry:.1f} µs")
    if heartbeats.first_failure:
        lines.append(f"  first failed heartbeat: {heartbeats.first_failure}")
    return "\n".join(lines)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lease-expiry lateness and sweeper CPU at scale, under heartbeats.")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EXPIRING:,} leases over {QUICK_WINDOW:g} s.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--server-cpu", type=int, default=DEFAULT_SERVER_CPU, help="CPU for the server (default 0).")
    parser.add_argument("--load-cpu", type=int, default=DEFAULT_LOAD_CPU, help="CPU for the clients (default 1).")
    parser.add_argument("--no-pin", action="store_true", help="Do not pin processes to CPUs.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    pinning = choose_pinning(server_cpu=args.server_cpu, load_cpu=args.load_cpu, enabled=not args.no_pin)
    pinning.pin_this_process()
    progress(f"Pinning: {pinning.how}.")
    plan = ExpiryPlan.quick() if args.quick else ExpiryPlan()
    try:
        with ProcessGroup(pinning=pinning) as group:
            result = run_expiry(group, plan=plan)
    except KeyboardInterrupt:
        progress("Interrupted; every server started has been stopped.")
        return 130
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
