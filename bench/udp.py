"""
UDP heartbeats under load: how many datagrams a second Maxine takes in, beside a bare asyncio receiver.

UDP has no flow control: a sender faster than the receiver loses datagrams in the receiver's
socket buffer, and nobody is told. Two figures therefore matter, and this script measures both,
in one run, from a sender in this process (pinned to the load CPU):

1. capacity: a sender as fast as the kernel takes datagrams (``sendmmsg``, 256 per call), for a
   few seconds, against Maxine and against
   ``--serve-bare`` (this same file run as a server: uvloop, a ``DatagramProtocol`` that only
   counts, which is what asyncio can take in at all). Each receiver's rate is what it processed
   divided by the time from the first datagram until its count stopped moving. The sender
   outrunning the receiver is the point, so this run loses datagrams by design;
2. loss below capacity: a sender paced at a fraction (``--paced``, 0.9 by default) of the target
   rate, 0.8 x the bare receiver's, or of Maxine's measured rate if that is lower, in 1 ms ticks,
   and the number of heartbeats that did not renew a lease. The answer should be 0.

Maxine's counts come from ``GET /metrics``: every datagram counts as a request and every dropped
one as an error, so renewals are the requests minus the errors, less the ``/metrics`` calls
themselves. Every datagram names one of 3000 instances registered beforehand. Everything runs
on loopback, every loop is bounded in count and in time, and every server is stopped at the end.

Run it by hand: ``python bench/udp.py`` (about a minute), or ``--quick``; see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import errno
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    ServiceLayout,
    busy_fraction,
    choose_pinning,
    free_port,
    get_json,
    node_count,
    populate,
    progress,
    source_revision,
    wait_until_ready,
)
from maxine_registry.operations import RequestStats
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.udp import UdpHeartbeatServer, bind_udp_socket

DEFAULT_DURATION = 4.0
QUICK_DURATION = 2.0
DEFAULT_ROUNDS = 3
# The paced run checks the target's second half: no heartbeat lost below the target rate (0.8 x the
# bare receiver), or below Maxine's own capacity if that is lower. It runs a little under that rate.
TARGET_RATIO = 0.8
DEFAULT_PACED_FRACTION = 0.9
# Datagrams one run may send at most, whatever the duration: a bound on the loop, not a target.
MAX_DATAGRAMS_PER_RUN = 5_000_000
# A receiver's count is read every DRAIN_POLL after the sender stops; it is done once the count has
# not moved for DRAIN_QUIET. The poll is short because the time the count last moved ends the
# receiver's run: a coarse poll adds up to a poll's length to the run of a receiver still working
# off its socket buffer when the sender stops (the slower one), and next to nothing to one that kept up.
DRAIN_POLL = 0.01
DRAIN_QUIET = 0.05
DRAIN_LIMIT = 10.0
PACE_TICK = 0.001
SEND_BATCH = 256
POPULATE_CONCURRENCY = 64
POPULATE_TIMEOUT = 300.0
SEND_BUFFER_BYTES = 4 * 1024 * 1024
# The in-process run (--in-process): calls per receiver, rounds of which the best counts, and a key.
IN_PROCESS_CALLS = 200_000
IN_PROCESS_ROUNDS = 3
IN_PROCESS_KEY = b"an in-process benchmark key, 32 bytes or more"
# A receiver that lost less than this kept up with the sender: its figure is a floor, not its limit.
SENDER_BOUND_LOSS = 0.01
MAX_ROUNDS = 20


# The bare receiver, run as `python bench/udp.py --serve-bare --host H --port P`.


class CountingProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1


async def serve_bare(host: str, port: int) -> None:
    """Count UDP datagrams on ``port``; answer any HTTP request on the same TCP port with the count."""
    counter = CountingProtocol()
    # Bound by Maxine's own function, so both receivers read from the same kind of socket, with the
    # same receive buffer: the comparison is of what each does with a datagram, nothing else.
    sock = bind_udp_socket(host, port)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: counter, sock=sock)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = orjson.dumps({"received": counter.received})
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, host, port)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        server.close()
        transport.close()


# Counting what a receiver processed.


class Receiver:
    """A receiver under test and how to read how many datagrams it has processed so far."""

    def __init__(self, *, name: str, server: Server, maxine: bool) -> None:
        self.name = name
        self.server = server
        self.maxine = maxine
        self.reads = 0

    async def counts(self, session: aiohttp.ClientSession) -> tuple[int, int]:
        """(datagrams processed, of which renewed a lease): Maxine's from /metrics, the bare one's from itself."""
        self.reads += 1
        if not self.maxine:
            document = await get_json(session, self.server.url + "/")
            return document["received"], document["received"]
        document = await get_json(session, self.server.url + "/metrics")
        # Each read is itself one request: take the reads so far back out.
        requests = document["requests"] - self.reads
        return requests, requests - document["errors"]


@dataclass(slots=True)
class Run:
    receiver: str
    sent: int
    processed: int
    renewed: int
    send_seconds: float
    receive_seconds: float

    @property
    def sent_per_s(self) -> float:
        return self.sent / self.send_seconds if self.send_seconds else 0.0

    @property
    def processed_per_s(self) -> float:
        return self.processed / self.receive_seconds if self.receive_seconds else 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.processed

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "sent_per_s": round(self.sent_per_s, 1),
            "processed_per_s": round(self.processed_per_s, 1),
            "lost": self.lost,
        }


@dataclass(slots=True)
class Capacity:
    receiver: str
    rounds: list[Run] = field(default_factory=list)

    @property
    def best(self) -> Run:
        return max(self.rounds, key=lambda run: run.processed_per_s)

    @property
    def median_per_s(self) -> float:
        return statistics.median(run.processed_per_s for run in self.rounds)


async def drained(receiver: Receiver, session: aiohttp.ClientSession, *, since: float) -> tuple[int, int, float]:
    """Wait until the receiver's count stops moving; its counts and when they last moved (monotonic)."""
    processed, renewed = await receiver.counts(session)
    moved_at = time.monotonic()
    deadline = moved_at + DRAIN_LIMIT
    while time.monotonic() < deadline and time.monotonic() - moved_at < DRAIN_QUIET:
        await asyncio.sleep(DRAIN_POLL)
        now_processed, now_renewed = await receiver.counts(session)
        if now_processed != processed:
            processed, renewed, moved_at = now_processed, now_renewed, time.monotonic()
    return processed, renewed, max(moved_at - since, 1e-9)


