"""
The sidecar's loop in-process, against a stand-in registry that can hold an answer back.

A real registry answers at once, so the moments between a request and its answer (where a SIGTERM
can land) are only reachable with a stand-in: a small aiohttp server on loopback that records each
request and, when told to, keeps a deregistration waiting until the client gives up on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from maxine_client import AsyncMaxineClient
from maxine_sidecar import Readiness, ReadinessProbe, Sidecar, State, load_settings
from tests.sidecar.conftest import WAIT_TIMEOUT


class StandInRegistry:
    """Answers register, heartbeat and deregister like Maxine; ``hold_deregistrations`` keeps those waiting."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.hold_deregistrations = False
        self.deregistration_held = asyncio.Event()
        self.base_url = ""

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.paths.append(request.path)
        node_id = f"{body['serviceName']}:{body['host']}:{body['port']}"
        return web.json_response({"nodeId": node_id, "address": f"{body['host']}:{body['port']}", "ttl": body["ttl"]})

    async def heartbeat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.paths.append(request.path)
        return web.json_response({"nodeId": body["nodeId"], "ttl": 30.0})

    async def deregister(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.paths.append(request.path)
        if self.hold_deregistrations:
            self.hold_deregistrations = False
            self.deregistration_held.set()
            await asyncio.sleep(WAIT_TIMEOUT)  # until the client hangs up
        return web.json_response({"nodeId": body["nodeId"], "deregistered": True})


class SwitchedProbe(ReadinessProbe):
    """A readiness check whose answer the test sets."""

    def __init__(self) -> None:
        super().__init__(url=None, host="127.0.0.1", port=9000, timeout=1.0)
        self.ready = True

    async def check(self) -> Readiness:
        return Readiness(ready=self.ready, reason="switched by the test")


@pytest.fixture
async def stand_in() -> AsyncIterator[StandInRegistry]:
    registry = StandInRegistry()
    app = web.Application()
    app.router.add_post("/register", registry.register)
    app.router.add_post("/heartbeat", registry.heartbeat)
    app.router.add_delete("/deregister", registry.deregister)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    registry.base_url = f"http://127.0.0.1:{port}"
    try:
        yield registry
    finally:
        await runner.cleanup()


async def wait_for_state(sidecar: Sidecar, state: State) -> None:
    async with asyncio.timeout(WAIT_TIMEOUT):
        while True:
            if sidecar.state == state:
                return
            await asyncio.sleep(0.01)


async def test_a_stop_during_a_deregistration_in_flight_still_deregisters(stand_in: StandInRegistry) -> None:
    settings = load_settings(
        [],
        environ={
            "SERVICE_NAME": "orders",
            "SERVICE_PORT": "9000",
            "MAXINE_URL": stand_in.base_url,
            "READINESS_INTERVAL": "0.05",
            "HEARTBEAT_TTL": "30",
        },
    )
    probe = SwitchedProbe()
    async with AsyncMaxineClient(stand_in.base_url, timeout=WAIT_TIMEOUT, retries=0) as client:
        sidecar = Sidecar(settings=settings, client=client, probe=probe)
        sidecar.start()
        await wait_for_state(sidecar, State.REGISTERED)

        # The app turns unready; the registry holds the deregistration, and the pod is told to stop meanwhile.
        stand_in.hold_deregistrations = True
        probe.ready = False
        async with asyncio.timeout(WAIT_TIMEOUT):
            await stand_in.deregistration_held.wait()
        gone = await sidecar.stop(grace=5.0)

    assert gone is True
    assert stand_in.paths == ["/register", "/deregister", "/deregister"]
    assert sidecar.state == State.STOPPED


async def test_a_stop_while_the_app_was_never_ready_sends_nothing(stand_in: StandInRegistry) -> None:
    settings = load_settings(
        [], environ={"SERVICE_NAME": "orders", "SERVICE_PORT": "9000", "MAXINE_URL": stand_in.base_url}
    )
    probe = SwitchedProbe()
    probe.ready = False
    async with AsyncMaxineClient(stand_in.base_url) as client:
        sidecar = Sidecar(settings=settings, client=client, probe=probe)
        sidecar.start()
        await wait_for_state(sidecar, State.WAITING_FOR_APP)

        gone = await sidecar.stop(grace=5.0)

    assert gone is True
    assert stand_in.paths == []
