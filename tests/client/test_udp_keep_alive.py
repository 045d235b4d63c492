"""Keep-alive over UDP: one datagram per beat, no HTTP heartbeat, and back in at once when the registry forgets."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from maxine_client import AsyncMaxineClient, MaxineClient, NotFound, Registration

if TYPE_CHECKING:
    from client.conftest import ScriptedRegistry
    from conftest import MaxineProcess, MaxineProcessFactory

KEY = "a-shared-udp-key-of-at-least-32-bytes"
EVENTUALLY = 10.0
POLL_INTERVAL = 0.05
REGISTRATION = Registration(
    node_id="orders:127.0.0.1:9001", address="127.0.0.1:9001", ttl=30.0, service_name="orders",
    host="127.0.0.1", port=9001,
)  # fmt: skip


class UdpListener:
    """A loopback UDP socket standing in for the registry's endpoint; it keeps every datagram it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []

    def receive(self) -> list[bytes]:
        while True:
            try:
                self.datagrams.append(self.sock.recv(2048))
            except BlockingIOError:
                return self.datagrams


@pytest.fixture
def udp_listener() -> Iterator[UdpListener]:
    listener = UdpListener()
    yield listener
    listener.sock.close()


async def until(condition: Callable[[], bool], *, what: str) -> None:
    deadline = time.monotonic() + EVENTUALLY
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out waiting until {what}.")
        await asyncio.sleep(POLL_INTERVAL)


async def discoverable(client: AsyncMaxineClient, service_name: str) -> bool:
    try:
        await client.discover(service_name)
    except NotFound:
        return False
    return True


async def test_udp_keep_alive_keeps_a_node_discoverable_past_its_ttl(client: AsyncMaxineClient) -> None:
    registration = await client.register("orders", host="127.0.0.1", port=9001, ttl=1)
    keeper = client.keep_alive(registration, transport="udp")
    try:
        await asyncio.sleep(2.5)  # two and a half leases: without heartbeats the node would be gone
        assert (await client.discover("orders")).node_id == registration.node_id
        assert keeper.state == "healthy"
        assert keeper.transport == "udp"
    finally:
        await keeper.stop()


async def test_udp_beats_are_datagrams_and_never_http_requests(
    scripted_registry: ScriptedRegistry, udp_listener: UdpListener
) -> None:
    async with AsyncMaxineClient(scripted_registry.base_url, udp_port=udp_listener.port) as maxine:
        keeper = maxine.keep_alive(REGISTRATION, interval=0.02, transport="udp")
        try:
            await until(lambda: len(udp_listener.receive()) >= 3, what="three datagrams arrived")
        finally:
            await keeper.stop()

    assert set(udp_listener.datagrams) == {b"HB1R orders:127.0.0.1:9001"}
    assert scripted_registry.requests == 0


async def test_with_a_key_each_datagram_is_signed_with_a_timestamp_that_only_grows(
    scripted_registry: ScriptedRegistry, udp_listener: UdpListener
) -> None:
    async with AsyncMaxineClient(scripted_registry.base_url, udp_port=udp_listener.port, udp_key=KEY) as maxine:
        keeper = maxine.keep_alive(REGISTRATION, interval=0.01, transport="udp")
        try:
            await until(lambda: len(udp_listener.receive()) >= 5, what="five datagrams arrived")
        finally:
            await keeper.stop()

    timestamps = []
    for datagram in udp_listener.datagrams:
        head, _, signature = datagram.rpartition(b" ")
        magic, node_id, timestamp = head.split(b" ")
        assert (magic, node_id) == (b"HB1R", b"orders:127.0.0.1:9001")
        assert signature == hmac.new(KEY.encode(), head, hashlib.sha256).hexdigest().encode()
        timestamps.append(int(timestamp))
    assert timestamps == sorted(set(timestamps))
    assert abs(timestamps[0] - time.time() * 1000) < 60_000


async def test_udp_keep_alive_registers_again_at_once_when_the_registry_forgot_the_node(
    client: AsyncMaxineClient, registry: MaxineProcess
) -> None:
    registration = await client.register("orders", host="127.0.0.1", port=9001, ttl=60, metadata={"version": "2"})
    keeper = client.keep_alive(registration, interval=0.1, transport="udp")
    try:
        await client.deregister(registration.node_id)
        await until(lambda: keeper.reregistrations == 1, what="the node was registered again")
        instance = await client.discover("orders")
    finally:
        await keeper.stop()

    assert instance.node_id == registration.node_id
    assert instance.version == "2"
    assert registry.node_ids("orders") == {registration.node_id}


async def test_signed_udp_keep_alive_keeps_a_node_alive_on_a_registry_with_the_key(
    maxine_process: MaxineProcessFactory,
) -> None:
    registry = maxine_process(args=["--udp-hmac-key", KEY])
    async with AsyncMaxineClient(registry.base_url, udp_key=KEY) as maxine:
        registration = await maxine.register("orders", host="127.0.0.1", port=9001, ttl=1)
        keeper = maxine.keep_alive(registration, transport="udp")
        try:
            await asyncio.sleep(2.5)
            assert await discoverable(maxine, "orders")
        finally:
            await keeper.stop()


async def test_udp_beats_signed_with_the_wrong_key_let_the_lease_run_out(maxine_process: MaxineProcessFactory) -> None:
    registry = maxine_process(args=["--udp-hmac-key", KEY])
    async with AsyncMaxineClient(registry.base_url, udp_key=KEY[::-1]) as maxine:
        registration = await maxine.register("orders", host="127.0.0.1", port=9001, ttl=1)
        keeper = maxine.keep_alive(registration, interval=0.2, transport="udp")
        try:
            deadline = time.monotonic() + EVENTUALLY
            while await discoverable(maxine, "orders"):
                assert time.monotonic() < deadline, "the node stayed discoverable on beats signed with a wrong key"
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            await keeper.stop()


async def test_udp_keep_alive_reports_a_closed_port_as_unreachable(
    scripted_registry: ScriptedRegistry, free_loopback_port: Callable[[], int]
) -> None:
    async with AsyncMaxineClient(scripted_registry.base_url, udp_port=free_loopback_port()) as maxine:
        keeper = maxine.keep_alive(REGISTRATION, interval=0.02, transport="udp")
        try:
            await until(lambda: keeper.state == "unreachable", what="the loop saw the port closed")
            assert keeper.running
        finally:
            await keeper.stop()


async def test_an_unknown_transport_is_refused_before_anything_is_registered(
    client: AsyncMaxineClient, registry: MaxineProcess
) -> None:
    with pytest.raises(ValueError, match="transport"):
        client.keep_alive(REGISTRATION, transport="carrier-pigeon")
    with pytest.raises(ValueError, match="transport"):
        async with client.registered("orders", host="127.0.0.1", port=9001, transport="smoke-signals"):
            pass

    assert registry.node_ids("orders") == set()


def test_the_blocking_client_keeps_a_node_alive_over_udp(registry: MaxineProcess) -> None:
    with MaxineClient(registry.base_url) as maxine:
        with maxine.registered("orders", host="127.0.0.1", port=9001, ttl=1, transport="udp") as keeper:
            time.sleep(2.5)
            assert registry.node_ids("orders") == {"orders:127.0.0.1:9001"}
            assert keeper.state == "healthy"

        assert registry.node_ids("orders") == set()