def datagrams(node_ids: list[str]) -> list[bytes]:
    return [f"HB1 {node_id}".encode() for node_id in node_ids]


def connected_socket(port: int) -> socket.socket:
    """A UDP socket connected to the receiver: ``send`` skips the address lookup ``sendto`` makes each time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    sock.connect((LOOPBACK, port))
    return sock


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


class BatchSender:
    """
    Hands the kernel ``SEND_BATCH`` datagrams per system call with Linux's ``sendmmsg``.

    A Python loop of ``send`` calls costs about what a Python receiver spends per datagram, so it
    could not outrun the receivers it is meant to saturate. With ``sendmmsg`` the sender's cost
    per datagram is the kernel's alone. The batch cycles through the payloads, so consecutive
    batches name the instances in turn.
    """

    def __init__(self, sock: socket.socket, payloads: list[bytes]) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = sock.fileno()
        self._buffers = [ctypes.create_string_buffer(payloads[index % len(payloads)]) for index in range(SEND_BATCH)]
        self._iovecs = (_IoVec * SEND_BATCH)()
        self._messages = (_MMsgHdr * SEND_BATCH)()
        for index, buffer in enumerate(self._buffers):
            self._iovecs[index].iov_base = ctypes.cast(buffer, ctypes.c_void_p)
            self._iovecs[index].iov_len = len(buffer) - 1  # without the terminating NUL ctypes adds
            self._messages[index].msg_hdr.msg_iov = ctypes.pointer(self._iovecs[index])
            self._messages[index].msg_hdr.msg_iovlen = 1

    def send_batch(self) -> int:
        """Send one batch; the number of datagrams the kernel took (0 after an ICMP error of an earlier one)."""
        sent: int = self._libc.sendmmsg(self._fd, self._messages, SEND_BATCH, 0)
        if sent < 0:
            error = ctypes.get_errno()
            if error == errno.ECONNREFUSED:
                return 0
            raise OSError(error, os.strerror(error))
        return sent


def blast(port: int, payloads: list[bytes], *, duration: float) -> tuple[int, float]:
    """Send as fast as the kernel takes them for ``duration`` seconds; (datagrams sent, seconds taken)."""
    sent = 0
    with connected_socket(port) as sock:
        sender = BatchSender(sock, payloads)
        started = time.monotonic()
        deadline = started + duration
        # On loopback a datagram the receiver has no room for is dropped on its side, never held up here.
        while sent < MAX_DATAGRAMS_PER_RUN and time.monotonic() < deadline:
            sent += sender.send_batch()
        return sent, time.monotonic() - started


def paced_rate(capacity: list[Capacity], *, fraction: float) -> float:
    """The paced run's rate: ``fraction`` of the target rate, or of Maxine's best if that is lower."""
    bare, maxine = capacity
    return fraction * min(maxine.best.processed_per_s, TARGET_RATIO * bare.best.processed_per_s)


def paced(port: int, payloads: list[bytes], *, rate: float, duration: float) -> tuple[int, float]:
    """Send ``rate`` datagrams a second, a tick's share every millisecond, for ``duration`` seconds."""
    count = len(payloads)
    sent = 0
    total = min(int(rate * duration), MAX_DATAGRAMS_PER_RUN)
    with connected_socket(port) as sock:
        started = time.monotonic()
        while sent < total:
            due = min(int((time.monotonic() - started) * rate) + 1, total)
            while sent < due:
                sock.send(payloads[sent % count])
                sent += 1
            time.sleep(PACE_TICK)
            if time.monotonic() - started > duration * 3:
                break  # this process cannot keep the pace; what was sent still counts
        return sent, time.monotonic() - started


