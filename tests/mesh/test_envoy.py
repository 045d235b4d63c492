"""
Envoy takes Maxine's configuration for real: the static bootstrap passes ``envoy --mode validate``,
and an Envoy on the dynamic bootstrap follows the registry over xDS without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from maxine_registry.mesh import EnvoyOptions, dynamic_bootstrap, static_bootstrap
from maxine_registry.mesh.model import MeshState
from tests.conftest import LOOPBACK, MaxineProcess, MaxineProcessFactory, find_free_loopback_port, http_json
from tests.mesh.conftest import Backend, EnvoyFactory, EnvoyProcess

# Envoy polls every second; a change must show within a few polls.
FOLLOW_DEADLINE = 10.0
SPLIT_REQUESTS = 1000
SPLIT_TOLERANCE_POINTS = 5.0
LEASE_SECONDS = 300


def test_the_static_bootstrap_passes_envoy_validation(state: MeshState, envoy: EnvoyFactory) -> None:
    config = static_bootstrap(state, EnvoyOptions(listener_port=find_free_loopback_port()))

    result = envoy.validate(config)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_an_ipv6_listener_and_the_dynamic_bootstrap_pass_envoy_validation(envoy: EnvoyFactory) -> None:
    options = EnvoyOptions(listener_address="::1", listener_port=10001, admin_port=10002, refresh_ms=500)

    for config in (
        dynamic_bootstrap(options, xds_host="127.0.0.1", xds_port=8080),
        dynamic_bootstrap(options, xds_host="maxine.maxine.svc.cluster.local", xds_port=8080),
        static_bootstrap(MeshState(), options),
    ):
        result = envoy.validate(config)
        assert result.returncode == 0, result.stdout + result.stderr


# A live Envoy on xDS.


def register(maxine: MaxineProcess, service: str, backend: Backend, *, version: str) -> str:
    status, body = http_json(
        maxine.base_url + "/register",
        method="POST",
        body={
            "serviceName": service,
            "host": LOOPBACK,
            "port": backend.port,
            "ttl": LEASE_SECONDS,
            "metadata": {"version": version},
        },
    )
    assert status == 200, body
    node_id: str = body["nodeId"]
    return node_id


def start_envoy(maxine: MaxineProcess, envoy: EnvoyFactory) -> tuple[EnvoyProcess, int]:
    """An Envoy started from the bootstrap Maxine serves; returns it and its listener port."""
    listener_port, admin_port = find_free_loopback_port(), find_free_loopback_port()
    bootstrap = maxine.get_json(f"/service-mesh/envoy-bootstrap?listenerPort={listener_port}&adminPort={admin_port}")
    return envoy.start(bootstrap, admin_port=admin_port), listener_port


async def answers(
    session: aiohttp.ClientSession, url: str, *, count: int, headers: dict[str, str] | None = None
) -> Counter[str]:
    """Who answered ``count`` requests in a row (status codes other than 200 count as ``<status>``)."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        async with session.get(url, headers=headers) as response:
            seen[await response.text() if response.status == 200 else f"<{response.status}>"] += 1
    return seen


async def wait_for(check: Callable[[], Any], *, what: str, envoy: EnvoyProcess) -> None:
    """Poll an async check until it holds, up to ``FOLLOW_DEADLINE`` seconds."""
    deadline = time.monotonic() + FOLLOW_DEADLINE
    last: object = None
    while time.monotonic() < deadline:
        last = await check()
        if last is True:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Envoy did not {what} within {FOLLOW_DEADLINE} s (last seen: {last!r}).")


async def test_envoy_on_xds_reaches_every_instance_and_drops_a_deregistered_one(
    maxine_process: MaxineProcessFactory, envoy: EnvoyFactory, backends: Callable[[str], Any]
) -> None:
    maxine = maxine_process()
    first, second = await backends("first"), await backends("second")
    first_node = register(maxine, "orders", first, version="v1")
    register(maxine, "orders", second, version="v1")
    proxy, port = start_envoy(maxine, envoy)
    by_path = f"http://{LOOPBACK}:{port}/orders/anything"

    async with aiohttp.ClientSession() as session:

        async def both_answer() -> object:
            seen = await answers(session, by_path, count=20)
            return set(seen) == {"first", "second"} or seen

        await wait_for(both_answer, what="route to both instances", envoy=proxy)
        by_host = await answers(session, f"http://{LOOPBACK}:{port}/", count=20, headers={"Host": "orders"})
        assert set(by_host) == {"first", "second"}

        status, body = http_json(maxine.base_url + "/deregister", method="DELETE", body={"nodeId": first_node})
        assert status == 200, body

        async def only_second() -> object:
            seen = await answers(session, by_path, count=20)
            return set(seen) == {"second"} or seen

        await wait_for(only_second, what="drop the deregistered instance", envoy=proxy)
        assert await answers(session, by_path, count=50) == Counter({"second": 50})


async def test_envoy_on_xds_splits_traffic_by_version_as_the_registry_says(
    maxine_process: MaxineProcessFactory, envoy: EnvoyFactory, backends: Callable[[str], Any]
) -> None:
    maxine = maxine_process()
    stable, canary = await backends("stable"), await backends("canary")
    register(maxine, "orders", stable, version="v1")
    register(maxine, "orders", canary, version="v2")
    proxy, port = start_envoy(maxine, envoy)
    url = f"http://{LOOPBACK}:{port}/orders/"

    status, body = http_json(
        maxine.base_url + "/traffic/set",
        method="POST",
        body={"serviceName": "orders", "distribution": {"v1": 90, "v2": 10}},
    )
    assert status == 200, body

    def split_applied() -> Any:
        async def check() -> object:
            routes = proxy.admin("/config_dump?resource=dynamic_route_configs")
            clusters = proxy.admin("/clusters")
            healthy = [f"orders|{version}::{LOOPBACK}:" in clusters for version in ("v1", "v2")]
            return ("weighted_clusters" in routes and all(healthy)) or healthy

        return check

    await wait_for(split_applied(), what="take the 90/10 split", envoy=proxy)
    async with aiohttp.ClientSession() as session:
        seen = await answers(session, url, count=SPLIT_REQUESTS)

    assert set(seen) == {"stable", "canary"}
    canary_points = 100 * seen["canary"] / SPLIT_REQUESTS
    assert abs(canary_points - 10) <= SPLIT_TOLERANCE_POINTS, seen
