"""Fixtures for the registry's own tests: a registry on a hand-driven clock, and the HTTP app in-process."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from maxine_registry.events import EventBus
from maxine_registry.http import create_app
from maxine_registry.operations import Operations
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(events=EventBus(wall=lambda: clock.now), clock=clock, wall=lambda: clock.now, rng=random.Random(7))


@pytest.fixture
def settings() -> Settings:
    return Settings(max_body_bytes=4096, max_metadata_bytes=1024)


@pytest.fixture
async def api(registry: Registry, settings: Settings) -> AsyncIterator[TestClient[object, object]]:
    """The full HTTP app over a real socket, on the fake-clock registry."""
    app = create_app(Operations(registry=registry, settings=settings))
    async with TestClient(TestServer(app)) as client:
        yield client
