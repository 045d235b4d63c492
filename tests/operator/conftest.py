"""
Fixtures for the operator's tests: a Kubernetes API emulator, a real registry, and the real operator between them.

The cluster is kmock's ``KubernetesEmulator`` on a loopback port. It serves discovery, CRUD,
watch streams, finalizers and status patches well enough for kopf, once two things are added:

- every resource the operator touches is declared for discovery (the CRDs come from the shipped
  YAML, so discovery shows exactly their kinds, short names, categories and status subresource);
- objects get what an API server would give them: ``uid``, ``resourceVersion`` (bumped on every
  write, and checked by the ``test`` operation of JSON patches, which kopf uses for finalizers),
  ``generation`` (bumped when ``spec`` changes), ``creationTimestamp``, and a name from
  ``generateName`` (kopf's Events use it). Lists carry the resource version they show, and a watch
  from that version skips what the list had, as an API server does (otherwise kopf sees each
  object twice at start and races itself on the finalizer). ``MaxineEmulator`` does that.

The emulator neither validates schemas nor collects garbage: the schema tests cover the first, and
owner references are asserted directly for the second.

``operator_runner`` starts ``run_operator`` as a task in the test's loop, logged in to the
emulator and pointed at a registry; the test talks to both through ``Cluster`` and
``RegistryView``. ``crd_validator`` (the mesh tests' fixture) checks emitted mesh objects against
the upstream CRD schemas in ``shared/schemas``. ``eventually`` polls an assertion until a deadline,
for what the operator does asynchronously.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import kmock
import kopf
import pytest
import yaml

from maxine_operator import crds
from maxine_operator.config import OperatorConfig
from maxine_operator.runtime import run_operator
from tests.conftest import MaxineProcess, MaxineProcessFactory

# The mesh tests' validator of objects against the upstream CRDs, shared as a fixture here.
from tests.mesh.conftest import CrdValidator, crd_validator  # noqa: F401

# How long the registry may take to follow a change of a resource.
FOLLOW_DEADLINE = 2.0
# Status, events and mesh objects go through more steps (retries, watch round trips); they get longer.
SETTLE_DEADLINE = 10.0
POLL_INTERVAL = 0.05
OPERATOR_START_TIMEOUT = 15.0
OPERATOR_STOP_TIMEOUT = 15.0
ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")
NAMESPACE = "shop"

# Kinds beyond the custom resources: (group/version/plural, kind, namespaced).
CORE_RESOURCES = (
    ("v1/namespaces", "Namespace", False),
    ("v1/events", "Event", True),
    ("v1/services", "Service", True),
    ("v1/pods", "Pod", True),
    ("discovery.k8s.io/v1/endpointslices", "EndpointSlice", True),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
    ("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", False),
    ("kopf.dev/v1/kopfpeerings", "KopfPeering", True),
)
CLUSTER_KINDS = frozenset(kind for _, kind, namespaced in CORE_RESOURCES if not namespaced)
MESH_RESOURCES = (
    ("networking.istio.io/v1/virtualservices", "VirtualService"),
    ("networking.istio.io/v1/destinationrules", "DestinationRule"),
    ("security.istio.io/v1/authorizationpolicies", "AuthorizationPolicy"),
    ("linkerd.io/v1alpha2/serviceprofiles", "ServiceProfile"),
    ("policy.linkerd.io/v1beta3/httproutes", "HTTPRoute"),
    ("policy.linkerd.io/v1beta3/servers", "Server"),
    ("policy.linkerd.io/v1alpha1/authorizationpolicies", "AuthorizationPolicy"),
    ("policy.linkerd.io/v1alpha1/meshtlsauthentications", "MeshTLSAuthentication"),
    ("gateway.networking.k8s.io/v1/httproutes", "HTTPRoute"),
    ("split.smi-spec.io/v1alpha4/trafficsplits", "TrafficSplit"),
)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@attrs.define(kw_only=True)
class MaxineEmulator(kmock.KubernetesEmulator):
    """The emulator, plus the metadata an API server fills in (see the module docstring)."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None:
            self._stamp(request)
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        # A list says which version it shows, so that a watch from there skips what the list had.
        payload = await super()._serve_list(request)
        versions = [int(item["metadata"]["resourceVersion"]) for item in payload["items"] if "metadata" in item]
        payload["metadata"]["resourceVersion"] = str(max(versions, default=0))
        return payload

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        # As an API server does: a watch from a version sends nothing that version already held.
        since_text = request.params.get("resourceVersion") or ""
        since = int(since_text) if since_text.isdigit() else 0
        async for item in super()._serve_watch(request):
            if isinstance(item, dict) and item.get("type") == "ADDED":
                version = str(item.get("object", {}).get("metadata", {}).get("resourceVersion", ""))
                if version.isdigit() and int(version) <= since:
                    continue
            yield item

    def _current(self, request: kmock.Request) -> Any:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    def _stamp(self, request: kmock.Request) -> None:
        action = request.action
        if action == kmock.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + secrets.token_hex(3)
            if request.namespace and not metadata.get("namespace"):
                metadata["namespace"] = request.namespace
            metadata.update(
                uid=str(uuid.uuid4()),
                resourceVersion=str(next(self._versions)),
                generation=1,
                creationTimestamp=_now(),
            )
        elif action == kmock.action.UPDATE and request.name is not None:
            current = self._current(request)
            if current is None:
                return
            version = str(next(self._versions))
            generation = int(current.get("metadata", {}).get("generation") or 1)
            if isinstance(request.data, dict):
                touches_spec = "spec" in request.data and request.subresource is None
                metadata = request.data.setdefault("metadata", {}) or {}
                request.data["metadata"] = metadata
                metadata["resourceVersion"] = version
                if touches_spec:
                    metadata["generation"] = generation + 1
            elif isinstance(request.data, list):
                # kopf guards its finalizer patches with this test; the emulator must refuse a stale one as 422.
                stored = current.get("metadata", {}).get("resourceVersion")
                for op in request.data:
                    guards_version = op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
                    if guards_version and op.get("value") != stored:
                        raise kmock.KubernetesError(status=422, reason="Invalid", message="resourceVersion changed")
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
                if any(str(op.get("path", "")).startswith("/spec") for op in request.data):
                    request.data.append({"op": "add", "path": "/metadata/generation", "value": generation + 1})


