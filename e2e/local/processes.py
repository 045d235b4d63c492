"""
The processes of the local run: demo apps with their sidecars (a "pod"), the operator, and Envoy.

Each one is a real subprocess on loopback, started the way a user starts it (``python -m
maxine_sidecar`` configured by environment, ``python -m maxine_operator`` with a kubeconfig, the
``envoy`` binary with the bootstrap Maxine serves), with its output in a log file of its own.
``ManagedProcess`` is the common part: it knows how to end its process politely (SIGTERM, then a
bounded wait), brutally (SIGKILL) or "whatever it takes" (``stop``: polite, then brutal if stuck),
which is what teardown uses so that nothing outlives the run.

The registry and Redis are the test suite's own (``tests/conftest.py``), and Envoy's process class
is the mesh tests' (``tests/mesh/conftest.py``): one way to run each, shared.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from tests.conftest import LOOPBACK, find_free_loopback_port, http_json, wait_for_port
from tests.mesh.conftest import EnvoyProcess

from maxine_registry.model import make_node_id
from maxine_sidecar.settings import SidecarSettings

logger = logging.getLogger(__name__)

DEMO_APP = Path(__file__).with_name("demo_app.py")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
# How much of a process's log a failure message shows: the end is where the reason usually is.
LOG_TAIL_CHARS = 4000
REQUEST_TIMEOUT = 2.0
POD_NAMESPACE = "shop"

# Variables the sidecar and the operator read: dropped from the inherited environment, so that a
# developer's own settings never change the run (each process gets exactly what the run gives it).
SIDECAR_VARIABLES = frozenset(str(item.metadata["env"]) for item in dataclasses.fields(SidecarSettings))
OPERATOR_VARIABLE_PREFIXES = ("MAXINE_", "KUBERNETES_")
OPERATOR_VARIABLES = frozenset({"KUBECONFIG", "LOG_FORMAT"})

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

T = TypeVar("T")


class DeadlineExceeded(AssertionError):
    """A condition of the run did not hold by its deadline; the message says what, and what was seen last."""


def wait_until(
    condition: Callable[[], T | None], *, what: str, timeout: float, logs: Callable[[], str] | None = None
) -> T:
    """
    Poll ``condition`` until it returns something other than None or False, and return that.

    At the deadline, raise ``DeadlineExceeded`` naming ``what`` was awaited, with ``logs()`` (the
    log of the process concerned) when given. A ``timeout`` of 0 or less still checks once.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            detail = f"\n{logs()}" if logs is not None else ""
            raise DeadlineExceeded(f"Waited {max(timeout, 0):.1f} s for {what}, in vain.{detail}")
        time.sleep(POLL_INTERVAL)


def clean_environment(*, drop: Callable[[str], bool]) -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not drop(name)}


