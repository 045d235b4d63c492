"""
Fixtures shared by every test folder: real ``maxine`` registry processes on loopback.

``maxine_process`` is a factory. Each call starts one registry as a subprocess, with the same entry
point as the ``maxine`` command, on a free loopback port (or on a given port, to restart a registry
where its clients expect it), and returns once ``GET /health`` answers. Whatever a test started is
stopped at teardown, and killed if it does not stop in time. A server's stderr goes to a file, shown
when the server fails to start.

Helpers talk to the servers with urllib through an opener without proxies, so that no test request
can leave the machine whatever the environment's proxy settings are.

``maxine_server`` starts the same server in-process instead, as ``MaxineServer`` with every
listener (HTTP, gRPC, UDP) on a free loopback port, for tests that need to look inside it.

Other real servers the tests need (an MQTT broker, Redis) are started the same way: on a free loopback port,
from their own temporary configuration, and stopped at teardown. ``require_binary`` finds their
executables: a missing one skips the test with an install hint, but fails it when ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import maxine_registry
from maxine_registry.build_info import build_kind, compiled_modules
from maxine_registry.server import MaxineServer
from maxine_registry.settings import Settings

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
HEALTH_POLL_INTERVAL = 0.05
# A free port may be taken by someone else between the check and the server's bind; try a few.
START_ATTEMPTS = 3

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pytest_report_header() -> str:
    return f"maxine: {build_kind()} hot modules, from {Path(maxine_registry.__file__).parent}"


def pytest_sessionstart(session: pytest.Session) -> None:
    # .ci/run runs the suite a second time on the compiled wheel; a run that silently fell back to
    # the source tree would test nothing new.
    if os.environ.get("MAXINE_EXPECT_COMPILED") == "1" and build_kind() != "compiled":
        modules = ", ".join(name for name, compiled in compiled_modules().items() if not compiled)
        pytest.exit(f"MAXINE_EXPECT_COMPILED=1, but these run as plain Python: {modules}", returncode=4)


def find_free_loopback_port() -> int:
    """A loopback port nothing listens on at the moment of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def http_json(url: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """Status and decoded JSON of one request, error statuses included; for tests, not for the client under test."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class MaxineProcess:
    """One registry subprocess: where it listens, and how to stop or kill it."""

    def __init__(self, *, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.host = LOOPBACK
        self.port = port
        self.base_url = f"http://{LOOPBACK}:{port}"
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"MaxineProcess(base_url={self.base_url!r}, pid={self.process.pid}, running={self.running})"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get_json(self, path: str) -> Any:
        """The JSON of ``GET path`` on this registry; fails the test on an error status."""
        status, document = http_json(self.base_url + path)
        assert status == 200, f"GET {path} answered {status}: {document!r}"
        return document

    def events(self, *, event: str | None = None) -> list[dict[str, Any]]:
        """The registry's event history, optionally only events of one kind."""
        history: list[dict[str, Any]] = self.get_json("/events?limit=1000")["events"]
        return [item for item in history if event is None or item["event"] == event]

    def node_ids(self, service_name: str) -> set[str]:
        """Node ids the registry lists for a service right now."""
        services = self.get_json("/servers")["services"]
        return {node["nodeId"] for node in services.get(service_name, {}).get("nodes", [])}

    def stop(self) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit code."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> int:
        """SIGKILL: the registry vanishes with everything it held in memory."""
        if self.running:
            self.process.kill()
        return self.process.wait(timeout=STOP_TIMEOUT)

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self!r} exited with {self.process.returncode} while starting:\n{self.logs()}")
            try:
                status, _ = http_json(self.base_url + "/health", timeout=1.0)
            except (OSError, ValueError):
                status = 0
            if status == 200:
                return
            time.sleep(HEALTH_POLL_INTERVAL)
        raise RuntimeError(f"{self!r} did not answer /health within {STARTUP_TIMEOUT} s:\n{self.logs()}")


