"""The registry core on a hand-driven clock: registration, leases, discovery and its filters."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from maxine_registry.errors import (
    Conflict,
    InvalidInput,
    NoInstance,
    NotFound,
    NotRegistered,
    PayloadTooLarge,
    Unavailable,
)
from maxine_registry.registration import Registration, parse_registration
from maxine_registry.registry import Registry, parse_tag_filter
from maxine_registry.strategies import PickContext, resolve_strategy
from tests.registry.conftest import FakeClock

ROUND_ROBIN = resolve_strategy("round-robin")


def registration(service: str = "orders", host: str = "10.0.0.1", port: int = 80, **fields: object) -> Registration:
    body: dict[str, object] = {"serviceName": service, "host": host, "port": port}
    body.update(fields)
    return parse_registration(body)


def event_names(registry: Registry) -> list[str]:
    return [event.event for event in registry.events.history(limit=1000)]


def test_registering_answers_the_node_id_and_publishes_one_event(registry: Registry) -> None:
    instance = registry.register(registration())

    assert instance.node_id == "orders:10.0.0.1:80"
    assert registry.get_instance("orders:10.0.0.1:80") is instance
    assert event_names(registry) == ["service_registered"]


def test_registering_again_refreshes_the_same_instance(registry: Registry, clock: FakeClock) -> None:
    first = registry.register(registration(ttl=10))
    clock.advance(8)

    again = registry.register(registration(ttl=10, metadata={"version": "2"}))

    assert again is first
    assert first.version == "2"
    assert first.expires_at == clock.now + 10
    assert registry.node_count == 1
    assert event_names(registry) == ["service_registered"]


def test_round_robin_visits_every_instance_in_turn(registry: Registry) -> None:
    for port in (1, 2, 3):
        registry.register(registration(port=port))

    picked = [registry.discover("orders", strategy=ROUND_ROBIN).port for _ in range(6)]

    assert picked == [1, 2, 3, 1, 2, 3]


def test_random_spreads_over_every_instance(registry: Registry) -> None:
    for port in (1, 2, 3):
        registry.register(registration(port=port))
    strategy = resolve_strategy("random")

    counts = Counter(registry.discover("orders", strategy=strategy).port for _ in range(3000))

    assert set(counts) == {1, 2, 3}
    assert all(900 <= count <= 1100 for count in counts.values())


def test_weighted_random_follows_the_weights(registry: Registry) -> None:
    registry.register(registration(port=1, metadata={"weight": 1}))
    registry.register(registration(port=2, metadata={"weight": 3}))
    strategy = resolve_strategy("weighted-random")

    counts = Counter(registry.discover("orders", strategy=strategy).port for _ in range(4000))

    assert 0.70 <= counts[2] / 4000 <= 0.80


def test_discover_filters_by_version_and_by_every_tag(registry: Registry) -> None:
    registry.register(registration(port=1, metadata={"version": "1.0", "tags": ["web"]}))
    registry.register(registration(port=2, metadata={"version": "2.0", "tags": ["web", "api"]}))
    registry.register(registration(port=3))

    assert registry.discover("orders", strategy=ROUND_ROBIN, version="2.0").port == 2
    assert registry.discover("orders", strategy=ROUND_ROBIN, version="default").port == 3
    assert registry.discover("orders", strategy=ROUND_ROBIN, tags=frozenset({"web", "api"})).port == 2
    assert {registry.discover("orders", strategy=ROUND_ROBIN, tags=frozenset({"web"})).port for _ in range(4)} == {1, 2}
    assert registry.versions("orders") == ["1.0", "2.0", "default"]


def test_discover_says_why_it_found_nothing(registry: Registry) -> None:
    registry.register(registration(metadata={"version": "1.0"}))

    with pytest.raises(NotFound) as unknown:
        registry.discover("payments", strategy=ROUND_ROBIN)
    with pytest.raises(NoInstance):
        registry.discover("orders", strategy=ROUND_ROBIN, version="9.9")

    registry.resolve("orders:10.0.0.1:80").healthy = False
    registry.get_service("orders").revision += 1  # type: ignore[union-attr]
    with pytest.raises(Unavailable) as unhealthy:
        registry.discover("orders", strategy=ROUND_ROBIN)

    assert unknown.value.code == "service_not_found"
    assert unhealthy.value.code == "no_healthy_instance"


def test_a_heartbeat_keeps_the_lease_alive(registry: Registry, clock: FakeClock) -> None:
    registry.register(registration(ttl=5))

    for _ in range(10):
        clock.advance(3)
        registry.heartbeat("orders:10.0.0.1:80")
        assert registry.expire_due() == []

    assert registry.node_count == 1


def test_a_lease_that_ends_removes_the_instance_and_says_so(registry: Registry, clock: FakeClock) -> None:
    registry.register(registration(ttl=5))
    registry.register(registration(port=81, ttl=50))

    clock.advance(4.9)
    assert registry.expire_due() == []
    clock.advance(0.6)
    expired = registry.expire_due()

    assert [instance.node_id for instance in expired] == ["orders:10.0.0.1:80"]
    assert registry.node_count == 1
    assert event_names(registry)[-1] == "service_unhealthy"
    with pytest.raises(NotRegistered):
        registry.heartbeat("orders:10.0.0.1:80")


def test_expiry_is_precise_for_many_instances(clock: FakeClock) -> None:
    registry = Registry(clock=clock, wall=lambda: clock.now)
    rng = random.Random(3)
    ttls: dict[str, float] = {}
    deadlines: dict[str, float] = {}
    for index in range(5000):
        ttl = rng.uniform(1, 30)
        node_id = registry.register(registration(service=f"s{index % 50}", port=index + 1, ttl=ttl)).node_id
        ttls[node_id] = ttl
        deadlines[node_id] = clock.now + ttl

    # Every other instance heartbeats once, halfway through its first lease.
    pending_heartbeats = {node_id: clock.now + ttls[node_id] / 2 for node_id in list(deadlines)[::2]}
    removed_at: dict[str, float] = {}
    while registry.node_count and clock.now < 1100:
        clock.advance(0.05)
        for node_id, when in list(pending_heartbeats.items()):
            if clock.now >= when:
                registry.heartbeat(node_id)
                deadlines[node_id] = clock.now + ttls[node_id]
                del pending_heartbeats[node_id]
        for instance in registry.expire_due():
            removed_at[instance.node_id] = clock.now

    lateness = [removed_at[node_id] - deadline for node_id, deadline in deadlines.items()]
    assert len(removed_at) == 5000
    assert min(lateness) >= 0
    assert max(lateness) <= 0.3


def test_a_heartbeat_moves_the_deadline_by_a_full_lease(clock: FakeClock) -> None:
    registry = Registry(clock=clock, wall=lambda: clock.now)
    registry.register(registration(ttl=10))

    clock.advance(9)
    registry.heartbeat("orders:10.0.0.1:80")
    clock.advance(9.5)
    assert registry.expire_due() == []
    clock.advance(1)

    assert [instance.node_id for instance in registry.expire_due()] == ["orders:10.0.0.1:80"]


def test_re_registering_with_a_shorter_ttl_expires_on_the_new_lease(registry: Registry, clock: FakeClock) -> None:
    registry.register(registration(ttl=60))
    registry.register(registration(ttl=2))

    clock.advance(2.5)

    assert len(registry.expire_due()) == 1
    assert registry.node_count == 0


def test_a_stale_lease_never_removes_a_newer_registration(registry: Registry, clock: FakeClock) -> None:
    registry.register(registration(ttl=2))
    registry.deregister("orders:10.0.0.1:80")
    registry.register(registration(ttl=20))

    clock.advance(3)

    assert registry.expire_due() == []
    assert registry.node_count == 1


def test_unknown_nodes_are_told_to_register_again(registry: Registry) -> None:
    with pytest.raises(NotRegistered) as heartbeat:
        registry.heartbeat("orders:10.0.0.1:80")
    with pytest.raises(NotRegistered) as deregister:
        registry.deregister("10.0.0.1:80")

    assert heartbeat.value.code == deregister.value.code == "not_registered"
    assert heartbeat.value.status == 404


def test_a_short_node_id_works_where_it_names_one_instance(registry: Registry) -> None:
    registry.register(registration(host="::1", port=9000))
    registry.register(registration(service="billing", port=81))
    registry.register(registration(service="payments", port=81))

    assert registry.heartbeat("[::1]:9000").node_id == "orders:::1:9000"
    with pytest.raises(Conflict) as ambiguous:
        registry.deregister("10.0.0.1:81")

    assert ambiguous.value.code == "ambiguous_node_id"
    assert registry.node_count == 3
    registry.deregister("billing:10.0.0.1:81")
    assert registry.deregister("10.0.0.1:81").node_id == "payments:10.0.0.1:81"


def test_a_short_node_id_finds_its_instance_among_many_on_one_host(registry: Registry) -> None:
    for port in (80, 81, 82):
        registry.register(registration(service=f"svc-{port}", port=port))
    registry.register(registration(service="other", host="10.0.0.2", port=81))

    assert registry.heartbeat("10.0.0.1:81").node_id == "svc-81:10.0.0.1:81"
    registry.register(registration(service="late", port=83))
    registry.deregister("10.0.0.1:80")
    registry.deregister("10.0.0.1:82")

    assert registry.heartbeat("10.0.0.1:81").node_id == "svc-81:10.0.0.1:81"
    assert registry.heartbeat("10.0.0.1:83").node_id == "late:10.0.0.1:83"
    assert registry.heartbeat("10.0.0.2:81").node_id == "other:10.0.0.2:81"
    registry.deregister("10.0.0.1:81")
    with pytest.raises(NotRegistered):
        registry.heartbeat("10.0.0.1:81")
    with pytest.raises(NotRegistered):
        registry.heartbeat("10.0.0.2:80")


def test_instances_with_identical_metadata_each_keep_what_they_declared(registry: Registry) -> None:
    metadata = {"version": "2.1", "tags": ["eu", "web"], "weight": 3, "owner": "team-a"}
    first = registry.register(registration(port=80, metadata=metadata))
    second = registry.register(registration(port=81, metadata=dict(metadata)))
    registry.register(registration(port=80, metadata={**metadata, "version": "2.2"}))

    assert (first.version, second.version) == ("2.2", "2.1")
    assert second.tags == frozenset({"eu", "web"}) and second.weight == 3.0
    assert second.metadata == metadata


def test_metadata_seen_before_is_still_held_to_the_size_limit() -> None:
    body = {"serviceName": "orders", "host": "10.0.0.1", "port": 80, "metadata": {"owner": "x" * 100}}
    parse_registration(body)

    with pytest.raises(PayloadTooLarge) as refused:
        parse_registration(body, max_metadata_bytes=64)

    assert refused.value.code == "metadata_too_large"


def test_deregistering_the_last_instance_forgets_the_service(registry: Registry) -> None:
    registry.register(registration())

    registry.deregister("10.0.0.1:80")

    assert registry.service_count == 0
    assert event_names(registry) == ["service_registered", "service_deregistered"]


def test_the_registry_refuses_instances_past_its_limit(clock: FakeClock) -> None:
    registry = Registry(max_instances=2, clock=clock)
    registry.register(registration(port=1))
    registry.register(registration(port=2))

    with pytest.raises(Unavailable) as full:
        registry.register(registration(port=3))
    registry.register(registration(port=2))  # a refresh is not a new instance

    assert full.value.code == "registry_full"
    assert registry.node_count == 2


def test_every_change_moves_the_service_revision(registry: Registry) -> None:
    registry.register(registration(port=1))
    first = registry.get_service("orders").revision  # type: ignore[union-attr]
    registry.register(registration(port=2))
    second = registry.get_service("orders").revision  # type: ignore[union-attr]
    registry.heartbeat("orders:10.0.0.1:1")

    assert second > first
    assert registry.get_service("orders").revision == second  # type: ignore[union-attr]


def test_candidate_sets_follow_membership_changes(registry: Registry) -> None:
    registry.register(registration(port=1))
    assert registry.discover("orders", strategy=ROUND_ROBIN).port == 1

    registry.register(registration(port=2))
    ports = {registry.discover("orders", strategy=ROUND_ROBIN).port for _ in range(2)}
    registry.deregister("orders:10.0.0.1:1")

    assert ports == {1, 2}
    assert {registry.discover("orders", strategy=ROUND_ROBIN).port for _ in range(3)} == {2}


def test_unknown_strategies_are_refused_by_name() -> None:
    with pytest.raises(InvalidInput) as unknown:
        resolve_strategy("fastest-please")

    assert unknown.value.code == "unknown_strategy"
    assert "round-robin" in unknown.value.message


def test_tag_filters_ignore_blanks() -> None:
    assert parse_tag_filter("web, api,,") == frozenset({"web", "api"})
    assert parse_tag_filter("") == frozenset()


def test_strategies_get_the_request_context(registry: Registry) -> None:
    seen: list[PickContext] = []
    registry.register(registration())

    def spy(candidates, context):  # type: ignore[no-untyped-def]
        seen.append(context)
        return candidates.instances[0]

    registry.discover("orders", strategy=spy, context=PickContext(rng=random.Random(1), client_ip="10.1.1.1"))

    assert seen[0].client_ip == "10.1.1.1"
