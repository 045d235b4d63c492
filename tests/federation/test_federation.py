"""Federated registries as separate processes on loopback: lookups on a miss, replication, dead peers, loops."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from tests.conftest import LOOPBACK, MaxineProcess, MaxineProcessFactory, find_free_loopback_port
from tests.federation.conftest import Federated, request
from tests.persistence.conftest import wait_until

FEDERATION = "/api/maxine/serviceops/federation"


def register(registry: MaxineProcess, service: str, *, port: int = 8080, ttl: float = 60) -> None:
    body = {"serviceName": service, "host": "10.0.0.5", "port": port, "ttl": ttl}
    status, answer, _ = request(registry.base_url + "/register", method="POST", body=body)
    assert status == 200, answer


def discover(registry: MaxineProcess, service: str) -> tuple[int, Any, Any]:
    return request(registry.base_url + f"/discover?serviceName={service}")


def lists(registry: MaxineProcess, node_id: str) -> bool:
    return node_id in registry.node_ids(node_id.partition(":")[0])


def lists_nothing(registry: MaxineProcess, service: str = "orders") -> bool:
    return not registry.node_ids(service)


def peer_view(registry: MaxineProcess, name: str) -> dict[str, Any]:
    peers: list[dict[str, Any]] = registry.get_json(FEDERATION)["peers"]
    return next(peer for peer in peers if peer["name"] == name)


def test_registrations_reach_every_peer_and_deregistrations_follow(federated: Federated) -> None:
    a, b, c = federated(["a", "b", "c"], peers={"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]})

    register(a, "orders")

    for registry in (b, c):
        wait_until(partial(lists, registry, "orders:10.0.0.5:8080"), what=f"{registry} has orders")
    request(a.base_url + "/deregister", method="DELETE", body={"nodeId": "orders:10.0.0.5:8080"})
    for registry in (b, c):
        wait_until(partial(lists_nothing, registry), what=f"{registry} drops orders")


def test_a_miss_is_answered_by_the_first_peer_that_knows_the_service(federated: Federated) -> None:
    # b has no peers, so nothing replicates its registration to a: only a lookup can find it.
    a, b = federated(["a", "b"], peers={"a": ["b"]})
    register(b, "payments")

    status, instance, headers = discover(a, "payments")

    assert status == 200
    assert instance["nodeId"] == "payments:10.0.0.5:8080"
    assert headers["X-Maxine-Peer"] == "b"
    assert a.get_json(FEDERATION)["lookupHits"] == 1


def test_a_query_from_a_peer_is_answered_locally_only(federated: Federated) -> None:
    a, b, c = federated(["a", "b", "c"], peers={"a": ["b"], "b": ["c"]})
    register(c, "ledger")

    # b would find ledger on c for its own clients, but a query a relays to b stops at b.
    assert discover(b, "ledger")[0] == 200
    assert discover(a, "ledger")[0] == 404


def test_a_silent_peer_costs_a_miss_at_most_the_timeout_and_a_known_service_nothing(
    maxine_process: MaxineProcessFactory, silent_peer: int
) -> None:
    live = maxine_process(args=["--no-health-checks"])
    register(live, "inventory")
    peers = f"silent=http://{LOOPBACK}:{silent_peer},live={live.base_url}"
    a = maxine_process(
        args=["--federation-enabled", "--federation-peers", peers, "--federation-timeout", "500", "--no-health-checks"]
    )
    register(a, "orders")

    # Known here: answered without asking anyone.
    assert discover(a, "orders")[0] == 200
    # Known to the live peer: its answer wins while the silent one hangs.
    status, _, headers = discover(a, "inventory")
    assert (status, headers["X-Maxine-Peer"]) == (200, "live")
    # Known nowhere: the lookup gives up after the federation timeout, well within this client's 5 s.
    status, answer, _ = discover(a, "nowhere")
    assert (status, answer["code"]) == (404, "service_not_found")
    # Replication to the silent peer keeps failing, in the background.
    wait_until(lambda: peer_view(a, "silent")["failures"] >= 1, what="replication to the silent peer fails")
    assert not peer_view(a, "silent")["reachable"]


def test_replication_to_a_peer_that_was_down_catches_up_when_it_comes_back(federated: Federated) -> None:
    b_port = find_free_loopback_port()
    (a,) = federated(["a"], peers={"a": ["b"]}, ports={"b": b_port})
    register(a, "orders")
    wait_until(lambda: peer_view(a, "b")["failures"] >= 1, what="a fails to reach b")

    (b,) = federated(["b"], peers={}, ports={"b": b_port})

    wait_until(
        lambda: "orders:10.0.0.5:8080" in b.node_ids("orders"), what="b receives the queued registration", within=15
    )


def test_a_replicated_write_is_not_replicated_again(federated: Federated) -> None:
    a, b = federated(["a", "b"], peers={"a": ["b"], "b": ["a"]})

    register(a, "orders")

    wait_until(lambda: peer_view(a, "b")["replicated"] >= 1, what="a replicates to b")
    assert "orders:10.0.0.5:8080" in b.node_ids("orders")
    time.sleep(0.3)
    assert peer_view(b, "a")["replicated"] == 0


def test_heartbeats_keep_the_copies_alive_and_a_restarted_peer_gets_the_instance_back(
    federated: Federated, maxine_process: MaxineProcessFactory
) -> None:
    a, b = federated(["a", "b"], peers={"a": ["b"]})
    register(a, "orders", ttl=2)
    node_id = "orders:10.0.0.5:8080"
    wait_until(lambda: node_id in b.node_ids("orders"), what="b has the copy")

    def heartbeat_for(seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            assert request(a.base_url + "/heartbeat", method="POST", body={"nodeId": node_id})[0] == 200
            time.sleep(0.3)

    heartbeat_for(3.0)
    assert node_id in b.node_ids("orders"), "the copy's lease ended although the instance heartbeats"

    b.kill()
    restarted = maxine_process(port=b.port, args=["--no-health-checks"])
    assert not restarted.node_ids("orders")
    heartbeat_for(1.5)
    wait_until(
        lambda: node_id in restarted.node_ids("orders"), what="a forwarded heartbeat's 404 brings a registration"
    )

    wait_until(lambda: node_id not in restarted.node_ids("orders"), what="the copy ends once heartbeats stop")


def test_a_peer_applies_its_own_rules_to_the_caller_of_a_relayed_lookup(federated: Federated) -> None:
    a, b = federated(["a", "b"], peers={"a": ["b"]})
    register(b, "payments")
    acl = {"serviceName": "payments", "allow": ["web"], "deny": []}
    assert request(b.base_url + "/api/maxine/serviceops/acl/set", method="POST", body=acl)[0] == 200

    allowed = request(a.base_url + "/discover?serviceName=payments&caller=web")
    refused = request(a.base_url + "/discover?serviceName=payments&caller=batch")

    assert allowed[0] == 200
    assert (refused[0], refused[1]["code"]) == (404, "service_not_found")
