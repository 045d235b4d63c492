"""
Fixtures for the client's tests: a real registry, a client of it, and a scripted stand-in registry.

The real registry (``registry``) is what the client meets in production, so every behaviour that a
real registry can show is tested against one. Answers a healthy registry never gives on demand
(a 503, a 429 with ``Retry-After``) come from ``scripted_registry``: a small aiohttp server on
loopback that answers from a list and counts the requests it got.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
import pytest
from aiohttp import web

from maxine_client import AsyncMaxineClient

if TYPE_CHECKING:
    from conftest import MaxineProcess, MaxineProcessFactory

# Small bounds keep failing paths fast; they are still real retries with real backoff.
TEST_TIMEOUT = 2.0
TEST_RETRIES = 2
TEST_BACKOFF_BASE = 0.01
TEST_BACKOFF_CAP = 0.05


@pytest.fixture
def registry(maxine_process: MaxineProcessFactory) -> MaxineProcess:
    return maxine_process()


@pytest.fixture
async def client(registry: MaxineProcess) -> AsyncIterator[AsyncMaxineClient]:
    async with AsyncMaxineClient(
        registry.base_url,
        timeout=TEST_TIMEOUT,
        retries=TEST_RETRIES,
        backoff_base=TEST_BACKOFF_BASE,
        backoff_cap=TEST_BACKOFF_CAP,
    ) as maxine:
        yield maxine


@dataclass(frozen=True)
class ScriptedAnswer:
    status: int
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedRegistry:
    """Answers every request with the next scripted answer (the last one repeats) and records the paths."""

    def __init__(self) -> None:
        self.answers: list[ScriptedAnswer] = []
        self.paths: list[str] = []
        self.base_url = ""

    @property
    def requests(self) -> int:
        return len(self.paths)

    def answer(self, status: int, body: object = None, *, headers: dict[str, str] | None = None) -> None:
        """Add the answer to the next request not yet scripted."""
        self.answers.append(ScriptedAnswer(status=status, body=body, headers=headers or {}))

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        answer = self.answers[min(len(self.paths), len(self.answers)) - 1]
        return web.Response(
            status=answer.status,
            body=orjson.dumps(answer.body),
            headers=answer.headers,
            content_type="application/json",
        )


@pytest.fixture
async def scripted_registry() -> AsyncIterator[ScriptedRegistry]:
    scripted = ScriptedRegistry()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        scripted.base_url = f"http://127.0.0.1:{port}"
        yield scripted
    finally:
        await runner.cleanup()


@pytest.fixture
async def scripted_client(scripted_registry: ScriptedRegistry) -> AsyncIterator[AsyncMaxineClient]:
    async with AsyncMaxineClient(
        scripted_registry.base_url,
        timeout=TEST_TIMEOUT,
        retries=TEST_RETRIES,
        backoff_base=TEST_BACKOFF_BASE,
        backoff_cap=TEST_BACKOFF_CAP,
    ) as maxine:
        yield maxine
