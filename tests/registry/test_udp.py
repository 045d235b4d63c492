"""UDP heartbeats: one datagram renews one lease; anything else is dropped without a word and counted."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from maxine_registry import udp
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.server import MaxineServer
from maxine_registry.settings import SettingsError, load_settings
from maxine_registry.udp import UdpHeartbeatServer
from tests.registry.conftest import DatagramSender, FakeClock, wait_until

Endpoint = Callable[..., Awaitable[UdpHeartbeatServer]]

KEY = b"a-udp-test-key-that-is-at-least-32-bytes-long"
# Sent in a burst, then waited for before the next: below any receiver's capacity, as the test means.
BURST_WINDOW = 250


def register(registry: Registry, service_name: str, host: str, *, ttl: float = 10.0) -> str:
    body = {"serviceName": service_name, "host": host, "port": 80, "ttl": ttl}
    return registry.register(parse_registration(body)).node_id


def signed(node_id: str, timestamp_ms: int, *, key: bytes = KEY, magic: bytes = b"HB1") -> bytes:
    """A signed heartbeat as the README describes it, built here independently of the server's code."""
    head = magic + b" " + node_id.encode() + b" " + str(timestamp_ms).encode()
    return head + b" " + hmac.new(key, head, hashlib.sha256).hexdigest().encode()


def now_ms(clock: FakeClock) -> int:
    return int(clock.now * 1000)


async def processed(endpoint: UdpHeartbeatServer, count: int) -> None:
    await wait_until(lambda: endpoint.stats.received >= count, what=f"{count} datagrams were received")


async def test_a_heartbeat_datagram_renews_the_lease(
    udp_endpoint: Endpoint, registry: Registry, clock: FakeClock, datagram_sender: DatagramSender
) -> None:
    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    node_id = register(registry, "orders", "10.0.0.5", ttl=10)

    clock.advance(8)
    datagram_sender.send(f"HB1 {node_id}".encode(), port=endpoint.port)
    await processed(endpoint, 1)
    clock.advance(8)  # past the first lease, within the renewed one
    registry.expire_due()
    still_there = registry.get_instance(node_id) is not None
    clock.advance(3)  # past the renewed lease too
    registry.expire_due()

    assert endpoint.stats.renewed == 1
    assert still_there
    assert registry.get_instance(node_id) is None
    assert datagram_sender.replies() == [], "a heartbeat is answered by nothing"


async def test_a_short_node_id_and_a_trailing_newline_are_accepted(
    udp_endpoint: Endpoint, registry: Registry, datagram_sender: DatagramSender
) -> None:
    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    register(registry, "orders", "10.0.0.5")

    datagram_sender.send(b"HB1 10.0.0.5:80\n", port=endpoint.port)
    await processed(endpoint, 1)

    assert endpoint.stats.renewed == 1


MALFORMED = [
    b"",
    b"HB1",
    b"HB2 orders:10.0.0.5:80",
    b"hb1 orders:10.0.0.5:80",
    b"HB1 orders:10.0.0.5:80 extra",
    b"HB1  orders:10.0.0.5:80",
    b"HB1 orders:10.0.0.5:80 123 " + b"0" * 63,
    b"HB1 orders:10.0.0.5:80 12x4 " + b"0" * 64,
    b"HB1 \xff\xfe",
    b"HB1 not-a-node-id",
    b"HB1 orders:10.0.0.5:99999",
    b"HB1 " + b"x" * 600,
    b'{"nodeId": "orders:10.0.0.5:80"}',
]


