"""Removing a service's traffic policy: DELETE /traffic?serviceName=..., on both surfaces."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.errors import NotFound
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.strategies import resolve_strategy

Client = TestClient[Any, Any]
SERVICEOPS = "/api/maxine/serviceops"


def test_clearing_a_policy_brings_back_every_version(registry: Registry) -> None:
    for port, version in ((1, "1.0"), (2, "2.0")):
        body = {"serviceName": "shop", "host": "10.0.0.1", "port": port, "metadata": {"version": version}}
        registry.register(parse_registration(body))
    registry.set_traffic("shop", {"1.0": 100})
    registry.retire("shop", "2.0")

    registry.clear_traffic("shop")

    assert registry.traffic("shop") is None
    served = {registry.discover("shop", strategy=resolve_strategy("round-robin")).version for _ in range(4)}
    assert served == {"1.0", "2.0"}


def test_clearing_a_service_without_a_policy_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound) as caught:
        registry.clear_traffic("shop")

    assert caught.value.code == "traffic_not_found"


@pytest.mark.parametrize("prefix", ["", SERVICEOPS])
async def test_delete_traffic_removes_the_split_and_announces_it(api: Client, prefix: str) -> None:
    split = {"serviceName": "shop", "distribution": {"1.0": 90, "2.0": 10}}
    assert (await api.post(prefix + "/traffic/set", json=split)).status == 200

    response = await api.delete(prefix + "/traffic", params={"serviceName": "shop"})

    assert response.status == 200
    assert await response.json() == {"serviceName": "shop", "distribution": {}, "retired": [], "deleted": True}
    current = await (await api.get(prefix + "/traffic", params={"serviceName": "shop"})).json()
    assert current["distribution"] == {}
    events = (await (await api.get("/events")).json())["events"]
    assert events[-1]["event"] == "traffic_changed"
    assert events[-1]["data"]["distribution"] == {}


async def test_delete_traffic_twice_answers_404_the_second_time(api: Client) -> None:
    await api.post("/traffic/set", json={"serviceName": "shop", "distribution": {"1.0": 100}})
    assert (await api.delete("/traffic", params={"serviceName": "shop"})).status == 200

    response = await api.delete("/traffic", params={"serviceName": "shop"})

    assert response.status == 404
    assert (await response.json())["code"] == "traffic_not_found"


async def test_delete_traffic_without_a_valid_service_name_is_refused(api: Client) -> None:
    response = await api.delete("/traffic", params={"serviceName": "bad name"})

    assert response.status == 400
    assert "serviceName" in (await response.json())["error"]
