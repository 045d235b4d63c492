"""Each custom resource, applied, changed and deleted, with the registry following through the real operator."""

from __future__ import annotations

from typing import Any

from maxine_operator import crds
from maxine_operator.status import condition_status
from tests.conftest import MaxineProcess
from tests.operator.conftest import Cluster, OperatorRunner, RegistryView, eventually, load_example

API = crds.API_VERSION
SERVICEOPS = "/api/maxine/serviceops"


async def gone(cluster: Cluster, plural: str, name: str) -> None:
    assert await cluster.get(API, plural, name) is None, f"{plural}/{name} still exists"


async def test_an_acl_is_pushed_changed_and_removed(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)

    await cluster.create(load_example("acl.yaml"), plural="maxineacls")

    async def acl_is(expected: dict[str, Any]) -> None:
        status, document = await registry_view.get(f"{SERVICEOPS}/acl/payments")
        assert status == 200, document
        assert {key: document[key] for key in expected} == expected

    await eventually(lambda: acl_is({"allow": ["checkout", "admin"], "deny": ["legacy-client"]}))

    await cluster.patch(API, "maxineacls", "payments", {"spec": {"allow": ["checkout"], "deny": None}})
    await eventually(lambda: acl_is({"allow": ["checkout"], "deny": []}))

    await cluster.delete(API, "maxineacls", "payments")

    async def acl_is_gone() -> None:
        status, _ = await registry_view.get(f"{SERVICEOPS}/acl/payments")
        assert status == 404

    await eventually(acl_is_gone)
    await eventually(lambda: gone(cluster, "maxineacls", "payments"))


