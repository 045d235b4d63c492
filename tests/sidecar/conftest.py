"""
Fixtures for the sidecar's tests: a real app, a real sidecar, and the registry from ``maxine_process``.

``ready_app`` starts ``ready_app.py`` (an aiohttp app whose ``/ready`` answer a test switches) as a
subprocess on a loopback port. ``sidecar`` starts ``python -m maxine_sidecar`` exactly as a pod
would, configured by environment variables only, with short intervals and leases so that every
transition happens within a few seconds; its ``/healthz`` is how a test reads its state. Every
process a test started is stopped at teardown, and killed if it does not stop in time.

Waits are bounded: ``wait_until`` polls a condition until a deadline and fails with a description of
what it waited for and the sidecar's log, never with a bare timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LOOPBACK, MaxineProcess, MaxineProcessFactory, find_free_loopback_port, http_json

READY_APP = Path(__file__).with_name("ready_app.py")
LOOPBACK_V6 = "::1"
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# Long enough for any transition below on a slow machine; a passing test never waits this long.
WAIT_TIMEOUT = 20.0
POLL_INTERVAL = 0.05

# Every variable the sidecar reads: removed from the inherited environment, so that a developer's own
# settings never leak into a test.
SIDECAR_VARIABLES = (
    "MAXINE_URL", "MAXINE_TOKEN", "SERVICE_NAME", "SERVICE_PORT", "SERVICE_METADATA", "POD_NAME", "POD_NAMESPACE",
    "POD_IP", "HEARTBEAT_TTL", "HEARTBEAT_INTERVAL", "HEARTBEAT_TRANSPORT", "READINESS_URL", "READINESS_INTERVAL",
    "READINESS_TIMEOUT", "READINESS_FAILURES", "HEALTHZ_HOST", "HEALTHZ_PORT", "GRACE_PERIOD", "BACKOFF_CAP",
    "REQUEST_TIMEOUT", "LOG_FORMAT", "LOG_LEVEL",
)  # fmt: skip

# Short bounds: a lease of 2 s heartbeated every 2/3 s, a readiness check every 0.2 s, at most 1 s between
# registration attempts. Still real intervals, real backoff and real leases.
FAST_SETTINGS = {
    "HEARTBEAT_TTL": "2",
    "READINESS_INTERVAL": "0.2",
    "READINESS_TIMEOUT": "1",
    "BACKOFF_CAP": "1",
    "REQUEST_TIMEOUT": "1",
    "GRACE_PERIOD": "5",
}


def wait_until(
    condition: Callable[[], Any], *, what: str, timeout: float = WAIT_TIMEOUT, logs: Callable[[], str] | None = None
) -> Any:
    """
    Poll ``condition`` until it returns something true, and return that; fail the test at the deadline.

    ``logs`` gives the text shown with the failure (a process's log, read when the wait fails).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"Waited {timeout} s for {what}, in vain.\n{logs() if logs is not None else ''}")
        time.sleep(POLL_INTERVAL)


def find_free_port(host: str) -> int:
    """A port nothing listens on at ``host`` (127.0.0.1 or ::1) at the moment of the call."""
    if host == LOOPBACK:
        return find_free_loopback_port()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


class AppProcess:
    """One ``ready_app.py`` process: its readiness URL, and a switch for its answer."""

    def __init__(self, *, process: subprocess.Popen[bytes], host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.base_url = f"http://{url_host(host)}:{port}"
        self.readiness_url = f"{self.base_url}/ready"

    def __repr__(self) -> str:
        return f"AppProcess(base_url={self.base_url!r}, pid={self.process.pid})"

    def set_ready(self, ready: bool) -> None:
        status, _ = http_json(f"{self.base_url}/control/ready", method="POST", body={"ready": ready})
        assert status == 200

    def checks(self) -> int:
        """How many readiness checks the app has answered so far."""
        status, document = http_json(f"{self.base_url}/control/stats")
        assert status == 200
        checks: int = document["checks"]
        return checks

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self!r} exited with {self.process.returncode} while starting.")
            try:
                status, _ = http_json(f"{self.base_url}/control/stats", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            time.sleep(POLL_INTERVAL)
        raise RuntimeError(f"{self!r} did not serve within {STARTUP_TIMEOUT} s.")

    def stop(self) -> None:
        _stop(self.process)


class AppFactory:
    def __init__(self) -> None:
        self.started: list[AppProcess] = []

    def __call__(self, *, port: int, host: str = LOOPBACK, ready: bool = True) -> AppProcess:
        """Start the app on ``host:port``, ready or not, and wait until it serves."""
        command = [sys.executable, str(READY_APP), "--host", host, "--port", str(port)]
        if not ready:
            command.append("--not-ready")
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        app = AppProcess(process=process, host=host, port=port)
        self.started.append(app)
        app.wait_until_serving()
        return app

    def stop_all(self) -> None:
        for app in self.started:
            _stop(app.process)


class SidecarProcess:
    """One ``python -m maxine_sidecar`` process: its /healthz, its log, and the signals that end it."""

    def __init__(self, *, process: subprocess.Popen[bytes], healthz_port: int, log_path: Path) -> None:
        self.process = process
        self.healthz_url = f"http://{LOOPBACK}:{healthz_port}/healthz"
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"SidecarProcess(healthz_url={self.healthz_url!r}, pid={self.process.pid})"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthz(self) -> tuple[int, Any]:
        """Status and JSON of /healthz; (0, None) while nothing answers."""
        try:
            return http_json(self.healthz_url, timeout=2.0)
        except OSError:
            return 0, None

    def state(self) -> str | None:
        status, document = self.healthz()
        return document["state"] if status == 200 else None

    def wait_for_state(self, state: str, *, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
        """Wait until /healthz reports ``state``; its document then."""

        def reached() -> dict[str, Any] | None:
            if not self.running:
                pytest.fail(f"{self!r} exited with {self.process.returncode} while waiting for {state}:\n{self.logs()}")
            status, document = self.healthz()
            return document if status == 200 and document["state"] == state else None

        document: dict[str, Any] = wait_until(
            reached, what=f"the sidecar to be {state}", timeout=timeout, logs=self.logs
        )
        return document

    def terminate(self, *, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, as the kubelet sends it; the exit code, once the process has exited within ``timeout``."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


class SidecarFactory:
    def __init__(self, *, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[SidecarProcess] = []

    def __call__(
        self, *, registry_url: str, service_name: str, app_port: int, settings: Mapping[str, str] | None = None
    ) -> SidecarProcess:
        """
        Start a sidecar for the app on ``app_port`` and wait until its /healthz answers.

        ``settings`` are more environment variables, over the fast defaults (e.g. ``READINESS_URL``).
        """
        healthz_port = find_free_loopback_port()
        environment = {name: value for name, value in os.environ.items() if name not in SIDECAR_VARIABLES}
        environment.update(FAST_SETTINGS)
        environment.update(
            MAXINE_URL=registry_url,
            SERVICE_NAME=service_name,
            SERVICE_PORT=str(app_port),
            POD_IP=LOOPBACK,
            HEALTHZ_PORT=str(healthz_port),
        )
        environment.update(settings or {})

        log_path = self.log_dir / f"sidecar-{service_name}-{len(self.started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "maxine_sidecar"],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        sidecar = SidecarProcess(process=process, healthz_port=healthz_port, log_path=log_path)
        self.started.append(sidecar)
        wait_until(
            lambda: sidecar.healthz()[0] == 200 or not sidecar.running,
            what="the sidecar's /healthz",
            timeout=STARTUP_TIMEOUT,
        )
        if not sidecar.running:
            raise RuntimeError(f"{sidecar!r} exited with {process.returncode} while starting:\n{sidecar.logs()}")
        return sidecar

    def stop_all(self) -> None:
        for sidecar in self.started:
            _stop(sidecar.process)


@pytest.fixture
def registry(maxine_process: MaxineProcessFactory) -> MaxineProcess:
    """A registry that publishes an event for every heartbeat, so that a test can count them."""
    return maxine_process(args=["--heartbeat-events", "--heartbeat-event-interval", "0"])


@pytest.fixture
def ready_app() -> Iterator[AppFactory]:
    """Factory of ``ready_app.py`` processes, all stopped when the test ends."""
    factory = AppFactory()
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarFactory]:
    """Factory of sidecar processes, all stopped when the test ends."""
    factory = SidecarFactory(log_dir=tmp_path_factory.mktemp("sidecar"))
    try:
        yield factory
    finally:
        factory.stop_all()
