"""
The shipped CRDs: structural schemas that take the examples and refuse broken resources.

``jsonschema`` checks the OpenAPI part (types, patterns, enums, required fields, bounds), made
strict so that a misspelled field fails as it does under the API server's strict field
validation. The CEL rules (``x-kubernetes-validations``) are compiled and evaluated with
``cel-python``; the Kubernetes list library's ``sum()`` is added to it, since that is a Kubernetes
extension, not core CEL.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import pytest
from celpy import celtypes

from maxine_operator import crds
from tests.mesh.conftest import strict
from tests.operator.conftest import load_example

EXAMPLES = {
    crds.ACL: "acl.yaml",
    crds.INTENTION: "intention.yaml",
    crds.TRAFFIC_SPLIT: "trafficsplit.yaml",
    crds.SERVICE_CONFIG: "serviceconfig.yaml",
    crds.DEPENDENCY: "dependency.yaml",
}


def validator(resource: crds.CustomResource) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(copy.deepcopy(crds.openapi_schema(resource))))


def cel_rules(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every CEL rule of the schema, with the property path of the value it applies to."""
    for rule in schema.get("x-kubernetes-validations", ()):
        yield path, rule
    for name, child in (schema.get("properties") or {}).items():
        yield from cel_rules(child, (*path, name))


def k8s_sum(values: celtypes.ListType) -> Any:
    total: Any = celtypes.IntType(0)
    for value in values:
        total = total + value
    return total


def cel_errors(resource: crds.CustomResource, document: dict[str, Any]) -> list[str]:
    """The messages of the CEL rules this document breaks (a rule on an absent value is not evaluated)."""
    environment = celpy.Environment()
    broken = []
    for path, rule in cel_rules(crds.openapi_schema(resource)):
        value: Any = document
        for name in path:
            value = value.get(name) if isinstance(value, dict) else None
        if value is None:
            continue
        program = environment.program(environment.compile(rule["rule"]), functions={"sum": k8s_sum})
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            broken.append(rule["message"])
    return broken


def schema_errors(resource: crds.CustomResource, document: dict[str, Any]) -> list[str]:
    return [error.message for error in validator(resource).iter_errors(document)]


