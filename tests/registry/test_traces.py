"""Manual traces on both surfaces: start, events, end, read back; durations, clear errors, and the store's bounds."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from maxine_registry.errors import Conflict, NotFound
from maxine_registry.traces import TraceStore
from tests.registry.conftest import FakeClock

Client = TestClient[Any, Any]
SURFACES = ["", "/api/maxine/serviceops"]


async def expect_error(response: Any, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]


async def post(api: Client, path: str, body: Any) -> Any:
    response = await api.post(path, json=body)
    assert response.status in (200, 201), await response.text()
    return await response.json()


@pytest.mark.parametrize("prefix", SURFACES)
async def test_a_trace_records_its_events_and_duration(api: Client, clock: FakeClock, prefix: str) -> None:
    started = await post(api, f"{prefix}/trace/start", {"id": "trace-123", "operation": "discover"})
    clock.advance(0.25)
    await post(api, f"{prefix}/trace/event", {"id": "trace-123", "event": "node selected"})
    clock.advance(0.5)
    ended = await post(api, f"{prefix}/trace/end", {"id": "trace-123"})

    response = await api.get(f"{prefix}/trace/trace-123")
    trace = await response.json()

    assert started["status"] == "running" and started["durationMs"] is None
    assert response.status == 200
    assert trace == ended
    assert trace == {
        "id": "trace-123",
        "operation": "discover",
        "status": "ended",
        "startedAt": 1_000_000,
        "endedAt": 1_000_750,
        "durationMs": 750.0,
        "elapsedMs": 750.0,
        "events": [{"event": "node selected", "timestamp": 1_000_250, "offsetMs": 250.0}],
    }


async def test_a_running_trace_reports_its_elapsed_time(api: Client, clock: FakeClock) -> None:
    await post(api, "/trace/start", {"id": "t1", "operation": "register"})
    clock.advance(2)

    trace = await (await api.get("/trace/t1")).json()

    assert trace["status"] == "running"
    assert trace["durationMs"] is None
    assert trace["elapsedMs"] == 2000.0


async def test_a_duplicate_id_is_a_conflict(api: Client) -> None:
    await post(api, "/trace/start", {"id": "t1", "operation": "register"})

    response = await api.post("/trace/start", json={"id": "t1", "operation": "again"})

    await expect_error(response, 409, "trace_exists")


async def test_unknown_ids_are_404_everywhere(api: Client) -> None:
    await expect_error(await api.get("/trace/nothing"), 404, "trace_not_found")
    await expect_error(await api.post("/trace/event", json={"id": "nothing", "event": "x"}), 404, "trace_not_found")
    await expect_error(await api.post("/trace/end", json={"id": "nothing"}), 404, "trace_not_found")


async def test_an_ended_trace_takes_no_more_events(api: Client) -> None:
    await post(api, "/trace/start", {"id": "t1", "operation": "register"})
    await post(api, "/trace/end", {"id": "t1"})

    await expect_error(await api.post("/trace/event", json={"id": "t1", "event": "late"}), 409, "trace_ended")
    await expect_error(await api.post("/trace/end", json={"id": "t1"}), 409, "trace_ended")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/trace/start", {"operation": "discover"}),
        ("/trace/start", {"id": "t1"}),
        ("/trace/start", {"id": "has space", "operation": "discover"}),
        ("/trace/start", {"id": "x" * 129, "operation": "discover"}),
        ("/trace/start", {"id": 7, "operation": "discover"}),
        ("/trace/start", ["t1", "discover"]),
        ("/trace/event", {"id": "t1"}),
        ("/trace/event", {"id": "t1", "event": {"not": "text"}}),
        ("/trace/event", {"id": "t1", "event": "x" * 1025}),
        ("/trace/end", {}),
    ],
)
async def test_bad_input_is_a_400(api: Client, path: str, body: Any) -> None:
    if path != "/trace/start":
        await post(api, "/trace/start", {"id": "t1", "operation": "register"})

    await expect_error(await api.post(path, json=body), 400, "invalid_input")


def test_the_least_recently_written_trace_makes_room(clock: FakeClock) -> None:
    store = TraceStore(max_traces=2, clock=clock, wall=clock)
    store.start("a", "op")
    store.start("b", "op")
    store.add_event("a", "keeps a fresh")

    store.start("c", "op")

    assert len(store) == 2
    assert store.get("a").operation == "op"
    with pytest.raises(NotFound):
        store.get("b")


def test_events_per_trace_are_bounded(clock: FakeClock) -> None:
    store = TraceStore(max_events=2, clock=clock, wall=clock)
    store.start("a", "op")
    store.add_event("a", "one")
    store.add_event("a", "two")

    with pytest.raises(Conflict) as refused:
        store.add_event("a", "three")

    assert refused.value.code == "trace_full"
    assert [event.event for event in store.get("a").events] == ["one", "two"]


def test_traces_untouched_past_their_ttl_are_forgotten(clock: FakeClock) -> None:
    store = TraceStore(ttl=60, clock=clock, wall=clock)
    store.start("old", "op")
    clock.advance(30)
    store.start("young", "op")
    clock.advance(31)

    store.start("new", "op")

    with pytest.raises(NotFound):
        store.get("old")
    assert store.get("young").operation == "op"
    assert len(store) == 2
