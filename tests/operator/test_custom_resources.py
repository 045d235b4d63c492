"""Each custom resource, applied, changed and deleted, with the registry following through the real operator."""

from __future__ import annotations

from maxine_operator import crds
from tests.conftest import MaxineProcess
from tests.operator.conftest import Cluster, OperatorRunner, RegistryView, eventually, load_example

API = crds.API_VERSION
SERVICEOPS = "/api/maxine/serviceops"


async def test_an_acl_is_pushed_changed_and_removed(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    view = registry_view
    await operator_runner(registry_url=registry.base_url)

    await cluster.create(load_example("acl.yaml"), plural="maxineacls")

    async def acl_is_in_the_registry() -> None:
        status, document = await view.get(f"{SERVICEOPS}/acl/payments")
        assert status == 200, document
        assert document["allow"] == ["checkout", "admin"]
        assert document["deny"] == ["legacy-client"]

    await eventually(acl_is_in_the_registry)
