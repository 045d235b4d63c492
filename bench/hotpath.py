"""
Where a discover or heartbeat request spends its time: the framework, our HTTP layer, or the registry core.

Three views of the same requests, each answering what the others cannot:
- CPU per request: wrk drives Maxine to saturation while this script reads the server's user and
  system CPU time from /proc; divided by the requests served, it is the whole cost of one request,
  kernel networking included.
- a sampling profile: py-spy samples the server under the same load, and every sample is given to
  the layer it was in: the registry core (``Operations`` and below), our HTTP layer (handlers and
  middleware, with the aiohttp calls they make), or aiohttp and the event loop on their own. The
  shares, times the CPU per request, say how many microseconds each layer costs.
- the core alone: the same operations called in this process on a registry with the same
  contents, without any HTTP, timed per call. This is the floor the core sets whatever the transport.

Run it by hand as ``python bench/hotpath.py`` (``pip install py-spy`` first); see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from multidict import MultiDict, MultiDictProxy

from harness import (
    DEFAULT_LOAD_CPU,
    DEFAULT_SERVER_CPU,
    WRK_GRACE,
    Pinning,
    ProcessGroup,
    Server,
    ServiceLayout,
    WrkResult,
    WrkSettings,
    choose_pinning,
    parse_wrk_output,
    populate,
    progress,
    run_wrk,
    source_revision,
    wrk_command,
)
from maxine_registry.events import EventBus
from maxine_registry.operations import Operations
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_DURATION = 10.0
DEFAULT_RATE = 250
WARMUP = 2.0
# wrk runs this much longer than py-spy records, so that every sample is taken under full load.
PROFILE_LEAD = 1.0
CORE_CALLS = 200_000
TOP_FUNCTIONS = 15

CORE = "registry core (Operations and below)"
HTTP = (
    "maxine HTTP layer (maxine_registry/http: the lightning path, or handlers and middleware with their aiohttp calls)"
)
FRAMEWORK = "aiohttp on its own (protocol, parsing, routing, writing)"
LOOP = "event loop and the rest"
LAYERS = (CORE, HTTP, FRAMEWORK, LOOP)

# Frames that sit under every stack of the server (start-up), so they say nothing about a request.
_BOOTSTRAP_FILES = ("maxine_registry/cli.py", "maxine_registry/__main__.py")
_FRAMEWORK_PREFIXES = ("aiohttp/", "multidict/", "yarl/")
_FRAME_RE = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str

    @property
    def label(self) -> str:
        return f"{self.function} ({self.file})"


def parse_frame(text: str) -> Frame:
    match = _FRAME_RE.match(text)
    if match is None:
        return Frame(function=text, file="")
    return Frame(function=match["function"], file=match["file"])


def layer_of(stack: list[Frame]) -> str:
    """The layer a sample belongs to: the innermost of our frames decides, else the framework or the loop."""
    ours = [
        frame for frame in stack if frame.file.startswith("maxine_registry/") and frame.file not in _BOOTSTRAP_FILES
    ]
    if ours:
        return HTTP if ours[-1].file.startswith("maxine_registry/http/") else CORE
    if any(frame.file.startswith(_FRAMEWORK_PREFIXES) for frame in stack):
        return FRAMEWORK
    return LOOP


def library_of(frame: Frame) -> str:
    """Which library a frame's own code is in, for self time."""
    if frame.file.startswith("maxine_registry/http/"):
        return "maxine http"
    if frame.file.startswith("maxine_registry/"):
        return "maxine core"
    for prefix in _FRAMEWORK_PREFIXES:
        if frame.file.startswith(prefix):
            return prefix.rstrip("/")
    if frame.file.startswith("asyncio/"):
        return "asyncio"
    # With --native: libc's frames are the system calls (read, write, epoll_pwait) seen from user space.
    if frame.file.startswith("libc.so"):
        return "libc (system calls)"
    if frame.file.endswith((".c", ".h")) or frame.function.startswith("0x"):
        return "native (CPython, uvloop, C extensions)"
    return "other Python"


@dataclass(slots=True)
class Profile:
    """py-spy's samples, folded into layers, libraries and functions."""

    samples: int = 0
    by_layer: collections.Counter[str] = field(default_factory=collections.Counter)
    self_by_library: collections.Counter[str] = field(default_factory=collections.Counter)
    self_by_function: collections.Counter[str] = field(default_factory=collections.Counter)
    inclusive_ours: collections.Counter[str] = field(default_factory=collections.Counter)

    def share(self, count: int) -> float:
        return count / self.samples if self.samples else 0.0


