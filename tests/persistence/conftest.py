"""
Fixtures for the persistence tests: registries on a file store, and a writer that records what was acknowledged.

``persistent_registry`` opens the whole HTTP app (every feature, the persistence store among them)
on a real clock, with the file store in a temporary folder, and can open it again on the same
files after the previous one closed, as a restart would. Process-level tests (kill -9, Redis
replicas) use the ``maxine_process`` and ``redis_server`` fixtures of the top-level conftest.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from maxine_registry.http import create_app
from maxine_registry.operations import Operations
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings
from tests.conftest import http_json

WAIT_TIMEOUT = 5.0

Client = TestClient[Any, Any]
OpenRegistry = Callable[..., Awaitable[Client]]


@dataclass(slots=True)
class PersistentRegistries:
    """Opens registries on one data folder; each ``open`` closes the one before, as a restart does."""

    data_dir: Path
    current: Client | None = None
    operations: Operations | None = None

    @property
    def file(self) -> Path:
        return self.data_dir / "registry.json"

    @property
    def journal(self) -> Path:
        return self.data_dir / "registry.json.journal"

    async def open(self, **overrides: Any) -> Client:
        await self.close()
        settings = Settings(
            persistence_enabled=True,
            persistence_file=str(self.file),
            health_checks=False,
            **overrides,
        )
        operations = Operations(registry=Registry(default_ttl=settings.heartbeat_timeout), settings=settings)
        client: Client = TestClient(TestServer(create_app(operations)))
        await client.start_server()
        self.current = client
        self.operations = operations
        return client

    def sweep(self) -> None:
        """What the server's lease sweeper does a few times a second (the app alone has no sweeper)."""
        assert self.operations is not None
        self.operations.registry.expire_due()

    async def close(self) -> None:
        if self.current is not None:
            await self.current.close()
            self.current = None


@pytest.fixture
async def persistent_registry(tmp_path: Path) -> AsyncIterator[PersistentRegistries]:
    registries = PersistentRegistries(data_dir=tmp_path / "data")
    try:
        yield registries
    finally:
        await registries.close()


async def eventually(condition: Callable[[], Awaitable[bool]], *, what: str, within: float = WAIT_TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` if it does not within ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {within:g}s waiting until {what}.")
        await asyncio.sleep(0.02)


def wait_until(condition: Callable[[], bool], *, what: str, within: float = WAIT_TIMEOUT) -> None:
    """The blocking ``eventually``, for tests that drive processes from a thread."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {within:g}s waiting until {what}.")
        time.sleep(0.02)


# A writer that keeps writing to a registry process and remembers what it acknowledged.


@dataclass(slots=True)
class WriteLog:
    """
    What a writer sent and what the registry acknowledged, node by node.

    ``acknowledged`` holds each node's last acknowledged operation. A node whose operation was in
    flight when the registry died is ``uncertain``: that operation may or may not have happened.
    """

    attempted: set[str] = field(default_factory=set)
    acknowledged: dict[str, str] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    uncertain: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def registry_died(self) -> None:
        with self.lock:
            self.uncertain |= self.in_flight
            self.in_flight.clear()

    def registered(self) -> set[str]:
        return {node for node, operation in self.acknowledged.items() if operation == "register"} - self.uncertain

    def deregistered(self) -> set[str]:
        return {node for node, operation in self.acknowledged.items() if operation == "deregister"} - self.uncertain


class Writer:
    """
    Threads that register new nodes and deregister some of them, against one base URL, until stopped.

    Each node is written by one thread at a time, so its last acknowledged operation is its state,
    unless an operation on it was in flight when the registry died (then it may be either).
    """

    def __init__(self, *, base_url: str, log: WriteLog, threads: int, first_port: int, seed: int) -> None:
        self.base_url = base_url
        self.log = log
        self.threads = threads
        self.next_port = first_port
        self.random = random.Random(seed)
        self.stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._ports = threading.Lock()

    def start(self) -> None:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"writer-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self.stopping.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def _take_port(self) -> int:
        with self._ports:
            port = self.next_port
            self.next_port += 1
            return port

    def _run(self) -> None:
        mine: list[str] = []
        while not self.stopping.is_set():
            if mine and self.random.random() < 0.25:
                node = mine.pop(self.random.randrange(len(mine)))
                self._write(node, "deregister", "DELETE", "/deregister", {"nodeId": node})
                continue
            port = self._take_port()
            node = f"writes:10.9.{port // 256 % 256}.{port % 256}:{port}"
            body = {
                "serviceName": "writes",
                "host": f"10.9.{port // 256 % 256}.{port % 256}",
                "port": port,
                "ttl": 3600,
            }
            if self._write(node, "register", "POST", "/register", body):
                mine.append(node)

    def _write(self, node: str, operation: str, method: str, path: str, body: dict[str, Any]) -> bool:
        with self.log.lock:
            self.log.attempted.add(node)
            self.log.in_flight.add(node)
        try:
            status, _ = http_json(self.base_url + path, method=method, body=body, timeout=5.0)
        except OSError:
            # The registry died with this request in flight: its outcome is unknown, and stays marked so.
            self.stopping.set()
            return False
        with self.log.lock:
            if status == 200:
                self.log.acknowledged[node] = operation
                self.log.uncertain.discard(node)
            self.log.in_flight.discard(node)
        return status == 200
