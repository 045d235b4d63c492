"""
Every object the chart renders, and every example, is one the API server would accept.

Kubernetes' own kinds are checked with ``kubernetes-validate`` in strict mode (an unknown field is
an error, as with ``kubectl apply --validate=strict``), against the oldest Kubernetes the chart
supports (``kubeVersion`` in Chart.yaml) and a recent one. The custom resources (the operator's
examples, kopf's peering objects) are checked against the ``openAPIV3Schema`` of their CRD with
``jsonschema``, with unknown fields refused as the API server's strict field validation would.
cert-manager's and the Prometheus Operator's kinds have no schema here; ``test_render.py`` checks
what those objects must say.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import CHART, OPERATOR_EXAMPLES, RenderFn

# The chart's kubeVersion floor, and the newest Kubernetes kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27.0", "1.35.0")
# Kinds of other projects' CRDs, with no schema available offline.
NO_SCHEMA_KINDS = frozenset({"Issuer", "Certificate", "ServiceMonitor"})


def strict(schema: dict[str, Any], *, top: bool = True) -> dict[str, Any]:
    """A CRD schema that refuses unknown fields, like the API server's strict field validation."""
    schema = copy.deepcopy(schema)
    properties = schema.get("properties")
    if isinstance(properties, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        if top:
            properties.setdefault("apiVersion", {"type": "string"})
            properties.setdefault("kind", {"type": "string"})
            properties.setdefault("metadata", {"type": "object"})
        schema.setdefault("additionalProperties", False)
        for name, child in properties.items():
            properties[name] = strict(child, top=False)
    if isinstance(schema.get("items"), dict):
        schema["items"] = strict(schema["items"], top=False)
    return schema


def custom_resource_errors(resource: dict[str, Any], schemas: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    group, _, version = resource["apiVersion"].rpartition("/")
    schema = schemas[(group, version, resource["kind"])]
    validator = jsonschema.Draft7Validator(strict(schema), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(resource)]


def examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(OPERATOR_EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found.append((path.name, document))
    return found


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_for_kubernetes(
    render: RenderFn,
    value_set: tuple[str, dict[str, Any]],
    kubernetes_version: str,
    crd_schemas: dict[tuple[str, str, str], dict[str, Any]],
) -> None:
    rendered = render(value_set[1])

    for item in rendered.objects:
        name = f"{item['kind']}/{item['metadata']['name']}"
        group = item["apiVersion"].rpartition("/")[0]
        if item["kind"] in NO_SCHEMA_KINDS:
            continue
        if group == "kopf.dev":
            assert custom_resource_errors(item, crd_schemas) == [], name
            continue
        try:
            kubernetes_validate.validate(item, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is not valid for Kubernetes {kubernetes_version}: {exc.message}")


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_the_charts_crds_are_valid_custom_resource_definitions(kubernetes_version: str) -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            kubernetes_validate.validate(crd, kubernetes_version, strict=True)


@pytest.mark.parametrize(
    ("file_name", "resource"), examples(), ids=[f"{name}:{doc['kind']}" for name, doc in examples()]
)
def test_every_example_is_valid_against_its_schema(
    file_name: str, resource: dict[str, Any], crd_schemas: dict[tuple[str, str, str], dict[str, Any]]
) -> None:
    if resource["apiVersion"].startswith("maxine.io/"):
        assert custom_resource_errors(resource, crd_schemas) == [], file_name
    else:
        kubernetes_validate.validate(resource, KUBERNETES_VERSIONS[-1], strict=True)


def test_a_misspelled_or_wrongly_typed_field_in_a_custom_resource_is_caught(
    crd_schemas: dict[tuple[str, str, str], dict[str, Any]],
) -> None:
    split = next(resource for _, resource in examples() if resource["kind"] == "MaxineTrafficSplit")

    misspelled = copy.deepcopy(split)
    misspelled["spec"]["split"] = misspelled["spec"].pop("splits")
    wrong_type = copy.deepcopy(split)
    wrong_type["spec"]["splits"][0]["weight"] = "ninety"

    assert any("split" in error for error in custom_resource_errors(misspelled, crd_schemas))
    assert any("weight" in error for error in custom_resource_errors(wrong_type, crd_schemas))


def test_the_examples_cover_every_custom_resource_kind(crd_schemas: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    maxine_kinds = {kind for group, _, kind in crd_schemas if group == "maxine.io"}

    assert {
        resource["kind"] for _, resource in examples() if resource["apiVersion"].startswith("maxine.io/")
    } == maxine_kinds


def test_the_chart_ships_no_file_of_other_kinds_in_crds() -> None:
    for path in sorted(Path(CHART / "crds").iterdir()):
        kinds = {document["kind"] for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document}
        assert kinds == {"CustomResourceDefinition"}, path.name
