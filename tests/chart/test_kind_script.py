"""
e2e/kind/run.sh, checked without Docker: it parses, shellcheck is happy, and it drives the tools in order.

The script cannot run for real here (no Docker engine). These tests run it against stand-ins for
docker, kind, kubectl, helm and curl that record their command lines and answer as a healthy
cluster would (``run_kind_script`` in conftest.py), and check what a user relies on: the steps
happen in order, a failure says what went wrong, and a cluster the script made is always deleted.
"""

from __future__ import annotations

import shutil
import subprocess

from tests.chart.conftest import KIND_SCRIPT, KindRunFn
from tests.conftest import require_binary


def test_the_script_parses() -> None:
    bash = shutil.which("bash")
    assert bash is not None

    checked = subprocess.run([bash, "-n", str(KIND_SCRIPT)], capture_output=True, text=True, check=False)

    assert checked.returncode == 0, checked.stderr


def test_shellcheck_finds_nothing() -> None:
    shellcheck = require_binary("shellcheck", hint="install it with `apt-get install shellcheck`.")

    checked = subprocess.run([shellcheck, str(KIND_SCRIPT)], capture_output=True, text=True, check=False)

    assert checked.returncode == 0, checked.stdout


def test_a_passing_run_installs_checks_discovery_and_deletes_the_cluster(run_kind_script: KindRunFn) -> None:
    run = run_kind_script()

    assert run.returncode == 0, run.stderr
    assert "==> All checks passed" in run.stdout
    steps = [
        "kind create cluster --name maxine-e2e",
        "docker build --tag maxine:e2e",
        "kind load docker-image maxine:e2e --name maxine-e2e",
        "helm install maxine",
        "kubectl --context kind-maxine-e2e apply -f",
        "kubectl --context kind-maxine-e2e --namespace shop wait",
        "curl -fsS --max-time 2 http://127.0.0.1:18080/discover?serviceName=demo-echo",
        "kind delete cluster --name maxine-e2e",
    ]
    positions = [next(index for index, call in enumerate(run.calls) if call.startswith(step)) for step in steps]
    assert positions == sorted(positions), run.calls
    # The port-forward runs in the background, so its place among the curl polls is not fixed;
    # it must have started after the install and before the cluster went away.
    forward = next(
        index
        for index, call in enumerate(run.calls)
        if call.startswith(
            "kubectl --context kind-maxine-e2e --namespace maxine port-forward service/maxine 18080:8080"
        )
    )
    assert positions[3] < forward < positions[-1], run.calls
    install = next(call for call in run.calls if call.startswith("helm install"))
    for setting in ("image.repository=maxine", "image.tag=e2e", "image.pullPolicy=Never", "webhook.enabled=true"):
        assert setting in install
    assert "--kube-context kind-maxine-e2e" in install
    assert any(call.endswith("manifests/examples.yaml") for call in run.calls)
    assert "demo pod IP: 10.244.0.7" in run.stdout


def test_every_kubectl_call_names_the_kind_cluster(run_kind_script: KindRunFn) -> None:
    run = run_kind_script()

    kubectl_calls = [call for call in run.calls if call.startswith("kubectl ")]
    assert kubectl_calls
    assert all(call.startswith("kubectl --context kind-maxine-e2e ") for call in kubectl_calls)


def test_a_failed_check_says_what_it_waited_for_and_still_deletes_the_cluster(run_kind_script: KindRunFn) -> None:
    run = run_kind_script(STUB_DISCOVER='{"error":"no healthy instance","code":"no_instances"}', MAXINE_E2E_WAIT="3")

    assert run.returncode == 1
    assert "FAILED: gave up after 3s waiting for the registry to discover demo-echo at 10.244.0.7" in run.stderr
    assert "==> Diagnostics" in run.stdout
    assert run.calls[-1] == "kind delete cluster --name maxine-e2e"


def test_the_cluster_can_be_kept_for_a_look_around(run_kind_script: KindRunFn) -> None:
    run = run_kind_script(MAXINE_KEEP_CLUSTER="true")

    assert run.returncode == 0
    assert not run.called("kind delete")
    assert "kind delete cluster --name maxine-e2e" in run.stdout


def test_an_existing_cluster_of_that_name_is_refused_and_left_alone(run_kind_script: KindRunFn) -> None:
    run = run_kind_script(STUB_EXISTING_CLUSTER="maxine-e2e")

    assert run.returncode == 1
    assert "a kind cluster named maxine-e2e exists already" in run.stderr
    assert not run.called("kind create") and not run.called("kind delete")


def test_a_missing_tool_is_named_before_anything_happens(run_kind_script: KindRunFn) -> None:
    run = run_kind_script(missing=("kind",))

    assert run.returncode == 1
    assert "FAILED: kind is not installed" in run.stderr
    assert not any(call.startswith(("kind ", "docker build", "helm ")) for call in run.calls)
