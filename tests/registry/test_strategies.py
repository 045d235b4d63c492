"""Every load-balancing strategy, measured: distributions, key movement and what each one reads."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from maxine_registry.errors import InvalidInput
from maxine_registry.model import Instance
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.strategies import STRATEGIES, PickContext, resolve_strategy
from tests.registry.conftest import FakeClock


def add(registry: Registry, port: int, **metadata: object) -> Instance:
    body = {"serviceName": "orders", "host": "10.0.0.1", "port": port, "metadata": metadata}
    return registry.register(parse_registration(body))


def pick(registry: Registry, strategy: str, **context: object) -> Instance:
    hold = context.pop("hold_slot", False)
    return registry.discover(
        "orders",
        strategy=resolve_strategy(strategy),
        context=PickContext(rng=registry.rng, hold_slot=bool(hold), **context),  # type: ignore[arg-type]
    )


def test_all_nine_strategies_of_the_contract_exist() -> None:
    assert set(STRATEGIES) == {
        "round-robin",
        "random",
        "weighted-random",
        "least-connections",
        "weighted-least-connections",
        "consistent-hash",
        "ip-hash",
        "geo-aware",
        "least-response-time",
    }


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_no_strategy_hands_out_an_unhealthy_instance(registry: Registry, strategy: str) -> None:
    healthy = add(registry, 1)
    for port in (2, 3, 4):
        registry.set_health(add(registry, port), healthy=False, reason="test")

    picked = {pick(registry, strategy, key="k", client_ip="10.9.9.9", zone="z").port for _ in range(50)}

    assert picked == {healthy.port}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_no_strategy_hands_out_a_node_behind_an_open_breaker(registry: Registry, strategy: str) -> None:
    add(registry, 1)
    broken = add(registry, 2)
    for _ in range(registry.breaker_policy.failure_threshold):
        registry.record_outcome(broken, response_ms=5, success=False)

    picked = {pick(registry, strategy, key="k", client_ip="10.9.9.9").port for _ in range(50)}

    assert picked == {1}


def test_least_connections_prefers_the_idlest_instance(registry: Registry) -> None:
    nodes = [add(registry, port) for port in (1, 2, 3)]

    held = [pick(registry, "least-connections", hold_slot=True) for _ in range(6)]
    registry.record_outcome(nodes[0], response_ms=3, success=True)
    registry.record_outcome(nodes[0], response_ms=3, success=True)

    assert Counter(instance.port for instance in held) == {1: 2, 2: 2, 3: 2}
    assert pick(registry, "least-connections", hold_slot=True).port == 1


def test_weighted_least_connections_loads_in_proportion_to_weight(registry: Registry) -> None:
    add(registry, 1, weight=1)
    add(registry, 2, weight=3)

    held = Counter(pick(registry, "weighted-least-connections", hold_slot=True).port for _ in range(40))

    assert held == {1: 10, 2: 30}


def test_in_flight_slots_that_are_never_reported_run_out(registry: Registry, clock: FakeClock) -> None:
    busy = add(registry, 1)
    add(registry, 2)
    for _ in range(5):
        registry.discover(
            "orders", strategy=resolve_strategy("round-robin"), context=PickContext(rng=registry.rng, hold_slot=True)
        )

    clock.advance(registry.inflight_timeout + 1)
    registry.expire_due()

    assert busy.inflight == 0


def test_consistent_hash_keeps_a_key_on_one_instance(registry: Registry) -> None:
    for port in range(1, 6):
        add(registry, port)

    owners = {pick(registry, "consistent-hash", key="customer-42").port for _ in range(20)}

    assert len(owners) == 1


def test_consistent_hash_spreads_keys_evenly(registry: Registry) -> None:
    for port in range(1, 6):
        add(registry, port)

    load = Counter(pick(registry, "consistent-hash", key=f"user-{n}").port for n in range(10_000))

    assert set(load) == {1, 2, 3, 4, 5}
    assert all(1400 <= count <= 2600 for count in load.values())


@pytest.mark.parametrize("size", [4, 10])
def test_consistent_hash_moves_about_one_nth_of_keys_when_an_instance_joins_or_leaves(
    registry: Registry, size: int
) -> None:
    for port in range(1, size + 1):
        add(registry, port)
    keys = [f"session-{n}" for n in range(5000)]
    before = {key: pick(registry, "consistent-hash", key=key).port for key in keys}

    add(registry, size + 1)
    after_join = {key: pick(registry, "consistent-hash", key=key).port for key in keys}
    registry.deregister(f"orders:10.0.0.1:{size + 1}")
    registry.deregister("orders:10.0.0.1:1")
    after_leave = {key: pick(registry, "consistent-hash", key=key).port for key in keys}

    moved_on_join = sum(before[key] != after_join[key] for key in keys) / len(keys)
    moved_on_leave = sum(before[key] != after_leave[key] for key in keys) / len(keys)
    assert all(after_join[key] in (before[key], size + 1) for key in keys)
    assert moved_on_join <= 1.5 / (size + 1)
    assert moved_on_leave <= 1.5 / size
    assert all(after_leave[key] == before[key] for key in keys if before[key] != 1)


def test_consistent_hash_without_a_key_uses_the_client_address(registry: Registry) -> None:
    for port in range(1, 4):
        add(registry, port)

    by_address = {pick(registry, "consistent-hash", client_ip="10.1.2.3").port for _ in range(10)}

    assert len(by_address) == 1


def test_ip_hash_keeps_each_client_on_one_instance_and_spreads_clients(registry: Registry) -> None:
    for port in range(1, 4):
        add(registry, port)

    per_client = {
        f"10.0.{n // 256}.{n % 256}": {
            pick(registry, "ip-hash", client_ip=f"10.0.{n // 256}.{n % 256}").port for _ in range(3)
        }
        for n in range(600)
    }

    assert all(len(ports) == 1 for ports in per_client.values())
    assert set(Counter(next(iter(ports)) for ports in per_client.values())) == {1, 2, 3}


def test_ip_hash_ignores_the_key_parameter(registry: Registry) -> None:
    for port in range(1, 4):
        add(registry, port)

    chosen = {pick(registry, "ip-hash", client_ip="10.7.7.7", key=f"k{n}").port for n in range(30)}

    assert len(chosen) == 1


def test_geo_aware_prefers_the_same_zone_then_region_then_any(registry: Registry) -> None:
    add(registry, 1, region="eu", zone="eu-1a")
    add(registry, 2, region="eu", zone="eu-1b")
    add(registry, 3, region="us", zone="us-1a")

    same_zone = {pick(registry, "geo-aware", region="eu", zone="eu-1b").port for _ in range(10)}
    same_region = {pick(registry, "geo-aware", region="eu", zone="eu-1z").port for _ in range(10)}
    anywhere = {pick(registry, "geo-aware", region="ap", zone="ap-1a").port for _ in range(10)}

    assert same_zone == {2}
    assert same_region == {1, 2}
    assert anywhere == {1, 2, 3}


def test_geo_aware_falls_back_when_the_zone_has_no_healthy_instance(registry: Registry) -> None:
    local = add(registry, 1, region="eu", zone="eu-1a")
    add(registry, 2, region="eu", zone="eu-1b")
    registry.set_health(local, healthy=False, reason="test")

    assert {pick(registry, "geo-aware", region="eu", zone="eu-1a").port for _ in range(5)} == {2}


def test_least_response_time_measures_new_instances_then_prefers_the_fastest(registry: Registry) -> None:
    fast, slow, failing = add(registry, 1), add(registry, 2), add(registry, 3)

    first_round = {pick(registry, "least-response-time").port for _ in range(3)}
    for _ in range(5):
        registry.record_outcome(fast, response_ms=10, success=True)
        registry.record_outcome(slow, response_ms=200, success=True)
    registry.record_outcome(failing, response_ms=1, success=False)

    assert first_round == {1, 2, 3}
    assert pick(registry, "least-response-time").port == 1


def test_least_response_time_keeps_a_weighted_mean(registry: Registry) -> None:
    node = add(registry, 1)

    registry.record_outcome(node, response_ms=100, success=True)
    registry.record_outcome(node, response_ms=200, success=True)

    assert node.runtime is not None
    assert node.runtime.ewma_ms == pytest.approx(130)
    assert node.runtime.samples == 2


def test_random_choices_repeat_with_the_same_seed(clock: FakeClock) -> None:
    def run() -> list[int]:
        registry = Registry(clock=clock, rng=random.Random(11))
        for port in range(1, 6):
            add(registry, port)
        return [pick(registry, "random").port for _ in range(20)]

    assert run() == run()


def test_unknown_strategy_names_are_refused() -> None:
    with pytest.raises(InvalidInput):
        resolve_strategy("least-effort")
