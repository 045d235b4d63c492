"""
Backup and restore: a versioned snapshot of every part, restored whole or not at all.

A backup of a populated registry restored into an empty one gives back the same instances,
traffic policies and every other feature's part; a broken document changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.registry_snapshot import RegistrySnapshotPart
from maxine_registry.settings import Settings
from tests.registry.conftest import FakeClock

Client = TestClient[object, object]
StartApp = Callable[..., Awaitable[Client]]
LEASE_FIELDS = ("expiresIn", "registeredAt")


async def ok(response: Any) -> Any:
    assert response.status == 200, (
        f"{response.method} {response.url} answered {response.status}: {await response.text()}"
    )
    return await response.json()


async def populate(api: Client) -> None:
    """Instances of two versions, a canary split with a retired version, and state in other features' parts."""
    instances = [
        {"serviceName": "orders", "host": "10.0.0.5", "port": 8080, "metadata": {"version": "1.0", "tags": ["eu"]}},
        {"serviceName": "orders", "host": "10.0.0.6", "port": 8080, "metadata": {"version": "2.0", "weight": 3}},
        {"serviceName": "orders", "host": "10.0.0.7", "port": 8080, "metadata": {"version": "0.9"}, "ttl": 120},
        {"serviceName": "billing", "host": "::1", "port": 9000, "metadata": {"owner": {"team": "money"}}},
    ]
    for instance in instances:
        await ok(await api.post("/register", json=instance))
    await ok(await api.post("/version/retire", json={"serviceName": "orders", "version": "0.9"}))
    await ok(await api.post("/traffic/set", json={"serviceName": "orders", "distribution": {"1.0": 80, "2.0": 20}}))
    await ok(await api.post("/config/set", json={"serviceName": "orders", "key": "timeout", "value": 30}))
    await ok(await api.post("/blacklist/add", json={"serviceName": "spammer"}))
    await ok(
        await api.post("/api/maxine/serviceops/dependency/add", json={"serviceName": "orders", "dependsOn": "billing"})
    )


async def servers_without_leases(api: Client) -> dict[str, Any]:
    listing = await ok(await api.get("/servers"))
    for service in listing["services"].values():
        service.pop("revision")
        for node in service["nodes"]:
            for name in LEASE_FIELDS:
                node.pop(name)
        service["nodes"].sort(key=lambda node: node["nodeId"])
    return dict(listing)


async def state(api: Client) -> dict[str, Any]:
    """What a restore must reproduce: the listing, the traffic policies, and every part of a backup."""
    return {
        "servers": await servers_without_leases(api),
        "traffic": await ok(await api.get("/traffic", params={"serviceName": "orders"})),
        "parts": (await ok(await api.get("/backup")))["parts"],
    }


async def test_a_backup_restored_into_an_empty_registry_gives_back_the_same_state(app_client: StartApp) -> None:
    source = await app_client(Settings())
    target = await app_client(Settings())
    await populate(source)

    response = await source.get("/backup")
    document = await ok(response)
    restored = await ok(await target.post("/restore", json=document))

    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert (document["format"], document["version"]) == ("maxine-snapshot", 1)
    assert {"registry", "configs", "governance", "dependencies"} <= set(document["parts"])
    assert restored["restored"] == sorted(document["parts"])
    assert await state(target) == await state(source)


async def test_restoring_replaces_what_was_there(app_client: StartApp) -> None:
    source = await app_client(Settings())
    target = await app_client(Settings())
    await populate(source)
    await ok(await target.post("/register", json={"serviceName": "stale", "host": "10.9.9.9", "port": 1}))

    await ok(await target.post("/restore", json=await ok(await source.get("/backup"))))
    heartbeat = await target.post("/heartbeat", json={"nodeId": "stale:10.9.9.9:1"})

    assert "stale" not in (await servers_without_leases(target))["services"]
    assert heartbeat.status == 404
    assert (await heartbeat.json())["code"] == "not_registered"


def _break_last_instance(document: dict[str, Any]) -> None:
    document["parts"]["registry"]["instances"][-1]["port"] = 70000


def _break_the_traffic_split(document: dict[str, Any]) -> None:
    document["parts"]["registry"]["traffic"]["orders"]["distribution"] = {"1.0": 50}


def _add_an_unknown_part(document: dict[str, Any]) -> None:
    document["parts"]["time-machine"] = {}


def _claim_a_future_version(document: dict[str, Any]) -> None:
    document["version"] = 2


def _claim_another_format(document: dict[str, Any]) -> None:
    document["format"] = "etcd-snapshot"


def _make_parts_a_list(document: dict[str, Any]) -> None:
    document["parts"] = [document["parts"]]


def _break_the_blacklist_part(document: dict[str, Any]) -> None:
    document["parts"]["governance"] = "not an object"


BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "an invalid last instance": (_break_last_instance, "invalid_input"),
    "a split that does not sum to 100": (_break_the_traffic_split, "invalid_input"),
    "an unknown part": (_add_an_unknown_part, "unknown_snapshot_part"),
    "a newer version": (_claim_a_future_version, "unsupported_snapshot_version"),
    "another format": (_claim_another_format, "invalid_snapshot"),
    "parts that are not an object": (_make_parts_a_list, "invalid_snapshot"),
    "a broken governance part": (_break_the_blacklist_part, ""),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
async def test_a_broken_snapshot_is_refused_and_changes_nothing(app_client: StartApp, breakage: str) -> None:
    source = await app_client(Settings())
    target = await app_client(Settings())
    await populate(source)
    await ok(await target.post("/register", json={"serviceName": "kept", "host": "10.1.1.1", "port": 7}))
    before = await state(target)
    document = copy.deepcopy(await ok(await source.get("/backup")))
    breaker, code = BREAKAGES[breakage]
    breaker(document)

    response = await target.post("/restore", json=document)

    assert response.status == 400
    if code:
        assert (await response.json())["code"] == code
    assert await state(target) == before


async def test_a_body_that_is_not_json_is_refused(app_client: StartApp) -> None:
    api = await app_client(Settings())

    response = await api.post("/restore", data=b"{not json", headers={"Content-Type": "application/json"})

    assert response.status == 400
    assert (await response.json())["code"] == "invalid_json"


async def test_a_snapshot_may_exceed_the_request_limit_but_not_the_restore_limit(app_client: StartApp) -> None:
    source = await app_client(Settings())
    roomy = await app_client(Settings(max_body_bytes=4096, max_restore_bytes=1024 * 1024))
    tight = await app_client(Settings(max_body_bytes=4096, max_restore_bytes=4096))
    for port in range(1, 101):
        await ok(await source.post("/register", json={"serviceName": "orders", "host": "10.0.0.5", "port": port}))
    document = await ok(await source.get("/backup"))

    accepted = await roomy.post("/restore", json=document)
    refused = await tight.post("/restore", json=document)

    assert accepted.status == 200
    assert (await accepted.json())["nodes"] == 100
    assert refused.status == 413
    assert "4096" in (await refused.json())["error"]


def test_restored_instances_start_a_fresh_lease(registry: Registry, clock: FakeClock) -> None:
    registration = parse_registration({"serviceName": "orders", "host": "10.0.0.5", "port": 80, "ttl": 10})
    instance = registry.register(registration)
    part = RegistrySnapshotPart(registry, max_metadata_bytes=1024)
    saved = part.export()
    clock.advance(8)

    part.prepare(saved)()

    restored = registry.resolve("orders:10.0.0.5:80")
    assert restored is not instance
    assert registry.lease_view(restored)["expiresIn"] == 10.0