def declare_resources(emulator: kmock.KubernetesEmulator, *, meshes: bool) -> None:
    for resource in crds.CUSTOM_RESOURCES:
        names = crds.load_crd(resource)["spec"]["names"]
        emulator.resources[f"{crds.GROUP}/{crds.VERSION}/{resource.plural}"] = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names["singular"],
            namespaced=True,
            verbs=ALL_VERBS,
            shortnames=names.get("shortNames", ()),
            categories=names.get("categories", ()),
            subresources={"status"},
        )
    for path, kind, namespaced in CORE_RESOURCES:
        emulator.resources[path] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=ALL_VERBS)
    if meshes:
        for path, kind in MESH_RESOURCES:
            emulator.resources[path] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=ALL_VERBS)


class Cluster:
    """The test's ``kubectl``: writes and reads objects of the emulator over its HTTP API."""

    def __init__(self, *, emulator: MaxineEmulator, url: str, session: aiohttp.ClientSession) -> None:
        self.emulator = emulator
        self.url = url.rstrip("/")
        self.session = session

    @staticmethod
    def path(api_version: str, plural: str, *, namespace: str | None = NAMESPACE, name: str | None = None) -> str:
        root = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        path = root + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
        return path + (f"/{name}" if name else "")

    async def _call(self, method: str, path: str, *, body: Any = None, content_type: str | None = None) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            document = await response.json(content_type=None)
            assert response.status < 400, f"{method} {path} answered {response.status}: {document}"
            return document

    async def create(self, obj: dict[str, Any], *, plural: str) -> dict[str, Any]:
        namespace = obj.get("metadata", {}).get("namespace", NAMESPACE if obj["kind"] not in CLUSTER_KINDS else None)
        result: dict[str, Any] = await self._call(
            "POST", self.path(obj["apiVersion"], plural, namespace=namespace), body=obj
        )
        return result

    async def patch(self, api_version: str, plural: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        path = self.path(api_version, plural, name=name)
        result: dict[str, Any] = await self._call(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )
        return result

    async def delete(self, api_version: str, plural: str, name: str) -> None:
        await self._call("DELETE", self.path(api_version, plural, name=name))

    async def get(self, api_version: str, plural: str, name: str) -> dict[str, Any] | None:
        async with self.session.get(self.url + self.path(api_version, plural, name=name)) as response:
            if response.status == 404:
                return None
            document: dict[str, Any] = await response.json(content_type=None)
            return document

    async def get_cluster_object(self, api_version: str, plural: str, name: str) -> dict[str, Any] | None:
        async with self.session.get(self.url + self.path(api_version, plural, namespace=None, name=name)) as response:
            if response.status == 404:
                return None
            document: dict[str, Any] = await response.json(content_type=None)
            return document

    async def list(self, api_version: str, plural: str) -> list[dict[str, Any]]:
        document = await self._call("GET", self.path(api_version, plural))
        items: list[dict[str, Any]] = document.get("items") or []
        return items

    async def events(self) -> list[dict[str, Any]]:
        return await self.list("v1", "events")

    async def has_event(self, *, reason: str, type: str | None = None) -> None:
        """An Event with this reason (and type) exists; kopf posts Events in the background, so poll with it."""
        events = await self.events()
        found = [event for event in events if event.get("reason") == reason and type in (None, event.get("type"))]
        assert found, f"No {type or ''} Event {reason!r} among {[event.get('reason') for event in events]}"


class RegistryView:
    """Reads of the registry under the operator, over HTTP (aiohttp, so the test's loop keeps running)."""

    def __init__(self, *, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        try:
            async with self.session.get(self.base_url + path, params=params) as response:
                return response.status, await response.json(content_type=None)
        except aiohttp.ClientConnectionError:
            return 0, None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.post(self.base_url + path, json=body) as response:
            return response.status, await response.json(content_type=None)


async def eventually(check: Callable[[], Awaitable[None]], *, deadline: float = FOLLOW_DEADLINE) -> None:
    """Run the assertion ``check`` until it passes or ``deadline`` seconds are over (then its last failure shows)."""
    end = time.monotonic() + deadline
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() >= end:
                raise
        await asyncio.sleep(POLL_INTERVAL)


def load_example(name: str) -> dict[str, Any]:
    path = Path(crds.__file__).parent / "examples" / name
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """The emulated API server with every kind the operator uses, mesh kinds included."""
    emulator = MaxineEmulator()
    declare_resources(emulator, meshes=True)
    async with emulator, kmock.Server(emulator) as server, aiohttp.ClientSession() as session:
        yield Cluster(emulator=emulator, url=str(server.url), session=session)


@pytest.fixture
async def registry_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# Transports the operator does not use; off, so that parallel test runs never fight over their fixed ports.
REGISTRY_ENV = {"GRPC_ENABLED": "false", "UDP_ENABLED": "false", "MQTT_ENABLED": "false"}


@pytest.fixture
def start_registry(
    maxine_process: MaxineProcessFactory, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., MaxineProcess]:
    """Start a registry process (HTTP only) on a free or a given port: ``start_registry(port=...)``."""
    for name, value in REGISTRY_ENV.items():
        monkeypatch.setenv(name, value)

    def start(*, port: int | None = None) -> MaxineProcess:
        return maxine_process(port=port)

    return start


@pytest.fixture
def registry(start_registry: Callable[..., MaxineProcess]) -> MaxineProcess:
    return start_registry()


@pytest.fixture
def registry_view(registry: MaxineProcess, registry_session: aiohttp.ClientSession) -> RegistryView:
    return RegistryView(base_url=registry.base_url, session=registry_session)


OperatorRunner = Callable[..., Awaitable[OperatorConfig]]


class OperatorThread:
    """
    One operator in a thread of its own, with its own event loop.

    kopf treats every task started after it as its own and cancels what is left when it stops;
    in a loop of its own it cannot mistake the test's tasks (pytest-asyncio's fixtures) for them.
    """

    def __init__(self, *, config: OperatorConfig, login: Callable[..., kopf.ConnectionInfo]) -> None:
        self.config = config
        self.login = login
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="maxine-operator-under-test", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(
                run_operator(self.config, login=self.login, stop_flag=self.stop_flag, ready_flag=self.ready_flag)
            )
        except BaseException as exc:
            self.error = exc

    async def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + OPERATOR_START_TIMEOUT
        while not self.ready_flag.is_set():
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"The operator did not get ready: {self.error!r}")
            await asyncio.sleep(POLL_INTERVAL)

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, OPERATOR_STOP_TIMEOUT)
        assert not self.thread.is_alive(), "The operator did not stop in time."