def structural_problems(schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """What makes a schema non-structural, in the API server's rules that matter for these CRDs."""
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string")
    if "type" not in schema and not preserve:
        yield f"{path or '/'}: no type"
    if "properties" in schema and "additionalProperties" in schema:
        yield f"{path}: properties and additionalProperties together"
    for name in schema.get("required", ()):
        if name not in schema.get("properties", {}):
            yield f"{path}: required {name!r} is not a property"
    if schema.get("type") == "array" and "items" not in schema:
        yield f"{path}: an array without items"
    if schema.get("x-kubernetes-list-type") == "map":
        item = schema.get("items", {})
        for key in schema.get("x-kubernetes-list-map-keys", ()):
            if key not in item.get("required", ()):
                yield f"{path}: list-map key {key!r} is not required in its items"
    for name, child in (schema.get("properties") or {}).items():
        yield from structural_problems(child, f"{path}/{name}")
    if isinstance(schema.get("items"), dict):
        yield from structural_problems(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from structural_problems(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("resource", crds.CUSTOM_RESOURCES, ids=lambda resource: resource.kind)
def test_each_crd_is_structural_with_status_printer_columns_and_the_shared_category(
    resource: crds.CustomResource,
) -> None:
    crd = crds.load_crd(resource)

    assert crd["metadata"]["name"] == resource.crd_name
    spec = crd["spec"]
    assert spec["group"] == crds.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == resource.kind and spec["names"]["plural"] == resource.plural
    assert spec["names"]["shortNames"] and "maxine" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == crds.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"] for column in version["additionalPrinterColumns"]}
    assert {"Synced", "Ready", "Age"} <= columns
    assert list(structural_problems(version["schema"]["openAPIV3Schema"])) == []


@pytest.mark.parametrize("resource", crds.CUSTOM_RESOURCES, ids=lambda resource: resource.kind)
def test_each_example_is_valid(resource: crds.CustomResource) -> None:
    example = load_example(EXAMPLES[resource])

    assert example["apiVersion"] == crds.API_VERSION and example["kind"] == resource.kind
    assert schema_errors(resource, example) == []
    assert cel_errors(resource, example) == []


@pytest.mark.parametrize("resource", crds.CUSTOM_RESOURCES, ids=lambda resource: resource.kind)
def test_every_cel_rule_compiles_and_has_a_message(resource: crds.CustomResource) -> None:
    rules = list(cel_rules(crds.openapi_schema(resource)))
    environment = celpy.Environment()

    for _, rule in rules:
        assert rule["message"]
        environment.compile(rule["rule"])


def broken(name: str, **spec_changes: Any) -> tuple[str, dict[str, Any]]:
    document = load_example(name)
    for key, value in spec_changes.items():
        if value is None:
            document["spec"].pop(key, None)
        else:
            document["spec"][key] = value
    return name, document


SCHEMA_REJECTS = {
    "service name with a space": (crds.ACL, broken("acl.yaml", serviceName="pay ments")),
    "service name too long": (crds.ACL, broken("acl.yaml", serviceName="a" * 129)),
    "caller with a slash": (crds.ACL, broken("acl.yaml", allow=["team/checkout"])),
    "acl without a service": (crds.ACL, broken("acl.yaml", serviceName=None)),
    "unknown field": (crds.ACL, broken("acl.yaml", alow=["checkout"])),
    "action neither allow nor deny": (crds.INTENTION, broken("intention.yaml", action="maybe")),
    "intention without destination": (crds.INTENTION, broken("intention.yaml", destination=None)),
    "weight above 100": (crds.TRAFFIC_SPLIT, broken("trafficsplit.yaml", splits=[{"version": "1.0", "weight": 120}])),
    "no splits": (crds.TRAFFIC_SPLIT, broken("trafficsplit.yaml", splits=[])),
    "version that is no label value": (
        crds.TRAFFIC_SPLIT,
        broken("trafficsplit.yaml", splits=[{"version": "1.0+build/7", "weight": 100}]),
    ),
    "port out of range": (crds.TRAFFIC_SPLIT, broken("trafficsplit.yaml", port=70000)),
    "config without values": (crds.SERVICE_CONFIG, broken("serviceconfig.yaml", values={})),
    "config scope with a slash": (crds.SERVICE_CONFIG, broken("serviceconfig.yaml", scope={"namespace": "a/b"})),
    "dependency without targets": (crds.DEPENDENCY, broken("dependency.yaml", dependsOn=[])),
}

CEL_REJECTS = {
    "weights summing to 90": (
        crds.TRAFFIC_SPLIT,
        broken("trafficsplit.yaml", splits=[{"version": "1.0", "weight": 60}, {"version": "2.0", "weight": 30}]),
        "the weights of the splits must sum to 100",
    ),
    "acl with neither list": (
        crds.ACL,
        broken("acl.yaml", allow=None, deny=None),
        "an ACL needs an allow list, a deny list, or both",
    ),
    "config key with a space": (
        crds.SERVICE_CONFIG,
        broken("serviceconfig.yaml", values={"max batch": 1}),
        "keys are 1 to 256 letters, digits, '.', '_', '-', ':' and '/'",
    ),
    "service depending on itself": (
        crds.DEPENDENCY,
        broken("dependency.yaml", dependsOn=["orders", "payments"]),
        "a service cannot depend on itself",
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_REJECTS))
def test_the_schema_refuses_broken_resources(case: str) -> None:
    resource, (_, document) = SCHEMA_REJECTS[case]

    assert schema_errors(resource, document), f"{case}: accepted"


@pytest.mark.parametrize("case", sorted(CEL_REJECTS))
def test_the_cel_rules_refuse_what_the_schema_cannot_say(case: str) -> None:
    resource, (_, document), message = CEL_REJECTS[case]

    assert schema_errors(resource, document) == [], "the schema alone should accept it"
    assert cel_errors(resource, document) == [message]


def test_weights_summing_to_100_over_many_versions_pass_the_cel_rule() -> None:
    splits = [{"version": f"v{index}", "weight": 1} for index in range(100)]
    _, document = broken("trafficsplit.yaml", splits=splits)

    assert schema_errors(crds.TRAFFIC_SPLIT, document) == []
    assert cel_errors(crds.TRAFFIC_SPLIT, document) == []