async def measure(receiver: Receiver, payloads: list[bytes], *, duration: float, rate: float | None) -> Run:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
        processed_before, renewed_before = await receiver.counts(session)
        started = time.monotonic()
        if rate is None:
            sent, send_seconds = await asyncio.to_thread(blast, receiver.server.port, payloads, duration=duration)
        else:
            sent, send_seconds = await asyncio.to_thread(
                paced, receiver.server.port, payloads, rate=rate, duration=duration
            )
        processed, renewed, receive_seconds = await drained(receiver, session, since=started)
    return Run(
        receiver=receiver.name,
        sent=sent,
        processed=processed - processed_before,
        renewed=renewed - renewed_before,
        send_seconds=send_seconds,
        receive_seconds=receive_seconds,
    )


# In process: the Python cost of one datagram, without sockets, for iterating on the receiver.


def fresh_copies(datagrams: list[bytes], count: int) -> list[bytes]:
    """``count`` datagrams cycling through ``datagrams``, each a new object, as the socket hands them over."""
    # A bytes object caches its hash once computed; a real datagram arrives without one.
    return [bytes(bytearray(datagrams[index % len(datagrams)])) for index in range(count)]


def signed_datagrams(node_ids: list[str], count: int, *, key: bytes, first_ms: int) -> list[bytes]:
    """Signed heartbeats naming the nodes in turn, with timestamps that only grow, as a real fleet sends them."""
    signed = []
    for index in range(count):
        head = f"HB1 {node_ids[index % len(node_ids)]} {first_ms + index}".encode()
        # Signed as a client signs, with the standard library rather than the server's own HMAC.
        signed.append(head + b" " + hmac.new(key, head, hashlib.sha256).hexdigest().encode("ascii"))
    return signed


def time_receiver(make: Callable[[], asyncio.DatagramProtocol], datagrams: list[bytes]) -> float:
    """Best of IN_PROCESS_ROUNDS: microseconds per ``datagram_received`` call, on a fresh receiver each round."""
    best = float("inf")
    address = (LOOPBACK, 40000)
    for _ in range(IN_PROCESS_ROUNDS):
        receive = make().datagram_received
        started = time.perf_counter()
        for datagram in datagrams:
            receive(datagram, address)
        best = min(best, time.perf_counter() - started)
    return best / len(datagrams) * 1e6


