"""
Active health checks: the registry probes instances that ask for it, and takes failing ones out of discovery.

An instance opts in with ``metadata.healthCheck``, for example ``{"url": "/health", "interval": 30000}``
(an HTTP GET; any 2xx or 3xx answer passes) or ``{"type": "tcp", "interval": 5000}`` (a connection that
opens passes). Times are in milliseconds, as everywhere in the API. One answer never decides: an instance
turns unhealthy after ``fall`` failures in a row and healthy again after ``rise`` passes in a row, so a
single slow answer does not make it flap in and out of discovery. Registered instances start healthy.

The checker only ever connects to the registered instance's own address. The spec holds a path, never a
host: an absolute URL is accepted only when its host and port are the instance's own, and the URL probed
is rebuilt from the instance's host and port each time. Redirects are not followed (a 3xx already passes),
and proxy settings from the environment are ignored.

Scheduling is one background task over a heap of ``(due, seq, target)``. It pops what is due, waits for
one of ``concurrency`` probe slots, and starts a short task for that one probe; when the probe ends it
records the outcome and pushes the target back one interval later. So at most ``concurrency`` probe tasks
exist at any time, whatever the number of instances, and nothing scans every instance per tick. The first
probe of a new target is placed at a random point of its interval, so instances registered together do
not probe in lockstep.

Targets are learned from the registry itself: it tells its instance listeners of every instance that is
new or whose metadata changed (a re-registration may add, change or remove ``healthCheck``), and its
removal listeners of every instance that is gone. One scan when the checker starts picks up what was
registered before. A listener only asks whether ``healthCheck`` is among the metadata's keys (known once per
distinct document), so the instances that ask for no check, nearly all of them, cost a registration almost
nothing. A target whose instance
was replaced is also dropped when it comes due and the registry no longer holds that very instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from maxine_registry.errors import InvalidInput
from maxine_registry.model import Instance, format_address, normalize_host

if TYPE_CHECKING:
    from maxine_registry.registry import Registry

logger = logging.getLogger(__name__)

HTTP: Final = "http"
TCP: Final = "tcp"
KINDS: Final = (HTTP, TCP)

DEFAULT_PATH = "/health"
DEFAULT_INTERVAL_MS = 30_000
DEFAULT_TIMEOUT_MS = 5_000
DEFAULT_RISE = 2
DEFAULT_FALL = 3

MIN_INTERVAL_MS = 1_000
MAX_INTERVAL_MS = 3_600_000
MIN_TIMEOUT_MS = 100
# A probe holds one of the few concurrency slots until it ends; a long timeout would let a handful of
# dead instances starve the checks of everyone else.
MAX_TIMEOUT_MS = 60_000
MAX_THRESHOLD = 10
MAX_URL_LENGTH = 2048
SPEC_KEYS: Final = frozenset({"type", "url", "interval", "timeout", "rise", "fall"})

DEFAULT_CONCURRENCY = 64
# The scan at start gives the loop back after this many instances, so a large registry never stalls it.
SCAN_BATCH = 1000
USER_AGENT = "Maxine-Health-Check/1"
# The metadata key that asks for checks.
HEALTH_CHECK_KEY = "healthCheck"


@dataclass(frozen=True, slots=True)
class HealthCheckSpec:
    """
    What ``metadata.healthCheck`` asks for, validated against the instance's own address.

    ``path`` is the path and query to GET (HTTP only); ``interval`` and ``timeout`` are in seconds here.
    """

    kind: str = HTTP
    scheme: str = "http"
    path: str = DEFAULT_PATH
    interval: float = DEFAULT_INTERVAL_MS / 1000
    timeout: float = DEFAULT_TIMEOUT_MS / 1000
    rise: int = DEFAULT_RISE
    fall: int = DEFAULT_FALL

    @classmethod
    def parse(cls, value: object, *, host: str, port: int) -> HealthCheckSpec:
        """
        Validate ``metadata.healthCheck`` of an instance at ``host``:``port``; raise ``InvalidInput`` if wrong.

        Bounds: ``interval`` 1000 ms to 1 h (default 30000); ``timeout`` 100 ms to 60000 ms and below the
        interval (default 5000, or half the interval when that is shorter); ``rise`` and ``fall`` 1 to 10
        (defaults 2 and 3); ``type`` ``http`` (default) or ``tcp``; ``url`` (HTTP only, default ``/health``)
        a path starting with ``/``, or an absolute http(s) URL naming the instance's own host and port.
        """
        if not isinstance(value, dict):
            raise InvalidInput(
                f'metadata.healthCheck must be an object such as {{"url": "/health", "interval": 30000}}, '
                f"got {value!r:.100}."
            )
        unknown = sorted(str(key) for key in value if key not in SPEC_KEYS)
        if unknown:
            raise InvalidInput(
                f"metadata.healthCheck has unknown key(s) {', '.join(unknown)}; "
                f"the known keys are {', '.join(sorted(SPEC_KEYS))}."
            )

        kind = value.get("type")
        if kind is None:
            kind = HTTP
        if kind not in KINDS:
            raise InvalidInput(f"metadata.healthCheck.type must be 'http' or 'tcp', got {kind!r:.100}.")

        interval_ms = _milliseconds(
            value.get("interval"),
            name="interval",
            default=DEFAULT_INTERVAL_MS,
            low=MIN_INTERVAL_MS,
            high=MAX_INTERVAL_MS,
        )
        timeout_ms = _milliseconds(
            value.get("timeout"),
            name="timeout",
            default=min(DEFAULT_TIMEOUT_MS, interval_ms / 2),
            low=MIN_TIMEOUT_MS,
            high=MAX_TIMEOUT_MS,
        )
        if timeout_ms >= interval_ms:
            raise InvalidInput(
                f"metadata.healthCheck.timeout ({timeout_ms:g} ms) must be shorter than its interval "
                f"({interval_ms:g} ms), so that probes of one instance never overlap."
            )
        rise = _threshold(value.get("rise"), name="rise", default=DEFAULT_RISE)
        fall = _threshold(value.get("fall"), name="fall", default=DEFAULT_FALL)

        if kind == TCP:
            if value.get("url") is not None:
                raise InvalidInput("metadata.healthCheck.url applies to http checks only; a tcp check takes none.")
            scheme, path = "", ""
        else:
            scheme, path = _parse_url(value.get("url"), host=host, port=port)

        return cls(
            kind=kind,
            scheme=scheme,
            path=path,
            interval=interval_ms / 1000,
            timeout=timeout_ms / 1000,
            rise=rise,
            fall=fall,
        )

    def url_for(self, instance: Instance) -> URL:
        """The URL to GET, always built from the instance's own host and port."""
        return URL(f"{self.scheme}://{format_address(instance.host, instance.port)}{self.path}", encoded=True)


