"""
values.schema.json and helm lint: a typo or a wrong type in values stops ``helm install`` with a message naming the key.

The schema is enforced by the Helm engine itself (as in ``helm install`` and ``helm lint``), so
these tests pass the values to the engine and read its answer.
"""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.chart.conftest import CHART, VALUE_SETS, RenderFn

# Warnings (2) and errors (3) fail; info (1), such as "icon is recommended", does not.
LINT_WARNING = 2

BAD_VALUES = [
    ({"replicaCount": 0}, "/replicaCount"),
    ({"replicaCount": "3"}, "/replicaCount"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"registry": {"logFormat": "xml"}}, "/registry/logFormat"),
    ({"registry": {"port": 70000}}, "/registry/port"),
    ({"registry": {"heartbeatTimeout": 0}}, "/registry/heartbeatTimeout"),
    ({"registry": {"env": {"BAD-NAME": "1"}}}, "BAD-NAME"),
    ({"service": {"type": "Ingress"}}, "/service/type"),
    ({"auth": {"enabled": "yes"}}, "/auth/enabled"),
    ({"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url"),
    ({"redis": {"password": 'say "hi"'}}, "/redis/password"),
    ({"operator": {"meshes": ["consul"]}}, "/operator/meshes/0"),
    ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "/operator/watchNamespaces/0"),
    ({"webhook": {"failurePolicy": "Retry"}}, "/webhook/failurePolicy"),
    ({"webhook": {"timeoutSeconds": 60}}, "/webhook/timeoutSeconds"),
    (
        {"webhook": {"certManager": {"issuerRef": {"name": "ca", "kind": "Vault"}}}},
        "/webhook/certManager/issuerRef/kind",
    ),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    ({"replicas": 3}, "replicas"),
    ({"registry": {"grpcPort": 50051}}, "grpcPort"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[where for _, where in BAD_VALUES])
def test_bad_values_are_refused_with_the_key_named(render: RenderFn, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render(values)

    assert where in str(refused.value)


def test_every_documented_installation_passes_the_schema(
    chart: helm_python.Chart, value_set: tuple[str, dict[str, Any]]
) -> None:
    chart.validate_schema(value_set[1])


def test_the_defaults_pass_the_schema(chart: helm_python.Chart) -> None:
    chart.validate_schema(chart.values)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_finds_nothing_to_warn_about(name: str) -> None:
    report = helm_python.lint(CHART, VALUE_SETS[name], strict=True, namespace="maxine", kube_version="v1.27.0")

    problems = [message for message in report["messages"] if message["severity"] >= LINT_WARNING]
    assert report["errors"] == [] and problems == [], report
    assert report["total_charts_linted"] == 1