async def test_malformed_and_unknown_datagrams_are_ignored_and_the_endpoint_keeps_working(
    udp_endpoint: Endpoint,
    registry: Registry,
    datagram_sender: DatagramSender,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    node_id = register(registry, "orders", "10.0.0.5")

    with caplog.at_level(logging.DEBUG, logger="maxine_registry.udp"):
        for datagram in [*MALFORMED, b"HB1 orders:10.0.0.9:80", b"HB1R orders:10.0.0.9:80"]:
            datagram_sender.send(datagram, port=endpoint.port)
        datagram_sender.send(f"HB1 {node_id}".encode(), port=endpoint.port)
        await processed(endpoint, len(MALFORMED) + 3)

    stats = endpoint.stats
    assert (stats.malformed, stats.unknown, stats.renewed) == (len(MALFORMED), 2, 1)
    assert stats.received == len(MALFORMED) + 3
    assert datagram_sender.replies() == [b"NR1 orders:10.0.0.9:80"], "only HB1R asks for an answer"
    assert not [record for record in caplog.records if record.levelno >= logging.INFO], "no log line per datagram"


async def test_an_hb1r_heartbeat_of_a_known_node_gets_no_answer(
    udp_endpoint: Endpoint, registry: Registry, datagram_sender: DatagramSender
) -> None:
    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    node_id = register(registry, "orders", "10.0.0.5")

    datagram_sender.send(f"HB1R {node_id}".encode(), port=endpoint.port)
    await processed(endpoint, 1)

    assert endpoint.stats.renewed == 1
    assert datagram_sender.replies() == []


async def test_a_repeated_datagram_follows_its_node_out_of_the_registry_and_back_in(
    udp_endpoint: Endpoint, registry: Registry, clock: FakeClock, datagram_sender: DatagramSender
) -> None:
    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    node_id = register(registry, "orders", "10.0.0.5", ttl=10)
    beat = f"HB1R {node_id}".encode()

    for _ in range(3):
        datagram_sender.send(beat, port=endpoint.port)
    await processed(endpoint, 3)
    registry.deregister(node_id)
    datagram_sender.send(beat, port=endpoint.port)
    await processed(endpoint, 4)
    replies_while_gone = datagram_sender.replies()
    register(registry, "orders", "10.0.0.5", ttl=10)
    clock.advance(8)
    datagram_sender.send(beat, port=endpoint.port)
    await processed(endpoint, 5)
    clock.advance(8)  # past the lease the registration gave, within the one the last datagram renewed
    registry.expire_due()

    assert (endpoint.stats.renewed, endpoint.stats.unknown) == (4, 1)
    assert replies_while_gone == [f"NR1 {node_id}".encode()]
    assert registry.get_instance(node_id) is not None


async def test_a_short_node_id_that_comes_to_name_two_nodes_is_refused_from_then_on(
    udp_endpoint: Endpoint, registry: Registry, datagram_sender: DatagramSender
) -> None:
    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    register(registry, "orders", "10.0.0.5")

    datagram_sender.send(b"HB1 10.0.0.5:80", port=endpoint.port)
    await processed(endpoint, 1)
    register(registry, "payments", "10.0.0.5")
    datagram_sender.send(b"HB1 10.0.0.5:80", port=endpoint.port)
    await processed(endpoint, 2)

    assert (endpoint.stats.renewed, endpoint.stats.malformed) == (1, 1)


async def test_every_udp_renewal_reaches_heartbeat_listeners_and_events(
    udp_endpoint: Endpoint, registry: Registry, clock: FakeClock, datagram_sender: DatagramSender
) -> None:
    registry.heartbeat_events = True
    registry.heartbeat_event_interval = 5.0
    heard: list[str] = []
    registry.heartbeat_listeners.append(lambda instance: heard.append(instance.node_id))
    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    node_id = register(registry, "orders", "10.0.0.5")

    for index in range(4):
        datagram_sender.send(f"HB1 {node_id}".encode(), port=endpoint.port)
        await processed(endpoint, index + 1)
        clock.advance(3)
    announced = [event for event in registry.events.history() if event.event == "service_heartbeat"]

    assert heard == [node_id] * 4
    assert [event.data for event in announced] == [{"serviceName": "orders", "nodeId": node_id}] * 2
    assert endpoint.stats.as_dict()["received"] == 4


async def test_a_renewal_that_raises_is_counted_as_failed_logged_once_and_the_endpoint_goes_on(
    udp_endpoint: Endpoint,
    registry: Registry,
    datagram_sender: DatagramSender,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_listener(instance: object) -> None:
        raise RuntimeError("a listener with a bug")

    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    beat = f"HB1 {register(registry, 'orders', '10.0.0.5')}".encode()

    datagram_sender.send(beat, port=endpoint.port)
    await processed(endpoint, 1)
    registry.heartbeat_listeners.append(broken_listener)
    with caplog.at_level(logging.ERROR, logger="maxine_registry.udp"):
        for count in (2, 3):
            datagram_sender.send(beat, port=endpoint.port)
            await processed(endpoint, count)
    registry.heartbeat_listeners.remove(broken_listener)
    datagram_sender.send(beat, port=endpoint.port)
    await processed(endpoint, 4)

    assert (endpoint.stats.renewed, endpoint.stats.failed) == (2, 2)
    assert len(caplog.records) == 1 and "a listener with a bug" in caplog.text


async def test_answers_are_capped_per_second(
    udp_endpoint: Endpoint, clock: FakeClock, datagram_sender: DatagramSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udp, "MAX_REPLIES_PER_SECOND", 3)
    endpoint = await udp_endpoint()
    assert endpoint.port is not None

    for index in range(5):
        datagram_sender.send(f"HB1R orders:10.0.0.{index}:80".encode(), port=endpoint.port)
    await processed(endpoint, 5)
    first_second = datagram_sender.replies()
    clock.advance(1)
    datagram_sender.send(b"HB1R orders:10.0.1.1:80", port=endpoint.port)
    await processed(endpoint, 6)

    assert len(first_second) == 3
    assert datagram_sender.replies() == [b"NR1 orders:10.0.1.1:80"]
    assert (endpoint.stats.replies, endpoint.stats.replies_suppressed) == (4, 2)


async def test_with_a_key_a_signed_heartbeat_renews_the_lease(
    udp_endpoint: Endpoint, registry: Registry, clock: FakeClock, datagram_sender: DatagramSender
) -> None:
    endpoint = await udp_endpoint(key=KEY)
    assert endpoint.port is not None
    node_id = register(registry, "orders", "10.0.0.5", ttl=10)

    clock.advance(8)
    datagram_sender.send(signed(node_id, now_ms(clock)), port=endpoint.port)
    datagram_sender.send(signed(node_id, now_ms(clock) + 1, magic=b"HB1R"), port=endpoint.port)
    await processed(endpoint, 2)
    clock.advance(8)
    registry.expire_due()

    assert endpoint.stats.renewed == 2
    assert registry.get_instance(node_id) is not None


async def test_a_key_longer_than_a_hash_block_signs_as_hmac_defines(
    udp_endpoint: Endpoint, registry: Registry, clock: FakeClock, datagram_sender: DatagramSender
) -> None:
    long_key = b"a-key-of-a-hundred-bytes-" * 4
    endpoint = await udp_endpoint(key=long_key)
    assert endpoint.port is not None
    node_id = register(registry, "orders", "10.0.0.5")

    datagram_sender.send(signed(node_id, now_ms(clock), key=long_key), port=endpoint.port)
    datagram_sender.send(signed(node_id, now_ms(clock) + 1, key=long_key[:64]), port=endpoint.port)
    await processed(endpoint, 2)

    assert (endpoint.stats.renewed, endpoint.stats.unauthenticated) == (1, 1)


async def test_with_a_key_unsigned_tampered_stale_and_replayed_heartbeats_are_ignored(
    udp_endpoint: Endpoint, registry: Registry, clock: FakeClock, datagram_sender: DatagramSender
) -> None:
    endpoint = await udp_endpoint(key=KEY, max_skew=30)
    assert endpoint.port is not None
    node_id = register(registry, "orders", "10.0.0.5")
    other_id = register(registry, "orders", "10.0.0.6")
    fresh = signed(node_id, now_ms(clock))
    forged_id = fresh.replace(node_id.encode(), other_id.encode())
    forged_signature = fresh[:-1] + (b"0" if fresh[-1:] != b"0" else b"1")

    unauthenticated = [
        f"HB1 {node_id}".encode(),
        forged_id,
        forged_signature,
        signed(node_id, now_ms(clock), key=b"another-key-that-is-also-32-bytes-long!!"),
        fresh.upper(),
    ]
    stale = [
        signed(node_id, now_ms(clock) - 31_000),
        signed(node_id, now_ms(clock) + 31_000),
    ]
    for datagram in [*unauthenticated, *stale]:
        datagram_sender.send(datagram, port=endpoint.port)
    datagram_sender.send(fresh, port=endpoint.port)
    datagram_sender.send(fresh, port=endpoint.port)  # a replay
    datagram_sender.send(signed(node_id, now_ms(clock) - 5), port=endpoint.port)  # older than the last one
    await processed(endpoint, len(unauthenticated) + len(stale) + 3)

    stats = endpoint.stats
    assert stats.unauthenticated == len(unauthenticated)
    assert stats.stale == len(stale) + 2
    assert stats.renewed == 1


async def test_a_burst_of_ten_thousand_heartbeats_below_capacity_loses_none(
    udp_endpoint: Endpoint, registry: Registry, datagram_sender: DatagramSender
) -> None:
    endpoint = await udp_endpoint()
    assert endpoint.port is not None
    node_ids = [register(registry, "orders", f"10.0.{index // 256}.{index % 256}") for index in range(100)]
    datagrams = [f"HB1 {node_id}".encode() for node_id in node_ids]
    total = 10_000

    deadline = time.monotonic() + 60
    sent = 0
    while sent < total and time.monotonic() < deadline:
        for _ in range(min(BURST_WINDOW, total - sent)):
            datagram_sender.send(datagrams[sent % len(datagrams)], port=endpoint.port)
            sent += 1
        await processed(endpoint, sent)

    assert sent == total
    assert endpoint.stats.renewed == total
    assert endpoint.stats.received == total


async def test_the_endpoint_listens_on_the_http_port_number_by_default(
    maxine_server: Callable[..., Awaitable[MaxineServer]], datagram_sender: DatagramSender
) -> None:
    server = await maxine_server(udp_port=-1)
    assert server.udp is not None and server.port is not None
    server.operations.register({"serviceName": "orders", "host": "10.0.0.5", "port": 80})

    datagram_sender.send(b"HB1 orders:10.0.0.5:80", port=server.port)
    await wait_until(lambda: server.udp is not None and server.udp.stats.renewed == 1, what="the heartbeat renewed")

    assert server.udp.port == server.port
    assert server.operations.stats.requests >= 1


async def test_with_auth_on_and_no_key_the_endpoint_stays_closed(
    maxine_server: Callable[..., Awaitable[MaxineServer]],
    password_hashes: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = {
        "auth_enabled": True,
        "jwt_secret": "a-test-signing-key-that-is-longer-than-32-bytes",
        "admin_password_hash": password_hashes["admin"],
    }

    with caplog.at_level(logging.WARNING, logger="maxine_registry.udp"):
        unsigned = await maxine_server(**auth)
    signing = await maxine_server(**auth, udp_hmac_key=KEY.decode())

    assert unsigned.udp is None
    assert "UDP_HMAC_KEY" in caplog.text
    assert signing.udp is not None and signing.udp.signed


async def test_the_endpoint_can_be_turned_off(maxine_server: Callable[..., Awaitable[MaxineServer]]) -> None:
    server = await maxine_server(udp_enabled=False)

    assert server.udp is None


@pytest.mark.parametrize(
    ("environ", "mentions"),
    [
        ({"UDP_HMAC_KEY": "too-short"}, "UDP_HMAC_KEY"),
        ({"UDP_PORT": "-2"}, "UDP_PORT"),
        ({"UDP_MAX_SKEW": "0"}, "UDP_MAX_SKEW"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT"),
        ({"GRPC_WATCH_QUEUE_SIZE": "0"}, "grpc_watch_queue_size"),
    ],
)
def test_bad_transport_settings_stop_the_start(environ: dict[str, str], mentions: str) -> None:
    with pytest.raises(SettingsError, match=mentions):
        load_settings([], environ=environ)


def test_a_short_key_is_refused_without_showing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings([], environ={"UDP_HMAC_KEY": "hunter2-secret"})

    assert "hunter2" not in str(caught.value)


async def test_stopping_the_endpoint_frees_its_port(udp_endpoint: Endpoint, registry: Registry) -> None:
    endpoint = await udp_endpoint()
    port = endpoint.port
    assert port is not None

    await endpoint.stop()
    again = UdpHeartbeatServer(registry=registry, requests=endpoint.protocol.requests, host="127.0.0.1", port=port)
    await again.start()
    await again.stop()
    await asyncio.sleep(0)

    assert again.port == port
