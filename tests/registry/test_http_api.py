"""The HTTP API as clients see it: shapes of answers, JSON errors, limits, and both surfaces."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.registry import Registry
from tests.registry.conftest import FakeClock

Client = TestClient[Any, Any]
SERVICEOPS = "/api/maxine/serviceops"


async def register(api: Client, prefix: str = "", **body: Any) -> dict[str, Any]:
    document = {"serviceName": "orders", "host": "10.0.0.1", "port": 8080} | body
    response = await api.post(f"{prefix}/register", json=document)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def expect_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return body


async def test_register_then_discover_returns_the_instance(api: Client) -> None:
    registered = await register(api, metadata={"version": "1.0", "tags": ["web"], "zone": "a"})

    response = await api.get("/discover", params={"serviceName": "orders"})
    instance = await response.json()

    assert registered == {"nodeId": "orders:10.0.0.1:8080", "address": "10.0.0.1:8080", "ttl": 30.0}
    assert response.status == 200
    assert instance == {
        "serviceName": "orders",
        "nodeId": "orders:10.0.0.1:8080",
        "host": "10.0.0.1",
        "port": 8080,
        "address": "10.0.0.1:8080",
        "version": "1.0",
        "tags": ["web"],
        "weight": 1.0,
        "metadata": {"version": "1.0", "tags": ["web"], "zone": "a"},
        "healthy": True,
    }


async def test_ipv6_instances_work_end_to_end(api: Client) -> None:
    registered = await register(api, host="::1", port=9000)

    discovered = await (await api.get("/discover", params={"serviceName": "orders"})).json()
    beat = await api.post("/heartbeat", json={"nodeId": registered["nodeId"]})
    gone = await api.delete("/deregister", json={"nodeId": registered["nodeId"]})

    assert registered["address"] == "[::1]:9000"
    assert discovered["address"] == "[::1]:9000"
    assert discovered["host"] == "::1"
    assert beat.status == 200
    assert gone.status == 200
    assert (await api.get("/discover", params={"serviceName": "orders"})).status == 404


async def test_short_node_ids_name_a_single_instance(api: Client) -> None:
    await register(api, host="::1", port=9000)

    beat = await api.post("/heartbeat", json={"nodeId": "[::1]:9000"})
    gone = await api.delete("/deregister", json={"nodeId": "[::1]:9000"})

    assert (await beat.json())["nodeId"] == "orders:::1:9000"
    assert (await gone.json()) == {"nodeId": "orders:::1:9000", "deregistered": True}


async def test_ambiguous_short_node_ids_are_refused(api: Client) -> None:
    await register(api, serviceName="a")
    await register(api, serviceName="b")

    await expect_error(await api.delete("/deregister", json={"nodeId": "10.0.0.1:8080"}), 409, "ambiguous_node_id")


async def test_heartbeat_for_an_unknown_node_says_register_again(api: Client) -> None:
    body = await expect_error(await api.post("/heartbeat", json={"nodeId": "orders:10.0.0.9:1"}), 404, "not_registered")

    assert "register" in body["error"]


async def test_deregister_accepts_the_node_id_in_the_query(api: Client) -> None:
    registered = await register(api)

    response = await api.delete("/deregister", params={"nodeId": registered["nodeId"]})

    assert response.status == 200
    await expect_error(await api.delete("/deregister", params={"nodeId": registered["nodeId"]}), 404, "not_registered")


async def test_registering_twice_is_idempotent(api: Client, registry: Registry) -> None:
    await register(api)
    await register(api)

    assert registry.node_count == 1


async def test_discover_spreads_round_robin_by_default(api: Client) -> None:
    for port in (1, 2, 3):
        await register(api, port=port)

    ports = [(await (await api.get("/discover?serviceName=orders")).json())["port"] for _ in range(6)]

    assert ports == [1, 2, 3, 1, 2, 3]


async def test_discover_filters_by_version_and_tags(api: Client) -> None:
    await register(api, port=1, metadata={"version": "1.0", "tags": ["web"]})
    await register(api, port=2, metadata={"version": "2.0", "tags": ["web", "api"]})

    by_version = await api.get("/discover", params={"serviceName": "orders", "version": "1.0"})
    by_tags = await api.get("/discover", params={"serviceName": "orders", "tags": "api,web"})
    none = await api.get("/discover", params={"serviceName": "orders", "tags": "api,db"})

    assert (await by_version.json())["port"] == 1
    assert (await by_tags.json())["port"] == 2
    await expect_error(none, 404, "no_instance")


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({}, 400, "invalid_input"),
        ({"serviceName": "bad name"}, 400, "invalid_input"),
        ({"serviceName": "missing"}, 404, "service_not_found"),
        ({"serviceName": "orders", "loadBalancing": "psychic"}, 400, "unknown_strategy"),
    ],
)
async def test_discover_refuses_bad_queries(api: Client, query: dict[str, str], status: int, code: str) -> None:
    await register(api)

    await expect_error(await api.get("/discover", params=query), status, code)


BAD_REGISTRATIONS: list[tuple[Any, str]] = [
    ({"host": "10.0.0.1", "port": 80}, "invalid_input"),
    ({"serviceName": "", "host": "10.0.0.1", "port": 80}, "invalid_input"),
    ({"serviceName": "has spaces", "host": "10.0.0.1", "port": 80}, "invalid_input"),
    ({"serviceName": "orders", "port": 80}, "invalid_input"),
    ({"serviceName": "orders", "host": "bad host", "port": 80}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1"}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 0}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 70000}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": "abc"}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": True}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": "x"}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": [1]}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": {"weight": -1}}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": {"tags": "web"}}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": {"version": {"x": 1}}}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 80, "ttl": 0}, "invalid_input"),
    ({"serviceName": "orders", "host": "10.0.0.1", "port": 80, "ttl": "long"}, "invalid_input"),
    ([1, 2, 3], "invalid_input"),
    ("just a string", "invalid_input"),
    (None, "invalid_input"),
]


@pytest.mark.parametrize(("body", "code"), BAD_REGISTRATIONS)
async def test_bad_registrations_are_refused_and_change_nothing(
    api: Client, registry: Registry, body: Any, code: str
) -> None:
    await expect_error(await api.post("/register", json=body), 400, code)

    assert registry.node_count == 0
    assert registry.events.published == 0


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b'{"serviceName": "orders",}', b"\xff\xfe", b"[" * 2000],
    ids=["truncated", "text", "trailing-comma", "not-utf8", "deeply-nested"],
)
async def test_malformed_json_is_refused(api: Client, registry: Registry, raw: bytes) -> None:
    response = await api.post("/register", data=raw, headers={"Content-Type": "application/json"})

    await expect_error(response, 400, "invalid_json")
    assert registry.node_count == 0


async def test_an_empty_body_is_refused(api: Client) -> None:
    await expect_error(await api.post("/register", data=b""), 400, "invalid_input")
    await expect_error(await api.post("/heartbeat", data=b""), 400, "invalid_input")


async def test_oversized_bodies_are_refused_with_413(api: Client, registry: Registry) -> None:
    big = {"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": {"blob": "x" * 10_000}}

    await expect_error(await api.post("/register", json=big), 413, "payload_too_large")

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b" " * 1000

    chunked = await api.post("/register", data=chunks(), headers={"Content-Type": "application/json"})
    await expect_error(chunked, 413, "payload_too_large")
    assert registry.node_count == 0


async def test_oversized_metadata_is_refused_with_413(api: Client, registry: Registry) -> None:
    body = {"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": {"blob": "x" * 2000}}

    await expect_error(await api.post("/register", json=body), 413, "metadata_too_large")
    assert registry.node_count == 0


async def test_unknown_routes_and_wrong_methods_answer_json(api: Client) -> None:
    await expect_error(await api.get("/no/such/route"), 404, "route_not_found")
    wrong = await api.get("/register")
    await expect_error(wrong, 405, "method_not_allowed")
    assert "POST" in wrong.headers["Allow"]


@pytest.mark.parametrize("path", ["/health", "/servers", "/metrics", "/events", "/versions?serviceName=orders"])
async def test_head_is_answered_wherever_get_is(api: Client, path: str) -> None:
    got = await api.get(path)
    head = await api.head(path)

    assert head.status == got.status == 200
    assert head.headers["Content-Type"] == got.headers["Content-Type"]
    assert await head.read() == b""


async def test_errors_name_the_field_the_client_sent(api: Client) -> None:
    retire = await expect_error(
        await api.post("/version/retire", json={"serviceName": "orders", "version": ""}), 400, "invalid_input"
    )
    envoy = await expect_error(await api.get("/service-mesh/envoy-config?listenerPort=99999"), 400, "invalid_input")

    assert retire["error"].startswith("version must be")
    assert envoy["error"].startswith("listenerPort must be")


async def test_the_server_keeps_answering_after_bad_input(api: Client) -> None:
    for body in BAD_REGISTRATIONS:
        await api.post("/register", json=body[0])
    await api.post("/register", data=b"{{{{")

    health = await api.get("/health")

    assert health.status == 200
    assert (await health.json())["status"] == "ok"


async def test_the_serviceops_surface_serves_the_same_operations(api: Client) -> None:
    registered = await register(api, prefix=SERVICEOPS)

    discovered = await (await api.get(f"{SERVICEOPS}/discover", params={"serviceName": "orders"})).json()
    root_view = await (await api.get("/discover", params={"serviceName": "orders"})).json()
    beat = await api.post(f"{SERVICEOPS}/heartbeat", json={"nodeId": registered["nodeId"]})
    servers = await (await api.get(f"{SERVICEOPS}/servers")).json()
    gone = await api.delete(f"{SERVICEOPS}/deregister", json={"nodeId": registered["nodeId"]})

    assert discovered == root_view
    assert beat.status == 200
    assert list(servers["services"]) == ["orders"]
    assert gone.status == 200


async def test_health_counts_services_and_nodes(api: Client) -> None:
    await register(api, port=1)
    await register(api, port=2)
    await register(api, serviceName="billing")

    health = await (await api.get("/health")).json()

    assert health["status"] == "ok"
    assert (health["services"], health["nodes"]) == (2, 3)
    assert len(health["instanceId"]) == 32


async def test_metrics_report_the_contract_fields(api: Client) -> None:
    await register(api)
    await api.get("/discover", params={"serviceName": "orders"})
    await api.get("/nope")

    metrics = await (await api.get("/metrics")).json()

    assert metrics["requests"] >= 3
    assert metrics["errors"] >= 1
    assert (metrics["services"], metrics["nodes"]) == (1, 1)
    assert metrics["eventsBroadcasted"] == 1
    for field in ("uptime", "persistenceEnabled", "persistenceType", "wsConnections", "cacheHits", "cacheMisses"):
        assert field in metrics


async def test_versions_lists_every_version_of_a_service(api: Client) -> None:
    await register(api, port=1, metadata={"version": "2.0"})
    await register(api, port=2, metadata={"version": "1.0"})
    await register(api, port=3)

    versions = await (await api.get("/versions", params={"serviceName": "orders"})).json()

    assert versions == {"serviceName": "orders", "versions": ["1.0", "2.0", "default"]}


async def test_servers_lists_nodes_with_their_leases(api: Client, clock: FakeClock) -> None:
    await register(api, ttl=10)
    clock.advance(4)

    servers = await (await api.get("/servers")).json()
    node = servers["services"]["orders"]["nodes"][0]

    assert servers["nodeCount"] == 1
    assert node["nodeId"] == "orders:10.0.0.1:8080"
    assert node["ttl"] == 10
    assert node["expiresIn"] == pytest.approx(6)


async def test_events_record_registry_changes_and_page_by_time(
    api: Client, registry: Registry, clock: FakeClock
) -> None:
    registered = await register(api, ttl=2)
    clock.advance(1)
    await register(api, port=9, ttl=30)
    clock.advance(1.5)
    registry.expire_due()

    everything = await (await api.get("/events")).json()
    first = everything["events"][0]
    later = await (await api.get("/events", params={"since": str(first["timestamp"])})).json()
    one = await (await api.get("/events", params={"limit": "1"})).json()

    assert [event["event"] for event in everything["events"]] == [
        "service_registered",
        "service_registered",
        "service_unhealthy",
    ]
    assert everything["events"][2]["data"]["nodeId"] == registered["nodeId"]
    assert [event["event"] for event in later["events"]] == ["service_registered", "service_unhealthy"]
    assert [event["event"] for event in one["events"]] == ["service_unhealthy"]
    await expect_error(await api.get("/events", params={"limit": "0"}), 400, "invalid_input")
    await expect_error(await api.get("/events", params={"since": "yesterday"}), 400, "invalid_input")
