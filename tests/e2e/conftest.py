"""
Fixtures for the end-to-end tests: a registry process and demo service processes registered with it,
and the local cluster (``local_cluster``) of the whole-deployment run.

``demo_services`` starts copies of ``demo_service.py`` as real subprocesses, each on its own free
loopback port, and returns once the registry lists every one of them; at teardown it stops those
still running. Each service's output goes to a file, shown when it fails to come up.

``local_cluster`` is an ``e2e.local.LocalCluster`` on this test's Redis and registry processes:
the test starts its parts step by step, and every process it started is stopped at teardown
(killed if stuck), before the registry and Redis fixtures stop theirs.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from e2e.local import LocalCluster

if TYPE_CHECKING:
    from conftest import MaxineProcess, MaxineProcessFactory, RedisServer

LOOPBACK = "127.0.0.1"
DEMO_SERVICE = Path(__file__).with_name("demo_service.py")
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


class DemoService:
    """One demo service process: its node in the registry, and the two ways it can end."""

    def __init__(self, *, name: str, port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.port = port
        self.process = process
        self.log_path = log_path
        self.address = f"{LOOPBACK}:{port}"
        self.node_id = f"{name}:{LOOPBACK}:{port}"

    def __repr__(self) -> str:
        return f"DemoService(node_id={self.node_id!r}, pid={self.process.pid}, running={self.running})"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> int:
        """SIGTERM, the polite end: the service deregisters itself; returns the exit code."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> int:
        """SIGKILL: the service vanishes without a word to the registry."""
        if self.running:
            self.process.kill()
        return self.process.wait(timeout=STOP_TIMEOUT)


class DemoServiceFactory:
    def __init__(self, *, log_dir: Path, free_port: Callable[[], int]) -> None:
        self.log_dir = log_dir
        self.free_port = free_port
        self.started: list[DemoService] = []

    def __call__(self, *, count: int, name: str, registry: MaxineProcess, ttl: float) -> list[DemoService]:
        """Start ``count`` services side by side, and wait until the registry lists them all."""
        services = [self._spawn(name=name, registry=registry, ttl=ttl) for _ in range(count)]

        deadline = time.monotonic() + STARTUP_TIMEOUT
        waiting = {service.node_id: service for service in services}
        while waiting:
            for service in waiting.values():
                if not service.running:
                    raise RuntimeError(f"{service!r} exited with {service.process.returncode}:\n{service.logs()}")
            for node_id in registry.node_ids(name) & waiting.keys():
                del waiting[node_id]
            if waiting and time.monotonic() > deadline:
                logs = "\n".join(service.logs() for service in waiting.values())
                raise RuntimeError(f"{sorted(waiting)} did not register within {STARTUP_TIMEOUT} s:\n{logs}")
            time.sleep(POLL_INTERVAL)
        return services

    def _spawn(self, *, name: str, registry: MaxineProcess, ttl: float) -> DemoService:
        port = self.free_port()
        log_path = self.log_dir / f"{name}-{port}.log"
        command = [
            sys.executable, str(DEMO_SERVICE),
            "--name", name, "--host", LOOPBACK, "--port", str(port),
            "--registry", registry.base_url, "--ttl", str(ttl),
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        service = DemoService(name=name, port=port, process=process, log_path=log_path)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            try:
                service.terminate()
            except subprocess.TimeoutExpired:
                service.kill()


@pytest.fixture
def registry(maxine_process: MaxineProcessFactory) -> MaxineProcess:
    return maxine_process()


@pytest.fixture
def demo_services(
    tmp_path_factory: pytest.TempPathFactory, free_loopback_port: Callable[[], int]
) -> Iterator[DemoServiceFactory]:
    """Factory of demo service processes, all stopped when the test ends."""
    factory = DemoServiceFactory(log_dir=tmp_path_factory.mktemp("demo-services"), free_port=free_loopback_port)
    try:
        yield factory
    finally:
        factory.stop_all()


# Transports the local run does not use; off, so that its registry never takes a fixed port.
LOCAL_REGISTRY_ENV = {"GRPC_ENABLED": "false", "UDP_ENABLED": "false", "MQTT_ENABLED": "false"}


@pytest.fixture
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    maxine_process: MaxineProcessFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[LocalCluster]:
    """The local run's orchestrator, on a real Redis; whatever the test started in it is stopped at teardown."""
    for name, value in LOCAL_REGISTRY_ENV.items():
        monkeypatch.setenv(name, value)
    # The run reports its progress as INFO lines: kept (and shown with the failure) without any flag.
    caplog.set_level(logging.INFO, logger="e2e")
    caplog.set_level(logging.INFO, logger="test_local_cluster")
    cluster = LocalCluster(
        workdir=tmp_path_factory.mktemp("local-cluster"), redis=redis_server, maxine_processes=maxine_process
    )
    try:
        yield cluster
    finally:
        cluster.close()
