"""
The sidecar's life in a pod, with real processes: a registry, an app whose readiness a test switches,
and ``python -m maxine_sidecar`` between them, configured by environment variables as in a pod.

Each test reads what a user would see: the registry's listings and events, the sidecar's /healthz,
its log, and its exit code.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.conftest import LOOPBACK, MaxineProcess, MaxineProcessFactory, find_free_loopback_port
from tests.sidecar.conftest import (
    LOOPBACK_V6,
    AppFactory,
    SidecarFactory,
    SidecarProcess,
    find_free_port,
    wait_until,
)

pytestmark = pytest.mark.e2e


def node_events(registry: MaxineProcess, node_id: str) -> list[str]:
    """The kinds of the registry's events about one node, oldest first."""
    return [item["event"] for item in registry.events() if item["data"].get("nodeId") == node_id]


def listed_node(registry: MaxineProcess, service_name: str, node_id: str) -> dict[str, Any] | None:
    services = registry.get_json("/servers")["services"]
    nodes = services.get(service_name, {}).get("nodes", [])
    return next((node for node in nodes if node["nodeId"] == node_id), None)


def registered_sidecar(
    *, registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory, service_name: str, **settings: str
) -> tuple[SidecarProcess, str]:
    """A ready app and its sidecar, once the sidecar says it registered the app; the sidecar and the node id."""
    app = ready_app(port=find_free_loopback_port())
    running = sidecar(
        registry_url=registry.base_url,
        service_name=service_name,
        app_port=app.port,
        settings={"READINESS_URL": app.readiness_url, **settings},
    )
    status = running.wait_for_state("registered")
    return running, status["nodeId"]


