"""
A Kubernetes API for the local run: kmock's emulator, served from a thread of its own, and its kubeconfig.

There is no API server on these machines. The operator's tests run kopf against kmock's
``KubernetesEmulator``, with a subclass (``MaxineEmulator``) that fills in what an API server adds
(``uid``, ``resourceVersion``, ``generation``) and the resources declared for discovery; this module
reuses both rather than keeping a second copy.

The emulator is an asyncio server, but the local run drives real processes with blocking calls
(``subprocess``, ``urllib``, ``time.sleep``). So it gets its own thread and event loop: a blocking
step of the test never stalls the watch streams that the operator (a separate process) reads. The
test talks to it as ``kubectl`` would, over HTTP; the operator finds it through a kubeconfig file,
as it would find a real cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kmock
from tests.operator.conftest import MaxineEmulator, declare_resources

from maxine_operator import crds

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0
DEFAULT_NAMESPACE = "shop"

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmulatedKubernetes:
    """The emulated API server on a loopback port, in a daemon thread; ``start()``, then ``stop()``."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kubernetes-emulator", daemon=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, running={self._thread.is_alive()})"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or not self.url:
            raise RuntimeError(f"The Kubernetes emulator did not start within {START_TIMEOUT} s: {self._error!r}")
        logger.info("The Kubernetes emulator serves on %s.", self.url)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            # A daemon thread: it cannot outlive the test process, but it should have ended by now.
            logger.warning("The Kubernetes emulator did not stop within %s s.", STOP_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            logger.exception("The Kubernetes emulator failed.")
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        emulator = MaxineEmulator()
        # No mesh kinds: the local run checks the registry and Envoy, not emitted Istio or Linkerd objects.
        declare_resources(emulator, meshes=False)
        async with emulator, kmock.Server(emulator) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stopping.wait()

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that points at the emulator (plain HTTP, no credentials), for ``KUBECONFIG``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "e2e", "user": {}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "e2e"}}],
            "current-context": "emulator",
        }
        # JSON is YAML too; kopf's kubeconfig reader parses it as such.
        path.write_text(json.dumps(config, indent=2))
        return path

    # What ``kubectl apply`` and ``kubectl get`` do, over the emulator's HTTP API.

    def create(self, document: dict[str, Any], *, plural: str) -> dict[str, Any]:
        namespace = document.get("metadata", {}).get("namespace", DEFAULT_NAMESPACE)
        status, created = self._call("POST", self._path(document["apiVersion"], plural, namespace=namespace), document)
        if status >= 400:
            raise RuntimeError(f"Creating {plural}/{document['metadata']['name']} answered {status}: {created!r}")
        logger.info("Applied %s %s/%s.", document["kind"], namespace, document["metadata"]["name"])
        result: dict[str, Any] = created
        return result

    def get(
        self, plural: str, name: str, *, api_version: str = crds.API_VERSION, namespace: str = DEFAULT_NAMESPACE
    ) -> dict[str, Any] | None:
        status, document = self._call("GET", self._path(api_version, plural, namespace=namespace, name=name))
        if status == 404:
            return None
        if status >= 400:
            raise RuntimeError(f"Reading {plural}/{name} answered {status}: {document!r}")
        found: dict[str, Any] = document
        return found

    @staticmethod
    def _path(api_version: str, plural: str, *, namespace: str, name: str | None = None) -> str:
        root = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        return f"{root}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with _NO_PROXY_OPENER.open(request, timeout=REQUEST_TIMEOUT) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")
