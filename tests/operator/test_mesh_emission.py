"""Mesh objects for splits and intentions: created with owner references, valid against the upstream CRDs."""

from __future__ import annotations

from typing import Any

from maxine_operator import crds
from tests.conftest import MaxineProcess
from tests.operator.conftest import SETTLE_DEADLINE, Cluster, CrdValidator, OperatorRunner, eventually, load_example

API = crds.API_VERSION
ALL_MESHES = ("istio", "linkerd", "gateway", "smi")
MANAGED_BY = {"app.kubernetes.io/managed-by": "maxine-operator"}

# What a 90/10 split of "orders" becomes, per mesh: (apiVersion, plural, name).
SPLIT_OBJECTS = (
    ("networking.istio.io/v1", "virtualservices", "orders"),
    ("networking.istio.io/v1", "destinationrules", "orders"),
    ("linkerd.io/v1alpha2", "serviceprofiles", "orders.shop.svc.cluster.local"),
    ("policy.linkerd.io/v1beta3", "httproutes", "orders"),
    ("gateway.networking.k8s.io/v1", "httproutes", "orders"),
    ("split.smi-spec.io/v1alpha4", "trafficsplits", "orders"),
)


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(ref.get("uid") == owner["metadata"]["uid"] for ref in obj["metadata"].get("ownerReferences", []))


def as_submitted(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without what the API server adds, as the upstream schemas see a submission."""
    kept = ("name", "namespace", "labels", "annotations", "ownerReferences")
    metadata = {key: value for key, value in obj["metadata"].items() if key in kept}
    return {**obj, "metadata": metadata}


async def test_a_split_becomes_objects_of_every_installed_mesh(
    registry: MaxineProcess, cluster: Cluster, operator_runner: OperatorRunner, crd_validator: CrdValidator
) -> None:
    await operator_runner(registry_url=registry.base_url, meshes=ALL_MESHES)
    split = await cluster.create(load_example("trafficsplit.yaml"), plural="maxinetrafficsplits")

    async def all_emitted() -> None:
        for api_version, plural, name in SPLIT_OBJECTS:
            obj = await cluster.get(api_version, plural, name)
            assert obj is not None, f"{plural}/{name} was not created"

    await eventually(all_emitted, deadline=SETTLE_DEADLINE)

    for api_version, plural, name in SPLIT_OBJECTS:
        obj = await cluster.get(api_version, plural, name)
        assert obj is not None
        assert owned_by(obj, split), f"{plural}/{name} has no owner reference to the split"
        assert obj["metadata"]["labels"].items() >= MANAGED_BY.items()
        crd_validator(as_submitted(obj))

    virtual_service = await cluster.get("networking.istio.io/v1", "virtualservices", "orders")
    assert virtual_service is not None
    assert sorted(route["weight"] for route in virtual_service["spec"]["http"][0]["route"]) == [10, 90]

    async def status_lists_them() -> None:
        current = await cluster.get(API, "maxinetrafficsplits", "orders-canary")
        assert current is not None
        assert len(current["status"].get("meshResources", [])) == len(SPLIT_OBJECTS)

    await eventually(status_lists_them, deadline=SETTLE_DEADLINE)


async def test_changing_a_split_patches_its_mesh_objects(
    registry: MaxineProcess, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url, meshes=("smi",))
    await cluster.create(load_example("trafficsplit.yaml"), plural="maxinetrafficsplits")

    await eventually(lambda: _weights(cluster, [10, 90]), deadline=SETTLE_DEADLINE)

    splits = [{"version": "1.0", "weight": 0}, {"version": "2.0", "weight": 100}]
    await cluster.patch(API, "maxinetrafficsplits", "orders-canary", {"spec": {"splits": splits}})

    await eventually(lambda: _weights(cluster, [100]), deadline=SETTLE_DEADLINE)


async def _weights(cluster: Cluster, expected: list[int]) -> None:
    """The SMI TrafficSplit of orders has backends with these weights (in any order)."""
    traffic_split = await cluster.get("split.smi-spec.io/v1alpha4", "trafficsplits", "orders")
    assert traffic_split is not None
    assert sorted(backend["weight"] for backend in traffic_split["spec"]["backends"]) == expected


async def test_only_enabled_meshes_get_objects(
    registry: MaxineProcess, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url, meshes=("gateway",))
    await cluster.create(load_example("trafficsplit.yaml"), plural="maxinetrafficsplits")

    async def route_emitted() -> None:
        assert await cluster.get("gateway.networking.k8s.io/v1", "httproutes", "orders") is not None

    await eventually(route_emitted, deadline=SETTLE_DEADLINE)
    assert await cluster.list("networking.istio.io/v1", "virtualservices") == []
    assert await cluster.list("split.smi-spec.io/v1alpha4", "trafficsplits") == []


async def test_intentions_of_a_destination_become_one_authorization_policy(
    registry: MaxineProcess, cluster: Cluster, operator_runner: OperatorRunner, crd_validator: CrdValidator
) -> None:
    await operator_runner(registry_url=registry.base_url, meshes=("istio", "linkerd"))
    service = load_example("service-catalog.yaml")
    service["metadata"]["annotations"] = {}
    await cluster.create(service, plural="services")
    allow_web = await cluster.create(load_example("intention.yaml"), plural="maxineintentions")
    deny_all = {
        "apiVersion": API,
        "kind": "MaxineIntention",
        "metadata": {"name": "nobody-to-orders", "namespace": "shop"},
        "spec": {"source": "*", "destination": "orders", "action": "deny"},
    }
    deny_all = await cluster.create(deny_all, plural="maxineintentions")

    async def policy_allows_only_web() -> None:
        policy = await cluster.get("security.istio.io/v1", "authorizationpolicies", "orders")
        assert policy is not None
        assert policy["spec"]["action"] == "ALLOW"
        principals = policy["spec"]["rules"][0]["from"][0]["source"]["principals"]
        assert principals == ["cluster.local/ns/shop/sa/web"]
        assert owned_by(policy, allow_web) and owned_by(policy, deny_all)

    await eventually(policy_allows_only_web, deadline=SETTLE_DEADLINE)
    policy = await cluster.get("security.istio.io/v1", "authorizationpolicies", "orders")
    assert policy is not None
    crd_validator(as_submitted(policy))

    async def linkerd_server_emitted() -> None:
        server = await cluster.get("policy.linkerd.io/v1beta3", "servers", "orders-8080")
        assert server is not None
        crd_validator(as_submitted(server))

    await eventually(linkerd_server_emitted, deadline=SETTLE_DEADLINE)

    # Without the deny-all rule, everyone may call: the policy goes.
    await cluster.delete(API, "maxineintentions", "nobody-to-orders")

    async def policy_removed() -> None:
        assert await cluster.get("security.istio.io/v1", "authorizationpolicies", "orders") is None

    await eventually(policy_removed, deadline=SETTLE_DEADLINE)