def spec_of(instance: Instance) -> HealthCheckSpec | None:
    """The instance's health check, or None when it asks for none (or its metadata holds an invalid one)."""
    if HEALTH_CHECK_KEY not in instance.parsed.keys:
        return None
    value = instance.metadata.get(HEALTH_CHECK_KEY)
    if value is None:
        return None
    try:
        return HealthCheckSpec.parse(value, host=instance.host, port=instance.port)
    except InvalidInput as exc:
        # Registration refuses invalid specs, so only metadata that skipped it gets here (a snapshot
        # written by an older version, say); one line per instance would drown the log, hence debug.
        logger.debug("Instance %s has an invalid health check; it is not checked: %s", instance.node_id, exc)
        return None


def _milliseconds(value: object, *, name: str, default: float, low: int, high: int) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"metadata.healthCheck.{name} must be a number of milliseconds, got {value!r:.100}.")
    if not low <= value <= high:
        raise InvalidInput(f"metadata.healthCheck.{name} must be from {low} to {high} ms, got {value!r}.")
    return float(value)


def _threshold(value: object, *, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THRESHOLD:
        raise InvalidInput(
            f"metadata.healthCheck.{name} must be an integer from 1 to {MAX_THRESHOLD}, got {value!r:.100}."
        )
    return value


def _parse_url(value: object, *, host: str, port: int) -> tuple[str, str]:
    """Return (scheme, path with query) for an HTTP check, refusing anything that names another address."""
    if value is None:
        return "http", DEFAULT_PATH
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"metadata.healthCheck.url must be a non-empty string, got {value!r:.100}.")
    if len(value) > MAX_URL_LENGTH:
        raise InvalidInput(f"metadata.healthCheck.url is longer than {MAX_URL_LENGTH} characters.")
    # Printable ASCII without spaces, backslashes or fragments: the path goes into the request line as is.
    if not value.isascii() or not value.isprintable() or any(char in value for char in " \\#"):
        raise InvalidInput(
            f"metadata.healthCheck.url must be printable ASCII without spaces, '\\' or '#', got {value!r:.100}."
        )

    if value.startswith("/"):
        if value.startswith("//"):
            raise InvalidInput(
                f"metadata.healthCheck.url {value!r:.100} names a host without a scheme; give a path such as /health."
            )
        return "http", value

    try:
        parts = urlsplit(value)
        url_port = parts.port
    except ValueError:
        raise InvalidInput(f"metadata.healthCheck.url {value!r:.100} is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(
            f"metadata.healthCheck.url must be a path starting with '/' or an absolute http(s) URL, got {value!r:.100}."
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("metadata.healthCheck.url must not carry credentials.")
    try:
        url_host = normalize_host(parts.hostname or "")
    except InvalidInput:
        raise InvalidInput(f"metadata.healthCheck.url {value!r:.100} does not name a valid host.") from None
    if url_port is None:
        url_port = 443 if parts.scheme == "https" else 80
    # TODO: LATER: a health endpoint on a separate management port of the same host is refused too; allowing
    # it safely needs a port list the operator approves, since any port of the host would be reachable.
    if (url_host, url_port) != (host, port):
        raise InvalidInput(
            f"metadata.healthCheck.url must point at the instance's own address {format_address(host, port)}, "
            f"not {format_address(url_host, url_port)}; the registry probes only the instances themselves."
        )
    path = parts.path or "/"
    return parts.scheme, f"{path}?{parts.query}" if parts.query else path


@dataclass(slots=True, eq=False)
class _Target:
    """One instance under checks: its spec as last read, and its run of passes or failures."""

    instance: Instance
    metadata_json: bytes  # the metadata ``spec`` was parsed from, compared by identity
    spec: HealthCheckSpec
    passes: int = 0
    failures: int = 0
    active: bool = True

    @property
    def node_id(self) -> str:
        return self.instance.node_id


class HealthChecker:
    """
    Probes every instance that declares ``metadata.healthCheck`` and reports crossings to the registry.

    Lifecycle: ``start()`` inside a running loop, ``await stop()`` to end the scheduler, cancel probes
    in flight and close the HTTP session. ``rng`` is a parameter for tests.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        concurrency: int = DEFAULT_CONCURRENCY,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
        self.registry = registry
        self.concurrency = concurrency
        self._rng = rng if rng is not None else random.Random()
        self._targets: dict[str, _Target] = {}
        self._heap: list[tuple[float, int, _Target]] = []
        self._seq = itertools.count()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._wakeup = asyncio.Event()
        self._probes: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.probes_run = 0

    def __repr__(self) -> str:
        return (
            f"HealthChecker(targets={len(self._targets)}, probing={len(self._probes)}, "
            f"concurrency={self.concurrency}, running={self.running})"
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def target_count(self) -> int:
        return len(self._targets)

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("The health checker is already started.")
        self._loop = asyncio.get_running_loop()
        # Fresh primitives per start: they bind to the loop that first uses them.
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self._wakeup = asyncio.Event()
        self.registry.instance_listeners.append(self._on_instance)
        self.registry.removal_listeners.append(self._on_removal)
        self._task = self._loop.create_task(self._run(), name="maxine-health-checker")
        self._task.add_done_callback(self._report_crash)
        logger.info("Health checks are on, with up to %d probes at a time.", self.concurrency)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.registry.instance_listeners.remove(self._on_instance)
        with contextlib.suppress(ValueError):
            self.registry.removal_listeners.remove(self._on_removal)
        if self._task is not None:
            self._task.cancel()
            # A crash was already logged by ``_report_crash``; stopping must still finish.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._targets.clear()
        self._heap.clear()

    @staticmethod
    def _report_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("The health checker stopped on an error; no instance is probed.", exc_info=task.exception())

    # Learning of instances.

    def _on_instance(self, instance: Instance) -> None:
        # Called synchronously inside registry writes: only bookkeeping here, no waiting.
        if HEALTH_CHECK_KEY in instance.parsed.keys or instance.node_id in self._targets:
            self._consider(instance)

    def _on_removal(self, instance: Instance) -> None:
        target = self._targets.get(instance.node_id)
        if target is not None and target.instance is instance:
            self._forget(target)

    def _consider(self, instance: Instance) -> None:
        """Start, update or end checks of ``instance`` according to its current metadata."""
        target = self._targets.get(instance.node_id)
        if target is not None and target.instance is instance and target.metadata_json is instance.metadata_json:
            return

        spec = spec_of(instance)
        if target is not None:
            if target.instance is instance and spec == target.spec:
                target.metadata_json = instance.metadata_json
                return
            self._forget(target)
            # Checks taken off an instance they had marked down must not leave it out of discovery for good.
            if target.instance is instance and spec is None and not instance.healthy:
                self.registry.set_health(instance, healthy=True, reason="health_check_removed")
        if spec is None:
            return

        target = self._targets[instance.node_id] = _Target(
            instance=instance, metadata_json=instance.metadata_json, spec=spec
        )
        self._push(target, due=self._now() + self._rng.uniform(0, spec.interval))
        logger.debug("Health checks start for %s: kind=%s interval=%ss.", instance.node_id, spec.kind, spec.interval)

    def _forget(self, target: _Target) -> None:
        # The heap entry stays until it comes due or the heap is compacted; ``active`` makes it inert.
        target.active = False
        if self._targets.get(target.node_id) is target:
            del self._targets[target.node_id]

    async def _scan(self) -> None:
        """Consider every instance registered before the checker started; the listeners see the rest."""
        seen = 0
        for service in self.registry.services():
            for instance in list(service.instances.values()):
                if self.registry.get_instance(instance.node_id) is instance:
                    self._on_instance(instance)
                seen += 1
                if seen % SCAN_BATCH == 0:
                    await asyncio.sleep(0)

    # Scheduling.

    def _now(self) -> float:
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        return loop.time()

    def _push(self, target: _Target, *, due: float) -> None:
        entry = (due, next(self._seq), target)
        heapq.heappush(self._heap, entry)
        # The scheduler sleeps until the earliest entry; only a new earliest one changes that.
        if self._heap[0] is entry:
            self._wakeup.set()

    def _compact(self) -> None:
        # Forgotten targets wait in the heap until due, up to an hour; drop them when they dominate it.
        if len(self._heap) > 2 * len(self._targets) + 1024:
            self._heap = [entry for entry in self._heap if entry[2].active]
            heapq.heapify(self._heap)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=True)
        # force_close: a fresh connection per probe, as a TCP check does; a pooled connection the
        # instance closed while idle would otherwise count as a failure that is not the instance's.
        session = aiohttp.ClientSession(connector=connector, trust_env=False, headers={"User-Agent": USER_AGENT})
        try:
            await self._scan()
            while True:
                try:
                    await self._launch_due(session)
                except Exception:
                    # The entry that failed is already popped; the others must still be probed.
                    logger.exception("Starting health probes failed; the checker carries on.")
                self._compact()

                # Sleep until the earliest probe is due, or for good until a new target comes first.
                self._wakeup.clear()
                delay = self._heap[0][0] - loop.time() if self._heap else None
                if delay is None or delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wakeup.wait()
        finally:
            for task in list(self._probes):
                task.cancel()
            await asyncio.gather(*self._probes, return_exceptions=True)
            await session.close()

    async def _launch_due(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while self._heap and self._heap[0][0] <= loop.time():
            _, _, target = heapq.heappop(self._heap)
            if not target.active:
                continue

            # Read the instance as it is now: it may be gone, replaced, or re-registered with other metadata.
            instance = self.registry.get_instance(target.node_id)
            if instance is not target.instance:
                self._forget(target)
                if instance is not None:
                    self._consider(instance)
                continue
            if instance.metadata_json is not target.metadata_json:
                self._consider(instance)
                if not target.active:
                    continue

            # Wait for a slot; a target forgotten meanwhile gives its slot back unused.
            await self._semaphore.acquire()
            if not target.active:
                self._semaphore.release()
                continue
            task = asyncio.create_task(self._probe(target, session=session), name=f"health-probe {target.node_id}")
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    # Probing.

    async def _probe(self, target: _Target, *, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        spec = target.spec
        try:
            passed = await self._check(target.instance, spec=spec, session=session)
        finally:
            self._semaphore.release()
        self.probes_run += 1

        if not target.active:
            return
        self._record(target, passed=passed)
        self._push(target, due=max(started + spec.interval, loop.time()))

    async def _check(self, instance: Instance, *, spec: HealthCheckSpec, session: aiohttp.ClientSession) -> bool:
        try:
            if spec.kind == TCP:
                async with asyncio.timeout(spec.timeout):
                    _, writer = await asyncio.open_connection(instance.host, instance.port)
                # The connection opened, which is the whole test; closing it is only courtesy.
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(spec.timeout):
                        await writer.wait_closed()
                return True

            # TODO: LATER: https checks verify certificates with the system's roots and have no option to skip
            # that or to present a client certificate, so instances with self-signed certificates fail them.
            timeout = aiohttp.ClientTimeout(total=spec.timeout)
            async with session.get(spec.url_for(instance), allow_redirects=False, timeout=timeout) as response:
                passed = 200 <= response.status < 400
            if not passed:
                logger.debug("Health probe failed: node=%s status=%d.", instance.node_id, response.status)
            return passed
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            logger.debug("Health probe failed: node=%s error=%r.", instance.node_id, exc)
            return False
        except Exception:
            # A bug in probing must cost one probe, never the checker.
            logger.exception("Health probe of %s failed unexpectedly; it counts as a failure.", instance.node_id)
            return False

    def _record(self, target: _Target, *, passed: bool) -> None:
        instance = target.instance
        if passed:
            target.passes += 1
            target.failures = 0
            if not instance.healthy and target.passes >= target.spec.rise:
                self.registry.set_health(instance, healthy=True, reason="health_check")
        else:
            target.failures += 1
            target.passes = 0
            if instance.healthy and target.failures >= target.spec.fall:
                self.registry.set_health(instance, healthy=False, reason="health_check")
