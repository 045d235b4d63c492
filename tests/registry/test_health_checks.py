"""
Active health checks: what a healthCheck spec may say, and how probes move instances in and out of discovery.

The behaviour tests run against real HTTP and TCP services on loopback, in real time, with the shortest
interval a spec allows (1 s). They wait for conditions with deadlines and never assume a speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.errors import InvalidInput, Unavailable
from maxine_registry.health_checks import HealthChecker, HealthCheckSpec
from maxine_registry.model import Instance
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.server import MaxineServer
from maxine_registry.settings import Settings, SettingsError, load_settings
from maxine_registry.strategies import resolve_strategy
from tests.registry.conftest import LOOPBACK, HttpTarget, TcpTarget, wait_until

ROUND_ROBIN = resolve_strategy("round-robin")
# The fastest schedule a spec allows, with short runs so that tests see crossings in a few seconds.
FAST = {"interval": 1000, "timeout": 300, "rise": 2, "fall": 2}


def register(
    registry: Registry, *, port: int, health_check: dict[str, Any] | None, service: str = "orders"
) -> Instance:
    """Register through the same validation as every transport."""
    metadata = {} if health_check is None else {"healthCheck": health_check}
    body = {"serviceName": service, "host": LOOPBACK, "port": port, "metadata": metadata}
    return registry.register(parse_registration(body))


def health_events(registry: Registry) -> list[tuple[str, str, str]]:
    return [
        (event.event, event.data["nodeId"], event.data["reason"])
        for event in registry.events.history(limit=1000)
        if event.event in ("service_healthy", "service_unhealthy")
    ]


# What a spec may say.


def test_an_empty_spec_takes_the_documented_defaults() -> None:
    spec = HealthCheckSpec.parse({}, host="10.0.0.1", port=8080)

    assert spec == HealthCheckSpec(
        kind="http", scheme="http", path="/health", interval=30.0, timeout=5.0, rise=2, fall=3
    )


def test_a_short_interval_gets_a_default_timeout_within_it() -> None:
    spec = HealthCheckSpec.parse({"interval": 1000}, host="10.0.0.1", port=8080)

    assert (spec.interval, spec.timeout) == (1.0, 0.5)


def test_a_tcp_spec_takes_no_url() -> None:
    spec = HealthCheckSpec.parse({"type": "tcp", "interval": 5000, "fall": 1}, host="10.0.0.1", port=8080)

    assert (spec.kind, spec.interval, spec.fall) == ("tcp", 5.0, 1)


@pytest.mark.parametrize(
    ("url", "host", "port", "scheme", "path"),
    [
        ("/ready?deep=1", "10.0.0.1", 8080, "http", "/ready?deep=1"),
        ("http://10.0.0.1:8080/ready", "10.0.0.1", 8080, "http", "/ready"),
        ("HTTP://Svc.Example:8080", "svc.example", 8080, "http", "/"),
        ("https://[::1]/health", "::1", 443, "https", "/health"),
        ("http://[0:0::1]:9000/health", "::1", 9000, "http", "/health"),
    ],
)
def test_urls_on_the_instances_own_address_are_accepted(url: str, host: str, port: int, scheme: str, path: str) -> None:
    spec = HealthCheckSpec.parse({"url": url}, host=host, port=port)

    assert (spec.scheme, spec.path) == (scheme, path)


@pytest.mark.parametrize(
    ("url", "mentions"),
    [
        ("http://169.254.169.254/latest/meta-data", "own address"),
        ("http://10.0.0.2:8080/health", "own address"),
        ("http://10.0.0.1:9090/health", "own address"),
        ("http://10.0.0.1/health", "own address"),
        ("https://10.0.0.1/health", "own address"),
        ("http://user:secret@10.0.0.1:8080/health", "credentials"),
        ("//evil.example/health", "without a scheme"),
        ("ftp://10.0.0.1:8080/health", "absolute http"),
        ("health", "absolute http"),
        ("/health#top", "'#'"),
        ("/he alth", "spaces"),
    ],
)
def test_urls_that_name_another_address_are_refused(url: str, mentions: str) -> None:
    with pytest.raises(InvalidInput, match=mentions):
        HealthCheckSpec.parse({"url": url}, host="10.0.0.1", port=8080)


def test_the_probed_url_is_built_from_the_instances_address() -> None:
    instance = register(Registry(), port=8080, health_check=None)
    spec = HealthCheckSpec.parse({"url": "/@evil.example:80/x?y=1"}, host=LOOPBACK, port=8080)

    url = spec.url_for(instance)

    assert (url.host, url.port, url.raw_path_qs) == (LOOPBACK, 8080, "/@evil.example:80/x?y=1")


@pytest.mark.parametrize(
    ("spec", "mentions"),
    [
        ("/health", "must be an object"),
        ({"path": "/health"}, "unknown key"),
        ({"type": "icmp"}, "'http' or 'tcp'"),
        ({"interval": 999}, "interval must be from 1000 to 3600000 ms, got 999"),
        ({"interval": 3_600_001}, "interval"),
        ({"interval": "30000"}, "number of milliseconds, got '30000'"),
        ({"interval": True}, "number of milliseconds"),
        ({"timeout": 99}, "timeout must be from 100"),
        ({"timeout": 60_001, "interval": 120_000}, "timeout must be from 100 to 60000"),
        ({"interval": 2000, "timeout": 2000}, "shorter than its interval"),
        ({"rise": 0}, "rise must be an integer from 1 to 10"),
        ({"fall": 11}, "fall must be an integer"),
        ({"fall": 1.5}, "fall must be an integer"),
        ({"type": "tcp", "url": "/health"}, "http checks only"),
        ({"url": ""}, "non-empty string"),
    ],
)
def test_bad_specs_are_refused_with_the_offending_value(spec: object, mentions: str) -> None:
    with pytest.raises(InvalidInput, match=mentions):
        HealthCheckSpec.parse(spec, host="10.0.0.1", port=8080)


async def test_registering_with_a_bad_health_check_answers_400(api: TestClient[object, object]) -> None:
    body = {
        "serviceName": "orders",
        "host": "10.0.0.1",
        "port": 8080,
        "metadata": {"healthCheck": {"url": "http://10.0.0.9:8080/health"}},
    }

    response = await api.post("/register", json=body)

    assert response.status == 400
    answer = await response.json()
    assert answer["code"] == "invalid_input"
    assert "own address" in answer["error"]


def test_identical_metadata_is_checked_against_each_instances_own_address() -> None:
    metadata = {"healthCheck": {"url": "http://10.0.0.1:8080/health"}}
    parse_registration({"serviceName": "orders", "host": "10.0.0.1", "port": 8080, "metadata": metadata})

    with pytest.raises(InvalidInput, match="own address"):
        parse_registration({"serviceName": "orders", "host": "10.0.0.2", "port": 8080, "metadata": metadata})


async def test_registering_with_a_good_health_check_keeps_it_in_the_metadata(
    api: TestClient[object, object],
) -> None:
    health_check = {"url": "/ready", "interval": 10000, "rise": 1}
    body = {"serviceName": "orders", "host": "10.0.0.1", "port": 8080, "metadata": {"healthCheck": health_check}}

    registered = await api.post("/register", json=body)
    found = await api.get("/discover", params={"serviceName": "orders"})

    assert registered.status < 300
    assert (await found.json())["metadata"]["healthCheck"] == health_check


# Probes moving instances in and out of discovery.


async def test_an_instance_failing_its_checks_leaves_discovery_until_it_passes_again(
    live_registry: Registry, checker: HealthChecker, http_target: HttpTarget
) -> None:
    instance = register(live_registry, port=http_target.port, health_check={"url": "/health", **FAST})
    await wait_until(lambda: http_target.hits["/health"] >= 1, what="the first probe arrives")

    http_target.status = 500
    await wait_until(lambda: not instance.healthy, what="the instance is marked unhealthy")

    assert http_target.hits["/health"] >= 3  # the first probe passed, then `fall` failed
    assert instance.view()["healthy"] is False
    with pytest.raises(Unavailable) as refused:
        live_registry.discover("orders", strategy=ROUND_ROBIN)
    assert refused.value.code == "no_healthy_instance"

    http_target.status = 200
    await wait_until(lambda: instance.healthy, what="the instance is healthy again")

    assert live_registry.discover("orders", strategy=ROUND_ROBIN) is instance
    assert instance.view()["healthy"] is True
    assert health_events(live_registry) == [
        ("service_unhealthy", instance.node_id, "health_check"),
        ("service_healthy", instance.node_id, "health_check"),
    ]


async def test_one_failed_answer_does_not_mark_an_instance_unhealthy(
    live_registry: Registry, checker: HealthChecker, http_target: HttpTarget
) -> None:
    http_target.fail_next = 1
    instance = register(live_registry, port=http_target.port, health_check={"url": "/health", **FAST})

    await wait_until(lambda: http_target.hits["/health"] >= 4, what="one failed and three passed probes arrive")

    assert instance.healthy
    assert health_events(live_registry) == []


async def test_answers_slower_than_the_timeout_fail_and_discovery_picks_the_healthy_instance(
    live_registry: Registry, checker: HealthChecker, http_targets: Callable[[], Awaitable[HttpTarget]]
) -> None:
    slow, quick = await http_targets(), await http_targets()
    slow.delay = 3.0
    slow_instance = register(live_registry, port=slow.port, health_check={"url": "/health", **FAST})
    quick_instance = register(live_registry, port=quick.port, health_check={"url": "/health", **FAST})

    await wait_until(lambda: not slow_instance.healthy, what="the slow instance is marked unhealthy")

    picked = {live_registry.discover("orders", strategy=ROUND_ROBIN) for _ in range(4)}
    assert picked == {quick_instance}
    assert slow_instance.view()["healthy"] is False


async def test_a_stopped_http_service_goes_unhealthy_and_recovers_when_it_listens_again(
    live_registry: Registry, checker: HealthChecker, http_target: HttpTarget
) -> None:
    instance = register(live_registry, port=http_target.port, health_check={"url": "/health", **FAST})
    await wait_until(lambda: http_target.hits["/health"] >= 1, what="the first probe arrives")

    await http_target.stop()
    await wait_until(lambda: not instance.healthy, what="the instance is marked unhealthy")
    with pytest.raises(Unavailable):
        live_registry.discover("orders", strategy=ROUND_ROBIN)

    await http_target.start()
    await wait_until(lambda: instance.healthy, what="the instance is healthy again")
    assert live_registry.discover("orders", strategy=ROUND_ROBIN) is instance


async def test_tcp_checks_follow_a_listener_closing_and_reopening(
    live_registry: Registry, checker: HealthChecker, tcp_target: TcpTarget
) -> None:
    spec = {"type": "tcp", "interval": 1000, "timeout": 300, "rise": 2, "fall": 2}
    instance = register(live_registry, port=tcp_target.port, health_check=spec, service="cache")
    await wait_until(lambda: tcp_target.connections >= 2, what="two probes connect")
    assert instance.healthy

    await tcp_target.stop()
    await wait_until(lambda: not instance.healthy, what="the instance is marked unhealthy")
    with pytest.raises(Unavailable):
        live_registry.discover("cache", strategy=ROUND_ROBIN)

    await tcp_target.start()
    await wait_until(lambda: instance.healthy, what="the instance is healthy again")
    assert [name for name, _, reason in health_events(live_registry)] == ["service_unhealthy", "service_healthy"]


async def test_redirects_pass_and_are_never_followed(
    live_registry: Registry, checker: HealthChecker, http_targets: Callable[[], Awaitable[HttpTarget]]
) -> None:
    checked, elsewhere = await http_targets(), await http_targets()
    checked.redirect_to = f"http://{LOOPBACK}:{elsewhere.port}/elsewhere"
    instance = register(live_registry, port=checked.port, health_check={"url": "/health", **FAST, "rise": 1, "fall": 1})

    await wait_until(lambda: checked.hits["/health"] >= 3, what="three probes arrive")

    assert elsewhere.hits.total() == 0
    assert instance.healthy


async def test_checks_added_or_removed_by_registering_again_take_effect(
    live_registry: Registry, checker: HealthChecker, http_target: HttpTarget
) -> None:
    instance = register(live_registry, port=http_target.port, health_check=None)
    http_target.status = 500

    again = register(live_registry, port=http_target.port, health_check={"url": "/late", **FAST})
    await wait_until(lambda: not instance.healthy, what="checks added later mark the instance unhealthy")
    register(live_registry, port=http_target.port, health_check=None)
    await wait_until(lambda: instance.healthy, what="removing the checks brings the instance back")

    assert again is instance
    assert http_target.hits["/late"] >= 2
    assert health_events(live_registry) == [
        ("service_unhealthy", instance.node_id, "health_check"),
        ("service_healthy", instance.node_id, "health_check_removed"),
    ]


async def test_instances_registered_before_the_checker_started_are_probed(
    live_registry: Registry, start_checker: Callable[..., HealthChecker], http_target: HttpTarget
) -> None:
    instance = register(live_registry, port=http_target.port, health_check={"url": "/early", **FAST})
    http_target.status = 500

    checker = start_checker()
    await wait_until(lambda: not instance.healthy, what="the instance registered first is probed and fails")

    assert http_target.hits["/early"] >= 2
    assert checker.target_count == 1


async def test_a_stopped_checker_takes_no_new_targets(
    live_registry: Registry, start_checker: Callable[..., HealthChecker], http_target: HttpTarget
) -> None:
    checker = start_checker()
    await checker.stop()

    register(live_registry, port=http_target.port, health_check={"url": "/late", **FAST})

    assert checker.target_count == 0


async def test_a_deregistered_instance_is_no_longer_probed(
    live_registry: Registry, checker: HealthChecker, http_target: HttpTarget
) -> None:
    gone = register(live_registry, port=http_target.port, health_check={"url": "/gone", **FAST}, service="old")
    await wait_until(lambda: http_target.hits["/gone"] >= 1, what="the first probe arrives")
    live_registry.deregister(gone.node_id)
    probes_before = http_target.hits["/gone"]

    # Three probes of another instance take at least two intervals; the gone one would be due within one.
    register(live_registry, port=http_target.port, health_check={"url": "/kept", **FAST}, service="new")
    await wait_until(lambda: http_target.hits["/kept"] >= 3, what="three probes of the kept instance arrive")

    assert http_target.hits["/gone"] == probes_before


async def test_probes_in_flight_never_exceed_the_concurrency(
    live_registry: Registry, start_checker: Callable[..., HealthChecker], http_target: HttpTarget
) -> None:
    start_checker(concurrency=3)
    http_target.delay = 0.1
    for number in range(20):
        spec = {"url": f"/health/{number}", **FAST, "timeout": 900}
        register(live_registry, port=http_target.port, health_check=spec, service=f"svc-{number}")

    await wait_until(lambda: len(http_target.hits) == 20, what="every instance is probed once")

    assert http_target.max_inflight <= 3


async def test_a_thousand_checked_instances_are_probed_without_blocking_the_loop(
    live_registry: Registry, checker: HealthChecker, http_target: HttpTarget
) -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(heartbeat())
    try:
        instances = [
            register(
                live_registry,
                port=http_target.port,
                health_check={"url": f"/health/{number}", "interval": 1000},
                service=f"svc-{number}",
            )
            for number in range(1000)
        ]
        ticks_at_start = ticks
        await wait_until(lambda: len(http_target.hits) == 1000, what="every instance is probed once")
        ticks_during_round = ticks - ticks_at_start
    finally:
        ticker.cancel()

    assert ticks_during_round >= 5
    assert all(instance.healthy for instance in instances)


# Wiring into the server and its settings.


async def test_the_server_probes_registered_instances(tcp_target: TcpTarget) -> None:
    server = MaxineServer(Settings(host=LOOPBACK, port=0))
    await server.start()
    try:
        base = f"http://{LOOPBACK}:{server.port}"
        spec = {"type": "tcp", "interval": 1000, "timeout": 300, "fall": 1}
        body = {"serviceName": "cache", "host": LOOPBACK, "port": tcp_target.port, "metadata": {"healthCheck": spec}}
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{base}/register", json=body) as registered:
                assert registered.status < 300
            await wait_until(lambda: tcp_target.connections >= 1, what="the server probes the instance")
            await tcp_target.stop()
            instance = server.registry.get_instance(f"cache:{LOOPBACK}:{tcp_target.port}")
            assert instance is not None
            await wait_until(lambda: not instance.healthy, what="the instance is marked unhealthy")

            async with client.get(f"{base}/discover", params={"serviceName": "cache"}) as found:
                assert found.status == 503
                assert (await found.json())["code"] == "no_healthy_instance"
    finally:
        await server.stop()


def test_health_check_settings_come_from_the_environment() -> None:
    environ = {"HEALTH_CHECKS_ENABLED": "off", "HEALTH_CHECK_CONCURRENCY": "8"}

    settings = load_settings([], environ=environ)

    assert (settings.health_checks, settings.health_check_concurrency) == (False, 8)
    assert MaxineServer(settings).health_checker is None
    with pytest.raises(SettingsError, match="health check concurrency"):
        load_settings([], environ={"HEALTH_CHECK_CONCURRENCY": "0"})
