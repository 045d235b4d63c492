"""Canary splits, promotion, retirement and gradual shifts, through the core and over HTTP."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.errors import InvalidInput, NoInstance
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.strategies import resolve_strategy
from maxine_registry.traffic import TrafficPolicy, parse_distribution

ROUND_ROBIN = resolve_strategy("round-robin")
Client = TestClient[Any, Any]


def deploy(registry: Registry, versions: dict[str, int]) -> None:
    port = 1
    for version, count in versions.items():
        for _ in range(count):
            body = {"serviceName": "shop", "host": "10.0.0.1", "port": port, "metadata": {"version": version}}
            registry.register(parse_registration(body))
            port += 1


def versions_served(registry: Registry, calls: int) -> Counter[str]:
    return Counter(registry.discover("shop", strategy=ROUND_ROBIN).version or "default" for _ in range(calls))


def test_an_80_20_split_holds_over_1000_calls(registry: Registry) -> None:
    deploy(registry, {"1.0": 3, "2.0": 1})

    registry.set_traffic("shop", {"1.0": 80, "2.0": 20})
    served = versions_served(registry, 1000)

    assert 750 <= served["1.0"] <= 850
    assert 150 <= served["2.0"] <= 250


def test_a_split_is_exact_over_every_short_run(registry: Registry) -> None:
    deploy(registry, {"1.0": 1, "2.0": 1})
    registry.set_traffic("shop", {"1.0": 80, "2.0": 20})

    runs = [versions_served(registry, 5) for _ in range(20)]

    assert all(run == {"1.0": 4, "2.0": 1} for run in runs)


def test_an_explicit_version_bypasses_the_split(registry: Registry) -> None:
    deploy(registry, {"1.0": 1, "2.0": 1})
    registry.set_traffic("shop", {"1.0": 100})

    assert registry.discover("shop", strategy=ROUND_ROBIN, version="2.0").version == "2.0"


def test_promote_sends_all_traffic_to_one_version(registry: Registry) -> None:
    deploy(registry, {"1.0": 2, "2.0": 2})
    registry.set_traffic("shop", {"1.0": 50, "2.0": 50})

    registry.promote("shop", "2.0")

    assert versions_served(registry, 100) == {"2.0": 100}


def test_retire_removes_a_version_from_discovery(registry: Registry) -> None:
    deploy(registry, {"1.0": 2, "2.0": 1})
    registry.set_traffic("shop", {"1.0": 70, "2.0": 30})

    policy = registry.retire("shop", "1.0")

    assert versions_served(registry, 50) == {"2.0": 50}
    assert policy.distribution == {"2.0": 100}
    with pytest.raises(NoInstance) as retired:
        registry.discover("shop", strategy=ROUND_ROBIN, version="1.0")
    assert retired.value.code == "version_retired"


def test_when_every_version_is_retired_discovery_says_so(registry: Registry) -> None:
    deploy(registry, {"1.0": 1, "2.0": 1})
    registry.retire("shop", "1.0")
    registry.retire("shop", "2.0")

    with pytest.raises(NoInstance) as nothing_left:
        registry.discover("shop", strategy=ROUND_ROBIN)

    assert nothing_left.value.code == "version_retired"
    assert "1.0, 2.0" in nothing_left.value.message


def test_a_retired_version_stays_retired_for_instances_registered_later(registry: Registry) -> None:
    deploy(registry, {"2.0": 1})
    registry.retire("shop", "1.0")

    body = {"serviceName": "shop", "host": "10.0.0.9", "port": 9, "metadata": {"version": "1.0"}}
    registry.register(parse_registration(body))

    assert versions_served(registry, 10) == {"2.0": 10}


def test_retire_without_a_split_still_hides_the_version(registry: Registry) -> None:
    deploy(registry, {"1.0": 1, "2.0": 1})

    registry.retire("shop", "1.0")

    assert versions_served(registry, 10) == {"2.0": 10}


def test_shift_moves_traffic_step_by_step(registry: Registry) -> None:
    deploy(registry, {"1.0": 1, "2.0": 1})

    steps = [registry.shift_traffic("shop", from_version="1.0", to_version="2.0", percentage=25) for _ in range(5)]
    policy = registry.traffic("shop")

    assert steps == [25, 25, 25, 25, 0]
    assert policy is not None and policy.distribution == {"2.0": 100}


def test_a_shift_between_versions_outside_the_split_is_refused(registry: Registry) -> None:
    deploy(registry, {"1.0": 1, "2.0": 1})
    registry.set_traffic("shop", {"1.0": 100})

    with pytest.raises(InvalidInput) as refused:
        registry.shift_traffic("shop", from_version="1.O", to_version="2.O", percentage=10)

    policy = registry.traffic("shop")
    assert refused.value.code == "version_not_in_split"
    assert policy is not None and policy.distribution == {"1.0": 100}


def test_a_split_whose_versions_cannot_serve_falls_back_to_the_rest(registry: Registry) -> None:
    deploy(registry, {"1.0": 1})
    registry.set_traffic("shop", {"3.0": 100})

    assert versions_served(registry, 5) == {"1.0": 5}


def test_a_split_skips_a_version_with_no_healthy_instance(registry: Registry) -> None:
    deploy(registry, {"1.0": 1, "2.0": 1})
    registry.set_traffic("shop", {"1.0": 50, "2.0": 50})
    canary = registry.resolve("shop:10.0.0.1:2")

    registry.set_health(canary, healthy=False, reason="test")

    assert versions_served(registry, 10) == {"1.0": 10}


@pytest.mark.parametrize(
    "distribution",
    [{}, {"1.0": 50}, {"1.0": 60, "2.0": 60}, {"1.0": -10, "2.0": 110}, {"1.0": "80", "2.0": 20}, [80, 20], None],
)
def test_bad_distributions_are_refused(distribution: object) -> None:
    with pytest.raises(InvalidInput):
        parse_distribution(distribution)


def test_smooth_weighted_choice_uses_only_servable_versions() -> None:
    policy = TrafficPolicy()
    policy.set_distribution({"a": 50, "b": 50})

    assert {policy.choose_version({"b"}) for _ in range(4)} == {"b"}
    assert policy.choose_version(set()) is None


async def register_version(api: Client, port: int, version: str) -> None:
    body = {"serviceName": "shop", "host": "10.0.0.1", "port": port, "metadata": {"version": version}}
    assert (await api.post("/register", json=body)).status == 200


async def test_traffic_endpoints_round_trip(api: Client) -> None:
    await register_version(api, 1, "1.0")
    await register_version(api, 2, "2.0")

    split = await api.post("/traffic/set", json={"serviceName": "shop", "distribution": {"1.0": 90, "2.0": 10}})
    shifted = await api.post(
        "/traffic/shift", json={"serviceName": "shop", "fromVersion": "1.0", "toVersion": "2.0", "percentage": 40}
    )
    current = await api.get("/traffic", params={"serviceName": "shop"})
    promoted = await api.post("/version/promote", json={"serviceName": "shop", "version": "2.0"})
    retired = await api.post("/version/retire", json={"serviceName": "shop", "version": "1.0"})

    assert (await split.json())["distribution"] == {"1.0": 90, "2.0": 10}
    assert (await shifted.json())["moved"] == 40
    assert (await current.json())["distribution"] == {"1.0": 50, "2.0": 50}
    assert (await promoted.json())["distribution"] == {"2.0": 100}
    assert (await retired.json())["retired"] == ["1.0"]
    discovered = await (await api.get("/discover", params={"serviceName": "shop"})).json()
    assert discovered["version"] == "2.0"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/traffic/set", {"serviceName": "shop", "distribution": {"1.0": 50}}),
        ("/traffic/set", {"serviceName": "shop"}),
        ("/traffic/set", {"distribution": {"1.0": 100}}),
        ("/traffic/shift", {"serviceName": "shop", "fromVersion": "1.0", "toVersion": "1.0", "percentage": 5}),
        ("/traffic/shift", {"serviceName": "shop", "fromVersion": "1.0", "toVersion": "2.0", "percentage": 101}),
        ("/traffic/shift", {"serviceName": "shop", "fromVersion": "1.0", "toVersion": "2.0"}),
        ("/version/promote", {"serviceName": "shop"}),
        ("/version/retire", {"serviceName": "shop", "version": ""}),
        ("/version/retire", ["shop"]),
    ],
)
async def test_bad_traffic_requests_are_refused_and_change_nothing(
    api: Client, registry: Registry, path: str, body: object
) -> None:
    response = await api.post(path, json=body)

    assert response.status == 400
    assert (await response.json())["code"] == "invalid_input"
    assert registry.traffic("shop") is None
