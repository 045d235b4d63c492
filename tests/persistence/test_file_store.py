"""The file store, in process: what survives a restart, what a write waits for, and what a damaged journal keeps."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from maxine_registry.persistence import file_store
from maxine_registry.persistence.file_store import encode_line, load_files
from maxine_registry.persistence.state import NODE, Change
from tests.persistence.conftest import Client, PersistentRegistries, eventually

SERVICEOPS = "/api/maxine/serviceops"


async def post(client: Client, path: str, body: dict[str, Any], *, method: str = "POST") -> Any:
    response = await client.request(method, path, json=body)
    assert response.status == 200, f"{method} {path} answered {response.status}: {await response.text()}"
    return await response.json()


async def get(client: Client, path: str, *, caller: str = "web") -> tuple[int, Any]:
    response = await client.get(path, headers={"X-Maxine-Caller": caller})
    return response.status, await response.json()


async def register(client: Client, *, port: int, service: str = "orders", **fields: Any) -> None:
    await post(client, "/register", {"serviceName": service, "host": "10.0.0.5", "port": port, **fields})


async def node_ids(client: Client, service: str = "orders") -> set[str]:
    _, document = await get(client, "/servers")
    return {node["nodeId"] for node in document["services"].get(service, {}).get("nodes", [])}


async def test_every_kind_of_state_survives_a_restart(persistent_registry: PersistentRegistries) -> None:
    client = await persistent_registry.open()
    await register(client, port=8080, metadata={"version": "1.2", "tags": ["eu", "web"], "team": "shop"}, ttl=60)
    await register(client, port=8081, metadata={"version": "2.0"}, ttl=60)
    await post(client, "/traffic/set", {"serviceName": "orders", "distribution": {"1.2": 80, "2.0": 20}})
    await post(client, SERVICEOPS + "/config/set", {"serviceName": "orders", "key": "timeout", "value": 5000})
    await post(client, SERVICEOPS + "/config/set", {"serviceName": "orders", "key": "timeout", "value": 7000})
    await post(client, SERVICEOPS + "/acl/set", {"serviceName": "orders", "allow": ["web"], "deny": []})
    await post(client, SERVICEOPS + "/intention/set", {"source": "batch", "destination": "orders", "action": "deny"})
    await post(client, "/blacklist/add", {"serviceName": "legacy"})
    await post(client, SERVICEOPS + "/dependency/add", {"serviceName": "orders", "dependsOn": "payments"})

    client = await persistent_registry.open()

    assert await node_ids(client) == {"orders:10.0.0.5:8080", "orders:10.0.0.5:8081"}
    status, instance = await get(client, "/discover?serviceName=orders&version=1.2")
    assert status == 200
    assert instance["metadata"] == {"version": "1.2", "tags": ["eu", "web"], "team": "shop"}
    assert sorted(instance["tags"]) == ["eu", "web"]
    _, traffic = await get(client, "/traffic?serviceName=orders")
    assert traffic["distribution"] == {"1.2": 80.0, "2.0": 20.0}
    _, history = await get(client, SERVICEOPS + "/config/history?serviceName=orders&key=timeout")
    assert [version["value"] for version in history["versions"]] == [7000, 5000]
    _, acl = await get(client, SERVICEOPS + "/acl/orders")
    assert acl["allow"] == ["web"]
    status, _ = await get(client, SERVICEOPS + "/intention/batch/orders")
    assert status == 200
    _, blacklist = await get(client, "/blacklist")
    assert blacklist["blacklist"] == ["legacy"]
    _, dependencies = await get(client, SERVICEOPS + "/dependency/get?serviceName=orders")
    assert dependencies["dependencies"] == ["payments"]


async def test_a_write_is_in_the_journal_before_it_is_answered(persistent_registry: PersistentRegistries) -> None:
    client = await persistent_registry.open()

    await register(client, port=8080, ttl=60)

    # Read the files as a restarted server would, with this one still running and never stopped.
    loaded = load_files(persistent_registry.file)
    assert set(loaded.state[NODE]) == {"orders:10.0.0.5:8080"}


async def test_deregistrations_and_ended_leases_are_kept(persistent_registry: PersistentRegistries) -> None:
    client = await persistent_registry.open()
    await register(client, port=8080, ttl=60)
    await register(client, port=8081, ttl=60)
    await register(client, port=8082, ttl=1)
    await post(client, "/deregister", {"nodeId": "orders:10.0.0.5:8081"}, method="DELETE")

    async def lease_ended() -> bool:
        persistent_registry.sweep()
        return "orders:10.0.0.5:8082" not in await node_ids(client)

    await eventually(lease_ended, what="the one-second lease ends")
    client = await persistent_registry.open()

    assert await node_ids(client) == {"orders:10.0.0.5:8080"}


async def test_a_restored_instance_starts_a_fresh_lease_and_ends_without_heartbeats(
    persistent_registry: PersistentRegistries,
) -> None:
    client = await persistent_registry.open()
    await register(client, port=8080, ttl=1)
    await persistent_registry.close()
    # Longer than the lease: what counts is the lease it gets at the restart, not the one it had.
    await asyncio.sleep(1.2)

    client = await persistent_registry.open()
    assert await node_ids(client) == {"orders:10.0.0.5:8080"}

    async def lease_ended() -> bool:
        persistent_registry.sweep()
        return not await node_ids(client)

    await eventually(lease_ended, what="the restored instance's lease ends without heartbeats")


async def test_a_torn_or_corrupt_journal_line_ends_the_replay_and_the_rest_is_kept(
    persistent_registry: PersistentRegistries,
) -> None:
    client = await persistent_registry.open()
    await register(client, port=8080, ttl=60)
    await register(client, port=8081, ttl=60)
    await persistent_registry.close()

    # A line with a wrong checksum, a good line after it (never reachable), and a line cut short by a crash.
    good = encode_line(Change(kind=NODE, key="orders:10.0.0.5:9000", value=_node(9000)))
    corrupt = b"00000000" + good[8:]
    torn = encode_line(Change(kind=NODE, key="orders:10.0.0.5:9001", value=_node(9001)))[:-20]
    with persistent_registry.journal.open("ab") as journal:
        journal.write(corrupt + good + torn)

    client = await persistent_registry.open()

    assert await node_ids(client) == {"orders:10.0.0.5:8080", "orders:10.0.0.5:8081"}
    # The restart compacted: the damaged tail is gone, and new writes land where a replay reaches them.
    await register(client, port=8082, ttl=60)
    client = await persistent_registry.open()
    assert await node_ids(client) == {"orders:10.0.0.5:8080", "orders:10.0.0.5:8081", "orders:10.0.0.5:8082"}


async def test_a_journal_of_an_older_snapshot_is_ignored(persistent_registry: PersistentRegistries) -> None:
    client = await persistent_registry.open()
    await register(client, port=8080, ttl=60)
    await persistent_registry.close()
    stale = persistent_registry.journal.read_bytes()

    # A restart compacts: the old journal's records are in the new snapshot, and its generation is over.
    await persistent_registry.open()
    await persistent_registry.close()
    late_record = encode_line(Change(kind=NODE, key="late:10.0.0.1:1", value=_node(1, service="late")))
    persistent_registry.journal.write_bytes(stale + late_record)

    client = await persistent_registry.open()

    assert await node_ids(client) == {"orders:10.0.0.5:8080"}
    assert await node_ids(client, "late") == set()


async def test_the_journal_is_compacted_into_a_new_snapshot_as_it_grows(
    persistent_registry: PersistentRegistries, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_store, "MIN_COMPACT_BYTES", 2000)
    client = await persistent_registry.open()
    _, before = await get(client, SERVICEOPS + "/persistence")

    for port in range(8000, 8060):
        await register(client, port=port, ttl=60)

    _, after = await get(client, SERVICEOPS + "/persistence")
    assert after["compactions"] > before["compactions"]
    assert after["journalBytes"] < 2000 + 1000
    client = await persistent_registry.open()
    assert len(await node_ids(client)) == 60


async def test_a_restore_is_kept_like_any_write(persistent_registry: PersistentRegistries) -> None:
    client = await persistent_registry.open()
    await register(client, port=8080, ttl=60)
    snapshot = {
        "format": "maxine-snapshot",
        "version": 1,
        "parts": {
            "registry": {"instances": [_node(9000)], "traffic": {}},
            "configs": [
                {
                    "serviceName": "orders",
                    "key": "retries",
                    "namespace": "default",
                    "region": "",
                    "zone": "",
                    "versions": [{"version": 3, "value": 2, "metadata": {}, "timestamp": 1}],
                }
            ],
        },
    }
    await post(client, "/restore", snapshot)

    client = await persistent_registry.open()

    assert await node_ids(client) == {"orders:10.0.0.5:9000"}
    _, config = await get(client, SERVICEOPS + "/config/get?serviceName=orders&key=retries")
    assert (config["value"], config["version"]) == (2, 3)


async def test_with_a_flush_interval_writes_reach_the_disk_shortly_after_their_answer(
    persistent_registry: PersistentRegistries,
) -> None:
    client = await persistent_registry.open(persistence_flush_ms=50)

    await register(client, port=8080, ttl=60)

    async def on_disk() -> bool:
        return "orders:10.0.0.5:8080" in load_files(persistent_registry.file).state.get(NODE, {})

    await eventually(on_disk, what="the grouped write reaches the journal")
    _, status = await get(client, SERVICEOPS + "/persistence")
    assert (status["synchronous"], status["flushMs"]) == (False, 50)


async def test_a_write_the_disk_refuses_answers_503_and_is_written_once_it_can_be(
    persistent_registry: PersistentRegistries, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await persistent_registry.open()
    real_fdatasync = os.fdatasync

    def full_disk(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full_disk)
    response = await client.post("/register", json={"serviceName": "orders", "host": "10.0.0.5", "port": 8080})
    assert response.status == 503
    assert (await response.json())["code"] == "persistence_unavailable"

    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    await register(client, port=8081, ttl=60)
    client = await persistent_registry.open()
    assert await node_ids(client) == {"orders:10.0.0.5:8080", "orders:10.0.0.5:8081"}


async def test_metrics_tell_the_persistence_in_use(persistent_registry: PersistentRegistries) -> None:
    client = await persistent_registry.open()

    _, metrics = await get(client, "/metrics")

    assert (metrics["persistenceEnabled"], metrics["persistenceType"]) == (True, "file")


async def test_an_unreadable_snapshot_stops_the_start_and_is_left_as_it_was(
    persistent_registry: PersistentRegistries,
) -> None:
    persistent_registry.data_dir.mkdir(parents=True)
    persistent_registry.file.write_bytes(b'{"format": "maxine-snapshot", "version": 1, "parts": ')

    with pytest.raises(file_store.PersistenceFileError, match="cannot be read"):
        await persistent_registry.open()

    assert persistent_registry.file.read_bytes() == b'{"format": "maxine-snapshot", "version": 1, "parts": '


async def test_two_servers_cannot_use_one_file(persistent_registry: PersistentRegistries, tmp_path: Path) -> None:
    await persistent_registry.open()
    second = PersistentRegistries(data_dir=persistent_registry.data_dir)

    with pytest.raises(file_store.PersistenceFileError, match="Another process uses"):
        await second.open()


def test_a_data_directory_holds_registry_json(tmp_path: Path) -> None:
    assert file_store.resolve_path(str(tmp_path)) == tmp_path / "registry.json"
    assert file_store.resolve_path(str(tmp_path / "new") + "/") == tmp_path / "new" / "registry.json"
    assert file_store.resolve_path(str(tmp_path / "state.json")) == tmp_path / "state.json"


def _node(port: int, *, service: str = "orders") -> dict[str, Any]:
    return {"serviceName": service, "host": "10.0.0.5", "port": port, "metadata": {}, "ttl": 60.0}