def read_raw_profile(path: Path) -> Profile:
    """Fold py-spy's ``--format raw`` output: one line per distinct stack, ``frame;frame;... count``."""
    profile = Profile()
    for line in path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = [parse_frame(text) for text in stack_text.split(";")]
        profile.samples += count
        profile.by_layer[layer_of(stack)] += count
        leaf = stack[-1]
        profile.self_by_library[library_of(leaf)] += count
        profile.self_by_function[leaf.label] += count
        # Inclusive: each of our functions once per stack, however deep the recursion.
        ours = {
            frame.label
            for frame in stack
            if frame.file.startswith("maxine_registry/") and frame.file not in _BOOTSTRAP_FILES
        }
        for label in ours:
            profile.inclusive_ours[label] += count
    return profile


# Server CPU time.


@dataclass(frozen=True, slots=True)
class CpuTimes:
    user: float
    system: float


def cpu_times(pid: int) -> CpuTimes:
    """User and system CPU seconds of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses; everything after the last ')' is numbers.
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return CpuTimes(user=int(fields[11]) / ticks, system=int(fields[12]) / ticks)


@dataclass(slots=True)
class LoadedRun:
    name: str
    wrk: WrkResult
    user_us_per_request: float
    system_us_per_request: float
    profiled_wrk: WrkResult | None = None
    profile: Profile | None = None

    @property
    def cpu_us_per_request(self) -> float:
        return self.user_us_per_request + self.system_us_per_request


# The core, in process.


def core_timings(layout: ServiceLayout, *, calls: int) -> dict[str, float]:
    """Microseconds per call of the core operations, on a registry holding the same instances as the server."""
    registry = Registry(events=EventBus())
    operations = Operations(registry=registry, settings=Settings())
    for registration in layout.registrations():
        operations.register(registration)

    # The same shapes the HTTP layer hands over: a read-only multidict query, a decoded JSON body.
    queries = [
        MultiDictProxy(MultiDict({"serviceName": layout.service_name(index)})) for index in range(layout.services)
    ]
    node_ids = [f"{reg['serviceName']}:{reg['host']}:{reg['port']}" for reg in layout.registrations()]
    bodies = [orjson.dumps({"nodeId": node_id}) for node_id in node_ids]
    empty_query: MultiDictProxy[str] = MultiDictProxy(MultiDict())

    def discover(index: int) -> object:
        return operations.discover(queries[index % len(queries)], client_ip="127.0.0.1")

    def heartbeat(index: int) -> object:
        return operations.heartbeat(orjson.loads(bodies[index % len(bodies)]), empty_query)

    def heartbeat_core_only(index: int) -> object:
        return registry.heartbeat(node_ids[index % len(node_ids)])

    timings: dict[str, float] = {}
    for name, operation in (
        ("Operations.discover (query in, JSON bytes out)", discover),
        ("Operations.heartbeat (body bytes decoded, JSON bytes out)", heartbeat),
        ("Registry.heartbeat (node id in)", heartbeat_core_only),
    ):
        timings[name] = _time_per_call(operation, calls=calls)
    return timings


def _time_per_call(operation: Callable[[int], object], *, calls: int) -> float:
    for index in range(min(calls, 10_000)):
        operation(index)
    started = time.perf_counter()
    for index in range(calls):
        operation(index)
    return (time.perf_counter() - started) / calls * 1e6


# Loaded runs.


def maxine_modes() -> list[tuple[str, list[str]]]:
    """
    The ways to run the server worth comparing: its lean path for hot routes and plain aiohttp, if it has both.

    Servers without the ``--lightning`` switch (older commits) serve everything through aiohttp.
    """
    help_text = subprocess.run(
        [sys.executable, "-m", "maxine_registry", "--help"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    if "--no-lightning" not in help_text:
        return [("Maxine", [])]
    return [("Maxine, lightning path", ["--lightning"]), ("Maxine, aiohttp only", ["--no-lightning"])]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass(frozen=True, slots=True)
class LoadScenario:
    name: str
    path: str
    script: str
    args: tuple[str, ...]


def load_scenarios(layout: ServiceLayout) -> Iterator[LoadScenario]:
    yield LoadScenario("GET /discover", "/discover", "discover.lua", tuple(layout.discover_args()))
    yield LoadScenario("POST /heartbeat", "/heartbeat", "heartbeat.lua", tuple(layout.heartbeat_args()))


def measure_cpu(
    *, name: str, server: Server, scenario: LoadScenario, settings: WrkSettings, pinning: Pinning
) -> LoadedRun:
    """Drive ``server`` with the scenario's requests, unprofiled: its throughput and the CPU each request costs."""
    common: dict[str, Any] = {
        "url": server.url + scenario.path,
        "script": scenario.script,
        "script_args": scenario.args,
        "pinning": pinning,
    }
    progress(f"{name}: warming up for {WARMUP:g}s, then measuring CPU per request for {settings.duration:g}s.")
    run_wrk(name, settings=settings, duration=WARMUP, **common)
    before = cpu_times(server.pid)
    result = run_wrk(name, settings=settings, **common)
    after = cpu_times(server.pid)
    return LoadedRun(
        name=name,
        wrk=result,
        user_us_per_request=(after.user - before.user) / result.requests * 1e6,
        system_us_per_request=(after.system - before.system) / result.requests * 1e6,
    )