async def test_renaming_the_service_of_an_acl_moves_it(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")

    async def acl_of(service: str, expected_status: int) -> None:
        status, document = await registry_view.get(f"{SERVICEOPS}/acl/{service}")
        assert status == expected_status, document

    await eventually(lambda: acl_of("payments", 200))

    await cluster.patch(API, "maxineacls", "payments", {"spec": {"serviceName": "billing"}})

    await eventually(lambda: acl_of("billing", 200))
    await eventually(lambda: acl_of("payments", 404))


async def test_an_intention_is_pushed_changed_and_removed(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    await cluster.create(load_example("intention.yaml"), plural="maxineintentions")

    async def decision(source: str, allowed: bool) -> None:
        status, document = await registry_view.get(f"{SERVICEOPS}/intention/check", source=source, destination="orders")
        assert status == 200, document
        assert document["allowed"] is allowed, document

    async def rule(expected_status: int, action: str | None = None) -> None:
        status, document = await registry_view.get(f"{SERVICEOPS}/intention/web/orders")
        assert status == expected_status, document
        if action is not None:
            assert document["action"] == action

    await eventually(lambda: rule(200, "allow"))

    await cluster.patch(API, "maxineintentions", "web-to-orders", {"spec": {"action": "deny"}})
    await eventually(lambda: rule(200, "deny"))
    await eventually(lambda: decision("web", allowed=False))

    await cluster.delete(API, "maxineintentions", "web-to-orders")
    await eventually(lambda: rule(404))
    await eventually(lambda: decision("web", allowed=True))


async def test_a_traffic_split_is_pushed_changed_and_removed(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    await cluster.create(load_example("trafficsplit.yaml"), plural="maxinetrafficsplits")

    async def split_is(expected: dict[str, float]) -> None:
        status, document = await registry_view.get("/traffic", serviceName="orders")
        assert status == 200, document
        assert document["distribution"] == expected

    await eventually(lambda: split_is({"1.0": 90, "2.0": 10}))

    splits = [{"version": "1.0", "weight": 50}, {"version": "2.0", "weight": 50}]
    await cluster.patch(API, "maxinetrafficsplits", "orders-canary", {"spec": {"splits": splits}})
    await eventually(lambda: split_is({"1.0": 50, "2.0": 50}))

    async def weights_shown() -> None:
        split = await cluster.get(API, "maxinetrafficsplits", "orders-canary")
        assert split is not None
        assert split["status"]["weights"] == "1.0=50,2.0=50"

    await eventually(weights_shown)

    await cluster.delete(API, "maxinetrafficsplits", "orders-canary")
    await eventually(lambda: split_is({}))


async def test_a_service_config_sets_changes_and_deletes_keys(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    await cluster.create(load_example("serviceconfig.yaml"), plural="maxineserviceconfigs")
    scope = {"namespace": "production", "region": "eu-west"}

    async def value_of(key: str, expected: Any, expected_status: int = 200) -> None:
        status, document = await registry_view.get(f"{SERVICEOPS}/config/get", serviceName="orders", key=key, **scope)
        assert status == expected_status, document
        if expected_status == 200:
            assert document["value"] == expected

    await eventually(lambda: value_of("maxBatchSize", 50))
    await eventually(lambda: value_of("features", {"giftWrap": True, "expressShipping": False}))

    # One key changes, one leaves the resource: the registry drops it.
    await cluster.patch(
        API, "maxineserviceconfigs", "orders-production", {"spec": {"values": {"maxBatchSize": 80, "currency": None}}}
    )
    await eventually(lambda: value_of("maxBatchSize", 80))
    await eventually(lambda: value_of("currency", None, expected_status=404))

    await cluster.delete(API, "maxineserviceconfigs", "orders-production")
    await eventually(lambda: value_of("maxBatchSize", None, expected_status=404))
    await eventually(lambda: value_of("features", None, expected_status=404))


async def test_a_dependency_adds_and_removes_edges(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    await cluster.create(load_example("dependency.yaml"), plural="maxinedependencies")

    async def dependencies_are(expected: list[str]) -> None:
        status, document = await registry_view.get(f"{SERVICEOPS}/dependency/get", serviceName="orders")
        assert status == 200, document
        assert sorted(document["dependencies"]) == expected

    await eventually(lambda: dependencies_are(["inventory", "payments"]))

    await cluster.patch(API, "maxinedependencies", "orders", {"spec": {"dependsOn": ["payments", "shipping"]}})
    await eventually(lambda: dependencies_are(["payments", "shipping"]))

    await cluster.delete(API, "maxinedependencies", "orders")
    await eventually(lambda: dependencies_are([]))


async def test_status_reports_synced_and_ready_for_the_observed_generation(
    registry: MaxineProcess, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")
    await cluster.patch(API, "maxineacls", "payments", {"spec": {"allow": ["checkout"]}})

    async def synced_at_generation_two() -> None:
        acl = await cluster.get(API, "maxineacls", "payments")
        assert acl is not None
        status = acl.get("status") or {}
        assert acl["metadata"]["generation"] == 2
        assert status.get("observedGeneration") == 2
        assert condition_status(status, "Synced") == "True"
        assert condition_status(status, "Ready") == "True"
        assert status["applied"] == {"serviceName": "payments"}
        for condition in status["conditions"]:
            assert condition["reason"] and condition["message"] and condition["lastTransitionTime"]

    await eventually(synced_at_generation_two)


async def test_a_spec_the_registry_refuses_is_a_permanent_failure_shown_in_status(
    registry: MaxineProcess, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    # The emulator does not validate schemas, so a value the registry refuses (too large) reaches it.
    huge = {"blob": "x" * 40_000}
    config = {
        "apiVersion": API,
        "kind": "MaxineServiceConfig",
        "metadata": {"name": "too-big", "namespace": "shop"},
        "spec": {"serviceName": "orders", "values": huge},
    }
    await cluster.create(config, plural="maxineserviceconfigs")

    async def rejected() -> None:
        resource = await cluster.get(API, "maxineserviceconfigs", "too-big")
        assert resource is not None
        status = resource.get("status") or {}
        assert condition_status(status, "Synced") == "False"
        synced = next(item for item in status["conditions"] if item["type"] == "Synced")
        assert synced["reason"] == "RejectedByRegistry"
        assert "32768" in synced["message"] or "limit" in synced["message"]

    await eventually(rejected, deadline=10.0)
    await eventually(lambda: cluster.has_event(reason="RejectedByRegistry", type="Warning"), deadline=10.0)
