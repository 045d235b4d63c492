"""The blocking ``MaxineClient``: the same operations from plain threads, against a real registry."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from maxine_client import MaxineClient, NotFound, NotRegistered

if TYPE_CHECKING:
    from conftest import MaxineProcess


def test_sync_client_round_trip(registry: MaxineProcess) -> None:
    with MaxineClient(registry.base_url, timeout=2.0) as maxine:
        registration = maxine.register("orders", host="127.0.0.1", port=9001, metadata={"tags": ["eu"]}, ttl=5)
        instance = maxine.discover("orders", tags=["eu"])
        lease = maxine.heartbeat(registration.node_id)
        health = maxine.health()
        maxine.deregister(registration.node_id)

        with pytest.raises(NotFound):
            maxine.discover("orders")

    assert instance.node_id == registration.node_id == "orders:127.0.0.1:9001"
    assert instance.tags == ("eu",)
    assert lease.ttl == 5.0
    assert health["status"] == "ok"


def test_sync_client_raises_the_registrys_refusals_in_the_callers_thread(registry: MaxineProcess) -> None:
    with MaxineClient(registry.base_url) as maxine, pytest.raises(NotRegistered, match=r"'ghost:127\.0\.0\.1:1'"):
        maxine.heartbeat("ghost:127.0.0.1:1")


def test_sync_registered_keeps_the_node_alive_while_the_caller_blocks_and_deregisters_on_exit(
    registry: MaxineProcess,
) -> None:
    with MaxineClient(registry.base_url) as maxine:
        with maxine.registered("orders", host="127.0.0.1", port=9001, ttl=1) as keeper:
            time.sleep(2.5)  # the caller's thread blocks; heartbeats run on the client's own loop
            assert registry.node_ids("orders") == {"orders:127.0.0.1:9001"}
            assert keeper.running

        assert not keeper.running
        assert registry.node_ids("orders") == set()
        assert [event["data"]["nodeId"] for event in registry.events(event="service_deregistered")] == [
            "orders:127.0.0.1:9001"
        ]


def test_sync_keep_alive_is_stopped_by_its_handle(registry: MaxineProcess) -> None:
    with MaxineClient(registry.base_url) as maxine:
        keeper = maxine.keep_alive(maxine.register("orders", host="127.0.0.1", port=9001), interval=5)
        assert keeper.running

        keeper.stop()

        assert not keeper.running


def test_a_closed_sync_client_refuses_further_calls(registry: MaxineProcess) -> None:
    maxine = MaxineClient(registry.base_url)
    maxine.close()
    maxine.close()

    with pytest.raises(RuntimeError, match="closed"):
        maxine.health()