@pytest.fixture
async def operator_runner(cluster: Cluster) -> AsyncIterator[OperatorRunner]:
    """
    Start the real operator against the emulator: ``await operator_runner(registry_url=..., **config)``.

    Test-sized defaults: short resync and retry delays, a fast health poll. Stopped at teardown.
    Cluster-wide: the emulator cannot serve the namespace list that kopf watches for namespaced operators.
    """
    running: list[OperatorThread] = []

    async def start(**overrides: Any) -> OperatorConfig:
        options: dict[str, Any] = {
            "resync_interval": 1.0,
            "health_interval": 0.2,
            "retry_delay": 0.3,
            "request_timeout": 2.0,
            "discovery_ttl": 0.5,
            "catalog_ttl": 3.0,
        }
        options.update(overrides)
        config = OperatorConfig(**options)

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=cluster.url, insecure=True)

        operator = OperatorThread(config=config, login=login)
        running.append(operator)
        await operator.start()

        # Ready is not yet watching: wait for the watch of every kind, so deadlines measure reactions, not start-up.
        async def watching_every_kind() -> None:
            watched = {
                request.resource.plural
                for request in list(cluster.emulator)
                if request.action == kmock.action.WATCH and request.resource is not None
            }
            assert {resource.plural for resource in crds.CUSTOM_RESOURCES} <= watched

        await eventually(watching_every_kind, deadline=OPERATOR_START_TIMEOUT)
        return config

    yield start

    for operator in running:
        await operator.stop()
    errors = [operator.error for operator in running if operator.error is not None]
    assert not errors, f"The operator failed: {errors!r}"