def profile_under_load(
    run: LoadedRun,
    *,
    server: Server,
    scenario: LoadScenario,
    settings: WrkSettings,
    pinning: Pinning,
    rate: int,
    native: bool,
    raw_path: Path,
) -> None:
    """The same load again, with py-spy on the load CPU sampling the server; fills in ``run.profile``."""
    progress(f"{run.name}: profiling with py-spy for {settings.duration:g}s.")
    argv = wrk_command(
        url=server.url + scenario.path,
        script=scenario.script,
        script_args=scenario.args,
        settings=settings,
        duration=settings.duration + 2 * PROFILE_LEAD,
        pinning=pinning,
    )
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        time.sleep(PROFILE_LEAD)
        spy = [
            *pinning.load_prefix(),
            "py-spy",
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(round(settings.duration)),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(raw_path),
            *(["--native"] if native else []),
        ]
        subprocess.run(spy, check=True, capture_output=True, timeout=settings.duration + WRK_GRACE)
        stdout, stderr = wrk.communicate(timeout=settings.duration + WRK_GRACE)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed with {wrk.returncode} while profiling: {stderr.strip()}")
    run.profiled_wrk = parse_wrk_output(run.name, stdout, command=" ".join(argv))
    run.profile = read_raw_profile(raw_path)


# The report.


