"""Config management on both surfaces: set, get, all, history, delete; versions, scopes, limits, events, snapshots."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry import configs
from maxine_registry.configs import ConfigScope, ConfigStore
from maxine_registry.errors import InvalidInput
from maxine_registry.events import EventBus
from maxine_registry.http.common import OPERATIONS_KEY
from maxine_registry.http.configs import CONFIG_STORE_KEY, CONFIG_WATCHES_KEY, STREAM_TIMING_KEY
from maxine_registry.registry import Registry
from tests.registry.conftest import FakeClock

Client = TestClient[Any, Any]
SERVICEOPS = "/api/maxine/serviceops"


async def expect_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body: dict[str, Any] = await response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return body


async def set_config(api: Client, prefix: str = "", **fields: Any) -> dict[str, Any]:
    document = {"serviceName": "orders", "key": "timeout", "value": 5000} | fields
    response = await api.post(f"{prefix}/config/set", json=document)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def test_set_then_get_returns_the_value_with_its_version_and_metadata(api: Client, clock: FakeClock) -> None:
    stored = await set_config(api, metadata={"description": "Request timeout"})

    response = await api.get("/config/get", params={"serviceName": "orders", "key": "timeout"})

    assert response.status == 200
    assert await response.json() == stored
    assert stored == {
        "serviceName": "orders",
        "key": "timeout",
        "value": 5000,
        "version": 1,
        "metadata": {"description": "Request timeout"},
        "updatedAt": int(clock.now * 1000),
        "namespace": "default",
        "region": "",
        "zone": "",
    }


@pytest.mark.parametrize("value", [None, "text", 1.5, True, [1, "two"], {"nested": {"deep": [1, 2]}}])
async def test_values_may_be_any_json(api: Client, value: Any) -> None:
    await set_config(api, value=value)

    got = await (await api.get("/config/get", params={"serviceName": "orders", "key": "timeout"})).json()

    assert got["value"] == value


async def test_every_set_makes_a_new_version_and_history_lists_them_newest_first(api: Client, clock: FakeClock) -> None:
    first = await set_config(api, value=100, metadata={"by": "alice"})
    clock.advance(5)
    second = await set_config(api, value=200)
    clock.advance(5)
    third = await set_config(api, value=300, metadata={"by": "bob"})

    response = await api.get(f"{SERVICEOPS}/config/history", params={"serviceName": "orders", "key": "timeout"})
    history = await response.json()

    assert [first["version"], second["version"], third["version"]] == [1, 2, 3]
    assert history["serviceName"] == "orders" and history["key"] == "timeout"
    assert history["versions"] == [
        {"version": 3, "value": 300, "metadata": {"by": "bob"}, "timestamp": third["updatedAt"]},
        {"version": 2, "value": 200, "metadata": {}, "timestamp": second["updatedAt"]},
        {"version": 1, "value": 100, "metadata": {"by": "alice"}, "timestamp": first["updatedAt"]},
    ]
    assert first["updatedAt"] < second["updatedAt"] < third["updatedAt"]


async def test_history_keeps_only_the_newest_versions(api: Client) -> None:
    for value in range(configs.MAX_HISTORY + 5):
        await set_config(api, value=value)

    history = await (await api.get("/config/history", params={"serviceName": "orders", "key": "timeout"})).json()

    versions = [item["version"] for item in history["versions"]]
    assert versions == list(range(configs.MAX_HISTORY + 5, 5, -1))


async def test_versions_keep_rising_after_a_delete(api: Client) -> None:
    await set_config(api, value=1)
    await set_config(api, value=2)
    await api.delete("/config/delete", params={"serviceName": "orders", "key": "timeout"})

    again = await set_config(api, value=3)

    assert again["version"] == 3


async def test_scopes_are_isolated(api: Client) -> None:
    await set_config(api, SERVICEOPS, value="default-scope")
    await set_config(api, SERVICEOPS, value="us-east", region="us-east")
    await set_config(api, SERVICEOPS, value="us-east-1a", region="us-east", zone="1a")
    await set_config(api, SERVICEOPS, value="staging", namespace="staging")

    async def value_in(**scope: str) -> Any:
        response = await api.get(
            f"{SERVICEOPS}/config/get", params={"serviceName": "orders", "key": "timeout", **scope}
        )
        return (await response.json())["value"]

    assert await value_in() == "default-scope"
    assert await value_in(namespace="default") == "default-scope"
    assert await value_in(region="us-east") == "us-east"
    assert await value_in(region="us-east", zone="1a") == "us-east-1a"
    assert await value_in(namespace="staging") == "staging"
    missing = await api.get(
        f"{SERVICEOPS}/config/get", params={"serviceName": "orders", "key": "timeout", "zone": "1a"}
    )
    await expect_error(missing, 404, "config_not_found")


async def test_all_lists_the_keys_of_one_service_in_one_scope(api: Client) -> None:
    await set_config(api, key="timeout", value=5000)
    await set_config(api, key="retries", value=3, metadata={"note": "per call"})
    await set_config(api, key="timeout", value=1, region="eu")
    await set_config(api, serviceName="payments", key="timeout", value=9)

    response = await api.get("/config/all", params={"serviceName": "orders"})
    listing = await response.json()

    assert listing["serviceName"] == "orders"
    assert (listing["namespace"], listing["region"], listing["zone"]) == ("default", "", "")
    assert listing["count"] == 2
    assert list(listing["configs"]) == ["retries", "timeout"]
    assert listing["configs"]["retries"]["value"] == 3
    assert listing["configs"]["retries"]["metadata"] == {"note": "per call"}
    assert listing["configs"]["timeout"]["value"] == 5000


async def test_all_of_a_service_without_configs_is_empty(api: Client) -> None:
    listing = await (await api.get(f"{SERVICEOPS}/config/all", params={"serviceName": "nobody"})).json()

    assert listing["configs"] == {} and listing["count"] == 0


@pytest.mark.parametrize("where", ["query", "body"])
async def test_delete_by_query_or_body_removes_the_key(api: Client, where: str) -> None:
    await set_config(api, SERVICEOPS, region="us-east")
    address = {"serviceName": "orders", "key": "timeout", "region": "us-east"}

    if where == "query":
        response = await api.delete(f"{SERVICEOPS}/config/delete", params=address)
    else:
        response = await api.delete(f"{SERVICEOPS}/config/delete", json=address)

    assert response.status == 200
    assert (await response.json())["deleted"] is True
    gone = await api.get(f"{SERVICEOPS}/config/get", params=address)
    await expect_error(gone, 404, "config_not_found")


async def test_deleting_a_missing_key_is_a_json_404(api: Client) -> None:
    response = await api.delete("/config/delete", params={"serviceName": "orders", "key": "nothing"})

    await expect_error(response, 404, "config_not_found")


async def test_changes_publish_config_events(api: Client, registry: Registry) -> None:
    await set_config(api, SERVICEOPS, region="us-east", zone="zone1")
    await api.delete(
        f"{SERVICEOPS}/config/delete",
        json={"serviceName": "orders", "key": "timeout", "region": "us-east", "zone": "zone1"},
    )

    events = [event.as_dict() for event in registry.events.history(limit=10)]

    assert [event["event"] for event in events] == ["config_changed", "config_deleted"]
    assert events[0]["data"] == {
        "serviceName": "orders",
        "key": "timeout",
        "value": 5000,
        "version": 1,
        "namespace": "default",
        "region": "us-east",
        "zone": "zone1",
    }
    assert events[1]["data"] == {
        "serviceName": "orders",
        "key": "timeout",
        "version": 1,
        "namespace": "default",
        "region": "us-east",
        "zone": "zone1",
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"key": "timeout", "value": 1}, "invalid_input"),
        ({"serviceName": "orders", "value": 1}, "invalid_input"),
        ({"serviceName": "orders", "key": "timeout"}, "invalid_input"),
        ({"serviceName": "bad name", "key": "timeout", "value": 1}, "invalid_input"),
        ({"serviceName": "orders", "key": "has space", "value": 1}, "invalid_input"),
        ({"serviceName": "orders", "key": "k" * (configs.MAX_KEY_LENGTH + 1), "value": 1}, "invalid_input"),
        ({"serviceName": "orders", "key": "timeout", "value": 1, "metadata": [1]}, "invalid_input"),
        ({"serviceName": "orders", "key": "timeout", "value": 1, "region": "us east"}, "invalid_input"),
        ({"serviceName": "orders", "key": "timeout", "value": 1, "zone": 7}, "invalid_input"),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    api: Client, registry: Registry, body: dict[str, Any], code: str
) -> None:
    response = await api.post("/config/set", json=body)

    await expect_error(response, 400, code)
    assert registry.events.published == 0


async def test_a_body_that_is_not_an_object_is_refused(api: Client) -> None:
    await expect_error(await api.post("/config/set", json=[1, 2]), 400, "invalid_input")
    await expect_error(await api.post("/config/set", data=b"{oops"), 400, "invalid_json")


async def test_get_needs_service_and_key(api: Client) -> None:
    await expect_error(await api.get("/config/get", params={"serviceName": "orders"}), 400, "invalid_input")
    await expect_error(await api.get("/config/history", params={"key": "timeout"}), 400, "invalid_input")


def store(clock: FakeClock) -> ConfigStore:
    return ConfigStore(events=EventBus(wall=lambda: clock.now), wall=lambda: clock.now)


def test_a_value_over_the_size_limit_is_refused(clock: FakeClock) -> None:
    configs_store = store(clock)
    big = "x" * configs.MAX_VALUE_BYTES

    with pytest.raises(configs.PayloadTooLarge) as refused:
        configs_store.set(service_name="orders", key="blob", scope=ConfigScope(), value=big)

    assert refused.value.code == "value_too_large"
    assert configs_store.entry_count == 0


def test_metadata_over_the_size_limit_is_refused(clock: FakeClock) -> None:
    configs_store = store(clock)

    with pytest.raises(configs.PayloadTooLarge) as refused:
        configs_store.set(
            service_name="orders",
            key="k",
            scope=ConfigScope(),
            value=1,
            metadata={"x": "y" * configs.MAX_METADATA_BYTES},
        )

    assert refused.value.code == "metadata_too_large"


def test_keys_per_service_are_bounded(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configs, "MAX_KEYS_PER_SERVICE", 3)
    configs_store = store(clock)
    for index in range(3):
        configs_store.set(service_name="orders", key=f"k{index}", scope=ConfigScope(), value=index)

    with pytest.raises(configs.Conflict) as refused:
        configs_store.set(service_name="orders", key="k3", scope=ConfigScope(), value=3)
    configs_store.set(service_name="orders", key="k0", scope=ConfigScope(), value="updating is fine")
    configs_store.set(service_name="orders", key="k3", scope=ConfigScope(region="eu"), value="another scope")

    assert refused.value.code == "too_many_keys"


def test_the_store_bounds_the_bytes_it_holds(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configs, "MAX_TOTAL_BYTES", 1000)
    configs_store = store(clock)
    configs_store.set(service_name="orders", key="a", scope=ConfigScope(), value="x" * 600)

    with pytest.raises(configs.Unavailable) as refused:
        configs_store.set(service_name="orders", key="b", scope=ConfigScope(), value="y" * 600)
    configs_store.delete(service_name="orders", key="a", scope=ConfigScope())
    configs_store.set(service_name="orders", key="b", scope=ConfigScope(), value="y" * 600)

    assert refused.value.code == "config_full"


def test_a_snapshot_restores_values_and_history(clock: FakeClock) -> None:
    original = store(clock)
    original.set(service_name="orders", key="timeout", scope=ConfigScope(), value=1, metadata={"by": "a"})
    original.set(service_name="orders", key="timeout", scope=ConfigScope(), value=2)
    original.set(service_name="orders", key="flag", scope=ConfigScope(namespace="staging", zone="z"), value=True)
    exported = original.export()

    restored = store(clock)
    restored.prepare(exported)()

    assert restored.export() == exported
    entry = restored.get(service_name="orders", key="timeout", scope=ConfigScope())
    assert (entry.current.value, entry.current.version) == (2, 2)
    again = restored.set(service_name="orders", key="timeout", scope=ConfigScope(), value=3)
    assert again.current.version == 3


@pytest.mark.parametrize(
    "document",
    [
        {"not": "a list"},
        [{"serviceName": "orders", "key": "k", "versions": []}],
        [
            {
                "serviceName": "orders",
                "key": "k",
                "versions": [{"version": 2, "value": 1, "timestamp": 0}, {"version": 1, "value": 1, "timestamp": 0}],
            }
        ],
        [{"serviceName": "bad name", "key": "k", "versions": [{"version": 1, "value": 1, "timestamp": 0}]}],
    ],
)
def test_a_bad_snapshot_is_refused_whole(clock: FakeClock, document: Any) -> None:
    configs_store = store(clock)
    configs_store.set(service_name="orders", key="keep", scope=ConfigScope(), value="me")

    with pytest.raises(InvalidInput):
        configs_store.prepare(document)

    assert configs_store.get(service_name="orders", key="keep", scope=ConfigScope()).current.value == "me"


async def test_configs_are_a_snapshot_part(api: Client) -> None:
    await set_config(api)

    part = api.app[OPERATIONS_KEY].snapshot_parts["configs"]

    assert part.export()[0]["key"] == "timeout"


# Watching over Server-Sent Events.

DEADLINE = 5.0


async def read_message(response: Any, *, deadline: float = DEADLINE, skip_comments: bool = True) -> dict[str, str]:
    """The fields of the next SSE message (``{"comment": ...}`` for a comment-only block unless skipped)."""
    while True:
        block = await asyncio.wait_for(response.content.readuntil(b"\n\n"), deadline)
        fields: dict[str, str] = {}
        for line in block.decode().splitlines():
            if line.startswith(":"):
                fields.setdefault("comment", line[1:].strip())
            elif line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if not skip_comments or set(fields) - {"comment"}:
            return fields


async def open_watch(api: Client, path: str = f"{SERVICEOPS}/config/watch", **params: str) -> Any:
    response = await api.get(path, params={"serviceName": "orders", **params})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    # The opening block says the subscription is live.
    assert "retry" in await read_message(response)
    return response


async def read_to_end(response: Any) -> bytes:
    return await asyncio.wait_for(response.content.read(), DEADLINE)


async def test_a_watch_receives_a_change_within_a_second(api: Client) -> None:
    stream = await open_watch(api, region="us-east", zone="zone1")

    stored = await set_config(api, SERVICEOPS, value=7000, region="us-east", zone="zone1")
    message = await read_message(stream, deadline=1.0)

    assert message["event"] == "config_changed"
    payload = json.loads(message["data"])
    assert int(message["id"]) == payload["seq"]
    assert payload["event"] == "config_changed"
    assert payload["data"] == {
        "serviceName": "orders",
        "key": "timeout",
        "value": 7000,
        "version": stored["version"],
        "namespace": "default",
        "region": "us-east",
        "zone": "zone1",
    }
    stream.close()


async def test_a_watch_sees_only_its_own_scope_and_service(api: Client) -> None:
    stream = await open_watch(api, "/config/watch", region="us-east")

    await set_config(api, value="other region", region="eu-west")
    await set_config(api, value="other zone", region="us-east", zone="z9")
    await set_config(api, value="other namespace", region="us-east", namespace="staging")
    await set_config(api, serviceName="payments", value="other service", region="us-east")
    await set_config(api, key="retries", value="mine", region="us-east")
    await api.delete("/config/delete", params={"serviceName": "orders", "key": "retries", "region": "us-east"})

    changed = await read_message(stream)
    deleted = await read_message(stream)

    assert changed["event"] == "config_changed"
    assert json.loads(changed["data"])["data"]["value"] == "mine"
    assert deleted["event"] == "config_deleted"
    assert json.loads(deleted["data"])["data"]["key"] == "retries"
    assert int(deleted["id"]) > int(changed["id"])
    stream.close()


async def test_a_watch_may_narrow_to_one_key(api: Client) -> None:
    stream = await open_watch(api, key="retries")

    await set_config(api, key="timeout", value=1)
    await set_config(api, key="retries", value=2)

    message = await read_message(stream)
    assert json.loads(message["data"])["data"]["key"] == "retries"
    stream.close()


async def test_an_idle_watch_sends_keep_alive_comments(api: Client) -> None:
    api.app[STREAM_TIMING_KEY].keepalive = 0.05
    stream = await open_watch(api)

    message = await read_message(stream, skip_comments=False)

    assert message == {"comment": "keep-alive"}
    stream.close()


async def test_a_slow_watcher_is_disconnected_instead_of_queueing_without_bound(api: Client) -> None:
    watches = api.app[CONFIG_WATCHES_KEY]
    watches.queue_size = 4
    stream = await open_watch(api)
    assert len(watches) == 1

    # Ten changes land before the stream's task can run: the watcher falls behind its queue.
    store = api.app[CONFIG_STORE_KEY]
    for value in range(10):
        store.set(service_name="orders", key="timeout", scope=ConfigScope(), value=value)
    rest = (await read_to_end(stream)).decode()

    assert rest.count("event: config_changed") == 4
    assert rest.rstrip().endswith("event: overflow\ndata: {}")
    await asyncio.wait_for(watches.wait_released(), DEADLINE)
    assert len(watches) == 0


async def test_a_watch_is_released_when_its_client_goes_away(api: Client) -> None:
    api.app[STREAM_TIMING_KEY].poll = 0.02
    watches = api.app[CONFIG_WATCHES_KEY]
    stream = await open_watch(api)
    assert len(watches) == 1

    stream.close()

    await asyncio.wait_for(watches.wait_released(), DEADLINE)
    assert len(watches) == 0
    await set_config(api)  # publishing after the client left reaches nobody and fails nothing


async def test_shutdown_ends_open_watches_cleanly(api: Client) -> None:
    watches = api.app[CONFIG_WATCHES_KEY]
    stream = await open_watch(api)

    closing = asyncio.ensure_future(api.server.close())
    rest = await read_to_end(stream)
    await asyncio.wait_for(closing, DEADLINE)

    # The stream ended with its last chunk rather than a cut connection, and nothing is subscribed.
    assert rest == b""
    assert stream.content.at_eof()
    assert len(watches) == 0


async def test_a_watch_needs_a_valid_service_name(api: Client) -> None:
    await expect_error(await api.get(f"{SERVICEOPS}/config/watch"), 400, "invalid_input")
    await expect_error(
        await api.get("/config/watch", params={"serviceName": "orders", "zone": "a b"}), 400, "invalid_input"
    )


async def test_watches_are_bounded(api: Client) -> None:
    api.app[CONFIG_WATCHES_KEY].limit = 1
    stream = await open_watch(api)

    await expect_error(await api.get("/config/watch", params={"serviceName": "orders"}), 503, "too_many_watches")
    stream.close()
