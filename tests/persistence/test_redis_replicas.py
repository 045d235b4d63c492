"""
Replicas sharing a real Redis: every replica sees every write, leases end once for all, and outages heal.

Each replica is a real ``maxine`` process; each test has its own ``redis-server`` on a free port,
without persistence, so that killing it loses its data as a crash would.
"""

from __future__ import annotations

import signal
import time
from functools import partial
from typing import Any

import redis

from tests.conftest import MaxineProcess, MaxineProcessFactory, RedisServer, http_json
from tests.persistence.conftest import wait_until

SERVICEOPS = "/api/maxine/serviceops"
DEADLINE = 2.0


def start_replicas(factory: MaxineProcessFactory, server: RedisServer, count: int) -> list[MaxineProcess]:
    return [factory(args=[*server.maxine_args(), "--no-health-checks"]) for _ in range(count)]


def register(replica: MaxineProcess, *, port: int, ttl: float = 60, service: str = "orders") -> tuple[int, Any]:
    body = {"serviceName": service, "host": "10.0.0.5", "port": port, "ttl": ttl}
    return http_json(replica.base_url + "/register", method="POST", body=body)


def discover(replica: MaxineProcess, service: str = "orders") -> tuple[int, Any]:
    return http_json(replica.base_url + f"/discover?serviceName={service}")


def status(replica: MaxineProcess) -> dict[str, Any]:
    document: dict[str, Any] = replica.get_json(SERVICEOPS + "/persistence")
    return document


def discovers(replica: MaxineProcess, service: str = "orders") -> bool:
    return discover(replica, service)[0] == 200


def node_is_listed(replica: MaxineProcess, node_id: str, *, service: str = "orders") -> bool:
    return node_id in replica.node_ids(service)


def node_is_gone(replica: MaxineProcess, node_id: str) -> bool:
    return not node_is_listed(replica, node_id)


def test_a_registration_on_one_replica_is_discoverable_on_the_others(
    maxine_process: MaxineProcessFactory, redis_server: RedisServer
) -> None:
    first, second, third = start_replicas(maxine_process, redis_server, 3)

    assert register(first, port=8080)[0] == 200

    for replica in (second, third):
        wait_until(partial(discovers, replica), what=f"{replica} discovers orders", within=DEADLINE)
        assert discover(replica)[1]["nodeId"] == "orders:10.0.0.5:8080"
    assert first.get_json("/metrics")["persistenceType"] == "redis"


def test_deregistrations_and_the_other_state_reach_every_replica(
    maxine_process: MaxineProcessFactory, redis_server: RedisServer
) -> None:
    first, second = start_replicas(maxine_process, redis_server, 2)
    register(first, port=8080, service="payments")
    register(first, port=8081, service="payments")
    writes = [
        ("POST", "/traffic/set", {"serviceName": "payments", "distribution": {"1.0": 100}}),
        ("POST", SERVICEOPS + "/config/set", {"serviceName": "payments", "key": "timeout", "value": 5000}),
        ("POST", SERVICEOPS + "/acl/set", {"serviceName": "payments", "allow": ["web"], "deny": []}),
        ("POST", SERVICEOPS + "/dependency/add", {"serviceName": "web", "dependsOn": "payments"}),
        ("DELETE", "/deregister", {"nodeId": "payments:10.0.0.5:8081"}),
    ]
    for method, path, body in writes:
        answer = http_json(first.base_url + path, method=method, body=body)
        assert answer[0] == 200, f"{method} {path}: {answer}"

    def caught_up() -> bool:
        return second.node_ids("payments") == {"payments:10.0.0.5:8080"} and (
            http_json(second.base_url + SERVICEOPS + "/dependency/get?serviceName=web")[1].get("dependencies")
            == ["payments"]
        )

    wait_until(caught_up, what="the second replica has every write", within=DEADLINE)
    assert second.get_json("/traffic?serviceName=payments")["distribution"] == {"1.0": 100.0}
    assert second.get_json(SERVICEOPS + "/config/get?serviceName=payments&key=timeout")["value"] == 5000
    assert second.get_json(SERVICEOPS + "/acl/payments")["allow"] == ["web"]


def test_config_watchers_on_another_replica_see_the_change(
    maxine_process: MaxineProcessFactory, redis_server: RedisServer
) -> None:
    first, second = start_replicas(maxine_process, redis_server, 2)

    http_json(
        first.base_url + SERVICEOPS + "/config/set", method="POST", body={"serviceName": "web", "key": "a", "value": 1}
    )

    def announced() -> bool:
        return any(event["data"].get("key") == "a" for event in second.events(event="config_changed"))

    wait_until(announced, what="the second replica publishes config_changed", within=DEADLINE)


