"""
The local run's orchestrator: every part of a Maxine deployment as processes on loopback, started in order.

``LocalCluster`` owns what a Kubernetes cluster with Maxine would hold, minus Kubernetes itself:

- Redis (the test suite's ``redis-server`` fixture) and a registry that keeps its state there;
- an emulated Kubernetes API (``EmulatedKubernetes``) and the real operator process logged in to it;
- pods: a demo app and a real sidecar process each;
- an Envoy on the dynamic bootstrap the registry serves, following it over xDS.

Each ``start_*`` method starts one part and returns it once it is usable; the run's steps (the test)
decide the order and what to check. ``close()`` stops everything this object started, in reverse
order (pods before Envoy before the operator before the emulator), each politely first and killed if
stuck, so that a failing step leaves no process behind. The registry processes belong to the
``maxine_process`` fixture, which stops them after ``close()``, and Redis to its fixture.

All ports are free loopback ports picked at start; nothing listens on or talks to another address.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from e2e.local.kubernetes import EmulatedKubernetes
from e2e.local.processes import LOG_TAIL_CHARS, EnvoyProxy, OperatorProcess, Pod
from tests.conftest import find_free_loopback_port
from tests.mesh.conftest import EnvoyProcess, envoy_binary

if TYPE_CHECKING:
    from tests.conftest import MaxineProcess, MaxineProcessFactory, RedisServer

logger = logging.getLogger(__name__)


class LocalCluster:
    """The parts of the local run, started on demand and all stopped by ``close()``."""

    def __init__(self, *, workdir: Path, redis: RedisServer, maxine_processes: MaxineProcessFactory) -> None:
        self.workdir = workdir
        self.redis = redis
        self.maxine_processes = maxine_processes
        self.registry: MaxineProcess | None = None
        self.kubernetes: EmulatedKubernetes | None = None
        self.operator: OperatorProcess | None = None
        self.envoy: EnvoyProxy | None = None
        self.pods: list[Pod] = []
        # What close() runs, last started first.
        self._stoppers: list[tuple[str, Callable[[], None]]] = []

    def __repr__(self) -> str:
        return f"LocalCluster(registry={self.registry!r}, pods={[pod.name for pod in self.pods]!r})"

    @property
    def registry_url(self) -> str:
        if self.registry is None:
            raise RuntimeError("The registry has not been started.")
        return self.registry.base_url

    # The registry, on Redis.

    def start_registry(self, *, port: int | None = None) -> MaxineProcess:
        """Start a registry that keeps its state in this run's Redis; on ``port`` to replace a stopped one."""
        self.registry = self.maxine_processes(port=port, args=self.redis.maxine_args())
        logger.info("The registry serves on %s, with its state in Redis at %s.", self.registry.base_url, self.redis.url)
        return self.registry

    def stop_registry(self) -> int:
        """SIGTERM the registry and wait for its exit; the exit code. Its port stays this run's."""
        if self.registry is None:
            raise RuntimeError("The registry has not been started.")
        exit_code = self.registry.stop()
        logger.info("The registry on %s stopped with exit code %d.", self.registry.base_url, exit_code)
        return exit_code

    # Kubernetes and the operator.

    def start_kubernetes(self) -> EmulatedKubernetes:
        kubernetes = EmulatedKubernetes()
        self._stoppers.append(("the Kubernetes emulator", kubernetes.stop))
        kubernetes.start()
        self.kubernetes = kubernetes
        return kubernetes

    def start_operator(self, *, flags: Sequence[str] = ()) -> OperatorProcess:
        """Start ``maxine-operator`` against the emulator and the registry; ``flags`` are more command-line flags."""
        if self.kubernetes is None:
            raise RuntimeError("Start the Kubernetes emulator before the operator.")
        kubeconfig = self.kubernetes.write_kubeconfig(self.workdir / "kubeconfig")
        operator = OperatorProcess(
            registry_url=self.registry_url, kubeconfig=kubeconfig, log_path=self.workdir / "operator.log", flags=flags
        )
        self.operator = operator
        self._stoppers.append(("the operator", operator.stop))
        return operator

    # Pods.

    def start_pods(
        self, specs: Sequence[tuple[str, str]], *, service: str, sidecar_settings: Mapping[str, str]
    ) -> list[Pod]:
        """
        Start one pod per ``(name, version)`` of ``service`` side by side; return once every sidecar registered its app.

        ``sidecar_settings`` are environment variables for every sidecar (leases, intervals, ...).
        """
        pods = [
            Pod(
                name=name,
                service=service,
                version=version,
                registry_url=self.registry_url,
                workdir=self.workdir,
                sidecar_settings=sidecar_settings,
            )
            for name, version in specs
        ]
        for pod in pods:
            self.pods.append(pod)
            self._stoppers.append((f"pod {pod.name}", pod.stop))

        # Each step for all pods at once: the processes start side by side, as the pods of a Deployment do.
        for pod in pods:
            pod.start_app()
        for pod in pods:
            pod.wait_until_serving()
        for pod in pods:
            pod.start_sidecar()
        for pod in pods:
            pod.wait_until_registered()
        return pods

    # Envoy.

    def start_envoy(self, *, refresh_ms: int) -> EnvoyProxy:
        """Start Envoy from the registry's dynamic bootstrap, polling the registry's xDS every ``refresh_ms``."""
        if self.registry is None:
            raise RuntimeError("Start the registry before Envoy: Envoy's bootstrap comes from it.")
        listener_port, admin_port = find_free_loopback_port(), find_free_loopback_port()
        bootstrap = self.registry.get_json(
            f"/service-mesh/envoy-bootstrap?listenerPort={listener_port}&adminPort={admin_port}&refreshMs={refresh_ms}"
        )
        workdir = self.workdir / "envoy"
        workdir.mkdir(exist_ok=True)
        process = EnvoyProcess(binary=envoy_binary(), config=bootstrap, workdir=workdir, admin_port=admin_port)
        proxy = EnvoyProxy(envoy=process, listener_port=listener_port)
        self.envoy = proxy
        self._stoppers.append(("Envoy", proxy.stop))
        process.wait_ready()
        logger.info("Envoy listens on %s and follows the registry's xDS every %d ms.", proxy.base_url, refresh_ms)
        return proxy

    # Teardown.

    def close(self) -> None:
        """Stop everything started here, last first; a part that fails to stop does not keep the others running."""
        started = time.monotonic()
        while self._stoppers:
            what, stop = self._stoppers.pop()
            try:
                stop()
            except Exception:
                logger.exception("Stopping %s failed.", what)
        logger.info("The local cluster is down (teardown took %.1f s).", time.monotonic() - started)

    def logs(self) -> str:
        """The end of every log of the run, for a failure message."""
        parts = [pod.logs() for pod in self.pods]
        if self.operator is not None:
            parts.append(self.operator.logs())
        if self.envoy is not None:
            parts.append(self.envoy.logs())
        if self.registry is not None:
            tail = self.registry.logs()[-LOG_TAIL_CHARS:]
            parts.append(f"--- end of the registry's log ({self.registry.log_path}) ---\n{tail}")
        return "\n".join(parts)
