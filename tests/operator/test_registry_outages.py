"""The registry going away: an unreachable registry, a restarted empty one, and deletions while it is gone."""

from __future__ import annotations

from collections.abc import Callable

from maxine_operator import crds
from maxine_operator.status import condition_status
from tests.conftest import MaxineProcess, find_free_loopback_port
from tests.operator.conftest import (
    SETTLE_DEADLINE,
    Cluster,
    OperatorRunner,
    RegistryView,
    eventually,
    load_example,
)

API = crds.API_VERSION
ACL_PATH = "/api/maxine/serviceops/acl/payments"


def synced_reason(resource: dict | None) -> tuple[str | None, str | None]:  # type: ignore[type-arg]
    status = (resource or {}).get("status") or {}
    synced = next((item for item in status.get("conditions") or () if item["type"] == "Synced"), None)
    return (synced or {}).get("status"), (synced or {}).get("reason")


async def test_an_unreachable_registry_shows_in_status_until_it_comes_up(
    start_registry: Callable[..., MaxineProcess],
    registry_session: object,
    cluster: Cluster,
    operator_runner: OperatorRunner,
) -> None:
    port = find_free_loopback_port()
    await operator_runner(registry_url=f"http://127.0.0.1:{port}")
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")

    async def not_synced() -> None:
        acl = await cluster.get(API, "maxineacls", "payments")
        assert synced_reason(acl) == ("False", "RegistryUnavailable")
        assert condition_status(acl["status"], "Ready") == "False"  # type: ignore[index]

    await eventually(not_synced, deadline=SETTLE_DEADLINE)
    await eventually(lambda: cluster.has_event(reason="RegistryUnavailable", type="Warning"), deadline=SETTLE_DEADLINE)

    registry = start_registry(port=port)
    view = RegistryView(base_url=registry.base_url, session=registry_session)  # type: ignore[arg-type]

    async def synced() -> None:
        acl = await cluster.get(API, "maxineacls", "payments")
        assert synced_reason(acl) == ("True", "Synced")
        status, _ = await view.get(ACL_PATH)
        assert status == 200

    await eventually(synced, deadline=SETTLE_DEADLINE)


async def test_a_restarted_empty_registry_is_repaired_by_the_watchdog(
    start_registry: Callable[..., MaxineProcess],
    registry_session: object,
    cluster: Cluster,
    operator_runner: OperatorRunner,
) -> None:
    registry = start_registry()
    view = RegistryView(base_url=registry.base_url, session=registry_session)  # type: ignore[arg-type]
    # A resync far away: only the restart watchdog can bring the entries back within the test.
    await operator_runner(registry_url=registry.base_url, resync_interval=600.0)
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")
    await cluster.create(load_example("trafficsplit.yaml"), plural="maxinetrafficsplits")

    async def both_present() -> None:
        assert (await view.get(ACL_PATH))[0] == 200
        status, split = await view.get("/traffic", serviceName="orders")
        assert status == 200 and split["distribution"] == {"1.0": 90, "2.0": 10}

    await eventually(both_present)

    _, before = await view.get("/health")
    registry.kill()
    start_registry(port=registry.port)
    _, after = await view.get("/health")
    assert after["instanceId"] != before["instanceId"], "a new registry process, which started empty"

    await eventually(both_present, deadline=SETTLE_DEADLINE)


async def test_the_resync_timer_repairs_drift(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url, resync_interval=0.5)
    await cluster.create(load_example("intention.yaml"), plural="maxineintentions")
    rule = "/api/maxine/serviceops/intention/web/orders"

    async def present() -> None:
        assert (await registry_view.get(rule))[0] == 200

    await eventually(present)

    # Someone removes the rule behind the operator's back.
    async with registry_view.session.delete(registry.base_url + rule) as response:
        assert response.status == 200

    await eventually(present, deadline=SETTLE_DEADLINE)


async def test_deletion_waits_for_an_unreachable_registry_and_the_annotation_lets_it_go(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")
    await eventually(lambda: _acl_status(registry_view, 200))

    registry.kill()
    await cluster.delete(API, "maxineacls", "payments")

    async def held_by_the_finalizer() -> None:
        acl = await cluster.get(API, "maxineacls", "payments")
        assert acl is not None
        assert acl["metadata"].get("deletionTimestamp")
        assert "maxine.io/registry-cleanup" in acl["metadata"].get("finalizers", [])

    await eventually(held_by_the_finalizer, deadline=SETTLE_DEADLINE)

    await cluster.patch(
        API, "maxineacls", "payments", {"metadata": {"annotations": {"maxine.io/skip-registry-cleanup": "true"}}}
    )

    async def released() -> None:
        assert await cluster.get(API, "maxineacls", "payments") is None

    await eventually(released, deadline=SETTLE_DEADLINE)
    await eventually(lambda: cluster.has_event(reason="CleanupSkipped", type="Warning"), deadline=SETTLE_DEADLINE)


async def test_deletion_gives_up_after_the_cleanup_timeout(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url, cleanup_timeout=1.0)
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")
    await eventually(lambda: _acl_status(registry_view, 200))

    registry.kill()
    await cluster.delete(API, "maxineacls", "payments")

    async def released() -> None:
        assert await cluster.get(API, "maxineacls", "payments") is None

    await eventually(released, deadline=SETTLE_DEADLINE)
    await eventually(lambda: cluster.has_event(reason="CleanupAbandoned", type="Warning"), deadline=SETTLE_DEADLINE)


async def test_deleting_a_resource_whose_entry_is_already_gone_succeeds(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url, resync_interval=600.0)
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")
    await eventually(lambda: _acl_status(registry_view, 200))
    async with registry_view.session.delete(registry.base_url + ACL_PATH) as response:
        assert response.status == 200

    await cluster.delete(API, "maxineacls", "payments")

    async def released() -> None:
        assert await cluster.get(API, "maxineacls", "payments") is None

    await eventually(released, deadline=SETTLE_DEADLINE)


async def _acl_status(view: RegistryView, expected: int) -> None:
    assert (await view.get(ACL_PATH))[0] == expected


async def test_with_peering_only_the_replica_of_highest_priority_acts(
    start_registry: Callable[..., MaxineProcess],
    registry_session: object,
    cluster: Cluster,
    operator_runner: OperatorRunner,
) -> None:
    # Each replica talks to a registry of its own, so each registry shows what its replica did.
    active_registry, passive_registry = start_registry(), start_registry()
    active = RegistryView(base_url=active_registry.base_url, session=registry_session)  # type: ignore[arg-type]
    passive = RegistryView(base_url=passive_registry.base_url, session=registry_session)  # type: ignore[arg-type]
    await cluster.create(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "maxine-operator"}},
        plural="clusterkopfpeerings",
    )
    await operator_runner(registry_url=passive_registry.base_url, peering=True, peering_priority=10)
    await operator_runner(registry_url=active_registry.base_url, peering=True, peering_priority=20)

    async def both_announced() -> None:
        peering = await cluster.get_cluster_object("kopf.dev/v1", "clusterkopfpeerings", "maxine-operator")
        assert peering is not None
        priorities = sorted(peer["priority"] for peer in (peering.get("status") or {}).values())
        assert priorities == [10, 20]

    await eventually(both_announced, deadline=SETTLE_DEADLINE)
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")

    async def pushed_by_the_active_replica() -> None:
        assert (await active.get(ACL_PATH))[0] == 200

    await eventually(pushed_by_the_active_replica, deadline=SETTLE_DEADLINE)
    assert (await passive.get(ACL_PATH))[0] == 404
