"""Service dependencies: edges, dependents, the graph, every cycle, impact, limits, snapshots, and the page's files."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry import dependencies
from maxine_registry.dependencies import DependencyGraph, simple_cycles, strongly_connected_components
from maxine_registry.errors import InvalidInput
from maxine_registry.events import EventBus
from maxine_registry.http.common import OPERATIONS_KEY
from maxine_registry.registry import Registry

Client = TestClient[Any, Any]
DEPENDENCY = "/api/maxine/serviceops/dependency"


async def expect_error(response: Any, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]


async def add(api: Client, service_name: str, depends_on: str) -> dict[str, Any]:
    response = await api.post(f"{DEPENDENCY}/add", json={"serviceName": service_name, "dependsOn": depends_on})
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def get(api: Client, path: str, **params: str) -> Any:
    response = await api.get(f"{DEPENDENCY}/{path}", params=params)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_added_dependencies_are_listed_both_ways(api: Client) -> None:
    first = await add(api, "orders", "payments")
    await add(api, "orders", "inventory")
    await add(api, "shipping", "inventory")

    assert first == {"serviceName": "orders", "dependsOn": "payments", "added": True, "dependencies": ["payments"]}
    assert await get(api, "get", serviceName="orders") == {
        "serviceName": "orders",
        "dependencies": ["inventory", "payments"],
    }
    assert await get(api, "dependents", serviceName="inventory") == {
        "serviceName": "inventory",
        "dependents": ["orders", "shipping"],
    }
    assert await get(api, "get", serviceName="unknown") == {"serviceName": "unknown", "dependencies": []}


async def test_adding_twice_is_idempotent(api: Client) -> None:
    await add(api, "orders", "payments")

    again = await add(api, "orders", "payments")

    assert again["added"] is False
    assert await get(api, "graph") == {"orders": ["payments"]}


async def test_the_graph_is_sorted_and_deterministic(api: Client) -> None:
    for service_name, depends_on in [("b", "z"), ("a", "c"), ("b", "a"), ("a", "b")]:
        await add(api, service_name, depends_on)

    response = await api.get(f"{DEPENDENCY}/graph")

    assert await response.text() == '{"a":["b","c"],"b":["a","z"]}'


async def test_remove_deletes_the_edge_and_a_missing_one_is_404(api: Client) -> None:
    await add(api, "orders", "payments")

    removed = await api.post(f"{DEPENDENCY}/remove", json={"serviceName": "orders", "dependsOn": "payments"})
    again = await api.post(f"{DEPENDENCY}/remove", json={"serviceName": "orders", "dependsOn": "payments"})

    assert (await removed.json())["removed"] is True
    await expect_error(again, 404, "dependency_not_found")
    assert await get(api, "graph") == {}
    assert await get(api, "dependents", serviceName="payments") == {"serviceName": "payments", "dependents": []}


async def test_changes_are_published_as_events(api: Client, registry: Registry) -> None:
    await add(api, "orders", "payments")
    await api.post(f"{DEPENDENCY}/remove", json={"serviceName": "orders", "dependsOn": "payments"})

    names = [event.event for event in registry.events.history(limit=10)]

    assert names == ["dependency_added", "dependency_removed"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"serviceName": "orders"}, "invalid_input"),
        ({"dependsOn": "orders"}, "invalid_input"),
        ({"serviceName": "orders", "dependsOn": "bad name"}, "invalid_input"),
        ({"serviceName": "orders", "dependsOn": 7}, "invalid_input"),
        ({"serviceName": "orders", "dependsOn": "orders"}, "self_dependency"),
        (["orders", "payments"], "invalid_input"),
    ],
)
async def test_bad_edges_are_refused_and_change_nothing(api: Client, body: Any, code: str) -> None:
    response = await api.post(f"{DEPENDENCY}/add", json=body)

    await expect_error(response, 400, code)
    assert await get(api, "graph") == {}


async def test_reads_need_a_valid_service_name(api: Client) -> None:
    for path in ("get", "dependents", "impact"):
        await expect_error(await api.get(f"{DEPENDENCY}/{path}"), 400, "invalid_input")


async def test_cycles_lists_every_cycle_once(api: Client) -> None:
    # Two cycles share the edge b -> c; a third runs through d alone with a.
    for service_name, depends_on in [
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("c", "d"),
        ("d", "b"),
        ("d", "a"),
        ("e", "a"),
    ]:
        await add(api, service_name, depends_on)

    report = await get(api, "cycles")

    assert report == {
        "cycles": [["a", "b", "c", "a"], ["b", "c", "d", "b"], ["a", "b", "c", "d", "a"]],
        "count": 3,
        "truncated": False,
    }


async def test_an_acyclic_graph_has_no_cycles(api: Client) -> None:
    await add(api, "a", "b")
    await add(api, "b", "c")
    await add(api, "a", "c")

    assert await get(api, "cycles") == {"cycles": [], "count": 0, "truncated": False}


async def test_cycles_are_recomputed_after_a_change(api: Client) -> None:
    await add(api, "a", "b")
    await add(api, "b", "a")
    assert (await get(api, "cycles"))["count"] == 1

    await api.post(f"{DEPENDENCY}/remove", json={"serviceName": "b", "dependsOn": "a"})

    assert (await get(api, "cycles"))["count"] == 0


async def test_impact_lists_every_transitive_dependent_with_its_depth(api: Client) -> None:
    for service_name, depends_on in [
        ("web", "orders"),
        ("mobile", "orders"),
        ("orders", "payments"),
        ("billing", "payments"),
        ("web", "billing"),
        ("reports", "web"),
        ("payments", "bank"),
    ]:
        await add(api, service_name, depends_on)

    impact = await get(api, "impact", serviceName="payments")

    assert impact == {
        "serviceName": "payments",
        "impacted": [
            {"serviceName": "billing", "depth": 1},
            {"serviceName": "orders", "depth": 1},
            {"serviceName": "mobile", "depth": 2},
            {"serviceName": "web", "depth": 2},
            {"serviceName": "reports", "depth": 3},
        ],
        "count": 5,
    }
    assert (await get(api, "impact", serviceName="reports"))["impacted"] == []


async def test_impact_terminates_on_cycles(api: Client) -> None:
    await add(api, "a", "b")
    await add(api, "b", "a")

    impact = await get(api, "impact", serviceName="a")

    assert impact["impacted"] == [{"serviceName": "b", "depth": 1}]


def brute_force_cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle, by trying every path from every start that stays above the start."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, path: list[str]) -> None:
        for successor in graph.get(path[-1], ()):
            if successor == start:
                found.add((*path, start))
            elif successor > start and successor not in path:
                walk(start, [*path, successor])

    for start in graph:
        walk(start, [start])
    return found


@pytest.mark.parametrize("seed", range(40))
def test_johnson_finds_exactly_the_cycles_a_brute_force_finds(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"s{index}" for index in range(rng.randint(2, 8))]
    density = rng.choice([0.2, 0.35, 0.5])
    graph = {name: {other for other in names if other != name and rng.random() < density} for name in names}

    cycles = list(simple_cycles(graph))

    assert len(cycles) == len({tuple(cycle) for cycle in cycles})
    assert {tuple(cycle) for cycle in cycles} == brute_force_cycles(graph)


def test_a_complete_graph_has_every_cycle() -> None:
    names = ["a", "b", "c", "d", "e"]
    graph = {name: {other for other in names if other != name} for name in names}

    cycles = list(simple_cycles(graph))

    # Sum over k of C(5, k) * (k - 1)! cycles of length k: 10 + 20 + 30 + 24.
    assert len(cycles) == 84


def test_long_chains_do_not_hit_the_recursion_limit() -> None:
    chain = {f"n{index:05d}": [f"n{index + 1:05d}"] for index in range(5000)}
    chain["n05000"] = ["n00000"]

    cycles = list(simple_cycles(chain))

    assert len(cycles) == 1 and len(cycles[0]) == 5002
    assert len(strongly_connected_components(chain)) == 1


def test_the_number_of_cycles_returned_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dependencies, "MAX_CYCLES", 10)
    graph = DependencyGraph(events=EventBus())
    names = ["a", "b", "c", "d", "e"]
    for name in names:
        for other in names:
            if other != name:
                graph.add(name, other)

    report = graph.cycles()

    assert len(report.cycles) == 10
    assert report.truncated is True


def test_edges_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dependencies, "MAX_DEPENDENCIES_PER_SERVICE", 2)
    monkeypatch.setattr(dependencies, "MAX_EDGES", 3)
    graph = DependencyGraph(events=EventBus())
    graph.add("a", "x")
    graph.add("a", "y")

    with pytest.raises(dependencies.Conflict):
        graph.add("a", "z")
    graph.add("b", "x")
    with pytest.raises(dependencies.Conflict):
        graph.add("c", "x")

    assert graph.edge_count == 3


def test_a_snapshot_round_trips_and_a_bad_one_changes_nothing() -> None:
    original = DependencyGraph(events=EventBus())
    original.add("a", "b")
    original.add("b", "a")
    original.add("c", "a")

    restored = DependencyGraph(events=EventBus())
    restored.add("keep", "me")
    with pytest.raises(InvalidInput):
        restored.prepare({"a": ["a"]})
    assert restored.graph() == {"keep": ["me"]}
    restored.prepare(original.export())()

    assert restored.graph() == original.graph()
    assert restored.dependents("a") == ["b", "c"]
    assert restored.cycles().cycles == [["a", "b", "a"]]


async def test_dependencies_are_a_snapshot_part(api: Client) -> None:
    await add(api, "orders", "payments")

    part = api.app[OPERATIONS_KEY].snapshot_parts["dependencies"]

    assert part.export() == {"orders": ["payments"]}


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/dependency-graph", "text/html", b"<svg"),
        ("/dependency-graph/app.js", "text/javascript", b"force-directed"),
        ("/dependency-graph/style.css", "text/css", b"#graph"),
    ],
)
async def test_the_page_and_its_assets_are_served_with_their_types(
    api: Client, path: str, content_type: str, marker: bytes
) -> None:
    response = await api.get(path)

    assert response.status == 200
    assert response.content_type == content_type
    assert response.charset == "utf-8"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    body = await response.read()
    assert marker in body
    assert b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"")
    assert b"https://" not in body
