"""What each mesh is told: routes, weights, policies and access, for the registry states that matter."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from maxine_registry.mesh import (
    EnvoyOptions,
    KubernetesOptions,
    MeshState,
    build_mesh_state,
    gateway_api_resources,
    istio_resources,
    linkerd_resources,
    smi_resources,
    static_bootstrap,
)
from maxine_registry.mesh.envoy import route_configuration
from maxine_registry.mesh.model import MeshInstance, MeshService, MeshSettings
from maxine_registry.mesh.names import dns_label
from maxine_registry.registry import Registry
from tests.mesh.conftest import (
    SAMPLE_STATES,
    deny_by_default,
    governance_with,
    register,
    retired,
    split_100,
    wildcard_intentions,
)

OPTIONS = KubernetesOptions(namespace="shop")


def by_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item for item in resources if item["kind"] == kind]


def canary_state(**mesh: Any) -> MeshState:
    registry = Registry()
    register(registry, "orders", "10.0.0.1", 8080, version="v1", mesh=mesh or None)
    register(registry, "orders", "10.0.0.2", 8080, version="v2")
    registry.set_traffic("orders", {"v1": 90.0, "v2": 10.0})
    return build_mesh_state(registry=registry, governance=None)


@pytest.mark.parametrize("name", sorted(SAMPLE_STATES))
def test_generating_twice_gives_the_same_bytes(name: str) -> None:
    def everything() -> bytes:
        state = SAMPLE_STATES[name]()
        documents = [
            static_bootstrap(state, EnvoyOptions()),
            istio_resources(state, OPTIONS),
            linkerd_resources(state, OPTIONS),
            gateway_api_resources(state, OPTIONS),
            smi_resources(state, OPTIONS),
        ]
        return orjson.dumps(documents)

    assert everything() == everything()


def test_istio_splits_by_version_subset_with_the_metadata_retries_and_timeout() -> None:
    resources = istio_resources(canary_state(timeoutMs=2500, retries=2, perTryTimeoutMs=800), OPTIONS)
    [service] = by_kind(resources, "VirtualService")
    [rule] = by_kind(resources, "DestinationRule")

    route = service["spec"]["http"][0]
    assert [(item["destination"]["subset"], item["weight"]) for item in route["route"]] == [("v1", 90), ("v2", 10)]
    assert route["timeout"] == "2.500s"
    assert route["retries"] == {"attempts": 2, "retryOn": "5xx,connect-failure,reset", "perTryTimeout": "0.800s"}
    assert [subset["labels"] for subset in rule["spec"]["subsets"]] == [{"version": "v1"}, {"version": "v2"}]
    assert rule["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 5
    assert service["spec"]["hosts"] == ["orders.shop.svc.cluster.local"]


def test_istio_routes_around_retired_versions_and_answers_503_when_none_is_left() -> None:
    resources = istio_resources(retired(), OPTIONS)
    routes = {item["metadata"]["name"]: item["spec"]["http"][0] for item in by_kind(resources, "VirtualService")}
    subsets = {
        item["metadata"]["name"]: item["spec"].get("subsets", []) for item in by_kind(resources, "DestinationRule")
    }

    assert [(item["destination"]["subset"], item["weight"]) for item in routes["billing"]["route"]] == [
        ("v2", 50),
        ("v3", 50),
    ]
    assert [item["name"] for item in subsets["billing"]] == ["v2", "v3"]
    assert [(item["destination"]["subset"], item["weight"]) for item in routes["search"]["route"]] == [
        ("v2", 50),
        ("v3", 50),
    ]
    assert routes["gone"] == {"name": "no-instance", "directResponse": {"status": 503}}


def test_istio_authorization_follows_wildcard_and_exact_intentions() -> None:
    policies = {
        item["metadata"]["name"]: item["spec"]
        for item in by_kind(istio_resources(wildcard_intentions(), OPTIONS), "AuthorizationPolicy")
    }

    # * -> orders deny, web -> orders allow, cart (a Kubernetes subject) -> orders allow.
    assert policies["orders"] == {
        "selector": {"matchLabels": {"app": "orders"}},
        "action": "ALLOW",
        "rules": [
            {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/cart", "cluster.local/ns/shop/sa/web"]}}]}
        ],
    }
    # web -> * deny, * -> * allow: everyone but web.
    assert policies["payments"]["action"] == "DENY"
    assert policies["payments"]["rules"] == [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}]}]
    orders_v2 = policies[dns_label("Orders_V2.svc")]
    assert orders_v2["rules"][0]["from"][0]["source"]["principals"] == [
        f"cluster.local/ns/shop/sa/{dns_label('alice@example.com')}",
        "cluster.local/ns/shop/sa/web",
    ]


def test_istio_denies_everyone_but_the_allowed_when_the_default_is_deny() -> None:
    policies = {
        item["metadata"]["name"]: item["spec"]
        for item in by_kind(istio_resources(deny_by_default(), OPTIONS), "AuthorizationPolicy")
    }

    assert "rules" not in policies["web"]  # an ALLOW policy without rules lets nobody in
    assert policies["legacy"]["action"] == "ALLOW" and "rules" not in policies["legacy"]  # blacklisted
    # payments: its ACL allows orders and web but denies web; the intention orders -> payments allows.
    assert policies["payments"]["rules"][0]["from"][0]["source"]["principals"] == ["cluster.local/ns/shop/sa/orders"]
    assert "reports" not in policies  # * -> reports allow: open to all
    assert "legacy" not in {
        item["metadata"]["name"] for item in by_kind(istio_resources(deny_by_default(), OPTIONS), "VirtualService")
    }


def test_no_access_objects_when_nothing_is_restricted() -> None:
    state = canary_state()

    assert by_kind(istio_resources(state, OPTIONS), "AuthorizationPolicy") == []
    assert {item["kind"] for item in linkerd_resources(state, OPTIONS)} == {"ServiceProfile", "HTTPRoute"}


def test_linkerd_profile_route_and_retry_annotations() -> None:
    resources = linkerd_resources(
        canary_state(timeoutMs=2500, retries=3, retryOn=["5xx", "retriable-4xx", "reset"]), OPTIONS
    )
    [profile] = by_kind(resources, "ServiceProfile")
    [route] = by_kind(resources, "HTTPRoute")

    assert profile["metadata"]["name"] == "orders.shop.svc.cluster.local"
    assert profile["spec"]["routes"] == [
        {"name": "all", "condition": {"pathRegex": ".*"}, "isRetryable": True, "timeout": "2500ms"}
    ]
    assert route["apiVersion"] == "policy.linkerd.io/v1beta3"
    assert route["metadata"]["annotations"]["retry.linkerd.io/http"] == "409,5xx"
    assert route["metadata"]["annotations"]["retry.linkerd.io/limit"] == "3"
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "orders-v1", "port": 8080, "weight": 90},
        {"name": "orders-v2", "port": 8080, "weight": 10},
    ]


def test_linkerd_authorises_identities_per_server_port() -> None:
    resources = linkerd_resources(deny_by_default(), OPTIONS)
    names = {(item["kind"], item["metadata"]["name"]) for item in resources}
    auth = {item["metadata"]["name"]: item["spec"] for item in by_kind(resources, "MeshTLSAuthentication")}

    assert {("Server", "orders-8080"), ("Server", "orders-9090"), ("Server", "web-8080")} <= names
    assert ("MeshTLSAuthentication", "web-8080") not in names  # nobody may call web: the Server alone refuses all
    assert auth["orders-8080"] == {"identityRefs": [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}]}
    assert not any(kind == "Server" and name.startswith("reports") for kind, name in names)  # open to all


def test_linkerd_lists_the_known_callers_when_it_cannot_deny_one() -> None:
    resources = linkerd_resources(wildcard_intentions(), OPTIONS)
    policy = next(
        item for item in by_kind(resources, "AuthorizationPolicy") if item["metadata"]["name"] == "payments-8080"
    )
    auth = next(
        item for item in by_kind(resources, "MeshTLSAuthentication") if item["metadata"]["name"] == "payments-8080"
    )

    assert "maxine.io/approximation" in policy["metadata"]["annotations"]
    accounts = [ref["name"] for ref in auth["spec"]["identityRefs"]]
    assert "web" not in accounts and "payments" in accounts


def test_gateway_api_keeps_the_heaviest_sixteen_backends_of_a_large_split() -> None:
    [route] = gateway_api_resources(split_100(), OPTIONS)
    backends = route["spec"]["rules"][0]["backendRefs"]

    assert len(backends) == 16
    assert sum(item["weight"] for item in backends) == 100
    assert backends[-1]["name"] == "catalog-v99"
    dropped = route["metadata"]["annotations"]["maxine.io/dropped-backends"].split(",")
    assert len(dropped) == 84 and "v0" in dropped and "v99" not in dropped


def test_gateway_api_timeouts_use_its_duration_format() -> None:
    [route] = gateway_api_resources(canary_state(timeoutMs=3_600_000, perTryTimeoutMs=90_250), OPTIONS)

    assert route["spec"]["rules"][0]["timeouts"] == {"request": "1h", "backendRequest": "1m30s250ms"}
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "orders", "port": 8080}]


def test_smi_splits_only_services_that_route_by_version() -> None:
    state = canary_state()
    plain = MeshService(
        name="plain",
        instances=(
            MeshInstance(node_id="plain:10.0.0.9:80", host="10.0.0.9", port=80, version="v1", weight=1.0, healthy=True),
        ),
    )
    state = MeshState(services=(*state.services, plain))

    [split] = smi_resources(state, OPTIONS, version="v1alpha2")

    assert split["apiVersion"] == "split.smi-spec.io/v1alpha2"
    assert split["spec"] == {
        "service": "orders",
        "backends": [{"service": "orders-v1", "weight": 90}, {"service": "orders-v2", "weight": 10}],
    }


def test_envoy_routes_by_host_and_by_path_to_weighted_version_clusters() -> None:
    state = canary_state(loadBalancing="consistent-hash", timeoutMs=1500)
    config = route_configuration(state)
    by_name = {host["name"]: host for host in config["virtual_hosts"]}

    action = by_name["service/orders"]["routes"][0]["route"]
    assert by_name["service/orders"]["domains"] == ["orders"]
    assert action["weighted_clusters"]["clusters"] == [
        {"name": "orders|v1", "weight": 9000},
        {"name": "orders|v2", "weight": 1000},
    ]
    assert action["hash_policy"] == [{"query_parameter": {"name": "key"}}]
    assert action["timeout"] == "1.500s"
    [path_route] = by_name["maxine-paths"]["routes"]
    assert path_route["match"] == {"prefix": "/orders/"} and path_route["route"]["prefix_rewrite"] == "/"


def test_envoy_gives_a_host_to_one_service_of_those_differing_only_in_case() -> None:
    instance = MeshInstance(node_id="x:10.0.0.1:80", host="10.0.0.1", port=80, version="v1", weight=1.0, healthy=True)
    state = MeshState(
        services=tuple(MeshService(name=name, instances=(instance,)) for name in ("ORDERS", "Orders", "orders"))
    )

    hosts = route_configuration(state)["virtual_hosts"]

    assert [(host["name"], host["domains"]) for host in hosts[:-1]] == [("service/orders", ["orders"])]
    assert len(hosts[-1]["routes"]) == 3


def test_envoy_leaves_out_blacklisted_services_and_unhealthy_instances() -> None:
    registry = Registry()
    register(registry, "legacy", "10.0.0.1", 80)
    register(registry, "orders", "10.0.0.2", 80)
    register(registry, "orders", "10.0.0.3", 80)
    sick = registry.get_instance("orders:10.0.0.3:80")
    assert sick is not None
    registry.set_health(sick, healthy=False, reason="test")
    state = build_mesh_state(registry=registry, governance=governance_with(blacklist=("legacy",)))
    clusters = static_bootstrap(state, EnvoyOptions())["static_resources"]["clusters"]

    assert [item["name"] for item in clusters] == ["orders"]
    endpoints = clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [item["endpoint"]["address"]["socket_address"]["address"] for item in endpoints] == ["10.0.0.2"]


def test_envoy_mesh_settings_reach_the_cluster() -> None:
    state = MeshState(
        services=(
            MeshService(
                name="svc",
                instances=(
                    MeshInstance(
                        node_id="svc:::1:80", host="::1", port=80, version="v1", weight=2.5, healthy=True, zone="z1"
                    ),
                ),
                settings=MeshSettings(load_balancing="weighted-least-connections"),
            ),
        )
    )

    [cluster] = static_bootstrap(state, EnvoyOptions())["static_resources"]["clusters"]

    assert cluster["lb_policy"] == "LEAST_REQUEST"
    [group] = cluster["load_assignment"]["endpoints"]
    assert group["locality"] == {"zone": "z1"}
    assert group["lb_endpoints"][0]["load_balancing_weight"] == 250
    assert cluster["outlier_detection"]["max_ejection_percent"] == 100
