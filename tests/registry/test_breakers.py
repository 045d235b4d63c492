"""Circuit breakers on a hand-driven clock, outcome reports, and the anomalies they reveal."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.breakers import BreakerPolicy, CircuitBreaker
from maxine_registry.errors import Unavailable
from maxine_registry.model import Instance
from maxine_registry.registration import parse_registration
from maxine_registry.registry import FLAP_CHANGES, Registry
from maxine_registry.strategies import resolve_strategy
from tests.registry.conftest import FakeClock

ROUND_ROBIN = resolve_strategy("round-robin")
Client = TestClient[Any, Any]


def add(registry: Registry, port: int, service: str = "orders") -> Instance:
    # A long lease: these tests move the clock past several breaker periods without heartbeats.
    body = {"serviceName": service, "host": "10.0.0.1", "port": port, "ttl": 3600}
    return registry.register(parse_registration(body))


def fail(registry: Registry, instance: Instance, times: int) -> None:
    for _ in range(times):
        registry.record_outcome(instance, response_ms=20, success=False)


def events(registry: Registry, name: str) -> list[dict[str, Any]]:
    return [event.data for event in registry.events.history(limit=1000) if event.event == name]


def test_a_breaker_opens_at_the_threshold_and_not_before(registry: Registry) -> None:
    node = add(registry, 1)
    threshold = registry.breaker_policy.failure_threshold

    fail(registry, node, threshold - 1)
    assert registry.breaker_view(node.node_id)["state"] == "closed"
    fail(registry, node, 1)

    view = registry.breaker_view(node.node_id)
    assert view["state"] == "open"
    assert view["failures"] == threshold
    assert view["lastFailure"] is not None and view["nextRetry"] is not None
    assert [data["nodeId"] for data in events(registry, "circuit_open")] == [node.node_id]


def test_a_success_resets_the_count_of_failures_in_a_row(registry: Registry) -> None:
    node = add(registry, 1)
    threshold = registry.breaker_policy.failure_threshold

    fail(registry, node, threshold - 1)
    registry.record_outcome(node, response_ms=5, success=True)
    fail(registry, node, threshold - 1)

    assert registry.breaker_view(node.node_id)["state"] == "closed"


def test_an_open_breaker_takes_the_node_out_until_a_trial_succeeds(registry: Registry, clock: FakeClock) -> None:
    node = add(registry, 1)
    fail(registry, node, registry.breaker_policy.failure_threshold)

    with pytest.raises(Unavailable):
        registry.discover("orders", strategy=ROUND_ROBIN)

    clock.advance(registry.breaker_policy.open_seconds + 0.1)
    registry.expire_due()
    assert registry.breaker_view(node.node_id)["state"] == "half-open"
    trial = registry.discover("orders", strategy=ROUND_ROBIN)
    with pytest.raises(Unavailable):
        registry.discover("orders", strategy=ROUND_ROBIN)  # the one trial is out

    registry.record_outcome(trial, response_ms=5, success=True)

    assert registry.breaker_view(node.node_id)["state"] == "closed"
    assert registry.discover("orders", strategy=ROUND_ROBIN) is node
    assert [data["nodeId"] for data in events(registry, "circuit_close")] == [node.node_id]


def test_a_failed_trial_opens_the_breaker_for_longer(registry: Registry, clock: FakeClock) -> None:
    node = add(registry, 1)
    policy = registry.breaker_policy
    fail(registry, node, policy.failure_threshold)
    clock.advance(policy.open_seconds + 0.1)
    registry.expire_due()

    registry.discover("orders", strategy=ROUND_ROBIN)
    fail(registry, node, 1)
    clock.advance(policy.open_seconds + 0.1)
    registry.expire_due()

    assert registry.breaker_view(node.node_id)["state"] == "open"
    clock.advance(policy.open_seconds)
    registry.expire_due()
    assert registry.breaker_view(node.node_id)["state"] == "half-open"


def test_a_trial_nobody_reports_on_does_not_keep_the_node_out_forever(registry: Registry, clock: FakeClock) -> None:
    node = add(registry, 1)
    fail(registry, node, registry.breaker_policy.failure_threshold)
    clock.advance(registry.breaker_policy.open_seconds + 0.1)
    registry.expire_due()
    registry.discover("orders", strategy=ROUND_ROBIN)

    clock.advance(registry.breaker_policy.open_seconds + 0.1)
    registry.expire_due()

    assert registry.discover("orders", strategy=ROUND_ROBIN) is node


def test_the_breaker_state_machine_caps_its_backoff() -> None:
    policy = BreakerPolicy(failure_threshold=1, open_seconds=10, max_open_seconds=25)
    breaker = CircuitBreaker(policy=policy)
    now = 0.0

    openings = []
    for _ in range(4):
        breaker.record(success=False, now=now, wall=now)
        assert breaker.next_retry is not None
        openings.append(breaker.next_retry - now)
        now = breaker.next_retry
        breaker.tick(now=now)

    assert openings == [10, 20, 25, 25]


def test_anomalies_report_what_triggered_them(registry: Registry, clock: FakeClock) -> None:
    failing = add(registry, 1, service="payments")
    fail(registry, failing, registry.breaker_policy.failure_threshold)
    flappy = add(registry, 2, service="search")
    add(registry, 3, service="search")
    for index in range(FLAP_CHANGES):
        registry.set_health(flappy, healthy=index % 2 == 1, reason="test")
        clock.advance(1)
    add(registry, 4, service="calm")

    found = {(anomaly["serviceName"], anomaly["type"]): anomaly for anomaly in registry.anomalies()}

    assert found[("payments", "high_circuit_failures")]["value"] == registry.breaker_policy.failure_threshold
    assert found[("payments", "no_healthy_instance")]["value"] == 1
    assert found[("search", "flapping")]["value"] == FLAP_CHANGES
    assert found[("search", "flapping")]["nodeId"] == flappy.node_id
    assert not any(service == "calm" for service, _ in found)


async def test_outcomes_and_breakers_over_http(api: Client, registry: Registry) -> None:
    body = {"serviceName": "orders", "host": "::1", "port": 9000}
    node_id = (await (await api.post("/register", json=body)).json())["nodeId"]

    timed = await api.post("/record-response-time", json={"nodeId": node_id, "responseTime": 150})
    for _ in range(registry.breaker_policy.failure_threshold):
        await api.post("/record-response-time", json={"nodeId": node_id, "responseTime": 3, "outcome": "failure"})
    breaker = await api.get(f"/circuit-breaker/{node_id}")
    anomalies = await api.get("/anomalies")
    unknown = await api.get("/circuit-breaker/orders:10.9.9.9:1")

    assert (await timed.json())["averageResponseTime"] == 150
    assert (await breaker.json())["state"] == "open"
    assert (await breaker.json())["nodeId"] == node_id
    types = {anomaly["type"] for anomaly in (await anomalies.json())["anomalies"]}
    assert types == {"high_circuit_failures", "no_healthy_instance"}
    assert unknown.status == 404


@pytest.mark.parametrize(
    "body",
    [
        {"responseTime": 5},
        {"nodeId": "orders:10.0.0.1:1"},
        {"nodeId": "orders:10.0.0.1:1", "responseTime": -1},
        {"nodeId": "orders:10.0.0.1:1", "responseTime": "fast"},
        {"nodeId": "orders:10.0.0.1:1", "responseTime": 5, "outcome": "meh"},
        [1],
    ],
)
async def test_bad_outcome_reports_are_refused(api: Client, registry: Registry, body: object) -> None:
    add(registry, 1)

    response = await api.post("/record-response-time", json=body)

    assert response.status == 400
    node = registry.resolve("orders:10.0.0.1:1")
    assert node.runtime is None or node.runtime.samples == 0


def test_the_breaker_view_counts_every_outcome_since_registration(registry: Registry) -> None:
    node = add(registry, 1)

    for _ in range(7):
        registry.record_outcome(node, response_ms=5, success=True)
    fail(registry, node, 2)

    view = registry.breaker_view(node.node_id)
    assert (view["totalSuccesses"], view["totalFailures"], view["failures"]) == (7, 2, 2)
