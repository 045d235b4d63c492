"""The asynchronous client's single operations against a real registry process."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from maxine_client import AsyncMaxineClient, Instance, MaxineError, NotFound, NotRegistered, Registration

if TYPE_CHECKING:
    from conftest import MaxineProcess


async def test_register_discover_heartbeat_deregister_round_trip(
    client: AsyncMaxineClient, registry: MaxineProcess
) -> None:
    registration = await client.register("orders", host="127.0.0.1", port=9001, ttl=5)
    assert registration == Registration(
        node_id="orders:127.0.0.1:9001",
        address="127.0.0.1:9001",
        ttl=5.0,
        service_name="orders",
        host="127.0.0.1",
        port=9001,
        requested_ttl=5,
    )

    instance = await client.discover("orders")
    assert instance.node_id == registration.node_id
    assert instance.url("/health") == "http://127.0.0.1:9001/health"

    lease = await client.heartbeat(registration.node_id)
    assert (lease.node_id, lease.ttl) == (registration.node_id, 5.0)

    await client.deregister(registration.node_id)
    with pytest.raises(NotFound) as raised:
        await client.discover("orders")
    assert raised.value.code == "service_not_found"
    assert [event["data"]["nodeId"] for event in registry.events(event="service_deregistered")] == [
        registration.node_id
    ]


async def test_discover_returns_the_instance_with_its_metadata_version_and_tags(client: AsyncMaxineClient) -> None:
    metadata = {"version": "2.1", "tags": ["eu", "canary"], "weight": 3, "owner": "team-a"}
    await client.register("billing", host="127.0.0.1", port=9100, metadata=metadata)

    instance = await client.discover("billing", strategy="random", version="2.1", tags=["canary"])

    assert instance == Instance(
        service_name="billing",
        node_id="billing:127.0.0.1:9100",
        host="127.0.0.1",
        port=9100,
        address="127.0.0.1:9100",
        version="2.1",
        tags=("canary", "eu"),
        weight=3.0,
        metadata=metadata,
        healthy=True,
    )
    with pytest.raises(TypeError):
        instance.metadata["owner"] = "someone else"  # type: ignore[index]


async def test_discover_with_tags_no_instance_carries_raises_not_found(client: AsyncMaxineClient) -> None:
    await client.register("billing", host="127.0.0.1", port=9100, metadata={"tags": ["eu"]})

    with pytest.raises(NotFound) as raised:
        await client.discover("billing", tags="us")

    assert raised.value.code == "no_instance"
    assert raised.value.status == 404


async def test_discover_of_an_unknown_service_names_it_in_the_error(client: AsyncMaxineClient) -> None:
    with pytest.raises(NotFound) as raised:
        await client.discover("nobody-home")

    assert raised.value.code == "service_not_found"
    assert "'nobody-home'" in str(raised.value)


async def test_heartbeat_of_an_unknown_node_raises_not_registered(client: AsyncMaxineClient) -> None:
    with pytest.raises(NotRegistered) as raised:
        await client.heartbeat("ghost:127.0.0.1:9999")

    assert raised.value.status == 404
    assert raised.value.code == "not_registered"
    assert "'ghost:127.0.0.1:9999'" in str(raised.value)


async def test_deregister_of_an_unknown_node_raises_not_registered(client: AsyncMaxineClient) -> None:
    with pytest.raises(NotRegistered):
        await client.deregister("ghost:127.0.0.1:9999")


async def test_an_invalid_registration_is_refused_with_the_registrys_reason(client: AsyncMaxineClient) -> None:
    with pytest.raises(MaxineError) as raised:
        await client.register("orders", host="127.0.0.1", port=70000)

    assert (raised.value.status, raised.value.code) == (400, "invalid_input")
    assert "70000" in str(raised.value)


async def test_metadata_that_is_not_json_is_refused_before_sending(client: AsyncMaxineClient) -> None:
    with pytest.raises(TypeError, match="cannot be encoded as JSON"):
        await client.register("orders", host="127.0.0.1", port=9001, metadata={"started": object()})


async def test_health_reports_the_registry_as_ok(client: AsyncMaxineClient) -> None:
    await client.register("orders", host="127.0.0.1", port=9001)

    health = await client.health()

    assert health["status"] == "ok"
    assert health["nodes"] == 1


async def test_a_base_url_with_the_serviceops_prefix_reaches_the_same_registry(registry: MaxineProcess) -> None:
    async with AsyncMaxineClient(registry.base_url + "/api/maxine/serviceops/") as prefixed:
        registration = await prefixed.register("orders", host="127.0.0.1", port=9001)
        instance = await prefixed.discover("orders")

    assert instance.node_id == registration.node_id


async def test_a_closed_client_refuses_further_calls(registry: MaxineProcess) -> None:
    maxine = AsyncMaxineClient(registry.base_url)
    await maxine.health()
    await maxine.close()

    with pytest.raises(RuntimeError, match="closed"):
        await maxine.health()


@pytest.mark.parametrize("base_url", ["127.0.0.1:8080", "ftp://127.0.0.1", "http://", "http://127.0.0.1/?x=1"])
def test_a_base_url_that_is_not_an_http_url_is_rejected(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        AsyncMaxineClient(base_url)