def render(references: list[LoadedRun], runs: list[LoadedRun], core: dict[str, float], *, meta: dict[str, Any]) -> str:
    lines = [
        "Maxine hot path profile",
        f"  pinning: {meta['pinning']}",
        f"  server code: {meta['source']}",
        f"  wrk: 1 thread, {meta['connections']} connections, {meta['duration_s']:g} s per run; "
        f"py-spy at {meta['rate']} Hz{' with native frames' if meta['native'] else ''}",
        f"  raw py-spy stacks: {meta['out_dir']}",
        "",
        "Server CPU per request (from /proc, unprofiled; the ceiling outruns wrk, every other server is saturated):",
        f"  {'run':<45} {'req/s':>8} {'CPU us':>7} {'user':>6} {'kernel':>6}",
    ]
    by_scenario = sorted([*references, *runs], key=lambda run: run.name.split(" -> ")[0])
    for run in by_scenario:
        lines.append(
            f"  {run.name:<45} {run.wrk.requests_per_s:>8,.0f} {run.cpu_us_per_request:>7.1f}"
            f" {run.user_us_per_request:>6.1f} {run.system_us_per_request:>6.1f}"
        )
    lines.append("")
    for run in runs:
        profile = run.profile
        assert profile is not None and run.profiled_wrk is not None
        lines += [
            f"{run.name}: {run.wrk.requests_per_s:,.0f} req/s unprofiled ({run.profiled_wrk.requests_per_s:,.0f} "
            f"while profiled); server CPU per request {run.cpu_us_per_request:.1f} us "
            f"= {run.user_us_per_request:.1f} us user + {run.system_us_per_request:.1f} us kernel",
            f"  {profile.samples} samples; time per layer (share of samples x CPU per request):",
        ]
        for layer in LAYERS:
            share = profile.share(profile.by_layer[layer])
            lines.append(f"    {share:>6.1%} {share * run.cpu_us_per_request:>6.1f} us  {layer}")
        lines.append("  self time by library:")
        for library, count in profile.self_by_library.most_common():
            lines.append(f"    {profile.share(count):>6.1%}  {library}")
        lines.append(f"  top {TOP_FUNCTIONS} functions by self time:")
        for label, count in profile.self_by_function.most_common(TOP_FUNCTIONS):
            lines.append(f"    {profile.share(count):>6.1%}  {label}")
        lines.append("  our functions by inclusive time:")
        for label, count in profile.inclusive_ours.most_common(TOP_FUNCTIONS):
            lines.append(f"    {profile.share(count):>6.1%}  {label}")
        lines.append("")

    lines.append(f"The core alone, in this process ({CORE_CALLS:,} calls each, same 1000 x 3 instances):")
    for name, micros in core.items():
        lines.append(f"  {micros:>6.2f} us per call  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Profile Maxine's discover and heartbeat paths under wrk load.")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="Seconds per run (default 10).")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50).")
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE, help="py-spy samples per second (default 250).")
    parser.add_argument("--native", action="store_true", help="Ask py-spy for native (C) frames as well.")
    parser.add_argument("--out", type=Path, default=None, help="Keep py-spy's raw stacks in this folder.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600 or not 1 <= args.rate <= 1000:
        parser.error("--duration must be from 1 to 600 seconds and --rate from 1 to 1000.")
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None:
            print(
                f"hotpath: {tool} is not installed (wrk: Debian package; py-spy: pip install py-spy).", file=sys.stderr
            )
            return 2

    pinning = choose_pinning(server_cpu=DEFAULT_SERVER_CPU, load_cpu=DEFAULT_LOAD_CPU)
    pinning.pin_this_process()
    settings = WrkSettings(duration=args.duration, connections=args.connections, threads=1)
    out_dir: Path = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="maxine-hotpath-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = ServiceLayout()

    references: list[LoadedRun] = []
    runs: list[LoadedRun] = []
    try:
        with ProcessGroup(pinning=pinning) as group:
            servers = {
                "ceiling": group.start_script("ceiling", "ceiling.py"),
                "bare aiohttp": group.start_script("bare-aiohttp", "bare_aiohttp.py"),
            }
            maxines: dict[str, Server] = {}
            for mode, flags in maxine_modes():
                maxines[mode] = group.start_maxine(f"maxine-{slug(mode)}", *flags)
                progress(f"{mode}: registering {layout.services} services x {layout.per_service} instances.")
                populate(
                    base_url=maxines[mode].url, registrations=layout.registrations(), concurrency=64, time_limit=120
                )
            for scenario in load_scenarios(layout):
                # The reference servers answer any request, so they take the very same request stream.
                for label, server in servers.items():
                    name = f"{scenario.name} -> {label}"
                    references.append(
                        measure_cpu(name=name, server=server, scenario=scenario, settings=settings, pinning=pinning)
                    )
                for mode, maxine in maxines.items():
                    run = measure_cpu(
                        name=f"{scenario.name} -> {mode}",
                        server=maxine,
                        scenario=scenario,
                        settings=settings,
                        pinning=pinning,
                    )
                    profile_under_load(
                        run,
                        server=maxine,
                        scenario=scenario,
                        settings=settings,
                        pinning=pinning,
                        rate=args.rate,
                        native=args.native,
                        raw_path=out_dir / f"{slug(run.name)}.raw.txt",
                    )
                    runs.append(run)
    except KeyboardInterrupt:
        progress("Interrupted; the server has been stopped.")
        return 130

    progress(f"Timing the core in process ({CORE_CALLS:,} calls per operation).")
    core = core_timings(layout, calls=CORE_CALLS)
    meta = {
        "pinning": pinning.how,
        "source": source_revision(),
        "connections": args.connections,
        "duration_s": args.duration,
        "rate": args.rate,
        "native": args.native,
        "out_dir": str(out_dir),
    }
    all_runs = [*references, *runs]
    print(render(references, runs, core, meta=meta))
    if args.json is not None:
        document = {
            "meta": meta,
            "core_us_per_call": core,
            "runs": [
                {
                    "name": run.name,
                    "wrk": run.wrk.as_dict(),
                    "user_us_per_request": run.user_us_per_request,
                    "system_us_per_request": run.system_us_per_request,
                    "samples": run.profile.samples if run.profile else 0,
                    "layers": dict(run.profile.by_layer) if run.profile else {},
                    "self_by_library": dict(run.profile.self_by_library) if run.profile else {},
                }
                for run in all_runs
            ],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
