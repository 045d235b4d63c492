"""
The pieces every benchmark script shares: servers as subprocesses, CPU pinning, wrk, bulk registration.

Benchmarks here are whole programs measured from outside, as a user would see them: the server under
test runs in its own process on its own CPU, and the load generator (wrk, or this process with an
aiohttp client) runs on the other CPU, so neither steals cycles from the other. Every process
started here belongs to a ``ProcessGroup`` whose exit stops it, on success, on error and on Ctrl-C.

Instances registered for the throughput runs follow one layout (``ServiceLayout``) that the wrk Lua
scripts in ``bench/wrk`` reproduce from their arguments, so every discover and heartbeat they send
names something that exists. All registered addresses are on loopback: the registry never dials
them, and if it ever did, nothing outside this machine would be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from maxine_registry.build_info import build_kind

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPTS = BENCH_DIR / "wrk"
LOOPBACK = "127.0.0.1"

DEFAULT_SERVER_CPU = 0
DEFAULT_LOAD_CPU = 1
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
# wrk gets this long beyond its own duration before it counts as hung and is killed.
WRK_GRACE = 30.0
REQUEST_TIMEOUT = 10.0
WRK_RESULT_MARKER = "WRK_RESULT_JSON "


def progress(message: str) -> None:
    """One line on stderr for a person watching a long run; stdout stays for the results."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Pinning.


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPU the servers and the load run on; ``None`` CPUs mean nothing is pinned."""

    server_cpu: int | None
    load_cpu: int | None
    how: str

    def server_prefix(self) -> list[str]:
        return ["taskset", "-c", str(self.server_cpu)] if self.server_cpu is not None else []

    def load_prefix(self) -> list[str]:
        return ["taskset", "-c", str(self.load_cpu)] if self.load_cpu is not None else []

    def pin_this_process(self) -> None:
        """Put this process (the aiohttp load, the polling) on the load CPU, beside wrk."""
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})


def choose_pinning(*, server_cpu: int, load_cpu: int, enabled: bool = True) -> Pinning:
    """Pin with taskset when the machine has both CPUs and the tool; otherwise run unpinned and say so."""
    available = os.sched_getaffinity(0)
    if not enabled:
        return Pinning(None, None, "none (disabled with --no-pin)")
    if shutil.which("taskset") is None:
        return Pinning(None, None, "none (taskset is not installed)")
    if server_cpu == load_cpu or not {server_cpu, load_cpu} <= available:
        return Pinning(None, None, f"none (CPUs {server_cpu} and {load_cpu} are not two distinct usable CPUs)")
    return Pinning(
        server_cpu,
        load_cpu,
        f"servers on CPU {server_cpu} (taskset -c {server_cpu}); wrk and every other load generator on CPU {load_cpu}",
    )


def source_revision() -> str:
    """
    Which server code runs: where ``maxine_registry`` is imported from, and its git state when that is this repository.

    The servers inherit this process's environment, so a ``PYTHONPATH`` pointing at an exported
    commit (see ``bench/README.md``) is what they run, and what this names.
    """
    spec = importlib.util.find_spec("maxine_registry")
    if spec is None or spec.origin is None:
        return "maxine_registry is not importable"
    return f"{_source_location(spec.origin)}; hot modules {build_kind()}"


def _source_location(origin: str) -> str:
    package_root = Path(origin).resolve().parent.parent
    repo = BENCH_DIR.parent
    if not package_root.is_relative_to(repo):
        return f"maxine_registry from {package_root} (outside this repository)"
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "registry"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return f"maxine_registry from {package_root} (not a git checkout)"
    if changed:
        return f"this repository at {commit}, with {len(changed)} uncommitted change(s) in registry/"
    return f"this repository at {commit}, registry/ clean"


# Processes.


def free_port() -> int:
    """A port that was free a moment ago; the server binds it right after, so a clash is unlikely."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log_tail(self, *, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ProcessGroup:
    """Servers started for one benchmark run; leaving the ``with`` block stops every one of them."""

    def __init__(self, *, pinning: Pinning) -> None:
        self.pinning = pinning
        self._servers: list[Server] = []
        self._log_dir = Path(tempfile.mkdtemp(prefix="maxine-bench-"))

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        shutil.rmtree(self._log_dir, ignore_errors=True)

    def start(self, name: str, argv: Sequence[str], *, port: int) -> Server:
        log_path = self._log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            # A session of its own: Ctrl-C in the terminal reaches only this script, which then
            # stops the servers in order instead of leaving them to die mid-write.
            process = subprocess.Popen(
                [*self.pinning.server_prefix(), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name=name, process=process, port=port, log_path=log_path)
        self._servers.append(server)
        return server

    def start_maxine(self, name: str, *extra_args: str) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", "maxine_registry", "--host", LOOPBACK, "--port", str(port)]
        server = self.start(name, [*argv, "--log-level", "warning", *extra_args], port=port)
        wait_until_ready(server, path="/health")
        return server

    def start_script(self, name: str, script: str) -> Server:
        """Start one of the reference servers in this folder (they all take --host and --port)."""
        port = free_port()
        argv = [sys.executable, str(BENCH_DIR / script), "--host", LOOPBACK, "--port", str(port)]
        server = self.start(name, argv, port=port)
        wait_until_ready(server, path="/")
        return server

    def stop(self, server: Server) -> None:
        process = server.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("Server %s did not stop within %ss; killing it.", server.name, STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT)
        if server in self._servers:
            self._servers.remove(server)

    def stop_all(self) -> None:
        for server in reversed(list(self._servers)):
            self.stop(server)


def wait_until_ready(server: Server, *, path: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll until the server answers 200 on ``path``; fail with its log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode} before answering:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection((LOOPBACK, server.port), timeout=1.0) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not answer {path} within {timeout}s:\n{server.log_tail()}")


def busy_fraction(*, interval: float) -> float:
    """How busy all CPUs were over ``interval`` seconds (from /proc/stat): other work skews every figure."""

    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle and iowait
        return idle, sum(fields)

    idle_before, total_before = sample()
    time.sleep(interval)
    idle_after, total_after = sample()
    elapsed = total_after - total_before
    return 1.0 - (idle_after - idle_before) / elapsed if elapsed else 0.0


def _busy_cpu_seconds() -> float:
    """CPU seconds all CPUs have spent on anything but idling since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses; everything after the last ')' is numbers.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (wrk, once waited for)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class ForeignLoad:
    """
    Measures, around a block, how much CPU went to processes that are not part of the benchmark.

    On a shared machine other work (a test suite, a build) takes cycles from the server or wrk and
    lowers throughput; this puts a number on it for each run, as a fraction of all CPUs.
    """

    def __init__(self, *, server_pid: int) -> None:
        self.server_pid = server_pid
        self.fraction = 0.0
        self._start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def _sample(self) -> tuple[float, float, float, float]:
        return time.monotonic(), _busy_cpu_seconds(), process_cpu_seconds(self.server_pid), _own_cpu_seconds()

    def __enter__(self) -> ForeignLoad:
        self._start = self._sample()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        end = self._sample()
        wall, busy, server, own = (after - before for after, before in zip(end, self._start, strict=True))
        capacity = wall * (os.cpu_count() or 1)
        self.fraction = max(0.0, busy - server - own) / capacity if capacity else 0.0


def rss_bytes(pid: int) -> int:
    """The resident set size of a process, from /proc (Linux only, like wrk and taskset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line.")


# wrk.


@dataclass(slots=True)
class WrkResult:
    """One wrk run, latencies in milliseconds."""

    name: str
    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx_3xx: int
    socket_errors: int
    command: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "requests_per_s": round(self.requests_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "non_2xx_3xx": self.non_2xx_3xx,
            "socket_errors": self.socket_errors,
            "command": self.command,
            **self.extra,
        }


@dataclass(frozen=True, slots=True)
class WrkSettings:
    duration: float
    connections: int
    threads: int
    timeout: float = 5.0


def wrk_command(
    *, url: str, script: str, script_args: Sequence[str], settings: WrkSettings, duration: float, pinning: Pinning
) -> list[str]:
    return [
        *pinning.load_prefix(),
        "wrk",
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={settings.timeout:g}s",
        "--latency",
        "-s",
        str(WRK_SCRIPTS / script),
        url,
        "--",
        *script_args,
    ]


def run_wrk(
    name: str,
    *,
    url: str,
    script: str,
    script_args: Sequence[str] = (),
    settings: WrkSettings,
    pinning: Pinning,
    duration: float | None = None,
) -> WrkResult:
    """Run wrk once against ``url`` and return what it measured; raise if it failed or printed nothing usable."""
    duration = settings.duration if duration is None else duration
    argv = wrk_command(
        url=url, script=script, script_args=script_args, settings=settings, duration=duration, pinning=pinning
    )
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + WRK_GRACE, check=False, stdin=subprocess.DEVNULL
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed with {completed.returncode}: {completed.stderr.strip() or completed.stdout}")
    return parse_wrk_output(name, completed.stdout, command=" ".join(argv))


def parse_wrk_output(name: str, output: str, *, command: str) -> WrkResult:
    """
    Read wrk's results: the JSON line ``bench/wrk/report.lua`` prints, else wrk's own summary.

    The summary is only a fallback (a script without the report, an older wrk): it prints latency
    with a unit per value and lacks the request count per percentile, so it is parsed leniently.
    """
    for line in output.splitlines():
        if line.startswith(WRK_RESULT_MARKER):
            data = json.loads(line[len(WRK_RESULT_MARKER) :])
            duration_s = data["duration_us"] / 1e6
            return WrkResult(
                name=name,
                requests=data["requests"],
                duration_s=duration_s,
                requests_per_s=data["requests"] / duration_s if duration_s else 0.0,
                p50_ms=data["latency_p50_us"] / 1000,
                p90_ms=data["latency_p90_us"] / 1000,
                p99_ms=data["latency_p99_us"] / 1000,
                max_ms=data["latency_max_us"] / 1000,
                non_2xx_3xx=data["non_2xx_3xx"],
                socket_errors=sum(data[f"errors_{kind}"] for kind in ("connect", "read", "write", "timeout")),
                command=command,
            )
    return _parse_wrk_summary(name, output, command=command)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE_RE = re.compile(r"^\s*(50|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RATE_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_COUNT_RE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_MAX_RE = re.compile(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)", re.MULTILINE)
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def _parse_wrk_summary(name: str, output: str, *, command: str) -> WrkResult:
    rate = _RATE_RE.search(output)
    count = _COUNT_RE.search(output)
    percentiles = {int(p): float(value) * _UNITS_MS[unit] for p, value, unit in _PERCENTILE_RE.findall(output)}
    if rate is None or count is None or not {50, 90, 99} <= percentiles.keys():
        raise RuntimeError(f"wrk printed no result that could be read:\n{output}")
    largest = _MAX_RE.search(output)
    non_2xx = _NON_2XX_RE.search(output)
    socket_errors = _SOCKET_ERRORS_RE.search(output)
    return WrkResult(
        name=name,
        requests=int(count.group(1)),
        duration_s=float(count.group(2)) * _UNITS_MS[count.group(3)] / 1000,
        requests_per_s=float(rate.group(1)),
        p50_ms=percentiles[50],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        max_ms=float(largest.group(1)) * _UNITS_MS[largest.group(2)] if largest else float("nan"),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(value) for value in socket_errors.groups()) if socket_errors else 0,
        command=command,
    )


# The layout of the pre-registered services, shared with bench/wrk/discover.lua and heartbeat.lua.


@dataclass(frozen=True, slots=True)
class ServiceLayout:
    services: int = 1000
    per_service: int = 3
    prefix: str = "bench-svc-"
    host: str = LOOPBACK
    first_port: int = 20000
    ttl: float = 3600.0

    def service_name(self, index: int) -> str:
        return f"{self.prefix}{index:04d}"

    def registrations(self) -> Iterator[dict[str, Any]]:
        for i in range(self.services):
            for j in range(self.per_service):
                yield {
                    "serviceName": self.service_name(i),
                    "host": self.host,
                    "port": self.first_port + i * self.per_service + j,
                    "ttl": self.ttl,
                    "metadata": {"version": "1.0.0", "tags": ["bench", f"replica-{j}"]},
                }

    def discover_args(self) -> list[str]:
        return [str(self.services), self.prefix]

    def heartbeat_args(self) -> list[str]:
        return [str(self.services), str(self.per_service), self.prefix, self.host, str(self.first_port)]


def loopback_host(index: int) -> str:
    """A distinct loopback address per index (up to 2**24), for registrations that must not collide."""
    index += 1
    return f"127.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


# Bulk registration over HTTP.


async def register_all(
    *,
    base_url: str,
    registrations: Iterable[dict[str, Any]],
    concurrency: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[tuple[dict[str, Any], float]]:
    """
    Register everything with at most ``concurrency`` requests in flight; return each with its ack time.

    The ack time is the wall clock (``time.time()``) when the registry's answer arrived, the
    latest moment the registration can have happened. Any refusal stops the whole batch: a
    benchmark on a half-populated registry would measure the wrong thing.
    """
    pending = iter(registrations)
    acked: list[tuple[dict[str, Any], float]] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        # The shared iterator hands each registration to exactly one worker: the loop is single-threaded.
        for registration in pending:
            async with session.post(f"{base_url}/register", data=orjson.dumps(registration), headers=headers) as reply:
                body = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"Registration refused with {reply.status}: {body[:300]!r}")
            acked.append((registration, time.time()))
            if on_progress is not None:
                on_progress(len(acked))

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return acked


def populate(
    *,
    base_url: str,
    registrations: Iterable[dict[str, Any]],
    concurrency: int,
    time_limit: float,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """``register_all`` from synchronous code, given up after ``time_limit`` seconds; return how many."""

    async def bounded() -> int:
        async with asyncio.timeout(time_limit):
            acked = await register_all(
                base_url=base_url, registrations=registrations, concurrency=concurrency, on_progress=on_progress
            )
        return len(acked)

    return asyncio.run(bounded())


def get_all(*, base_url: str, paths: Iterable[str], concurrency: int, time_limit: float) -> int:
    """GET every path with at most ``concurrency`` requests in flight; any answer but 200 stops the batch."""
    pending = iter(paths)

    async def worker(session: aiohttp.ClientSession) -> int:
        done = 0
        for path in pending:
            async with session.get(base_url + path) as reply:
                body = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"GET {path} answered {reply.status}: {body[:300]!r}")
            done += 1
        return done

    async def bounded() -> int:
        connector = aiohttp.TCPConnector(limit=concurrency)
        client_timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with (
            asyncio.timeout(time_limit),
            aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session,
        ):
            counts = await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return sum(counts)

    return asyncio.run(bounded())


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as reply:
        body = await reply.read()
        if reply.status != 200:
            raise RuntimeError(f"GET {url} answered {reply.status}: {body[:300]!r}")
        return orjson.loads(body)


def node_count(base_url: str) -> int:
    """How many instances the registry holds, from GET /health."""

    async def fetch() -> int:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
            health = await get_json(session, f"{base_url}/health")
            nodes: int = health["nodes"]
            return nodes

    return asyncio.run(fetch())


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (``q`` from 0 to 100) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
