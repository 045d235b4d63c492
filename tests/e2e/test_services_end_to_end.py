"""
End to end, with real processes only: a ``maxine`` registry and three demo services that register
themselves through the SDK with a 2 s lease.

What a user of Maxine relies on, checked from the outside: discovery spreads callers over every
live copy, and each address it hands out answers; a copy that dies without a word leaves discovery
once its lease runs out, while the live ones stay; a copy that is stopped politely leaves at once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from maxine_client import AsyncMaxineClient, MaxineClient

if TYPE_CHECKING:
    from conftest import MaxineProcess
    from e2e.conftest import DemoService, DemoServiceFactory

pytestmark = pytest.mark.e2e

SERVICE = "greeter"
TTL = 2.0
# A dead node must be gone from discovery within its lease plus this much (sweeps, scheduling).
EXPIRY_GRACE = 1.0
POLL_INTERVAL = 0.05


@pytest.fixture
def greeters(registry: MaxineProcess, demo_services: DemoServiceFactory) -> list[DemoService]:
    return demo_services(count=3, name=SERVICE, registry=registry, ttl=TTL)


def discover_nodes(registry: MaxineProcess, *, times: int) -> list[str]:
    """Node ids of ``times`` consecutive discoveries, through the blocking client."""
    with MaxineClient(registry.base_url) as maxine:
        return [maxine.discover(SERVICE, strategy="round-robin").node_id for _ in range(times)]


async def test_round_robin_discovery_visits_every_service_and_each_address_answers(
    registry: MaxineProcess, greeters: list[DemoService]
) -> None:
    async with AsyncMaxineClient(registry.base_url) as maxine:
        discovered = [await maxine.discover(SERVICE, strategy="round-robin") for _ in range(3)]

    assert {instance.node_id for instance in discovered} == {greeter.node_id for greeter in greeters}
    async with aiohttp.ClientSession() as http:
        for instance in discovered:
            async with http.get(instance.url("/")) as response:
                assert response.status == 200
                assert await response.json() == {"serviceName": SERVICE, "address": instance.address}


def test_a_killed_service_leaves_discovery_within_its_ttl_while_the_others_stay(
    registry: MaxineProcess, greeters: list[DemoService]
) -> None:
    victim, *survivors = greeters

    deadline = time.monotonic() + TTL + EXPIRY_GRACE
    victim.kill()
    while victim.node_id in registry.node_ids(SERVICE) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)

    assert registry.node_ids(SERVICE) == {survivor.node_id for survivor in survivors}
    assert set(discover_nodes(registry, times=4)) == {survivor.node_id for survivor in survivors}
    time.sleep(TTL)  # one more lease: the survivors stay because they heartbeat, not because they are young
    assert registry.node_ids(SERVICE) == {survivor.node_id for survivor in survivors}
    expired = [event["data"] for event in registry.events(event="service_unhealthy")]
    assert expired == [{"serviceName": SERVICE, "nodeId": victim.node_id, "reason": "lease_expired"}]


def test_a_terminated_service_deregisters_itself_at_once(registry: MaxineProcess, greeters: list[DemoService]) -> None:
    leaving, *staying = greeters

    exit_code = leaving.terminate()

    assert exit_code == 0
    assert registry.node_ids(SERVICE) == {service.node_id for service in staying}
    assert set(discover_nodes(registry, times=4)) == {service.node_id for service in staying}
    deregistered = [event["data"] for event in registry.events(event="service_deregistered")]
    assert deregistered == [{"serviceName": SERVICE, "nodeId": leaving.node_id}]
