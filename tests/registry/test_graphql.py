"""GraphQL at /graphql: the contract's queries and mutations, errors in GraphQL's shape, limits, the playground."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.graphql_api import MAX_QUERY_DEPTH, MAX_QUERY_LENGTH, RequestContext
from maxine_registry.http.graphql import GRAPHQL_KEY
from maxine_registry.registry import Registry

Client = TestClient[Any, Any]


async def graphql(api: Client, query: str, variables: dict[str, Any] | None = None, *, status: int = 200) -> Any:
    response = await api.post("/graphql", json={"query": query, "variables": variables or {}})
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def register(api: Client, service_name: str, host: str, port: int, **metadata: Any) -> None:
    body = {"serviceName": service_name, "host": host, "port": port, "metadata": metadata}
    response = await api.post("/register", json=body)
    assert response.status == 200, await response.text()


async def test_services_lists_every_service_with_its_nodes(api: Client) -> None:
    await register(api, "payments", "10.0.0.9", 80)
    await register(api, "orders", "10.0.0.1", 8080, version="1.2", tags=["web"])
    await register(api, "orders", "::1", 9000)

    answer = await graphql(
        api, "{ services { serviceName nodeCount versions nodes { nodeId address version tags healthy } } }"
    )

    assert "errors" not in answer
    services = answer["data"]["services"]
    assert [service["serviceName"] for service in services] == ["orders", "payments"]
    assert services[0]["nodeCount"] == 2
    assert services[0]["versions"] == ["1.2", "default"]
    assert services[0]["nodes"] == [
        {
            "nodeId": "orders:10.0.0.1:8080",
            "address": "10.0.0.1:8080",
            "version": "1.2",
            "tags": ["web"],
            "healthy": True,
        },
        {"nodeId": "orders:::1:9000", "address": "[::1]:9000", "version": "default", "tags": [], "healthy": True},
    ]


async def test_service_answers_one_service_or_null(api: Client) -> None:
    await register(api, "orders", "10.0.0.1", 8080, zone="a")

    found = await graphql(
        api,
        "query One($name: String!) { service(serviceName: $name) { serviceName nodes { metadata } } }",
        {"name": "orders"},
    )
    missing = await graphql(api, '{ service(serviceName: "nobody") { serviceName } }')

    assert found["data"]["service"] == {"serviceName": "orders", "nodes": [{"metadata": {"zone": "a"}}]}
    assert missing == {"data": {"service": None}}


async def test_discover_maps_deployment_to_version_and_group_filter_tags_to_tags(api: Client) -> None:
    await register(api, "orders", "10.0.0.1", 8080, version="1.0", tags=["web", "eu"])
    await register(api, "orders", "10.0.0.2", 8080, version="2.0", tags=["web", "eu", "blue"])
    await register(api, "orders", "10.0.0.3", 8080, version="2.0", tags=["web"])

    answer = await graphql(
        api,
        '{ discover(serviceName: "orders", deployment: "2.0", tags: ["web"], group: "eu", filter: "blue") '
        "{ nodeId version tags } }",
    )

    assert answer == {
        "data": {"discover": {"nodeId": "orders:10.0.0.2:8080", "version": "2.0", "tags": ["blue", "eu", "web"]}}
    }


async def test_discover_with_ip_is_sticky_under_consistent_hash(api: Client) -> None:
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        await register(api, "orders", host, 8080)
    query = '{ discover(serviceName: "orders", ip: "%s", loadBalancing: "consistent-hash") { nodeId } }'

    picks = {(await graphql(api, query % "192.0.2.7"))["data"]["discover"]["nodeId"] for _ in range(5)}

    assert len(picks) == 1


async def test_discover_errors_carry_maxine_codes(api: Client) -> None:
    await register(api, "orders", "10.0.0.1", 8080, version="1.0")

    unknown = await graphql(api, '{ discover(serviceName: "nobody") { nodeId } }')
    no_version = await graphql(api, '{ discover(serviceName: "orders", deployment: "9.9") { nodeId } }')
    bad_strategy = await graphql(api, '{ discover(serviceName: "orders", loadBalancing: "dice") { nodeId } }')

    assert unknown["data"] is None
    assert unknown["errors"][0]["extensions"] == {"code": "service_not_found", "status": 404}
    assert unknown["errors"][0]["path"] == ["discover"]
    assert no_version["errors"][0]["extensions"]["code"] == "no_instance"
    assert bad_strategy["errors"][0]["extensions"]["code"] == "unknown_strategy"


async def test_register_then_deregister_by_node_name(api: Client, registry: Registry) -> None:
    registered = await graphql(
        api,
        'mutation { register(serviceName: "orders", nodeName: "orders-1", address: "[::1]:9000", '
        'metadata: "{\\"version\\": \\"1.2\\"}") { nodeId serviceName nodeName address ttl } }',
    )
    discovered = await (await api.get("/discover", params={"serviceName": "orders"})).json()
    deregistered = await graphql(
        api, 'mutation { deregister(serviceName: "orders", nodeName: "orders-1") { nodeId deregistered } }'
    )

    assert registered == {
        "data": {
            "register": {
                "nodeId": "orders:::1:9000",
                "serviceName": "orders",
                "nodeName": "orders-1",
                "address": "[::1]:9000",
                "ttl": 30.0,
            }
        }
    }
    assert discovered["metadata"] == {"version": "1.2", "nodeName": "orders-1"}
    assert discovered["version"] == "1.2"
    assert deregistered == {"data": {"deregister": {"nodeId": "orders:::1:9000", "deregistered": True}}}
    assert registry.node_count == 0
    assert [event.event for event in registry.events.history(limit=10)] == [
        "service_registered",
        "service_deregistered",
    ]


async def test_deregister_accepts_an_address_as_node_name(api: Client, registry: Registry) -> None:
    await register(api, "orders", "10.0.0.1", 8080)

    answer = await graphql(api, 'mutation { deregister(serviceName: "orders", nodeName: "10.0.0.1:8080") { nodeId } }')

    assert answer == {"data": {"deregister": {"nodeId": "orders:10.0.0.1:8080"}}}
    assert registry.node_count == 0


async def test_deregister_of_an_unknown_node_says_not_registered(api: Client) -> None:
    answer = await graphql(api, 'mutation { deregister(serviceName: "orders", nodeName: "ghost") { nodeId } }')

    assert answer["data"] is None
    assert answer["errors"][0]["extensions"]["code"] == "not_registered"


async def test_two_instances_with_one_node_name_are_ambiguous(api: Client, registry: Registry) -> None:
    await register(api, "orders", "10.0.0.1", 8080, nodeName="twin")
    await register(api, "orders", "10.0.0.2", 8080, nodeName="twin")

    answer = await graphql(api, 'mutation { deregister(serviceName: "orders", nodeName: "twin") { nodeId } }')

    assert answer["errors"][0]["extensions"]["code"] == "ambiguous_node_name"
    assert registry.node_count == 2


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ('serviceName: "orders", nodeName: "n", address: "10.0.0.1"', "invalid_input"),
        ('serviceName: "orders", nodeName: "n", address: "::1:80"', "invalid_input"),
        ('serviceName: "orders", nodeName: "n", address: "10.0.0.1:99999"', "invalid_input"),
        ('serviceName: "bad name", nodeName: "n", address: "10.0.0.1:80"', "invalid_input"),
        ('serviceName: "orders", nodeName: "has space", address: "10.0.0.1:80"', "invalid_input"),
        ('serviceName: "orders", nodeName: "n", address: "10.0.0.1:80", metadata: "{oops"', "invalid_json"),
        ('serviceName: "orders", nodeName: "n", address: "10.0.0.1:80", metadata: "[1]"', "invalid_input"),
        ('serviceName: "orders", nodeName: "n", address: "10.0.0.1:80", ttl: 0', "invalid_input"),
    ],
)
async def test_register_refuses_bad_input_and_registers_nothing(
    api: Client, registry: Registry, arguments: str, code: str
) -> None:
    answer = await graphql(api, f"mutation {{ register({arguments}) {{ nodeId }} }}")

    assert answer["data"] is None
    assert answer["errors"][0]["extensions"]["code"] == code
    assert registry.node_count == 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"query": "{ services { serviceName "}, "syntax_error"),
        ({"query": "{ nothing }"}, "invalid_query"),
        ({"query": "{ services }"}, "invalid_query"),
        ({"query": ""}, "invalid_input"),
        ({"variables": {}}, "invalid_input"),
        ({"query": "{ services { serviceName } }", "variables": [1]}, "invalid_input"),
        ({"query": "{ services { serviceName } }", "operationName": 5}, "invalid_input"),
    ],
)
async def test_requests_that_cannot_run_answer_400_in_the_graphql_shape(api: Client, body: Any, code: str) -> None:
    response = await api.post("/graphql", json=body)
    answer = await response.json()

    assert response.status == 400
    assert answer["data"] is None
    assert answer["errors"][0]["extensions"]["code"] == code
    assert answer["errors"][0]["message"]


async def test_a_query_over_the_length_limit_is_refused_unread(api: Client) -> None:
    query = "{ services { serviceName } }" + " " * MAX_QUERY_LENGTH

    reply = api.app[GRAPHQL_KEY].execute(query=query, context=RequestContext())

    assert reply.status == 400
    assert reply.document["errors"][0]["extensions"]["code"] == "query_too_large"


async def test_a_body_that_is_not_json_is_refused(api: Client) -> None:
    response = await api.post("/graphql", data=b"{not json", headers={"Content-Type": "application/json"})

    assert response.status == 400
    assert (await response.json())["code"] == "invalid_json"


async def test_deep_queries_are_refused(api: Client) -> None:
    deep = "{ services { " + "nodes { " * MAX_QUERY_DEPTH + "nodeId" + " }" * MAX_QUERY_DEPTH + " } }"

    answer = await graphql(api, deep, status=400)

    messages = [error["message"] for error in answer["errors"]]
    assert any(f"deeper than {MAX_QUERY_DEPTH}" in message for message in messages)


async def test_queries_selecting_too_many_fields_are_refused(api: Client) -> None:
    # Fragments count once per use: 60 aliases of four fields each.
    aliases = " ".join(f"a{index}: services {{ ...F }}" for index in range(60))
    query = "{ " + aliases + " } fragment F on Service { serviceName revision nodeCount }"

    answer = await graphql(api, query, status=400)

    assert "fields" in answer["errors"][0]["message"]


async def test_get_runs_queries_and_refuses_mutations(api: Client) -> None:
    await register(api, "orders", "10.0.0.1", 8080)

    query = await api.get(
        "/graphql",
        params={
            "query": "query($n: String!) { service(serviceName: $n) { nodeCount } }",
            "variables": json.dumps({"n": "orders"}),
        },
    )
    mutation = await api.get(
        "/graphql",
        params={"query": 'mutation { deregister(serviceName: "orders", nodeName: "10.0.0.1:8080") { nodeId } }'},
    )

    assert query.status == 200
    assert await query.json() == {"data": {"service": {"nodeCount": 1}}}
    assert mutation.status == 405
    assert (await mutation.json())["errors"][0]["extensions"]["code"] == "method_not_allowed"
    assert mutation.headers["Allow"] == "POST"


async def test_get_without_a_query_serves_the_offline_playground(api: Client) -> None:
    page = await api.get("/graphql")
    script = await api.get("/graphql/playground.js")
    style = await api.get("/graphql/playground.css")

    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert "<textarea" in html and 'id="run"' in html
    assert "https://" not in html and "https://" not in await script.text()
    assert script.content_type == "text/javascript"
    assert style.content_type == "text/css"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