class ManagedProcess:
    """One subprocess with its own log file, and the three ways to end it."""

    def __init__(
        self, *, name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                list(command),
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        logger.info("Started %s (pid %d); its log is %s.", name, self.process.pid, log_path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, pid={self.process.pid}, running={self.running})"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- end of the log of {self.name} ({self.log_path}) ---\n{text[-LOG_TAIL_CHARS:]}"

    def terminate(self, *, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for the exit; the exit code (``subprocess.TimeoutExpired`` if it takes longer)."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> int:
        """SIGKILL: the process vanishes without a word to anyone."""
        if self.running:
            self.process.kill()
        return self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if that is not enough in time: for teardown, where the process must end."""
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %s s after SIGTERM; killing it.", self.name, STOP_TIMEOUT)
            self.kill()


class Pod:
    """
    An app and its sidecar, as in a pod: the sidecar registers the app under ``service`` once ``/ready`` answers.

    ``name`` is what the app answers with (``orders-v1``); ``version`` goes into the instance's
    metadata, which is what traffic splits choose by.
    """

    def __init__(
        self,
        *,
        name: str,
        service: str,
        version: str,
        registry_url: str,
        workdir: Path,
        sidecar_settings: Mapping[str, str],
    ) -> None:
        self.name = name
        self.service = service
        self.version = version
        self.registry_url = registry_url
        self.workdir = workdir
        self.sidecar_settings = dict(sidecar_settings)
        self.port = find_free_loopback_port()
        self.node_id = make_node_id(service, LOOPBACK, self.port)
        self.healthz_url = ""
        self.app: ManagedProcess | None = None
        self.sidecar: ManagedProcess | None = None

    def start_app(self) -> ManagedProcess:
        """Start the app; ``wait_until_serving`` waits for its port."""
        self.app = ManagedProcess(
            name=f"app {self.name}",
            command=[sys.executable, str(DEMO_APP), "--name", self.name, "--host", LOOPBACK, "--port", str(self.port)],
            log_path=self.workdir / f"app-{self.name}.log",
        )
        return self.app

    def wait_until_serving(self) -> None:
        app = self._started(self.app)
        try:
            wait_for_port(self.port, timeout=START_TIMEOUT, process=app.process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{app.logs()}") from None

    def start_sidecar(self) -> ManagedProcess:
        """Start ``python -m maxine_sidecar`` for the app, configured by environment only, as in a pod."""
        healthz_port = find_free_loopback_port()
        self.healthz_url = f"http://{LOOPBACK}:{healthz_port}/healthz"
        environment = clean_environment(drop=lambda variable: variable in SIDECAR_VARIABLES)
        environment.update(self.sidecar_settings)
        environment.update(
            MAXINE_URL=self.registry_url,
            SERVICE_NAME=self.service,
            SERVICE_PORT=str(self.port),
            SERVICE_METADATA=orjson.dumps({"version": self.version}).decode(),
            POD_NAME=self.name,
            POD_NAMESPACE=POD_NAMESPACE,
            POD_IP=LOOPBACK,
            READINESS_URL=f"http://{LOOPBACK}:{self.port}/ready",
            HEALTHZ_HOST=LOOPBACK,
            HEALTHZ_PORT=str(healthz_port),
        )
        self.sidecar = ManagedProcess(
            name=f"sidecar of {self.name}",
            command=[sys.executable, "-m", "maxine_sidecar"],
            log_path=self.workdir / f"sidecar-{self.name}.log",
            env=environment,
        )
        return self.sidecar

    def _started(self, process: ManagedProcess | None) -> ManagedProcess:
        if process is None:
            raise RuntimeError(f"{self!r} has not started that process yet.")
        return process

    def __repr__(self) -> str:
        return f"Pod(name={self.name!r}, node_id={self.node_id!r}, app={self.app!r}, sidecar={self.sidecar!r})"

    @property
    def app_process(self) -> ManagedProcess:
        return self._started(self.app)

    @property
    def sidecar_process(self) -> ManagedProcess:
        return self._started(self.sidecar)

    def sidecar_status(self) -> dict[str, Any] | None:
        """The sidecar's ``/healthz`` document (its state, registrations, ...); None while it does not answer."""
        try:
            status, document = http_json(self.healthz_url, timeout=REQUEST_TIMEOUT)
        except (OSError, ValueError):
            return None
        return document if status == 200 and isinstance(document, dict) else None

    def wait_until_registered(self, *, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Wait until the sidecar says ``registered``; its status then."""

        sidecar = self.sidecar_process

        def registered() -> dict[str, Any] | None:
            if not sidecar.running:
                raise RuntimeError(f"{sidecar!r} exited with {sidecar.process.returncode}.\n{self.logs()}")
            status = self.sidecar_status()
            return status if status is not None and status.get("state") == "registered" else None

        return wait_until(
            registered, what=f"the sidecar of {self.name} to register it", timeout=timeout, logs=self.logs
        )

    def logs(self) -> str:
        return "\n".join(process.logs() for process in (self.sidecar, self.app) if process is not None)

    def kill(self) -> None:
        """SIGKILL the sidecar and the app: the node crashes, and nobody tells the registry."""
        self.sidecar_process.kill()
        self.app_process.kill()
        logger.info("Killed %s and its sidecar with SIGKILL.", self.name)

    def stop(self) -> None:
        # The sidecar first: it deregisters, so that nothing is sent to the app while it closes.
        for process in (self.sidecar, self.app):
            if process is not None:
                process.stop()


class OperatorProcess(ManagedProcess):
    """``python -m maxine_operator``, logged in to the emulated cluster through a kubeconfig file."""

    def __init__(self, *, registry_url: str, kubeconfig: Path, log_path: Path, flags: Sequence[str] = ()) -> None:
        environment = clean_environment(
            drop=lambda variable: variable in OPERATOR_VARIABLES or variable.startswith(OPERATOR_VARIABLE_PREFIXES)
        )
        environment["KUBECONFIG"] = str(kubeconfig)
        command = [sys.executable, "-m", "maxine_operator", "--registry-url", registry_url, *flags]
        super().__init__(name="operator", command=command, log_path=log_path, env=environment)


class EnvoyProxy:
    """A real Envoy on Maxine's dynamic bootstrap (xDS), and how requests through it are answered."""

    def __init__(self, *, envoy: EnvoyProcess, listener_port: int) -> None:
        self.envoy = envoy
        self.listener_port = listener_port
        self.base_url = f"http://{LOOPBACK}:{listener_port}"

    def __repr__(self) -> str:
        return f"EnvoyProxy(base_url={self.base_url!r}, envoy={self.envoy!r})"

    def logs(self) -> str:
        return f"--- end of Envoy's log ({self.envoy.log_path}) ---\n{self.envoy.logs()[-LOG_TAIL_CHARS:]}"

    def answers(self, service: str, *, count: int) -> Counter[str]:
        """
        Who answered ``count`` requests in a row to ``service`` through Envoy (by path prefix).

        A 200 counts under the body (the app's name); any other answer as ``<status>``, and a request
        that got no answer at all as ``<no answer>``.
        """
        seen: Counter[str] = Counter()
        for _ in range(count):
            try:
                with _NO_PROXY_OPENER.open(f"{self.base_url}/{service}/", timeout=REQUEST_TIMEOUT) as response:
                    seen[response.read().decode(errors="replace")] += 1
            except urllib.error.HTTPError as error:
                seen[f"<{error.code}>"] += 1
            except OSError:
                seen["<no answer>"] += 1
        return seen

    def stop(self) -> None:
        self.envoy.stop()