class MaxineProcessFactory:
    """Starts registries for one test and stops all of them at its end."""

    def __init__(self, *, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[MaxineProcess] = []

    def __call__(self, *, port: int | None = None, args: Sequence[str] = ()) -> MaxineProcess:
        """
        Start a registry and wait until it is healthy.

        ``port=None`` picks a free loopback port; a given port is used as is (to restart on it).
        ``args`` are extra command-line flags, e.g. ``["--heartbeat-timeout", "2"]``.
        """
        attempts = START_ATTEMPTS if port is None else 1
        for attempt in range(1, attempts + 1):
            server = self._spawn(port=port if port is not None else find_free_loopback_port(), args=args)
            try:
                server.wait_until_healthy()
            except RuntimeError:
                server.kill()
                # Only an early exit may be a lost race for the port; a server that runs but never gets
                # healthy is broken, and trying it on another port would just take longer to say so.
                if attempt == attempts or server.process.returncode != 1:
                    raise
                continue
            return server
        raise AssertionError("unreachable: the loop returns or raises")

    def _spawn(self, *, port: int, args: Sequence[str]) -> MaxineProcess:
        log_path = self.log_dir / f"maxine-{port}-{len(self.started)}.log"
        command = [
            sys.executable, "-m", "maxine_registry",
            "--host", LOOPBACK, "--port", str(port), "--log-level", "warning",
            *args,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        server = MaxineProcess(process=process, port=port, log_path=log_path)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture
def maxine_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MaxineProcessFactory]:
    """Factory of registry subprocesses, all stopped when the test ends."""
    factory = MaxineProcessFactory(log_dir=tmp_path_factory.mktemp("maxine"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
async def maxine_server() -> AsyncIterator[Callable[..., Awaitable[MaxineServer]]]:
    """
    Factory of in-process registries: ``await maxine_server(udp_hmac_key=...)`` starts a ``MaxineServer``.

    Keyword arguments are ``Settings`` fields. gRPC is on (it is off by default), and HTTP, gRPC and
    UDP listen on free loopback ports unless given. Every server started is stopped at teardown.
    """
    started: list[MaxineServer] = []

    async def start(**overrides: Any) -> MaxineServer:
        listeners = {"host": LOOPBACK, "port": 0, "grpc_enabled": True, "grpc_port": 0, "udp_port": 0}
        values: dict[str, Any] = {**listeners, **overrides}
        server = MaxineServer(Settings(**values))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture
def free_loopback_port() -> Callable[[], int]:
    """A function giving a loopback port nothing listens on (connecting to it is refused) at each call."""
    return find_free_loopback_port


# Executables the tests run for real.

SYSTEM_BINARY_FOLDERS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin")


def require_binary(name: str, *, hint: str) -> str:
    """The path of an executable a test needs; skip without it, except under CI=true, where it fails."""
    path = shutil.which(name)
    if path is None:
        # Daemons such as mosquitto live in sbin, which is not on every user's PATH.
        candidates = (os.path.join(folder, name) for folder in SYSTEM_BINARY_FOLDERS)
        path = next((candidate for candidate in candidates if os.access(candidate, os.X_OK)), None)
    if path is None:
        message = f"{name} is not installed; {hint}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_path(path: Path, *, hint: str) -> Path:
    """A file or folder a test needs (reference data beside the clone); skip without it, fail under CI=true."""
    if not path.exists():
        message = f"{path} is missing; {hint}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for_port(port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once something accepts connections on the loopback port; raise if it does not in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"The process on port {port} exited with {process.returncode} while starting.")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(HEALTH_POLL_INTERVAL)
    raise RuntimeError(f"Nothing accepted connections on {LOOPBACK}:{port} within {timeout} s.")


class LoopbackServer:
    """
    A real server binary on a loopback port, with its log in a file; it can be killed and started again.

    Subclasses give the command line; starting waits until the port accepts connections.
    """

    kind = "server"

    def __init__(self, *, binary: str, port: int, workdir: Path, scheme: str) -> None:
        self.binary = binary
        self.port = port
        self.host = LOOPBACK
        self.url = f"{scheme}://{LOOPBACK}:{port}"
        self.workdir = workdir
        self.log_path = workdir / f"{self.kind}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, running={self.running})"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            wait_for_port(self.port, timeout=STARTUP_TIMEOUT, process=self.process)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{self!r} did not start: {exc}\n{self.logs()}") from None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-connection with whatever it held, as in a crash."""
        if self.process is not None and self.running:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.process is not None and self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()


class MosquittoBroker(LoopbackServer):
    """A real mosquitto on a loopback port, anonymous, without persistence."""

    kind = "mosquitto"

    def __init__(self, *, binary: str, port: int, workdir: Path) -> None:
        super().__init__(binary=binary, port=port, workdir=workdir, scheme="mqtt")
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(f"listener {port} {LOOPBACK}\nallow_anonymous true\npersistence false\n")

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A started mosquitto broker on a free loopback port, stopped at teardown."""
    binary = require_binary("mosquitto", hint="install it with: apt-get install mosquitto")
    broker = MosquittoBroker(binary=binary, port=find_free_loopback_port(), workdir=tmp_path_factory.mktemp("mqtt"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# A headless browser, for the HTML pages Maxine serves.

CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
BROWSER_TIMEOUT_MS = 10_000


class BrowserPage:
    """One Playwright page in Debian's Chromium, and every error its console or its scripts reported."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def __repr__(self) -> str:
        return f"BrowserPage(url={self.page.url!r}, errors={len(self.errors)})"


@pytest.fixture
def browser_page() -> Iterator[BrowserPage]:
    """
    A fresh page in headless Chromium, driven by Playwright with the system's browser.

    Playwright's own browser downloads are never used: the executable is Debian's ``chromium``,
    and the flags keep it from calling home. Skips without Chromium or Playwright, fails under CI.
    """
    executable = require_binary("chromium", hint="install it with `apt-get install chromium`.")
    try:
        # Imported here so that test runs without the browser tests need no Playwright.
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError:
        message = "playwright is not installed; install the test extra: pip install -e '.[test]'."
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS), headless=True)
        try:
            context = browser.new_context(accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            yield BrowserPage(page)
        finally:
            browser.close()


class RedisServer(LoopbackServer):
    """A real redis-server on a loopback port, keeping nothing on disk."""

    kind = "redis"

    def __init__(self, *, binary: str, port: int, workdir: Path) -> None:
        super().__init__(binary=binary, port=port, workdir=workdir, scheme="redis")

    def maxine_args(self) -> list[str]:
        """The flags that make a registry keep its state in this Redis."""
        return ["--persistence-enabled", "--persistence-type", "redis", "--redis-url", self.url]

    def command(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A started redis-server on a free loopback port, without persistence, stopped at teardown."""
    binary = require_binary("redis-server", hint="install it with: apt-get install redis-server")
    server = RedisServer(binary=binary, port=find_free_loopback_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
