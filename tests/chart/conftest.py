"""
Fixtures for the chart tests: the real Helm engine over ``charts/maxine``, and the value sets users install with.

``render`` renders the chart with the Helm library that the PyPI package ``helm-python-sdk`` ships
(Helm's own Go code behind a C ABI; no ``helm`` binary, no cluster) and returns the objects parsed,
as a ``Rendered`` that finds them by kind and name. A template's ``fail`` surfaces as
``helm_python.HelmRenderError`` with the chart's message, and values the schema refuses as
``helm_python.HelmValuesError``: tests assert on both.

``VALUE_SETS`` are the installations the README describes (HA with Redis, auth, injection with
either kind of certificate, an external Redis, one watched namespace, ...); the ``value_set``
fixture runs a test once per set. ``manifests_generator`` is ``manifests/generate.py`` loaded as a
module, so that the tests compare ``manifests/`` with what the chart renders now.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python
import pytest
import yaml

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "maxine"
OPERATOR_CRDS = ROOT / "operator" / "maxine_operator" / "crds"
OPERATOR_EXAMPLES = ROOT / "operator" / "maxine_operator" / "examples"
MANIFESTS = ROOT / "manifests"
RELEASE = "maxine"
NAMESPACE = "maxine"

# A key of the right length, and a bcrypt hash's shape; the chart only passes them on.
JWT_SECRET = "0123456789abcdef0123456789abcdef"
ADMIN_HASH = "$2b$12$C6UzMDM.H6dfI/f/IKcEeO5Yy9wO0bmdQ2NbQkSP3rYg0m4Bq/1nG"
OPERATOR_TOKEN = "operator.token.value"
REDIS_PASSWORD = "redis-password-value"
EXTERNAL_REDIS_URL = "rediss://user:secret@redis.example.internal:6380/0"

AUTH = {"enabled": True, "jwtSecret": JWT_SECRET, "adminPasswordHash": ADMIN_HASH, "operatorToken": OPERATOR_TOKEN}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ha-bundled-redis": {"replicaCount": 3, "redis": {"enabled": True, "password": REDIS_PASSWORD}},
    "ha-external-redis": {"replicaCount": 2, "redis": {"enabled": True, "external": {"url": EXTERNAL_REDIS_URL}}},
    "ha-existing-secrets": {
        "replicaCount": 2,
        "auth": {"enabled": True, "existingSecret": "my-maxine-auth"},
        "redis": {"enabled": True, "existingSecret": "my-redis", "external": {"existingSecret": "my-redis"}},
    },
    "auth": {"auth": AUTH},
    "injection": {"webhook": {"enabled": True}},
    "injection-cert-manager": {"webhook": {"enabled": True, "certManager": {"enabled": True}}},
    "injection-cert-manager-issuer": {
        "webhook": {
            "enabled": True,
            "failurePolicy": "Fail",
            "certManager": {"enabled": True, "issuerRef": {"name": "company-ca", "kind": "ClusterIssuer"}},
        }
    },
    "one-namespace": {"operator": {"watchNamespaces": ["shop"]}},
    "operator-ha-one-namespace": {"operator": {"replicaCount": 2, "watchNamespaces": ["shop", "billing"]}},
    "operator-ha": {"operator": {"replicaCount": 2}},
    "no-operator": {"operator": {"enabled": False}},
    "everything": {
        "replicaCount": 3,
        "auth": {**AUTH, "readonlyPasswordHash": ADMIN_HASH, "udpHmacKey": JWT_SECRET},
        "redis": {"enabled": True, "password": REDIS_PASSWORD},
        "operator": {"replicaCount": 2, "meshes": ["istio"], "verbose": True, "env": {"EXTRA": "1"}},
        "webhook": {"enabled": True},
        "networkPolicy": {"enabled": True, "registryFrom": [{"namespaceSelector": {}}]},
        "serviceMonitor": {"enabled": True, "bearerTokenSecret": {"name": "scraper", "key": "token"}},
        "registry": {"env": {"RATE_LIMIT_ENABLED": "true", "MAX_INSTANCES": 5000}},
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "service": {"type": "LoadBalancer"},
    },
}


@dataclasses.dataclass(frozen=True)
class Rendered:
    """The objects of one render, and the NOTES.txt shown after an install."""

    objects: tuple[dict[str, Any], ...]
    notes: str
    namespace: str = NAMESPACE

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.objects if item["kind"] == kind]

    def find(self, kind: str, name: str, *, namespace: str | None = "") -> dict[str, Any] | None:
        """The object of that kind and name; in the release's namespace by default, in any with None."""
        namespace = self.namespace if namespace == "" else namespace
        for item in self.of_kind(kind):
            metadata = item["metadata"]
            if metadata["name"] == name and (namespace is None or metadata.get("namespace") in (namespace, None)):
                return item
        return None

    def get(self, kind: str, name: str, *, namespace: str | None = "") -> dict[str, Any]:
        found = self.find(kind, name, namespace=namespace)
        names = [f"{item['kind']}/{item['metadata']['name']}" for item in self.objects]
        assert found is not None, f"No {kind}/{name} in the render; it holds {names}"
        return found

    def container(self, deployment: str, name: str) -> dict[str, Any]:
        pod = self.get("Deployment", deployment)["spec"]["template"]["spec"]
        return next(container for container in pod["containers"] if container["name"] == name)

    def env(self, deployment: str, name: str) -> dict[str, dict[str, Any]]:
        """A container's environment variables by name (each the whole EnvVar, value or valueFrom)."""
        return {variable["name"]: variable for variable in self.container(deployment, name).get("env", [])}


