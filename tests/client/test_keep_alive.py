"""The keep-alive loop and ``registered()``: a node stays discoverable while it lives, and leaves when it ends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import pytest

from maxine_client import AsyncMaxineClient, NotFound, Registration, RegistryUnreachable

if TYPE_CHECKING:
    from client.conftest import ScriptedRegistry
    from conftest import MaxineProcess, MaxineProcessFactory

T = TypeVar("T")

# How long a test waits for an outcome that the loop reaches in a fraction of it.
EVENTUALLY = 10.0
POLL_INTERVAL = 0.05


async def eventually(probe: Callable[[], Awaitable[T]], *, within: float = EVENTUALLY) -> T:
    """The first result of ``probe`` that does not raise; the last error if none came ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await probe()
        except (AssertionError, NotFound, RegistryUnreachable):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(POLL_INTERVAL)


def messages(caplog: pytest.LogCaptureFixture, fragment: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if fragment in record.getMessage()]


async def test_keep_alive_keeps_a_node_discoverable_past_its_ttl_until_stopped(client: AsyncMaxineClient) -> None:
    registration = await client.register("orders", host="127.0.0.1", port=9001, ttl=1)
    keeper = client.keep_alive(registration)
    try:
        assert keeper.interval == pytest.approx(1 / 3)
        await asyncio.sleep(2.5)  # two and a half leases: without heartbeats the node would be gone
        assert (await client.discover("orders")).node_id == registration.node_id
        assert keeper.state == "healthy"
    finally:
        await keeper.stop()
    assert not keeper.running

    async def node_is_gone() -> None:
        try:
            instance = await client.discover("orders")
        except NotFound:
            return
        raise AssertionError(f"{instance.node_id} is still discoverable after its keep-alive stopped.")

    await eventually(node_is_gone)


async def test_keep_alive_registers_the_node_again_after_the_registry_restarts_empty(
    maxine_process: MaxineProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="maxine_client")
    first = maxine_process()
    async with AsyncMaxineClient(first.base_url, timeout=1.0, retries=1, backoff_base=0.05, backoff_cap=0.2) as maxine:
        registration = await maxine.register("orders", host="127.0.0.1", port=9001, metadata={"version": "3"}, ttl=5)
        keeper = maxine.keep_alive(registration, interval=0.2)
        try:
            # The registry dies with everything it knew, and the loop notices.
            first.kill()

            async def loop_sees_it_unreachable() -> None:
                assert keeper.state == "unreachable"

            await eventually(loop_sees_it_unreachable)

            # An empty registry comes back where the service expects it; the node finds its way back in.
            second = await asyncio.to_thread(maxine_process, port=first.port)
            instance = await eventually(lambda: maxine.discover("orders"))
        finally:
            await keeper.stop()

    assert instance.node_id == registration.node_id
    assert instance.version == "3"
    assert second.node_ids("orders") == {registration.node_id}
    assert keeper.registration == registration
    assert keeper.reregistrations == 1
    assert keeper.state == "healthy"
    # One line per change of state, however many beats failed in between.
    assert len(messages(caplog, "do not get through to the registry")) == 1
    assert len(messages(caplog, "no longer knows node")) == 1
    assert len(messages(caplog, "is registered again")) == 1
    assert len(messages(caplog, "in touch with the registry again")) == 1


async def test_keep_alive_outlives_refused_heartbeats_and_reports_them_once(
    scripted_client: AsyncMaxineClient, scripted_registry: ScriptedRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    scripted_registry.answer(401, {"error": "A bearer token is required.", "code": "unauthorized"})
    registration = Registration(
        node_id="orders:127.0.0.1:9001", address="127.0.0.1:9001", ttl=30.0, service_name="orders",
        host="127.0.0.1", port=9001,
    )  # fmt: skip
    keeper = scripted_client.keep_alive(registration, interval=0.02)
    try:

        async def several_beats_were_refused() -> None:
            assert scripted_registry.requests >= 5

        await eventually(several_beats_were_refused)
        assert keeper.running
        assert keeper.state == "refused"
    finally:
        await keeper.stop()
    assert len(messages(caplog, "The registry refuses the heartbeats of node 'orders:127.0.0.1:9001'")) == 1
    assert set(scripted_registry.paths) == {"/heartbeat"}


async def test_closing_the_client_stops_its_keep_alive_loops(registry: MaxineProcess) -> None:
    maxine = AsyncMaxineClient(registry.base_url)
    keeper = maxine.keep_alive(await maxine.register("orders", host="127.0.0.1", port=9001), interval=0.05)

    await maxine.close()

    assert not keeper.running


async def test_registered_with_an_invalid_interval_registers_nothing(
    client: AsyncMaxineClient, registry: MaxineProcess
) -> None:
    with pytest.raises(ValueError, match="interval"):
        async with client.registered("orders", host="127.0.0.1", port=9001, interval=-1):
            pass

    assert registry.node_ids("orders") == set()


async def test_keep_alive_refuses_an_interval_that_is_not_positive(client: AsyncMaxineClient) -> None:
    registration = await client.register("orders", host="127.0.0.1", port=9001)

    with pytest.raises(ValueError, match="interval"):
        client.keep_alive(registration, interval=0)


async def test_stopping_a_keep_alive_twice_is_harmless(client: AsyncMaxineClient) -> None:
    keeper = client.keep_alive(await client.register("orders", host="127.0.0.1", port=9001))

    await keeper.stop()
    await keeper.stop()

    assert not keeper.running


async def test_registered_keeps_the_node_while_the_block_runs_and_deregisters_on_exit(
    client: AsyncMaxineClient, registry: MaxineProcess
) -> None:
    async with client.registered("orders", host="127.0.0.1", port=9001, ttl=5) as keeper:
        assert keeper.running
        assert (await client.discover("orders")).node_id == "orders:127.0.0.1:9001"

    assert not keeper.running
    assert registry.node_ids("orders") == set()
    assert [event["data"]["nodeId"] for event in registry.events(event="service_deregistered")] == [
        "orders:127.0.0.1:9001"
    ]


async def test_registered_deregisters_when_the_block_raises(client: AsyncMaxineClient, registry: MaxineProcess) -> None:
    with pytest.raises(ZeroDivisionError):
        async with client.registered("orders", host="127.0.0.1", port=9001):
            _ = 1 / 0

    assert registry.node_ids("orders") == set()


async def test_registered_exits_quietly_when_the_registry_already_forgot_the_node(
    client: AsyncMaxineClient, registry: MaxineProcess
) -> None:
    async with client.registered("orders", host="127.0.0.1", port=9001, ttl=120, interval=60) as keeper:
        await client.deregister(keeper.registration.node_id)

    assert registry.node_ids("orders") == set()


async def test_registered_exits_quietly_when_the_registry_is_unreachable(
    client: AsyncMaxineClient, registry: MaxineProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async with client.registered("orders", host="127.0.0.1", port=9001, ttl=120, interval=60):
        registry.kill()

    assert messages(caplog, "could not be deregistered; its lease will expire instead")