def in_process(*, count: int) -> str:
    """Maxine's receiver against the counting one, called directly with the datagrams of the wall-clock run."""
    layout = ServiceLayout()
    registry = Registry()
    for item in layout.registrations():
        registry.register(parse_registration(item))
    ids = node_ids(layout)
    unsigned = fresh_copies(datagrams(ids), count)
    # Timestamps are checked against a wall clock that stands in the middle of the run's timestamps.
    first_ms = int(time.time() * 1000)
    signed = signed_datagrams(ids, count, key=IN_PROCESS_KEY, first_ms=first_ms)
    skew = count / 1000 + 1

    servers: list[UdpHeartbeatServer] = []

    def maxine(*, key: bytes | None) -> asyncio.DatagramProtocol:
        server = UdpHeartbeatServer(
            registry=registry,
            requests=RequestStats(),
            host=LOOPBACK,
            port=0,
            key=key,
            max_skew=skew,
            wall=lambda: first_ms / 1000 + skew / 2,
        )
        servers.append(server)
        return server.protocol

    def timed(make: Callable[[], asyncio.DatagramProtocol], datagrams: list[bytes]) -> float:
        micros = time_receiver(make, datagrams)
        # A figure for datagrams that were dropped would measure the wrong path.
        if servers and servers[-1].stats.renewed != len(datagrams):
            raise RuntimeError(f"Not every datagram renewed a lease: {servers[-1].stats}.")
        return micros

    bare = time_receiver(CountingProtocol, unsigned)
    rows = [
        ("counting only (the bare receiver)", bare),
        ("Maxine, HB1 <nodeId>", timed(lambda: maxine(key=None), unsigned)),
        ("Maxine, signed (UDP_HMAC_KEY set)", timed(lambda: maxine(key=IN_PROCESS_KEY), signed)),
    ]
    lines = [
        f"In process: datagram_received called {count:,} times (best of {IN_PROCESS_ROUNDS}), datagrams naming "
        f"{len(ids):,} registered instances in turn; no sockets, no event loop.",
        f"{'receiver':<36} {'us/datagram':>12} {'beyond bare':>12}",
    ]
    lines += [f"{name:<36} {micros:>12.3f} {micros - bare:>12.3f}" for name, micros in rows]
    return "\n".join(lines)


# The run and its report.


def node_ids(layout: ServiceLayout) -> list[str]:
    return [f"{item['serviceName']}:{item['host']}:{item['port']}" for item in layout.registrations()]


def run_both(group: ProcessGroup, *, rounds: int, duration: float, fraction: float) -> tuple[list[Capacity], Run, int]:
    """
    Both runs on fresh servers: capacity rounds against the bare receiver and Maxine, then the paced run.

    Returns each receiver's capacity (the bare one first), the paced run, and how many instances
    the datagrams name. ``run.py`` calls this too, so the suite and this script measure alike.
    """
    layout = ServiceLayout()
    payloads = datagrams(node_ids(layout))
    bare_port = free_port()
    bare_server = group.start(
        "bare-udp", [sys.executable, __file__, "--serve-bare", "--port", str(bare_port)], port=bare_port
    )
    wait_until_ready(bare_server, path="/")
    # The UDP endpoint listens on the HTTP port's number (UDP_PORT's default).
    maxine_server = group.start_maxine("maxine-udp")
    progress(f"Registering {layout.services} services x {layout.per_service} instances in Maxine.")
    populate(
        base_url=maxine_server.url,
        registrations=layout.registrations(),
        concurrency=POPULATE_CONCURRENCY,
        time_limit=POPULATE_TIMEOUT,
    )
    if node_count(maxine_server.url) != len(payloads):
        raise RuntimeError("Maxine does not hold every instance registered for the run.")

    receivers = [
        Receiver(name="bare asyncio receiver (uvloop)", server=bare_server, maxine=False),
        Receiver(name="Maxine (HB1 <nodeId>)", server=maxine_server, maxine=True),
    ]
    capacity = [Capacity(receiver=receiver.name) for receiver in receivers]
    for round_index in range(rounds):
        for receiver, result in zip(receivers, capacity, strict=True):
            progress(f"UDP round {round_index + 1}/{rounds}: {receiver.name}, as fast as the sender goes.")
            run = asyncio.run(measure(receiver, payloads, duration=duration, rate=None))
            result.rounds.append(run)
            progress(f"  sent {run.sent_per_s:,.0f}/s, processed {run.processed_per_s:,.0f}/s.")

    rate = paced_rate(capacity, fraction=fraction)
    progress(f"UDP paced run: {rate:,.0f} datagrams/s to Maxine for {duration:g} s.")
    paced_run = asyncio.run(measure(receivers[1], payloads, duration=duration, rate=rate))
    group.stop(maxine_server)
    group.stop(bare_server)
    return capacity, paced_run, len(payloads)