RenderFn = Callable[..., Rendered]


def parse_render(rendered: Mapping[str, str], *, namespace: str) -> Rendered:
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        objects.extend(document for document in yaml.safe_load_all(text) if document)
    notes = next((text for path, text in rendered.items() if path.endswith("NOTES.txt")), "")
    return Rendered(objects=tuple(objects), notes=notes, namespace=namespace)


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    # The Go library logs a template's fail() at INFO on stderr; the tests read the raised error instead.
    helm_python.disable_logging()
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart) -> RenderFn:
    """``render(values, namespace=..., release=...)``: the parsed objects of ``helm install --dry-run``."""

    def render_values(
        values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE, release: str = RELEASE
    ) -> Rendered:
        rendered = chart.render(
            values=dict(values) if values is not None else None, name=release, namespace=namespace, is_install=True
        )
        return parse_render(rendered, namespace=namespace)

    return render_values


@pytest.fixture(params=sorted(VALUE_SETS), ids=str)
def value_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """One of the installations in ``VALUE_SETS``, as (name, values)."""
    name: str = request.param
    return name, VALUE_SETS[name]


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    """The openAPIV3Schema of every kind the chart installs a CRD for, by (group, version, kind)."""
    schemas = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            for version in crd["spec"]["versions"]:
                key = (crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture(scope="session")
def manifests_generator() -> ModuleType:
    """``manifests/generate.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location("maxine_manifests_generate", MANIFESTS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The kind script, run without Docker: stand-ins for the tools it drives.

KIND_SCRIPT = ROOT / "e2e" / "kind" / "run.sh"
KIND_SCRIPT_TIMEOUT = 60.0
# What the script itself runs besides the tools it drives; linked into the stand-ins' folder so that
# the run sees nothing else of the machine (a real docker or kind on it is never reached).
SCRIPT_UTILITIES = ("bash", "cat", "dirname", "grep", "mktemp", "rm", "sleep")
DRIVEN_TOOLS = ("docker", "kind", "kubectl", "helm", "curl")
DEMO_POD_IP = "10.244.0.7"

# One stand-in for every driven tool: it appends its command line to $STUB_CALLS and answers the few
# questions the script asks as a healthy cluster would. $STUB_DISCOVER is what /discover answers.
STAND_IN = """#!{bash}
tool="${{0##*/}}"
printf '%s %s\\n' "$tool" "$*" >>"$STUB_CALLS"
case "$tool $*" in
    "kind get clusters"*) [[ -z "${{STUB_EXISTING_CLUSTER:-}}" ]] || printf '%s\\n' "$STUB_EXISTING_CLUSTER" ;;
    kubectl*"get pods"*".spec.containers"*) printf 'app maxine-sidecar' ;;
    kubectl*"get pods"*".status.podIP"*) printf '{pod_ip}' ;;
    kubectl*"port-forward"*) exec sleep 30 ;;
    kubectl*"get crd"*) exit 1 ;;
    curl*"/health") printf '{{"status":"ok"}}' ;;
    curl*"/discover"*) printf '%s' "$STUB_DISCOVER" ;;
esac
exit 0
"""


@dataclasses.dataclass(frozen=True)
class KindRun:
    """One run of e2e/kind/run.sh against the stand-ins: its exit code, output, and the tool calls in order."""

    returncode: int
    stdout: str
    stderr: str
    calls: list[str]

    def called(self, prefix: str) -> bool:
        return any(call.startswith(prefix) for call in self.calls)


KindRunFn = Callable[..., KindRun]


@pytest.fixture
def run_kind_script(tmp_path: Path) -> KindRunFn:
    """``run_kind_script(missing=(), **env)``: run the kind script with stand-in tools, some of them left out."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    def run(*, missing: tuple[str, ...] = (), **env: str) -> KindRun:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        bash = shutil.which("bash")
        assert bash is not None
        for utility in SCRIPT_UTILITIES:
            target = shutil.which(utility)
            assert target is not None, f"{utility} is needed to run the kind script"
            link = bin_dir / utility
            if not link.exists():
                link.symlink_to(target)
        stand_in = STAND_IN.format(bash=bash, pod_ip=DEMO_POD_IP)
        for tool in DRIVEN_TOOLS:
            path = bin_dir / tool
            path.unlink(missing_ok=True)
            if tool not in missing:
                path.write_text(stand_in)
                path.chmod(0o755)

        calls = tmp_path / "calls.log"
        calls.write_text("")
        environment = {
            "PATH": str(bin_dir),
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "STUB_CALLS": str(calls),
            "STUB_DISCOVER": f'{{"serviceName":"demo-echo","host":"{DEMO_POD_IP}","port":8000}}',
            **env,
        }
        finished = subprocess.run(
            [bash, str(KIND_SCRIPT)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=KIND_SCRIPT_TIMEOUT,
            check=False,
        )
        return KindRun(
            returncode=finished.returncode,
            stdout=finished.stdout,
            stderr=finished.stderr,
            calls=calls.read_text().splitlines(),
        )

    return run