def test_registers_only_once_the_app_is_ready(
    registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    port = find_free_loopback_port()
    running = sidecar(
        registry_url=registry.base_url,
        service_name="orders",
        app_port=port,
        settings={
            "READINESS_URL": f"http://{LOOPBACK}:{port}/ready",
            "SERVICE_METADATA": json.dumps({"version": "1.2", "tags": ["eu"]}),
            "POD_NAME": "orders-7d9f",
            "POD_NAMESPACE": "shop",
        },
    )

    # No app at all yet: the sidecar waits and registers nothing.
    status = running.wait_for_state("waiting-for-app")
    assert status["registered"] is False
    assert status["appReady"] is False
    assert registry.node_ids("orders") == set()

    # The app runs but says it is not ready: still nothing, however often the sidecar asks.
    app = ready_app(port=port, ready=False)
    wait_until(lambda: app.checks() >= 3, what="three readiness checks of the app")
    assert running.state() == "waiting-for-app"
    assert registry.node_ids("orders") == set()

    # Ready: registered with the pod's identity and the metadata, and discoverable by version and tag.
    app.set_ready(True)
    status = running.wait_for_state("registered")
    node_id = f"orders:{LOOPBACK}:{port}"
    assert status["nodeId"] == node_id
    assert status["appReady"] is True
    node = listed_node(registry, "orders", node_id)
    assert node is not None
    assert node["metadata"] == {"version": "1.2", "tags": ["eu"], "pod": {"name": "orders-7d9f", "namespace": "shop"}}
    found = registry.get_json("/discover?serviceName=orders&version=1.2&tags=eu")
    assert found["nodeId"] == node_id


def test_heartbeats_keep_the_lease(registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory) -> None:
    _, node_id = registered_sidecar(registry=registry, ready_app=ready_app, sidecar=sidecar, service_name="orders")

    # Eight beats at one every 2/3 s span more than two leases of 2 s.
    wait_until(
        lambda: node_events(registry, node_id).count("service_heartbeat") >= 8,
        what="eight heartbeats from the sidecar",
    )

    assert node_id in registry.node_ids("orders")
    events = node_events(registry, node_id)
    assert events.count("service_registered") == 1
    assert "service_unhealthy" not in events
    assert "service_deregistered" not in events


def test_deregisters_while_the_app_is_not_ready_and_registers_again_when_it_is(
    registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    app = ready_app(port=find_free_loopback_port())
    running = sidecar(
        registry_url=registry.base_url,
        service_name="orders",
        app_port=app.port,
        settings={"READINESS_URL": app.readiness_url, "HEARTBEAT_TTL": "30"},
    )
    node_id = running.wait_for_state("registered")["nodeId"]

    # The app stops being ready: the node leaves at once (a deregistration, not a lease of 30 s running out).
    app.set_ready(False)
    status = running.wait_for_state("waiting-for-app")
    assert status["registered"] is False
    assert node_id not in registry.node_ids("orders")
    assert node_events(registry, node_id) == ["service_registered", "service_deregistered"]

    # Ready again: back in discovery.
    app.set_ready(True)
    status = running.wait_for_state("registered")
    assert status["registrations"] == 2
    assert node_id in registry.node_ids("orders")


def test_registers_again_when_the_registry_restarts_empty(
    registry: MaxineProcess, maxine_process: MaxineProcessFactory, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    running, node_id = registered_sidecar(
        registry=registry, ready_app=ready_app, sidecar=sidecar, service_name="orders"
    )

    registry.kill()
    running.wait_for_state("registry-unreachable")

    # A new registry on the same port knows nothing; the sidecar's next heartbeat gets 404 and registers again.
    restarted = maxine_process(port=registry.port)
    status = running.wait_for_state("registered")
    wait_until(lambda: node_id in restarted.node_ids("orders"), what="the node in the restarted registry")
    assert status["reregistrations"] >= 1


def test_backs_off_while_the_registry_is_unreachable_then_registers(
    maxine_process: MaxineProcessFactory, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    registry_port = find_free_loopback_port()
    app = ready_app(port=find_free_loopback_port())
    running = sidecar(
        registry_url=f"http://{LOOPBACK}:{registry_port}",
        service_name="orders",
        app_port=app.port,
        settings={"READINESS_URL": app.readiness_url, "LOG_LEVEL": "debug"},
    )

    # Several failed registrations, and one log line for the state they put the sidecar in.
    running.wait_for_state("registry-unreachable")
    wait_until(lambda: "failures=3" in running.logs(), what="three failed registrations", logs=running.logs)
    assert running.logs().count("is now registry-unreachable") == 1
    assert running.healthz()[1]["registrations"] == 0

    registry = maxine_process(port=registry_port)
    status = running.wait_for_state("registered")
    assert status["nodeId"] in registry.node_ids("orders")


def test_sigterm_deregisters_at_once_and_exits_zero(
    registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    # A lease of 30 s: a node gone right after the exit was deregistered, not expired.
    running, node_id = registered_sidecar(
        registry=registry, ready_app=ready_app, sidecar=sidecar, service_name="orders", HEARTBEAT_TTL="30"
    )

    assert running.terminate(timeout=5.0) == 0

    assert node_id not in registry.node_ids("orders")
    assert node_events(registry, node_id)[-1] == "service_deregistered"
    assert "is now stopped" in running.logs()


def test_sigterm_exits_zero_within_the_grace_period_when_the_registry_is_gone(
    registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    running, _ = registered_sidecar(
        registry=registry, ready_app=ready_app, sidecar=sidecar, service_name="orders", GRACE_PERIOD="2"
    )
    registry.kill()

    # terminate() fails the test unless the process exits within the bound given.
    assert running.terminate(timeout=4.0) == 0
    assert "its lease will run out instead" in running.logs()


def test_healthz_reports_the_state_and_the_node(
    registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    running, node_id = registered_sidecar(
        registry=registry, ready_app=ready_app, sidecar=sidecar, service_name="orders"
    )

    status, document = running.healthz()

    assert status == 200
    assert document["state"] == "registered"
    assert document["alive"] is True
    assert document["nodeId"] == node_id
    assert document["serviceName"] == "orders"
    assert document["registry"] == registry.base_url
    assert document["heartbeatTransport"] == "http"


def test_registers_an_ipv6_pod(registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory) -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    app = ready_app(port=find_free_port(LOOPBACK_V6), host=LOOPBACK_V6)
    running = sidecar(
        registry_url=registry.base_url,
        service_name="orders",
        app_port=app.port,
        settings={"POD_IP": "0:0:0:0:0:0:0:1", "READINESS_URL": app.readiness_url},
    )

    status = running.wait_for_state("registered")

    node_id = f"orders:::1:{app.port}"
    assert status["nodeId"] == node_id
    assert status["address"] == f"[::1]:{app.port}"
    assert node_id in registry.node_ids("orders")


def test_without_a_readiness_url_the_app_is_ready_once_its_port_accepts_connections(
    registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    port = find_free_loopback_port()
    running = sidecar(registry_url=registry.base_url, service_name="orders", app_port=port)
    running.wait_for_state("waiting-for-app")

    ready_app(port=port, ready=False)  # /ready says no, but nobody asks it: the open port is the check

    running.wait_for_state("registered")
    assert f"orders:{LOOPBACK}:{port}" in registry.node_ids("orders")


def test_logs_json_lines_and_never_the_token(
    registry: MaxineProcess, ready_app: AppFactory, sidecar: SidecarFactory
) -> None:
    token = "sidecar-test-token-0123456789"
    running, _ = registered_sidecar(
        registry=registry,
        ready_app=ready_app,
        sidecar=sidecar,
        service_name="orders",
        MAXINE_TOKEN=token,
        LOG_FORMAT="json",
    )
    assert running.terminate() == 0

    lines = [json.loads(line) for line in running.logs().splitlines()]
    changes = [(line["previous"], line["state"]) for line in lines if "state" in line]
    # The app was ready from the start: one line per change, none for the many turns in between.
    assert changes == [
        ("starting", "registered"),
        ("registered", "stopping"),
        ("stopping", "stopped"),
    ]
    assert token not in running.logs()


UDP_KEY = "sidecar-udp-test-key-0123456789abcdef"


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_udp_heartbeats_keep_the_lease_and_bring_the_node_back_after_a_registry_restart(
    maxine_process: MaxineProcessFactory, ready_app: AppFactory, sidecar: SidecarFactory, signed: bool
) -> None:
    key_args = ["--udp-hmac-key", UDP_KEY] if signed else []
    registry = maxine_process(args=["--heartbeat-events", "--heartbeat-event-interval", "0", *key_args])
    running, node_id = registered_sidecar(
        registry=registry,
        ready_app=ready_app,
        sidecar=sidecar,
        service_name="orders",
        HEARTBEAT_TRANSPORT="udp",
        **({"UDP_HMAC_KEY": UDP_KEY} if signed else {}),
    )
    assert running.healthz()[1]["heartbeatTransport"] == "udp"

    # Datagrams only: the registry counts each as a heartbeat, and the lease of 2 s holds across many of them.
    wait_until(
        lambda: node_events(registry, node_id).count("service_heartbeat") >= 8,
        what="eight UDP heartbeats from the sidecar",
    )
    events = node_events(registry, node_id)
    assert events.count("service_registered") == 1
    assert "service_unhealthy" not in events

    # A new registry on the same port answers the next datagram with "not registered"; the node comes back.
    registry.kill()
    restarted = maxine_process(port=registry.port, args=key_args)
    wait_until(lambda: node_id in restarted.node_ids("orders"), what="the node in the restarted registry")
    assert running.wait_for_state("registered")["reregistrations"] >= 1
