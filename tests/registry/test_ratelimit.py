"""Rate limits: token buckets per caller on a hand-driven clock, their bound, and the 429 clients see."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.ratelimit import RateLimiter, retry_after_seconds
from maxine_registry.settings import Settings
from tests.registry.conftest import FakeClock

Client = TestClient[Any, Any]
BURST = 3
# One token a second, three at once: small numbers keep the arithmetic of each test visible.
LIMITED = Settings(max_body_bytes=4096, rate_limit_enabled=True, rate_limit_rate=1.0, rate_limit_burst=BURST)
limited = pytest.mark.parametrize("settings", [LIMITED], ids=["limited"])


# The buckets.


def test_a_new_caller_may_send_a_burst_and_then_waits_for_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=2.0, burst=4, clock=clock)

    granted = [limiter.acquire("web") for _ in range(4)]
    refused = limiter.acquire("web")

    assert granted == [0.0] * 4
    assert refused == pytest.approx(0.5)


def test_tokens_come_back_at_the_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=2.0, burst=4, clock=clock)
    for _ in range(4):
        limiter.acquire("web")

    clock.advance(0.5)
    one_back = [limiter.acquire("web"), limiter.acquire("web")]
    clock.advance(60)
    refilled = [limiter.acquire("web") for _ in range(5)]

    assert one_back[0] == 0.0 and one_back[1] > 0
    # A long pause refills the bucket to the burst, never beyond it.
    assert refilled[:4] == [0.0] * 4 and refilled[4] > 0


def test_callers_have_separate_buckets(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)

    assert limiter.acquire("web") == 0.0
    assert limiter.acquire("web") > 0
    assert limiter.acquire("billing") == 0.0


def test_the_number_of_buckets_is_bounded(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_buckets=3, clock=clock)

    for caller in ("a", "b", "c", "d", "e"):
        limiter.acquire(caller)

    assert len(limiter) == 3
    assert limiter.evicted == 2
    # The least recently seen callers made room, so "a" starts again with a full bucket...
    assert limiter.acquire("a") == 0.0
    # ...while "e", still tracked, is still empty.
    assert limiter.acquire("e") > 0


def test_use_keeps_a_bucket_from_being_evicted(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_buckets=2, clock=clock)
    limiter.acquire("a")
    limiter.acquire("b")

    limiter.acquire("a")
    limiter.acquire("c")

    assert limiter.acquire("a") > 0  # still tracked, still empty
    assert limiter.acquire("b") == 0.0  # evicted as least recently used, so new


def test_idle_buckets_are_dropped_once_they_are_full_again(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=10.0, burst=5, clock=clock)
    for caller in ("a", "b", "c", "d"):
        limiter.acquire(caller)

    clock.advance(0.5)  # burst / rate: every bucket has refilled completely
    limiter.acquire("e")
    limiter.acquire("e")

    assert len(limiter) == 1
    assert limiter.evicted == 0  # dropping a full bucket costs nobody anything


def test_a_clock_that_steps_back_refills_nothing(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    limiter.acquire("web")

    clock.advance(-10)

    assert limiter.acquire("web") == pytest.approx(1.0)


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.2, 2), (7.9, 8)])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: int) -> None:
    assert retry_after_seconds(wait) == header


@pytest.mark.parametrize(
    "options", [{"rate": 0.0, "burst": 1}, {"rate": 1.0, "burst": 0}, {"rate": 1.0, "burst": 1, "max_buckets": 0}]
)
def test_nonsense_limits_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(**options)


# Over HTTP.


@limited
async def test_a_burst_passes_and_the_next_request_gets_429_with_retry_after(api: Client) -> None:
    passed = [await api.get("/servers", headers={"X-Maxine-Caller": "web"}) for _ in range(BURST)]
    refused = await api.get("/servers", headers={"X-Maxine-Caller": "web"})

    assert [response.status for response in passed] == [200] * BURST
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    body = await refused.json()
    assert body["code"] == "rate_limited"
    assert "web" in body["error"]


@limited
async def test_health_and_metrics_stay_exempt(api: Client) -> None:
    for _ in range(BURST + 1):
        await api.get("/servers")

    answers = [await api.get(path) for path in ("/health", "/metrics", "/health", "/metrics")]

    assert [response.status for response in answers] == [200] * 4
    assert (await api.get("/servers")).status == 429


@limited
async def test_the_limit_lifts_as_the_clock_moves(api: Client, clock: FakeClock) -> None:
    for _ in range(BURST):
        await api.get("/servers")
    refused = await api.get("/servers")

    clock.advance(1.0)
    one_more = await api.get("/servers")
    then_refused = await api.get("/servers")

    assert refused.status == 429
    assert one_more.status == 200
    assert then_refused.status == 429


@limited
async def test_named_callers_and_anonymous_addresses_draw_from_separate_buckets(api: Client) -> None:
    for _ in range(BURST):
        await api.get("/servers", headers={"X-Maxine-Caller": "web"})

    web = await api.get("/servers", headers={"X-Maxine-Caller": "web"})
    billing = await api.get("/servers", headers={"X-Maxine-Caller": "billing"})
    anonymous = await api.get("/servers")

    assert web.status == 429
    assert billing.status == 200
    assert anonymous.status == 200


@limited
async def test_every_surface_shares_the_callers_bucket(api: Client) -> None:
    statuses = [
        (await api.get(path, params={"serviceName": "orders"})).status
        for path in ("/discover", "/api/maxine/serviceops/discover", "/versions", "/api/maxine/serviceops/versions")
    ]

    assert 429 not in statuses[:BURST]
    assert statuses[BURST] == 429


@pytest.mark.parametrize("settings", [Settings(rate_limit_rate=1.0, rate_limit_burst=1)], ids=["unlimited"])
async def test_rate_limiting_is_off_unless_enabled(api: Client) -> None:
    statuses = {(await api.get("/servers")).status for _ in range(20)}

    assert statuses == {200}
