"""Catalog sync of annotated Services, and the sidecar injection webhook served by the running operator."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import aiohttp
import jsonpatch

from tests.conftest import MaxineProcess, find_free_loopback_port
from tests.operator.conftest import SETTLE_DEADLINE, Cluster, OperatorRunner, RegistryView, eventually, load_example


def endpoint_slice(*, name: str, addresses: dict[str, bool], port: int = 8080) -> dict[str, Any]:
    """An EndpointSlice of Service "orders" with these addresses (address -> ready)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "orders"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": f"orders-{index}", "namespace": "shop"},
            }
            for index, (address, ready) in enumerate(addresses.items())
        ],
    }


async def nodes_of(view: RegistryView, service: str) -> set[str]:
    status, document = await view.get("/servers")
    assert status == 200, document
    return {node["nodeId"] for node in document["services"].get(service, {}).get("nodes", [])}


async def test_ready_endpoints_of_an_annotated_service_are_registered_and_follow_changes(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    slice_body = endpoint_slice(name="orders-abc", addresses={"10.1.0.1": True, "10.1.0.2": True, "10.1.0.3": False})
    await cluster.create(slice_body, plural="endpointslices")
    await cluster.create(load_example("service-catalog.yaml"), plural="services")

    async def registered(expected: set[str]) -> None:
        assert await nodes_of(registry_view, "orders") == expected

    await eventually(lambda: registered({"orders:10.1.0.1:8080", "orders:10.1.0.2:8080"}), deadline=SETTLE_DEADLINE)
    _, servers = await registry_view.get("/servers")
    node = servers["services"]["orders"]["nodes"][0]
    assert node["metadata"]["kubernetes"]["service"] == "orders"

    # One pod stops being ready: its instance leaves the registry.
    slice_body["endpoints"][1]["conditions"]["ready"] = False
    await cluster.patch("discovery.k8s.io/v1", "endpointslices", "orders-abc", {"endpoints": slice_body["endpoints"]})
    await eventually(lambda: registered({"orders:10.1.0.1:8080"}), deadline=SETTLE_DEADLINE)

    # The Service goes: so do its instances.
    await cluster.delete("v1", "services", "orders")
    await eventually(lambda: registered(set()), deadline=SETTLE_DEADLINE)


async def test_services_without_the_annotation_are_left_alone(
    registry: MaxineProcess, registry_view: RegistryView, cluster: Cluster, operator_runner: OperatorRunner
) -> None:
    await operator_runner(registry_url=registry.base_url)
    service = load_example("service-catalog.yaml")
    service["metadata"]["annotations"] = {"maxine.io/register": "false"}
    await cluster.create(endpoint_slice(name="orders-abc", addresses={"10.1.0.1": True}), plural="endpointslices")
    await cluster.create(service, plural="services")
    await cluster.create(load_example("acl.yaml"), plural="maxineacls")

    # Once the ACL is in, the operator has seen the Service too; nothing of it may be registered.
    async def acl_in() -> None:
        assert (await registry_view.get("/api/maxine/serviceops/acl/payments"))[0] == 200

    await eventually(acl_in, deadline=SETTLE_DEADLINE)
    assert await nodes_of(registry_view, "orders") == set()


def admission_review(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": False,
        },
    }


async def webhook_listening(port: int) -> None:
    """The operator's webhook server accepts connections (it starts once kopf has discovered the pods API)."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        raise AssertionError(f"Nothing listens on the webhook port {port}: {exc}") from None
    writer.close()
    await writer.wait_closed()


async def review(port: int, pod: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/inject-sidecar", json=admission_review(pod)) as response,
    ):
        assert response.status == 200, await response.text()
        document: dict[str, Any] = await response.json()
        return document["response"]


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, operations)
    return result


async def test_the_webhook_injects_one_sidecar_into_an_annotated_pod(
    registry: MaxineProcess, operator_runner: OperatorRunner
) -> None:
    port = find_free_loopback_port()
    await operator_runner(
        registry_url=registry.base_url,
        webhook=True,
        webhook_insecure=True,
        webhook_host="127.0.0.1",
        webhook_port=port,
        sidecar_image="example.org/maxine-sidecar:test",
        sidecar_registry_url="http://maxine.maxine-system:8080",
    )
    await eventually(lambda: webhook_listening(port), deadline=SETTLE_DEADLINE)
    pod = load_example("injected-pod.yaml")

    response = await review(port, pod)

    assert response["allowed"] is True
    injected = patched(pod, response)
    containers = {container["name"]: container for container in injected["spec"]["containers"]}
    assert set(containers) == {"app", "maxine-sidecar"}
    sidecar = containers["maxine-sidecar"]
    assert sidecar["image"] == "example.org/maxine-sidecar:test"
    assert sidecar["command"] == ["maxine-sidecar"]
    env = {item["name"]: item for item in sidecar["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["MAXINE_URL"]["value"] == "http://maxine.maxine-system:8080"
    assert env["SERVICE_NAME"]["value"] == "orders"
    assert env["SERVICE_PORT"]["value"] == "8080"
    assert json.loads(env["SERVICE_METADATA"]["value"]) == {"version": "1.0"}
    assert env["READINESS_URL"]["value"] == "http://127.0.0.1:8080/ready"
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8099}

    # Reviewing the injected pod again adds nothing.
    again = await review(port, injected)
    assert again["allowed"] is True
    assert patched(injected, again) == injected


async def test_the_webhook_leaves_pods_without_the_annotation_alone(
    registry: MaxineProcess, operator_runner: OperatorRunner
) -> None:
    port = find_free_loopback_port()
    await operator_runner(
        registry_url=registry.base_url, webhook=True, webhook_insecure=True, webhook_host="127.0.0.1", webhook_port=port
    )
    await eventually(lambda: webhook_listening(port), deadline=SETTLE_DEADLINE)
    pod = load_example("injected-pod.yaml")
    pod["metadata"]["annotations"] = {}

    response = await review(port, pod)

    assert response["allowed"] is True
    assert patched(pod, response) == pod
