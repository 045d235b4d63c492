"""GET /heapdump: off by default; when on, a tracemalloc summary for loopback clients (or admins with auth on)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, make_mocked_request

from maxine_registry.errors import Forbidden
from maxine_registry.http.admin import heapdump
from maxine_registry.http.common import OPERATIONS_KEY
from maxine_registry.settings import Settings

Client = TestClient[object, object]


@pytest.fixture(autouse=True)
def stop_tracing_afterwards() -> Iterator[None]:
    """tracemalloc slows every allocation; no test may leave it running for the tests after it."""
    yield
    if tracemalloc.is_tracing():
        tracemalloc.stop()


async def test_the_heap_dump_is_off_unless_enabled(app_client: Callable[..., Awaitable[Client]]) -> None:
    api = await app_client(Settings())

    response = await api.get("/heapdump")

    assert response.status == 404
    assert (await response.json())["code"] == "heapdump_disabled"
    assert not tracemalloc.is_tracing()


async def test_the_heap_dump_names_the_top_allocation_sites(app_client: Callable[..., Awaitable[Client]]) -> None:
    api = await app_client(Settings(heapdump_enabled=True))

    first = await (await api.get("/heapdump")).json()
    for port in range(1, 50):
        await api.post("/register", json={"serviceName": "orders", "host": "10.0.0.5", "port": port})
    second = await (await api.get("/heapdump", params={"top": "5", "stop": "true"})).json()

    assert first["startedNow"] is True and "note" in first
    assert second["startedNow"] is False
    assert second["tracing"] is False and not tracemalloc.is_tracing()
    assert 0 < len(second["top"]) <= 5
    assert all(site["where"].rsplit(":", 1)[1].isdigit() and site["bytes"] > 0 for site in second["top"])
    assert second["tracedBytes"] > 0


@pytest.mark.parametrize("top", ["0", "201", "many"])
async def test_a_bad_top_is_refused(app_client: Callable[..., Awaitable[Client]], top: str) -> None:
    api = await app_client(Settings(heapdump_enabled=True))

    response = await api.get("/heapdump", params={"top": top})

    assert response.status == 400


async def test_with_auth_off_only_loopback_clients_get_the_heap_dump(
    app_client: Callable[..., Awaitable[Client]],
) -> None:
    api = await app_client(Settings(heapdump_enabled=True))
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("10.1.2.3", 40000) if name == "peername" else default
    )
    request = make_mocked_request("GET", "/heapdump", app=api.app, transport=transport)
    assert api.app[OPERATIONS_KEY].settings.heapdump_enabled

    with pytest.raises(Forbidden):
        await heapdump(request)
    assert not tracemalloc.is_tracing()