def render(meta: dict[str, Any], capacity: list[Capacity], paced_run: Run, fraction: float) -> str:
    bare = capacity[0]
    lines = [
        f"Maxine UDP heartbeat benchmark, {meta['date']}",
        f"  python {meta['python']}, {meta['cpus']} CPUs; pinning: {meta['pinning']}",
        f"  server code: {meta['source']}",
        f"  CPU busy with other work just before the run: {meta['busy_before_start']:.0%}",
        f"  {meta['rounds']} round(s) of {meta['duration_s']:g} s per receiver, interleaved; datagrams name "
        f"{meta['instances']:,} registered instances in turn ('HB1 <nodeId>', unsigned)",
        f"  command: {meta['command']}",
        "",
        f"Capacity: a sender as fast as the kernel takes datagrams (sendmmsg, {SEND_BATCH} per call). A receiver's",
        "rate is what it processed over the time until its count stopped; lost = sent, never processed (dropped).",
    ]
    header = f"{'receiver':<34} {'sent/s':>10} {'received/s':>11} {'vs bare':>8} {'median':>10} {'lost %':>7}"
    lines += [header, "-" * len(header)]
    for result in capacity:
        best = result.best
        loss = best.lost / best.sent if best.sent else 0.0
        lines.append(
            f"{result.receiver:<34} {best.sent_per_s:>10,.0f} {best.processed_per_s:>11,.0f}"
            f" {best.processed_per_s / bare.best.processed_per_s:>8.1%} {result.median_per_s:>10,.0f}"
            f" {loss:>7.1%}" + ("  (sender-bound: at least this)" if loss < SENDER_BOUND_LOSS else "")
        )
    lines += [
        "",
        f"Below capacity: paced at {fraction:.0%} of the lower of Maxine's best and {TARGET_RATIO:g} x the bare"
        f" receiver's best, in {PACE_TICK * 1000:g} ms ticks.",
        f"{'run':<34} {'sent/s':>10} {'sent':>11} {'renewed':>10} {'lost':>8}",
        f"{'Maxine, paced':<34} {paced_run.sent_per_s:>10,.0f} {paced_run.sent:>11,} {paced_run.renewed:>10,}"
        f" {paced_run.sent - paced_run.renewed:>8,}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="UDP heartbeats: Maxine's receive rate against a bare receiver.")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="Seconds per run (default 4).")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="Rounds per receiver (default 3).")
    parser.add_argument("--quick", action="store_true", help="One round of 2 s: a smoke test.")
    parser.add_argument(
        "--paced",
        type=float,
        default=DEFAULT_PACED_FRACTION,
        help=(
            "The paced run's rate, as a fraction of the lower of Maxine's best and 0.8 x the bare"
            " receiver's (default 0.9)."
        ),
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--server-cpu", type=int, default=DEFAULT_SERVER_CPU, help="CPU for the servers (default 0).")
    parser.add_argument("--load-cpu", type=int, default=DEFAULT_LOAD_CPU, help="CPU for the sender (default 1).")
    parser.add_argument("--no-pin", action="store_true", help="Do not pin processes to CPUs.")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="Only time the receivers' Python in this process (no sockets, no servers), and exit.",
    )
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default=LOOPBACK, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= MAX_ROUNDS or not 0 < args.duration <= 60 or not 0 < args.paced <= 1:
        parser.error(f"--rounds must be 1 to {MAX_ROUNDS}, --duration 0 to 60 s, --paced more than 0 and at most 1.")
    return args


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_bare:
        try:
            import uvloop  # noqa: PLC0415

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(serve_bare(args.host, args.port))
        return 0
    if args.in_process:
        print(in_process(count=IN_PROCESS_CALLS))
        return 0

    duration = QUICK_DURATION if args.quick else args.duration
    rounds = 1 if args.quick else args.rounds
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    cpus = len(os.sched_getaffinity(0))
    pinning = choose_pinning(server_cpu=args.server_cpu, load_cpu=args.load_cpu, enabled=not args.no_pin)
    pinning.pin_this_process()
    progress(f"Pinning: {pinning.how}.")
    busy = busy_fraction(interval=1.0)

    try:
        with ProcessGroup(pinning=pinning) as group:
            capacity, paced_run, instances = run_both(group, rounds=rounds, duration=duration, fraction=args.paced)
    except KeyboardInterrupt:
        progress("Interrupted; every server started has been stopped.")
        return 130

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "cpus": cpus,
        "pinning": pinning.how,
        "source": source_revision(),
        "busy_before_start": busy,
        "rounds": rounds,
        "duration_s": duration,
        "instances": instances,
        "command": " ".join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
    }
    print(render(meta, capacity, paced_run, args.paced))
    if args.json is not None:
        document = {
            "meta": meta,
            "capacity": [
                {"receiver": result.receiver, "rounds": [run.as_dict() for run in result.rounds]} for result in capacity
            ],
            "paced": {"fraction": args.paced, **paced_run.as_dict()},
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        progress(f"Wrote {args.json}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
