"""Prometheus: the exposition parses, reports the registry's state, and counts requests by route when asked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from maxine_registry.http.app import has_request_middleware
from maxine_registry.http.common import OPERATIONS_KEY
from maxine_registry.settings import Settings

Client = TestClient[object, object]
StartApp = Callable[..., Awaitable[Client]]
SCRAPER_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
TEXT_ONLY_ACCEPT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"


async def scrape(api: Client, path: str = "/metrics/prometheus", *, accept: str = TEXT_ONLY_ACCEPT) -> list[Sample]:
    response = await api.get(path, headers={"Accept": accept})
    assert response.status == 200
    text = await response.text()
    if response.content_type == "application/openmetrics-text":
        return [sample for family in parse_openmetrics(text) for sample in family.samples]
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(key) == wanted for key, wanted in labels.items()):
            return sample.value
    return None


async def register(api: Client, service: str, port: int) -> None:
    response = await api.post("/register", json={"serviceName": service, "host": "10.0.0.5", "port": port})
    assert response.status == 200


async def test_the_exposition_reports_services_instances_health_and_events(app_client: StartApp) -> None:
    api = await app_client(Settings())
    await register(api, "orders", 8080)
    await register(api, "orders", 8081)
    await register(api, "billing", 9000)
    await api.delete("/deregister", json={"nodeId": "billing:10.0.0.5:9000"})
    registry = api.app[OPERATIONS_KEY].registry
    sick = registry.resolve("orders:10.0.0.5:8081")
    registry.set_health(sick, healthy=False, reason="test")

    samples = await scrape(api)

    assert value(samples, "maxine_services") == 1
    assert value(samples, "maxine_instances") == 2
    assert value(samples, "maxine_instances_healthy") == 1
    assert value(samples, "maxine_events_total", event="service_registered") == 3
    assert value(samples, "maxine_events_total", event="service_deregistered") == 1
    assert value(samples, "maxine_requests_total") is not None


@pytest.mark.parametrize("accept", [SCRAPER_ACCEPT, TEXT_ONLY_ACCEPT, "application/openmetrics-text"])
async def test_metrics_answers_a_scraper_in_its_own_format(app_client: StartApp, accept: str) -> None:
    api = await app_client(Settings())
    await register(api, "orders", 8080)

    samples = await scrape(api, "/metrics", accept=accept)

    assert value(samples, "maxine_instances") == 1


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "text/html,application/xhtml+xml,*/*;q=0.8"])
async def test_metrics_keeps_answering_json_to_everyone_else(app_client: StartApp, accept: str | None) -> None:
    api = await app_client(Settings())

    response = await api.get("/metrics", headers={"Accept": accept} if accept else {})
    document = await response.json()

    assert response.content_type == "application/json"
    assert {"uptime", "requests", "errors", "services", "nodes"} <= set(document)


async def test_with_http_metrics_requests_are_counted_and_timed_by_route_pattern(app_client: StartApp) -> None:
    api = await app_client(Settings(http_metrics=True))
    await register(api, "orders", 8080)
    for _ in range(3):
        await api.get("/discover", params={"serviceName": "orders"})
    await api.get("/discover", params={"serviceName": "nobody"})
    await api.get("/circuit-breaker/orders:10.0.0.5:8080")
    await api.get("/no/such/route")

    samples = await scrape(api)

    assert value(samples, "maxine_http_requests_total", method="GET", route="/discover", status="200") == 3
    assert value(samples, "maxine_http_requests_total", method="GET", route="/discover", status="404") == 1
    assert value(samples, "maxine_http_requests_total", method="POST", route="/register", status="200") == 1
    assert value(samples, "maxine_http_requests_total", route="/circuit-breaker/{nodeId}", status="200") == 1
    assert value(samples, "maxine_http_requests_total", route="<unmatched>", status="404") == 1
    assert value(samples, "maxine_http_request_duration_seconds_count", method="GET", route="/discover") == 4
    assert value(samples, "maxine_http_request_duration_seconds_bucket", route="/discover", le="+Inf") == 4
    assert not any("orders:10.0.0.5" in str(sample.labels) for sample in samples)


async def test_without_http_metrics_no_middleware_slows_the_hot_path(app_client: StartApp) -> None:
    api = await app_client(Settings())
    await register(api, "orders", 8080)

    samples = await scrape(api)

    assert not has_request_middleware(api.app)
    assert value(samples, "maxine_http_requests_total") is None
    assert value(samples, "maxine_instances") == 1


async def test_each_app_keeps_its_own_numbers(app_client: StartApp) -> None:
    first = await app_client(Settings(http_metrics=True))
    second = await app_client(Settings(http_metrics=True))
    await register(first, "orders", 8080)

    first_samples = await scrape(first)
    second_samples = await scrape(second)

    assert value(first_samples, "maxine_instances") == 1
    assert value(second_samples, "maxine_instances") == 0
    assert value(second_samples, "maxine_http_requests_total", route="/register") is None
