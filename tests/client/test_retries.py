"""
When the client tries a request again, how long it waits, and when it gives up.

The delay functions are tested as functions with a seeded random generator, not with a clock;
the retry decisions are tested by counting the requests a scripted registry received.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from maxine_client import AsyncMaxineClient, MaxineError, NotFound, RegistryUnreachable, Unavailable
from maxine_client._config import RetryPolicy, backoff_delay, parse_retry_after

if TYPE_CHECKING:
    from client.conftest import ScriptedRegistry


def test_backoff_delays_stay_between_zero_and_the_exponential_ceiling() -> None:
    rng = random.Random(7)

    for attempt in range(40):
        for _ in range(50):
            delay = backoff_delay(attempt, base=0.1, cap=5.0, rng=rng)
            assert 0.0 <= delay <= min(5.0, 0.1 * 2**attempt)


def test_backoff_never_exceeds_the_cap_even_after_very_many_attempts() -> None:
    rng = random.Random(7)

    delays = [backoff_delay(10_000, base=0.1, cap=2.0, rng=rng) for _ in range(200)]

    assert max(delays) <= 2.0
    assert max(delays) > 1.0  # the whole jitter range up to the cap is used, not just its bottom


def test_backoff_is_jittered_and_reproducible_with_the_same_seed() -> None:
    def delays(rng: random.Random) -> list[float]:
        return [backoff_delay(attempt, base=0.1, cap=5.0, rng=rng) for attempt in range(8)]

    first = delays(random.Random(42))
    again = delays(random.Random(42))
    spread = {backoff_delay(4, base=0.1, cap=5.0, rng=random.Random(seed)) for seed in range(20)}

    assert first == again
    assert len(spread) == 20


def test_retry_policy_stops_when_its_retries_are_used_up() -> None:
    policy = RetryPolicy(retries=2, backoff_base=0.1, backoff_cap=1.0)
    rng = random.Random(1)

    assert policy.attempts == 3
    assert policy.delay(0, rng=rng) is not None
    assert policy.delay(1, rng=rng) is not None
    assert policy.delay(2, rng=rng) is None


def test_retry_policy_waits_exactly_as_long_as_retry_after_asks_within_the_cap() -> None:
    policy = RetryPolicy(retries=3, backoff_base=0.1, backoff_cap=5.0)

    assert policy.delay(0, rng=random.Random(1), retry_after=2.0) == 2.0
    assert policy.delay(0, rng=random.Random(1), retry_after=0.0) == 0.0


def test_retry_policy_gives_up_when_retry_after_is_longer_than_the_cap() -> None:
    policy = RetryPolicy(retries=3, backoff_base=0.1, backoff_cap=5.0)

    assert policy.delay(0, rng=random.Random(1), retry_after=120.0) is None


@pytest.mark.parametrize(
    ("retries", "backoff_base", "backoff_cap", "message"),
    [(-1, 0.1, 1.0, "retries"), (2, 0.0, 1.0, "backoff_base"), (2, 0.5, 0.1, "backoff_cap")],
)
def test_retry_settings_out_of_range_are_rejected(
    retries: int, backoff_base: float, backoff_cap: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AsyncMaxineClient("http://127.0.0.1:1", retries=retries, backoff_base=backoff_base, backoff_cap=backoff_cap)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),  # 30 s after the fixed "now" below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # a date in the past means: now
    ],
)
def test_retry_after_is_read_as_seconds_or_as_an_http_date(header: str | None, seconds: float | None) -> None:
    now = 1445412450.0  # Wed, 21 Oct 2015 07:27:30 GMT

    assert parse_retry_after(header, now=now) == seconds


async def test_an_unreachable_registry_is_retried_then_reported_with_its_address(
    free_loopback_port: Callable[[], int],
) -> None:
    base_url = f"http://127.0.0.1:{free_loopback_port()}"
    async with AsyncMaxineClient(base_url, timeout=0.5, retries=2, backoff_base=0.01, backoff_cap=0.02) as maxine:
        with pytest.raises(RegistryUnreachable) as raised:
            await maxine.heartbeat("orders:127.0.0.1:9001")

    assert raised.value.attempts == 3
    assert raised.value.status is None
    assert base_url in str(raised.value)
    assert "'orders:127.0.0.1:9001'" in str(raised.value)


async def test_a_registry_that_accepts_but_never_answers_is_reported_unreachable_after_timeouts() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts connections; nobody ever reads or writes
        base_url = f"http://127.0.0.1:{silent.getsockname()[1]}"

        async with AsyncMaxineClient(base_url, timeout=0.2, retries=1, backoff_base=0.01, backoff_cap=0.02) as maxine:
            with pytest.raises(RegistryUnreachable) as raised:
                await maxine.discover("orders")

    assert raised.value.attempts == 2
    assert "timeout of 0.2 s" in str(raised.value)


async def test_server_errors_are_retried_until_the_registry_answers(
    scripted_client: AsyncMaxineClient, scripted_registry: ScriptedRegistry
) -> None:
    scripted_registry.answer(503, {"error": "Busy.", "code": "unavailable"})
    scripted_registry.answer(502, None)
    scripted_registry.answer(200, {"nodeId": "orders:127.0.0.1:9001", "ttl": 30.0})

    lease = await scripted_client.heartbeat("orders:127.0.0.1:9001")

    assert lease.ttl == 30.0
    assert scripted_registry.requests == 3


async def test_a_persistent_503_raises_unavailable_after_the_last_attempt(
    scripted_client: AsyncMaxineClient, scripted_registry: ScriptedRegistry
) -> None:
    scripted_registry.answer(503, {"error": "Service 'orders' has no healthy instance.", "code": "no_healthy_instance"})

    with pytest.raises(Unavailable) as raised:
        await scripted_client.discover("orders")

    assert raised.value.code == "no_healthy_instance"
    assert scripted_registry.requests == 3


async def test_client_errors_are_not_retried(
    scripted_client: AsyncMaxineClient, scripted_registry: ScriptedRegistry
) -> None:
    scripted_registry.answer(
        404, {"error": "Service 'orders' has no registered instances.", "code": "service_not_found"}
    )

    with pytest.raises(NotFound):
        await scripted_client.discover("orders")

    assert scripted_registry.requests == 1


async def test_429_with_retry_after_is_retried(
    scripted_client: AsyncMaxineClient, scripted_registry: ScriptedRegistry
) -> None:
    scripted_registry.answer(429, {"error": "Slow down.", "code": "rate_limited"}, headers={"Retry-After": "0"})
    scripted_registry.answer(200, {"status": "ok"})

    health = await scripted_client.health()

    assert health == {"status": "ok"}
    assert scripted_registry.requests == 2


async def test_a_retry_after_beyond_the_backoff_cap_is_reported_instead_of_waited_for(
    scripted_client: AsyncMaxineClient, scripted_registry: ScriptedRegistry
) -> None:
    scripted_registry.answer(429, {"error": "Slow down.", "code": "rate_limited"}, headers={"Retry-After": "3600"})

    with pytest.raises(MaxineError) as raised:
        await scripted_client.health()

    assert (raised.value.status, raised.value.code) == (429, "rate_limited")
    assert scripted_registry.requests == 1


async def test_an_answer_that_is_not_the_registrys_json_is_quoted_in_the_error(
    scripted_client: AsyncMaxineClient, scripted_registry: ScriptedRegistry
) -> None:
    scripted_registry.answer(418, "I am a teapot")

    with pytest.raises(MaxineError) as raised:
        await scripted_client.health()

    assert raised.value.code == "http_418"
    assert "teapot" in str(raised.value)
