"""
Every Kubernetes object Maxine generates is valid against the upstream CRD of its kind.

The schemas are the real ones (``shared/schemas``), made strict, so a misspelt or misplaced field
fails here as it would fail ``kubectl apply --validate=strict``. Each sample registry state runs
through every generator.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from maxine_registry.mesh import KubernetesOptions, gateway_api_resources, istio_resources, linkerd_resources
from maxine_registry.mesh.model import MeshState
from maxine_registry.mesh.smi import SMI_VERSIONS, smi_resources
from tests.mesh.conftest import CrdValidator, ipv6, split_100

# Istio reads durations as protobuf does: seconds with an optional fraction, then "s".
PROTOBUF_DURATION = re.compile(r"\d+(\.\d{1,9})?s")
GO_DURATION = re.compile(r"(\d+(h|m|s|ms))+")

OPTIONS = [KubernetesOptions(), KubernetesOptions(namespace="shop-prod", trust_domain="mesh.example")]


def generated(state: MeshState, options: KubernetesOptions) -> list[dict[str, Any]]:
    resources = (
        istio_resources(state, options) + linkerd_resources(state, options) + gateway_api_resources(state, options)
    )
    for version in SMI_VERSIONS:
        resources += smi_resources(state, options, version=version)
    return resources


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "namespaced"])
def test_every_generated_object_is_valid_against_its_crd(
    state: MeshState, options: KubernetesOptions, crd_validator: CrdValidator
) -> None:
    resources = generated(state, options)

    assert resources, "every sample state yields some objects"
    for resource in resources:
        crd_validator(resource)
        assert resource["metadata"]["namespace"] == options.namespace


def test_names_are_unique_per_kind(state: MeshState) -> None:
    resources = generated(state, KubernetesOptions())

    names = Counter((item["apiVersion"], item["kind"], item["metadata"]["name"]) for item in resources)

    assert [key for key, count in names.items() if count > 1] == []


def test_durations_are_written_as_each_mesh_parses_them(state: MeshState) -> None:
    options = KubernetesOptions()

    for resource in istio_resources(state, options):
        for route in resource["spec"].get("http", []):
            for duration in [route.get("timeout"), route.get("retries", {}).get("perTryTimeout")]:
                assert duration is None or PROTOBUF_DURATION.fullmatch(duration), duration
    for resource in linkerd_resources(state, options):
        for route in resource["spec"].get("routes", []):
            assert "timeout" not in route or GO_DURATION.fullmatch(route["timeout"])
        for key, value in resource["metadata"]["annotations"].items():
            if key.endswith("/timeout"):
                assert GO_DURATION.fullmatch(value)


def test_the_split_of_a_hundred_versions_keeps_within_each_kinds_limits(crd_validator: CrdValidator) -> None:
    state = split_100()
    resources = generated(state, KubernetesOptions())
    kinds = Counter(item["kind"] for item in resources)

    for resource in resources:
        crd_validator(resource)
    assert kinds["TrafficSplit"] == len(SMI_VERSIONS)
    assert kinds["HTTPRoute"] == 2  # Gateway API's and Linkerd's, each at the CRD's 16 backends
    split = next(item for item in resources if item["kind"] == "TrafficSplit")
    assert sum(backend["weight"] for backend in split["spec"]["backends"]) == 100


def test_the_schema_check_refuses_a_misspelt_field(crd_validator: CrdValidator) -> None:
    route = istio_resources(ipv6(), KubernetesOptions())[0]
    route["spec"]["http"][0]["retrys"] = {"attempts": 2}

    with pytest.raises(AssertionError, match="retrys"):
        crd_validator(route)
