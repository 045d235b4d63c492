"""
Every field of every JSON operation, given every kind of JSON value: a clear 4xx, never a 500.

The hot modules run compiled in a wheel, and compiled code checks declared types at run time: a
value of an unexpected type that plain Python would carry on with raises TypeError there, which
the server would answer with 500. These sweeps send each field each JSON type in turn (and whole
bodies of each type), through both transports, and hold the answers to the error contract: a
4xx with a JSON ``code`` and ``error``, or a success when the value happens to be acceptable.
.ci/run runs them on the plain source and on the compiled wheel.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp.test_utils import TestClient

from maxine_registry.registry import Registry

Client = TestClient[Any, Any]

# One of each JSON type, and the edges of each: what a confused or hostile client might send.
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    1.5,
    -1e308,
    "",
    "x" * 300,
    "ünïcødé",
    "a\u0000b",
    [],
    [1, "a", None],
    {},
    {"nested": [{"deep": True}]},
]

# Loopback, should anything ever probe it: the health check below names the instance's own address.
NODE = "orders:127.0.0.1:8080"
REGISTRATION = {
    "serviceName": "orders",
    "host": "127.0.0.1",
    "port": 8080,
    "ttl": 30,
    "metadata": {
        "version": "1.0",
        "tags": ["web"],
        "weight": 1,
        "healthCheck": {"url": "/health", "interval": 3_600_000, "timeout": 5000, "rise": 2, "fall": 3},
        "mesh": {
            "timeoutMs": 2000,
            "perTryTimeoutMs": 500,
            "retries": 2,
            "retryOn": ["5xx"],
            "loadBalancing": "round-robin",
        },
    },
}

# Each operation with a valid body; every field path in it gets every value of VALUES.
OPERATIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/register", REGISTRATION),
    ("POST", "/heartbeat", {"nodeId": NODE}),
    ("DELETE", "/deregister", {"nodeId": NODE}),
    ("POST", "/record-response-time", {"nodeId": NODE, "responseTime": 12, "outcome": "success"}),
    ("POST", "/traffic/set", {"serviceName": "orders", "distribution": {"1.0": 80, "2.0": 20}}),
    ("POST", "/traffic/shift", {"serviceName": "orders", "fromVersion": "1.0", "toVersion": "2.0", "percentage": 10}),
    ("POST", "/version/promote", {"serviceName": "orders", "version": "1.0"}),
    ("POST", "/version/retire", {"serviceName": "orders", "version": "2.0"}),
]


def field_paths(document: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in ``document``, nested objects included, outermost first."""
    paths = []
    for key, value in document.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths.extend(field_paths(value, (*prefix, key)))
    return paths


def with_value(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


async def check_answer(response: Any, what: str) -> int:
    """The status, once the answer is held to the contract: a success, or a 4xx in the JSON error shape."""
    text = await response.text()
    assert response.status < 500, f"{what}: {response.status} {text}"
    if response.status >= 400:
        assert response.content_type == "application/json", f"{what}: {text}"
        body = await response.json()
        assert isinstance(body.get("code"), str) and body["code"], f"{what}: {text}"
        assert isinstance(body.get("error"), str) and body["error"], f"{what}: {text}"
    return int(response.status)


async def reset(api: Client) -> None:
    """One known instance of each version the traffic operations name."""
    for version, port in (("1.0", 8080), ("2.0", 8081)):
        document = with_value(with_value(REGISTRATION, ("port",), port), ("metadata", "version"), version)
        response = await api.post("/register", json=document)
        assert response.status == 200, await response.text()


async def test_every_field_of_every_operation_takes_any_json_value_without_a_500(api: Client) -> None:
    await reset(api)
    refused = 0

    for method, path, document in OPERATIONS:
        for field in field_paths(document):
            for value in VALUES:
                body = with_value(document, field, value)
                what = f"{method} {path} with {'.'.join(field)}={value!r:.40}"
                status = await check_answer(await api.request(method, path, json=body), what)
                refused += status >= 400
                if status < 400:
                    await reset(api)  # it may have deregistered or re-registered the instance

    # The sweep reached the checks: most of these values are wrong for the field they land in.
    assert refused > 200


async def test_a_body_of_any_json_type_is_refused_with_400(api: Client, registry: Registry) -> None:
    for method, path, _document in OPERATIONS:
        for value in VALUES:
            if isinstance(value, dict) and value:
                continue  # an object without the fields: covered by the sweep above, refused by name
            response = await api.request(method, path, json=value)
            status = await check_answer(response, f"{method} {path} with body {value!r:.40}")
            assert status == 400, f"{method} {path} with body {value!r:.40}"

    assert registry.node_count == 0


async def test_queries_of_any_text_never_get_a_500(api: Client) -> None:
    await reset(api)
    texts = ["", "x" * 300, "ünïcødé", "a%00b", "%ff%fe", "1,2,,3", ",", "-1", "1e400", "nan", "[]", "{}"]
    names = ["serviceName", "loadBalancing", "version", "tags", "key", "region", "zone", "nodeId", "limit", "since"]

    for path in ["/discover", "/versions", "/traffic", "/events", "/deregister"]:
        for name in names:
            for text in texts:
                query = f"serviceName=orders&{name}={text}" if name != "serviceName" else f"serviceName={text}"
                method = "DELETE" if path == "/deregister" else "GET"
                await check_answer(await api.request(method, f"{path}?{query}"), f"{method} {path}?{query}")
                if method == "DELETE":
                    await reset(api)
