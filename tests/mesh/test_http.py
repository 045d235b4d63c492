"""The mesh routes over HTTP: the documents, their options, and Envoy's REST xDS with its 304s."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]
NODE = {"id": "test-envoy", "metadata": {"maxine": {"listenerPort": 10500, "refreshMs": 500}}}


async def register(api: Client, service: str, host: str, port: int, **metadata: Any) -> str:
    response = await api.post(
        "/register", json={"serviceName": service, "host": host, "port": port, "metadata": metadata}
    )
    assert response.status == 200, await response.text()
    node_id: str = (await response.json())["nodeId"]
    return node_id


async def poll(api: Client, resource: str, *, version: str = "", names: list[str] | None = None) -> tuple[int, Any]:
    body = {"version_info": version, "node": NODE, "resource_names": names or [], "type_url": ""}
    response = await api.post(f"/v3/discovery:{resource}", json=body)
    return response.status, (await response.json() if response.status == 200 else await response.text())


@pytest.mark.parametrize(
    ("path", "kinds"),
    [
        ("/service-mesh/istio-config?namespace=shop", {"VirtualService", "DestinationRule"}),
        ("/service-mesh/linkerd-config", {"ServiceProfile", "HTTPRoute"}),
        ("/service-mesh/gateway-api-config", {"HTTPRoute"}),
        ("/service-mesh/smi-config?apiVersion=v1alpha2", {"TrafficSplit"}),
    ],
)
async def test_each_mesh_gets_a_kubernetes_list_of_its_resources(mesh_api: Client, path: str, kinds: set[str]) -> None:
    await register(mesh_api, "orders", "10.0.0.1", 8080, version="v1")
    await register(mesh_api, "orders", "10.0.0.2", 8080, version="v2")
    await mesh_api.post("/traffic/set", json={"serviceName": "orders", "distribution": {"v1": 80, "v2": 20}})

    response = await mesh_api.get(path)
    document = await response.json()

    assert response.status == 200
    assert document["kind"] == "List"
    assert {item["kind"] for item in document["items"]} == kinds


@pytest.mark.parametrize(
    "path",
    [
        "/service-mesh/istio-config?namespace=Not_A_Namespace",
        "/service-mesh/linkerd-config?trustDomain=bad domain",
        "/service-mesh/smi-config?apiVersion=v9",
        "/service-mesh/envoy-config?listenerAddress=example.com",
        "/service-mesh/envoy-config?listenerPort=70000",
        "/service-mesh/envoy-bootstrap?refreshMs=5",
    ],
)
async def test_bad_options_get_a_clear_error(mesh_api: Client, path: str) -> None:
    response = await mesh_api.get(path)

    assert response.status == 400
    assert (await response.json())["code"] == "invalid_input"


async def test_a_malformed_mesh_setting_is_refused_at_registration(mesh_api: Client) -> None:
    response = await mesh_api.post(
        "/register",
        json={"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": {"mesh": {"retries": 99}}},
    )

    assert response.status == 400
    assert "metadata.mesh.retries" in (await response.json())["error"]
    assert (await (await mesh_api.get("/servers")).json())["nodeCount"] == 0


async def test_the_envoy_documents_say_where_envoy_listens_and_polls(mesh_api: Client) -> None:
    await register(mesh_api, "orders", "::1", 8080)

    static = await (await mesh_api.get("/service-mesh/envoy-config?listenerAddress=::1&listenerPort=10500")).json()
    dynamic = await (await mesh_api.get("/service-mesh/envoy-bootstrap?adminPort=10501")).json()

    [listener] = static["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "::1", "port_value": 10500}
    assert static["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert dynamic["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10501}
    [xds] = dynamic["static_resources"]["clusters"]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint == {"address": "127.0.0.1", "port_value": mesh_api.port}


async def test_xds_answers_304_until_the_registry_changes(mesh_api: Client) -> None:
    node_id = await register(mesh_api, "orders", "10.0.0.1", 8080)
    await register(mesh_api, "orders", "10.0.0.2", 8080)

    status, first = await poll(mesh_api, "clusters")
    assert status == 200
    assert [item["name"] for item in first["resources"]] == ["orders"]
    assert first["resources"][0]["@type"] == first["type_url"]
    assert (await poll(mesh_api, "clusters", version=first["version_info"]))[0] == 304

    await mesh_api.delete("/deregister", json={"nodeId": node_id})
    status, endpoints = await poll(mesh_api, "endpoints", names=["orders"])
    assert status == 200
    [assignment] = endpoints["resources"]
    addresses = [
        item["endpoint"]["address"]["socket_address"]["address"] for item in assignment["endpoints"][0]["lb_endpoints"]
    ]
    assert addresses == ["10.0.0.2"]


async def test_xds_version_moves_when_a_blacklist_hides_a_service(mesh_api: Client) -> None:
    await register(mesh_api, "orders", "10.0.0.1", 8080)
    await register(mesh_api, "legacy", "10.0.0.2", 8080)
    _, before = await poll(mesh_api, "routes")

    await mesh_api.post("/blacklist/add", json={"serviceName": "legacy"})
    status, after = await poll(mesh_api, "routes", version=before["version_info"])

    assert status == 200
    hosts = [host["name"] for host in after["resources"][0]["virtual_hosts"]]
    assert hosts == ["service/orders", "maxine-paths"]


async def test_xds_listener_comes_from_the_nodes_metadata(mesh_api: Client) -> None:
    status, listeners = await poll(mesh_api, "listeners")

    assert status == 200
    [listener] = listeners["resources"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10500}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["rds"]["config_source"]["api_config_source"]["refresh_delay"] == "0.500s"


async def test_xds_gives_an_empty_assignment_for_a_cluster_that_left(mesh_api: Client) -> None:
    status, endpoints = await poll(mesh_api, "endpoints", names=["gone|v1"])

    assert status == 200
    assert endpoints["resources"][0]["cluster_name"] == "gone|v1"
    assert endpoints["resources"][0]["endpoints"] == []


async def test_xds_takes_requests_as_large_as_envoys_and_refuses_bad_ones(mesh_api: Client) -> None:
    # Envoy sends every extension it has in the node: tens of kilobytes, past the API's body limit.
    node = {**NODE, "extensions": [{"name": f"envoy.extension.{index}", "category": "x"} for index in range(2000)]}
    large = await mesh_api.post("/v3/discovery:clusters", json={"version_info": "", "node": node})
    unknown = await mesh_api.post("/v3/discovery:secrets", json={})
    not_json = await mesh_api.post("/v3/discovery:clusters", data=b"{nope")
    too_large = await mesh_api.post("/v3/discovery:clusters", data=b" " * (2 * 1024 * 1024))

    assert large.status == 200
    assert (unknown.status, (await unknown.json())["code"]) == (400, "invalid_input")
    assert (not_json.status, (await not_json.json())["code"]) == (400, "invalid_json")
    assert too_large.status == 413


async def test_xds_endpoints_of_one_service_stay_unchanged_when_another_changes(mesh_api: Client) -> None:
    await register(mesh_api, "orders", "10.0.0.1", 8080)
    _, before = await poll(mesh_api, "endpoints", names=["orders"])

    await register(mesh_api, "billing", "10.0.0.2", 8080)

    assert (await poll(mesh_api, "endpoints", version=before["version_info"], names=["orders"]))[0] == 304
    assert (await poll(mesh_api, "clusters", version=before["version_info"]))[0] == 200