def test_a_lease_heartbeated_through_any_replica_lives_and_ends_once_heartbeats_stop(
    maxine_process: MaxineProcessFactory, redis_server: RedisServer
) -> None:
    first, second, third = start_replicas(maxine_process, redis_server, 3)
    register(first, port=8080, ttl=1)
    node_id = "orders:10.0.0.5:8080"

    # Heartbeats go to the second replica only, for well over the one-second lease.
    stop_at = time.monotonic() + 3.0
    while time.monotonic() < stop_at:
        assert http_json(second.base_url + "/heartbeat", method="POST", body={"nodeId": node_id})[0] == 200
        time.sleep(0.25)
    for replica in (first, second, third):
        assert node_is_listed(replica, node_id), f"{replica} let a heartbeated lease end"

    for replica in (first, second, third):
        wait_until(partial(node_is_gone, replica, node_id), what=f"the lease ends on {replica}")
    unhealthy = [event for event in third.events(event="service_unhealthy") if event["data"]["nodeId"] == node_id]
    assert [event["data"]["reason"] for event in unhealthy] == ["lease_expired"]


def test_exactly_one_replica_keeps_the_leases(maxine_process: MaxineProcessFactory, redis_server: RedisServer) -> None:
    replicas = start_replicas(maxine_process, redis_server, 3)

    wait_until(lambda: sum(status(replica)["leader"] for replica in replicas) == 1, what="one leader is elected")


def test_with_redis_down_writes_answer_503_and_reads_go_on_then_replicas_recover(
    maxine_process: MaxineProcessFactory, redis_server: RedisServer
) -> None:
    first, second = start_replicas(maxine_process, redis_server, 2)
    register(first, port=8080)
    wait_until(lambda: discover(second)[0] == 200, what="the second replica discovers orders")

    redis_server.kill()

    wait_until(lambda: register(first, port=8081)[0] == 503, what="a write is refused while Redis is down")
    refused = register(second, port=8082)
    assert refused[0] == 503
    assert refused[1]["code"] == "persistence_unavailable"
    assert discover(first)[0] == 200
    assert discover(second)[1]["nodeId"] == "orders:10.0.0.5:8080"

    redis_server.start()

    wait_until(lambda: register(first, port=8083)[0] == 200, what="writes are taken again once Redis is back")
    wait_until(lambda: node_is_listed(second, "orders:10.0.0.5:8083"), what="the second replica follows again")
    for replica in (first, second):
        assert replica.node_ids("orders") == {"orders:10.0.0.5:8080", "orders:10.0.0.5:8083"}


def test_a_killed_replica_leaves_the_others_serving_and_its_lease_keeping_passes_on(
    maxine_process: MaxineProcessFactory, redis_server: RedisServer
) -> None:
    replicas = start_replicas(maxine_process, redis_server, 3)
    wait_until(lambda: sum(status(replica)["leader"] for replica in replicas) == 1, what="one leader is elected")
    leader = next(replica for replica in replicas if status(replica)["leader"])
    survivors = [replica for replica in replicas if replica is not leader]

    leader.kill()
    assert register(survivors[0], port=8080, ttl=1)[0] == 200

    wait_until(lambda: any(status(replica)["leader"] for replica in survivors), what="another replica leads")
    for replica in survivors:
        wait_until(
            partial(node_is_gone, replica, "orders:10.0.0.5:8080"), what=f"the new leader ends the lease on {replica}"
        )
    assert register(survivors[1], port=8081)[0] == 200
    wait_until(lambda: discover(survivors[0])[0] == 200, what="the survivors still share writes")


def test_a_replica_that_missed_changes_catches_up(
    maxine_process: MaxineProcessFactory, redis_server: RedisServer
) -> None:
    first, second = start_replicas(maxine_process, redis_server, 2)
    register(first, port=8080)
    wait_until(lambda: discover(second)[0] == 200, what="the second replica follows")

    # Frozen, the second replica misses changes that the stream then no longer holds.
    second.process.send_signal(signal.SIGSTOP)
    try:
        for port in range(8081, 8091):
            assert register(first, port=port)[0] == 200
        client = redis.Redis(host=redis_server.host, port=redis_server.port)
        try:
            client.xtrim("{maxine}:changes", maxlen=0)
        finally:
            client.close()
        assert register(first, port=8091)[0] == 200
    finally:
        second.process.send_signal(signal.SIGCONT)

    expected = {f"orders:10.0.0.5:{port}" for port in range(8080, 8092)}
    wait_until(lambda: second.node_ids("orders") == expected, what="the second replica catches up")
    assert status(second)["resyncs"] >= 2


def test_state_wiped_from_a_running_redis_is_written_back_and_followed(
    maxine_process: MaxineProcessFactory, redis_server: RedisServer
) -> None:
    first, second = start_replicas(maxine_process, redis_server, 2)
    register(first, port=8080)
    wait_until(partial(discovers, second), what="the second replica follows")

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        client.flushall()
    finally:
        client.close()

    # The first write after the wipe finds the state gone; the replica writes its memory back, and writes go on.
    wait_until(lambda: register(first, port=8081)[0] == 200, what="writes are taken again after the wipe")
    expected = {"orders:10.0.0.5:8080", "orders:10.0.0.5:8081"}
    wait_until(lambda: second.node_ids("orders") == expected, what="the second replica follows the new state")
