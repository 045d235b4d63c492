"""
The copies stay in step with their sources: the chart's CRDs with the operator's, manifests/ with the chart.

The operator's ``crds/`` folder is the one source of truth for the CRDs (its own kinds, and kopf's
peering kinds for several operator replicas); the chart carries copies, and ``manifests/`` is
generated from the chart by ``manifests/generate.py``. A change to either source without
regenerating fails here, with the command that fixes it.
"""

from __future__ import annotations

from types import ModuleType

import yaml

from tests.chart.conftest import CHART, MANIFESTS, NAMESPACE, OPERATOR_CRDS, RenderFn

KOPF_PEERING = "kopf-peering.yaml"


def test_the_charts_crds_are_the_operators_byte_for_byte() -> None:
    operator_files = {path.name: path.read_bytes() for path in OPERATOR_CRDS.glob("*.yaml")}
    chart_files = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}

    assert sorted(chart_files) == sorted(operator_files), (
        "copy operator/maxine_operator/crds/*.yaml to charts/maxine/crds/"
    )
    for name, content in operator_files.items():
        assert chart_files[name] == content, f"charts/maxine/crds/{name} differs from the operator's; copy it again"


def test_the_kopf_peering_kinds_are_the_ones_kopf_uses() -> None:
    crds = list(yaml.safe_load_all((CHART / "crds" / KOPF_PEERING).read_text(encoding="utf-8")))

    served = {(crd["spec"]["group"], crd["spec"]["names"]["plural"], crd["spec"]["scope"]) for crd in crds}
    assert served == {("kopf.dev", "clusterkopfpeerings", "Cluster"), ("kopf.dev", "kopfpeerings", "Namespaced")}


def test_manifests_are_what_the_chart_and_examples_make_now(manifests_generator: ModuleType) -> None:
    stale = manifests_generator.stale_files()

    assert stale == [], f"manifests/{', manifests/'.join(stale)} out of date; run `python manifests/generate.py`"


def test_the_plain_bundle_holds_exactly_the_default_install(manifests_generator: ModuleType, render: RenderFn) -> None:
    bundled = [document for document in yaml.safe_load_all((MANIFESTS / "maxine.yaml").read_text()) if document]
    namespaces = [item for item in bundled if item["kind"] == "Namespace"]
    default = render()

    assert [item["metadata"]["name"] for item in namespaces] == [NAMESPACE]
    key = lambda item: (item["kind"], item["metadata"]["name"])  # noqa: E731
    assert sorted((item for item in bundled if item["kind"] != "Namespace"), key=key) == sorted(
        default.objects, key=key
    )


def test_the_bundle_creates_what_others_use_first(manifests_generator: ModuleType) -> None:
    kinds = [document["kind"] for document in yaml.safe_load_all((MANIFESTS / "maxine.yaml").read_text()) if document]

    assert kinds[0] == "Namespace"
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
    assert kinds.index("ClusterRoleBinding") < kinds.index("Deployment")


def test_the_bundles_crds_and_examples_match_their_sources(manifests_generator: ModuleType) -> None:
    bundled_crds = [doc for doc in yaml.safe_load_all((MANIFESTS / "crds.yaml").read_text()) if doc]
    chart_crds = [
        doc for path in sorted((CHART / "crds").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]
    assert bundled_crds == chart_crds

    examples = [doc for doc in yaml.safe_load_all((MANIFESTS / "examples.yaml").read_text()) if doc]
    namespaces = {doc["metadata"]["name"] for doc in examples if doc["kind"] == "Namespace"}
    resources = [doc for doc in examples if doc["kind"] != "Namespace"]
    assert {doc["metadata"]["namespace"] for doc in resources} <= namespaces
    assert all(doc["apiVersion"].startswith("maxine.io/") for doc in resources)


def test_the_manifests_readme_applies_every_generated_file(manifests_generator: ModuleType) -> None:
    readme = (MANIFESTS / "README.md").read_text()

    for name in manifests_generator.bundle():
        assert f"kubectl apply -f manifests/{name}" in readme, name
