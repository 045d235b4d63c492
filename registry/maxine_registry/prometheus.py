"""
Prometheus metrics: the registry's state computed when scraped, and request counts kept cheaply.

Nothing on a hot path touches prometheus-client. The gauges (services, instances, healthy
instances) and the event counters are read from the registry and its event bus by a custom
collector at scrape time; registering or discovering pays nothing for them. Per-route request
metrics, when they are on, are kept in plain dictionaries by ``RequestMetrics.observe`` (a few
dictionary operations on the loop thread, no locks) and turned into a counter and a histogram at
scrape time.

Each app gets its own ``CollectorRegistry`` rather than the process-wide default, so several
registries in one process (tests, embedding) never see each other's numbers.

Label values are bounded: ``route`` is the route's pattern (``/circuit-breaker/{nodeId}``), never
the raw path, with one ``<unmatched>`` value for every request that matched no route; a method
outside the usual few is counted as ``OTHER``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from maxine_registry.operations import Operations

# Seconds; registry answers are sub-millisecond, proxied requests may take seconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE = "<unmatched>"
COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"


@dataclass(slots=True)
class DurationHistogram:
    # One count per bucket of DURATION_BUCKETS, then one for everything slower.
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0


class RequestMetrics:
    """Requests by (method, route, status) and their durations by (method, route)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], DurationHistogram] = {}

    def __repr__(self) -> str:
        return f"RequestMetrics(series={len(self.requests)}, total={sum(self.requests.values())})"

    def observe(self, *, method: str, route: str | None, status: int, seconds: float) -> None:
        if method not in COUNTED_METHODS:
            method = OTHER_METHOD
        route = route or UNMATCHED_ROUTE
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get((method, route))
        if histogram is None:
            histogram = self.durations[(method, route)] = DurationHistogram()
        # bisect_left puts a duration equal to a bound into that bound's bucket, as "le" means.
        histogram.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        histogram.total += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "maxine_http_requests",
            "HTTP requests by method, route pattern and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(self.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests

        durations = HistogramMetricFamily(
            "maxine_http_request_duration_seconds",
            "Time from routing a request to its answer, by method and route pattern.",
            labels=["method", "route"],
            unit="seconds",
        )
        for (method, route), histogram in sorted(self.durations.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), histogram.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            durations.add_metric([method, route], buckets, histogram.total)
        yield durations


class RegistryCollector(Collector):
    """The registry's state and counters, read at scrape time."""

    def __init__(self, operations: Operations, *, requests: RequestMetrics | None) -> None:
        self.operations = operations
        self.requests = requests

    def __repr__(self) -> str:
        return f"RegistryCollector(request_metrics={self.requests is not None})"

    def collect(self) -> Iterator[Metric]:
        registry = self.operations.registry
        stats = self.operations.stats
        # TODO: LATER: this walks every instance on the loop (about 0.2 s per million); a healthy count
        # kept by the registry where health changes would make a scrape cost nothing.
        healthy = sum(
            1 for service in registry.services() for instance in service.instances.values() if instance.healthy
        )
        yield GaugeMetricFamily("maxine_services", "Services with at least one instance.", value=registry.service_count)
        yield GaugeMetricFamily("maxine_instances", "Registered instances.", value=registry.node_count)
        yield GaugeMetricFamily("maxine_instances_healthy", "Registered instances that are healthy.", value=healthy)
        yield GaugeMetricFamily(
            "maxine_uptime_seconds", "Seconds since this registry process started.", value=stats.uptime
        )

        events = CounterMetricFamily("maxine_events", "Registry events published, by event.", labels=["event"])
        for event, count in sorted(registry.events.counts.items()):
            events.add_metric([event], count)
        yield events

        # Every transport counts these, the lightning path included; the per-route series need HTTP_METRICS.
        yield CounterMetricFamily("maxine_requests", "Requests served by any transport.", value=stats.requests)
        yield CounterMetricFamily("maxine_request_errors", "Requests answered with an error.", value=stats.errors)
        yield CounterMetricFamily(
            "maxine_discovery_cache_hits",
            "Discoveries that found their candidates cached.",
            value=registry.cache_stats.hits,
        )
        yield CounterMetricFamily(
            "maxine_discovery_cache_misses",
            "Discoveries that rebuilt their candidates.",
            value=registry.cache_stats.misses,
        )
        if self.requests is not None:
            yield from self.requests.collect()


def build_collector_registry(operations: Operations, *, requests: RequestMetrics | None) -> CollectorRegistry:
    """A private registry with Maxine's metrics and the process's own (CPU, memory, file descriptors)."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(RegistryCollector(operations, requests=requests))
    ProcessCollector(registry=collectors)
    return collectors


def render(collectors: CollectorRegistry, *, accept: str | None) -> tuple[bytes, str]:
    """The exposition in the format ``accept`` asks for (OpenMetrics or text 0.0.4) and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(collectors), content_type
