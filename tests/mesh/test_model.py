"""The snapshot the generators read: access decisions as discovery makes them, routing plans, weights."""

from __future__ import annotations

import itertools

import pytest

from maxine_registry.errors import Forbidden, InvalidInput
from maxine_registry.governance import ALLOW, DENY, Acl
from maxine_registry.mesh.model import (
    MeshInstance,
    MeshService,
    MeshSettings,
    Plan,
    access_for,
    build_mesh_state,
    integer_weights,
    parse_mesh_settings,
    routing_plan,
)
from maxine_registry.registry import Registry
from tests.mesh.conftest import governance_with, register

CALLERS = [None, "web", "orders", "cart", "stranger", "system:serviceaccount:shop:cart"]
DESTINATIONS = ["orders", "payments", "legacy", "reports", "web"]


def instance(version: str, *, healthy: bool = True, weight: float = 1.0, index: int = 1) -> MeshInstance:
    return MeshInstance(
        node_id=f"svc:10.0.0.{index}:80",
        host=f"10.0.0.{index}",
        port=80,
        version=version,
        weight=weight,
        healthy=healthy,
    )


@pytest.mark.parametrize("default", [ALLOW, DENY])
def test_access_decisions_match_what_discovery_enforces(default: str) -> None:
    governance = governance_with(
        intentions=(
            ("*", "orders", DENY),
            ("web", "orders", ALLOW),
            ("web", "*", DENY),
            ("system:serviceaccount:shop:cart", "*", ALLOW),
            ("*", "reports", ALLOW),
        ),
        acls=(Acl(service_name="payments", allow=("orders", "web"), deny=("web",)),),
        blacklist=("legacy",),
        default=default,
    )
    rules = build_mesh_state(registry=Registry(), governance=governance).access

    for caller, destination in itertools.product(CALLERS, DESTINATIONS):
        try:
            governance.guard_discovery(destination, caller, None)
            discovery_allows = True
        except Forbidden:
            discovery_allows = False
        assert rules.allows(source=caller, destination=destination) is discovery_allows, (caller, destination)


def test_access_sorts_callers_into_what_meshes_can_name() -> None:
    governance = governance_with(intentions=(("*", "orders", DENY), ("web", "orders", ALLOW), ("cart", "*", DENY)))
    rules = build_mesh_state(registry=Registry(), governance=governance).access

    access = access_for(rules, "orders")

    assert (access.allowed, access.denied, access.others, access.anonymous) == (("web",), ("cart",), False, False)
    assert access_for(rules, "web").open is False  # cart may not call anything
    assert access_for(build_mesh_state(registry=Registry(), governance=governance_with()).access, "web").open


def test_a_split_routes_by_its_percentages_among_versions_with_instances() -> None:
    service = MeshService(
        name="svc",
        instances=(instance("v1"), instance("v2", index=2)),
        distribution=(("v1", 60.0), ("v2", 30.0), ("v3", 10.0)),
    )

    plan = routing_plan(service)

    assert plan.kind is Plan.SPLIT
    assert [(version, round(share, 3)) for version, share in plan.shares] == [("v1", 66.667), ("v2", 33.333)]


def test_a_split_nobody_can_serve_falls_back_as_discovery_does() -> None:
    service = MeshService(name="svc", instances=(instance("v1"),), distribution=(("v9", 100.0),))

    assert routing_plan(service).kind is Plan.ALL


def test_retired_versions_get_no_traffic_and_the_rest_share_by_weight() -> None:
    service = MeshService(
        name="svc",
        instances=(instance("v1"), instance("v2", weight=3.0, index=2), instance("v3", index=3)),
        retired=frozenset({"v1"}),
    )

    plan = routing_plan(service)

    assert plan.kind is Plan.VERSIONS
    assert plan.shares == (("v2", 75.0), ("v3", 25.0))
    assert (
        routing_plan(MeshService(name="svc", instances=(instance("v1"),), retired=frozenset({"v1"}))).kind is Plan.NONE
    )


def test_an_unhealthy_instance_takes_no_traffic() -> None:
    service = MeshService(name="svc", instances=(instance("v1", healthy=False), instance("v1", index=2)))

    assert [item.host for item in service.serving()] == ["10.0.0.2"]


@pytest.mark.parametrize("count", [1, 3, 7, 100])
def test_integer_weights_sum_exactly_to_the_total(count: int) -> None:
    shares = [(f"v{index:03d}", 100 / count) for index in range(count)]

    weights = integer_weights(shares, total=100)

    assert sum(weight for _, weight in weights) == 100
    assert max(weight for _, weight in weights) - min(weight for _, weight in weights) <= 1


def test_mesh_settings_are_read_and_refused_with_the_reason() -> None:
    settings = parse_mesh_settings(
        {"timeoutMs": 2500, "retries": 2, "retryOn": ["reset", "5xx"], "loadBalancing": "ip-hash"}
    )

    assert settings == MeshSettings(timeout_ms=2500, retries=2, retry_on=("5xx", "reset"), load_balancing="ip-hash")
    for bad, field in [
        ({"timeoutMs": 0}, "timeoutMs"),
        ({"retries": 11}, "retries"),
        ({"retryOn": ["sometimes"]}, "retryOn"),
        ({"loadBalancing": "fastest"}, "loadBalancing"),
        ({"timeout": 5}, "unknown keys"),
        ([], "object"),
    ]:
        with pytest.raises(InvalidInput, match=field):
            parse_mesh_settings(bad)


def test_the_snapshot_does_not_depend_on_the_order_of_registration() -> None:
    hosts = [f"10.9.0.{index}" for index in range(1, 6)]
    snapshots = []
    for order in (hosts, list(reversed(hosts))):
        registry = Registry()
        for host in order:
            register(registry, "orders", host, 80, version="v1" if host < "10.9.0.3" else "v2")
        snapshots.append(build_mesh_state(registry=registry, governance=governance_with()))

    first, second = snapshots
    assert first.services == second.services


def test_the_first_instance_by_node_id_gives_the_service_its_mesh_settings() -> None:
    registry = Registry()
    register(registry, "orders", "10.0.0.2", 80, mesh={"timeoutMs": 2000})
    register(registry, "orders", "10.0.0.1", 80, mesh={"timeoutMs": 1000})
    register(registry, "orders", "10.0.0.0", 80)

    service = build_mesh_state(registry=registry, governance=None).services[0]

    assert service.settings.timeout_ms == 1000
