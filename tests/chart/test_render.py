"""
What ``helm install maxine charts/maxine`` creates, for the default values and the installations the README describes.

Each test renders the chart with the real Helm engine and reads the objects the way Kubernetes
would use them: which pods run, with what settings and security, what the Services route to,
which values refuse to install, and where secret values end up.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import helm_python
import pytest

from tests.chart.conftest import (
    ADMIN_HASH,
    AUTH,
    EXTERNAL_REDIS_URL,
    JWT_SECRET,
    NAMESPACE,
    OPERATOR_TOKEN,
    REDIS_PASSWORD,
    VALUE_SETS,
    Rendered,
    RenderFn,
)

CHART_POD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
RECOMMENDED_LABELS = (
    *CHART_POD_LABELS,
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


def decoded(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def secret_ref(variable: dict[str, Any]) -> tuple[str, str]:
    """(Secret name, key) of an env var that must come from a Secret."""
    assert "value" not in variable, f"{variable['name']} is a plain value, not a secretKeyRef"
    reference = variable["valueFrom"]["secretKeyRef"]
    return reference["name"], reference["key"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Does a Kubernetes label selector select an object with these labels?"""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or ():
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def pod_templates(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [(item["metadata"]["name"], item["spec"]["template"]) for item in rendered.of_kind("Deployment")]


# The default installation.


def test_default_install_runs_one_registry_and_the_operator_and_nothing_optional(render: RenderFn) -> None:
    rendered = render()

    assert sorted(item["metadata"]["name"] for item in rendered.of_kind("Deployment")) == ["maxine", "maxine-operator"]
    assert rendered.get("Deployment", "maxine")["spec"]["replicas"] == 1
    assert rendered.get("Deployment", "maxine-operator")["spec"]["replicas"] == 1
    kinds = {item["kind"] for item in rendered.objects}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"}
    assert rendered.get("Deployment", "maxine")["spec"]["template"]["spec"]["containers"][0]["command"] == ["maxine"]
    assert rendered.container("maxine-operator", "operator")["command"] == ["maxine-operator"]


def test_every_pod_runs_as_uid_10001_without_privileges_on_a_read_only_root(
    render: RenderFn, value_set: tuple[str, dict[str, Any]]
) -> None:
    rendered = render(value_set[1])

    for name, template in pod_templates(rendered):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        mounts_by_volume = {volume["name"]: volume for volume in pod["volumes"]}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            tmp = next(mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp")
            assert "emptyDir" in mounts_by_volume[tmp["name"]], (name, container["name"])


def test_registry_is_probed_on_health_through_its_http_port(render: RenderFn) -> None:
    container = render().container("maxine", "registry")

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    ports = {(port["name"], port["containerPort"], port["protocol"]) for port in container["ports"]}
    assert ports == {("http", 8080, "TCP"), ("grpc", 50051, "TCP"), ("heartbeat-udp", 8080, "UDP")}
    env = render().env("maxine", "registry")
    assert env["PORT"]["value"] == "8080"
    assert env["GRPC_PORT"]["value"] == "50051"
    assert env["UDP_PORT"]["value"] == "8080"


def test_service_routes_http_grpc_and_udp_heartbeats_to_the_registry_pods(render: RenderFn) -> None:
    rendered = render()
    service = rendered.get("Service", "maxine")
    registry = rendered.get("Deployment", "maxine")["spec"]["template"]
    operator = rendered.get("Deployment", "maxine-operator")["spec"]["template"]

    ports = {(port["name"], port["port"], port["protocol"], port["targetPort"]) for port in service["spec"]["ports"]}
    assert ports == {
        ("http", 8080, "TCP", "http"),
        ("grpc", 50051, "TCP", "grpc"),
        ("heartbeat-udp", 8080, "UDP", "heartbeat-udp"),
    }
    assert selects({"matchLabels": service["spec"]["selector"]}, registry["metadata"]["labels"])
    assert not selects({"matchLabels": service["spec"]["selector"]}, operator["metadata"]["labels"])


def test_grpc_and_udp_can_be_switched_off(render: RenderFn) -> None:
    rendered = render({"registry": {"grpc": {"enabled": False}, "udp": {"enabled": False}}})

    assert [port["name"] for port in rendered.get("Service", "maxine")["spec"]["ports"]] == ["http"]
    env = rendered.env("maxine", "registry")
    assert env["GRPC_ENABLED"]["value"] == "false"
    assert env["UDP_ENABLED"]["value"] == "false"


def test_every_object_carries_the_recommended_labels_and_selectors_match_their_pods(
    render: RenderFn, value_set: tuple[str, dict[str, Any]]
) -> None:
    rendered = render(value_set[1])

    for item in rendered.objects:
        labels = item["metadata"]["labels"]
        missing = [label for label in RECOMMENDED_LABELS if label not in labels]
        assert not missing, f"{item['kind']}/{item['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/part-of"] == "maxine"
    for item in rendered.of_kind("Deployment"):
        selector = item["spec"]["selector"]
        assert sorted(selector["matchLabels"]) == sorted(CHART_POD_LABELS)
        assert selects(selector, item["spec"]["template"]["metadata"]["labels"])


def test_release_name_and_namespace_name_everything(render: RenderFn) -> None:
    rendered = render({"webhook": {"enabled": True}}, release="edge", namespace="infra")

    assert rendered.find("Deployment", "edge-maxine", namespace="infra") is not None
    assert (
        rendered.env("edge-maxine-operator", "operator")["MAXINE_URL"]["value"] == "http://edge-maxine.infra.svc:8080"
    )
    binding = rendered.get("ClusterRoleBinding", "edge-maxine-operator", namespace=None)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "edge-maxine-operator", "namespace": "infra"}]
    assert all(item["metadata"].get("namespace", "infra") == "infra" for item in rendered.objects)


def without_generated_certificates(rendered: Rendered) -> list[dict[str, Any]]:
    """The objects with the webhook's certificate and CA bundle blanked: they are made anew at each install."""
    objects = copy.deepcopy(list(rendered.objects))
    for item in objects:
        if item["kind"] == "Secret" and item.get("type") == "kubernetes.io/tls":
            item["data"] = {key: "<generated>" for key in item["data"]}
        for webhook in item.get("webhooks", ()):
            if "caBundle" in webhook["clientConfig"]:
                webhook["clientConfig"]["caBundle"] = "<generated>"
    return objects


def test_rendering_twice_gives_the_same_objects(render: RenderFn, value_set: tuple[str, dict[str, Any]]) -> None:
    name, values = value_set

    first, second = render(values), render(values)

    assert without_generated_certificates(first) == without_generated_certificates(second), name
    assert first.notes == second.notes


def test_notes_tell_how_to_reach_the_registry(render: RenderFn) -> None:
    notes = render().notes

    assert "kubectl --namespace maxine port-forward service/maxine 8080:8080" in notes
    assert "curl -s localhost:8080/health" in notes
    assert "http://maxine.maxine.svc:8080" in notes


# Several registries and Redis.


@pytest.mark.parametrize("replicas", [2, 5])
def test_several_registries_without_redis_are_refused_with_the_reason(render: RenderFn, replicas: int) -> None:
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render({"replicaCount": replicas})

    message = str(refused.value)
    assert f"replicaCount={replicas} needs Redis" in message
    assert "redis.enabled=true" in message


def test_ha_with_the_bundled_redis_shares_state_and_keeps_a_pod_available(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["ha-bundled-redis"])

    assert rendered.get("Deployment", "maxine")["spec"]["replicas"] == 3
    env = rendered.env("maxine", "registry")
    assert env["PERSISTENCE_ENABLED"]["value"] == "true"
    assert env["PERSISTENCE_TYPE"]["value"] == "redis"
    assert env["REDIS_HOST"]["value"] == "maxine-redis.maxine.svc"
    assert env["REDIS_PORT"]["value"] == "6379"
    assert secret_ref(env["REDIS_PASSWORD"]) == ("maxine-secrets", "redis-password")
    assert decoded(rendered.get("Secret", "maxine-secrets"), "redis-password") == REDIS_PASSWORD

    redis_service = rendered.get("Service", "maxine-redis")
    redis_pod = rendered.get("Deployment", "maxine-redis")["spec"]["template"]
    assert selects({"matchLabels": redis_service["spec"]["selector"]}, redis_pod["metadata"]["labels"])
    redis = redis_pod["spec"]["containers"][0]
    assert REDIS_PASSWORD not in json.dumps(redis), "the Redis password must not be on its command line"
    assert secret_ref(next(item for item in redis["env"] if item["name"] == "REDIS_PASSWORD")) == (
        "maxine-secrets",
        "redis-password",
    )

    budget = rendered.get("PodDisruptionBudget", "maxine")
    assert budget["spec"]["minAvailable"] == 1
    assert selects(
        budget["spec"]["selector"], rendered.get("Deployment", "maxine")["spec"]["template"]["metadata"]["labels"]
    )


def test_one_registry_gets_no_disruption_budget(render: RenderFn) -> None:
    assert render({"redis": {"enabled": True}}).of_kind("PodDisruptionBudget") == []


def test_an_external_redis_url_is_read_from_a_secret_and_no_redis_is_deployed(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["ha-external-redis"])

    assert rendered.find("Deployment", "maxine-redis") is None
    env = rendered.env("maxine", "registry")
    assert secret_ref(env["REDIS_URL"]) == ("maxine-secrets", "redis-url")
    assert decoded(rendered.get("Secret", "maxine-secrets"), "redis-url") == EXTERNAL_REDIS_URL
    assert "REDIS_HOST" not in env


def test_existing_secrets_are_referenced_and_the_chart_makes_none(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["ha-existing-secrets"])

    assert rendered.of_kind("Secret") == []
    registry = rendered.env("maxine", "registry")
    assert secret_ref(registry["JWT_SECRET"]) == ("my-maxine-auth", "jwt-secret")
    assert secret_ref(registry["ADMIN_PASSWORD_HASH"]) == ("my-maxine-auth", "admin-password-hash")
    assert registry["READONLY_PASSWORD_HASH"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert secret_ref(registry["REDIS_URL"]) == ("my-redis", "redis-url")
    assert secret_ref(registry["REDIS_PASSWORD"]) == ("my-redis", "redis-password")
    assert secret_ref(rendered.env("maxine-operator", "operator")["MAXINE_TOKEN"]) == (
        "my-maxine-auth",
        "operator-token",
    )


# Auth.


def test_auth_settings_reach_the_registry_and_the_operator_only_through_the_secret(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["everything"])

    registry = rendered.env("maxine", "registry")
    assert registry["AUTH_ENABLED"]["value"] == "true"
    for variable, key in (
        ("JWT_SECRET", "jwt-secret"),
        ("ADMIN_PASSWORD_HASH", "admin-password-hash"),
        ("READONLY_PASSWORD_HASH", "readonly-password-hash"),
        ("UDP_HMAC_KEY", "udp-hmac-key"),
    ):
        assert secret_ref(registry[variable]) == ("maxine-secrets", key)
    assert secret_ref(rendered.env("maxine-operator", "operator")["MAXINE_TOKEN"]) == (
        "maxine-secrets",
        "operator-token",
    )

    secret = rendered.get("Secret", "maxine-secrets")
    assert decoded(secret, "jwt-secret") == JWT_SECRET
    assert decoded(secret, "admin-password-hash") == ADMIN_HASH
    assert decoded(secret, "operator-token") == OPERATOR_TOKEN

    # No other object holds a secret value, in clear or encoded: not the pods, not a ConfigMap.
    for item in rendered.objects:
        if item["kind"] == "Secret":
            continue
        text = json.dumps(item)
        for value in (JWT_SECRET, ADMIN_HASH, OPERATOR_TOKEN, REDIS_PASSWORD):
            assert value not in text, f"{item['kind']}/{item['metadata']['name']} holds a secret value"
            assert base64.b64encode(value.encode()).decode() not in text


def test_a_changed_secret_value_restarts_the_pods_that_read_it(render: RenderFn) -> None:
    before = render({"auth": AUTH})
    after = render({"auth": {**AUTH, "jwtSecret": JWT_SECRET[::-1]}})

    for deployment in ("maxine", "maxine-operator"):
        old = before.get("Deployment", deployment)["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
        new = after.get("Deployment", deployment)["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
        assert old != new, deployment


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"enabled": True}, re.escape("auth.enabled=true needs auth.jwtSecret")),
        ({**AUTH, "jwtSecret": "too-short"}, re.escape("auth.jwtSecret is 9 bytes long")),
        ({**AUTH, "adminPasswordHash": ""}, re.escape("auth.enabled=true needs auth.adminPasswordHash")),
        ({**AUTH, "operatorToken": ""}, re.escape("needs auth.operatorToken")),
    ],
)
def test_auth_without_what_the_registry_needs_is_refused(render: RenderFn, auth: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render({"auth": auth})


def test_auth_without_the_operator_needs_no_operator_token(render: RenderFn) -> None:
    rendered = render({"auth": {**AUTH, "operatorToken": ""}, "operator": {"enabled": False}})

    assert "operator-token" not in rendered.get("Secret", "maxine-secrets")["data"]


# Sidecar injection.


def test_injection_sends_pod_creations_to_the_operators_webhook_server(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["injection"])

    configuration = rendered.get("MutatingWebhookConfiguration", "maxine-sidecar-injector", namespace=None)
    (webhook,) = configuration["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["sideEffects"] == "None"
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    client = webhook["clientConfig"]["service"]
    assert client == {"name": "maxine-webhook", "namespace": NAMESPACE, "path": "/inject-sidecar", "port": 443}

    # Service port 443 -> the operator container's webhook port, where the operator is told to listen.
    service = rendered.get("Service", "maxine-webhook")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443
    operator_pod = rendered.get("Deployment", "maxine-operator")["spec"]["template"]
    assert selects({"matchLabels": service["spec"]["selector"]}, operator_pod["metadata"]["labels"])
    container = rendered.container("maxine-operator", "operator")
    container_port = next(item for item in container["ports"] if item["name"] == port["targetPort"])
    env = rendered.env("maxine-operator", "operator")
    assert env["MAXINE_OPERATOR_WEBHOOK"]["value"] == "true"
    assert env["MAXINE_OPERATOR_WEBHOOK_PORT"]["value"] == str(container_port["containerPort"])
    assert env["MAXINE_SIDECAR_IMAGE"]["value"] == "ghcr.io/maxine/maxine:0.1.0"
    assert env["MAXINE_SIDECAR_REGISTRY_URL"]["value"] == "http://maxine.maxine.svc:8080"

    # The certificate files the operator reads are in the mounted webhook Secret.
    mount = next(item for item in container["volumeMounts"] if item["name"] == "webhook-tls")
    assert env["MAXINE_OPERATOR_WEBHOOK_CERT"]["value"] == f"{mount['mountPath']}/tls.crt"
    assert env["MAXINE_OPERATOR_WEBHOOK_KEY"]["value"] == f"{mount['mountPath']}/tls.key"
    volume = next(item for item in operator_pod["spec"]["volumes"] if item["name"] == "webhook-tls")
    assert volume["secret"]["secretName"] == "maxine-webhook-tls"


def test_the_webhook_never_sees_the_charts_own_pods_nor_the_control_plane(render: RenderFn) -> None:
    rendered = render({"webhook": {"enabled": True, "objectSelector": {"matchLabels": {"team": "shop"}}}})
    (webhook,) = rendered.get("MutatingWebhookConfiguration", "maxine-sidecar-injector", namespace=None)["webhooks"]

    for _, template in pod_templates(rendered):
        labels = {**template["metadata"]["labels"], "team": "shop"}
        assert not selects(webhook["objectSelector"], labels)
    assert selects(webhook["objectSelector"], {"app": "orders", "team": "shop"})
    assert not selects(webhook["objectSelector"], {"app": "orders"})
    assert not selects(webhook["namespaceSelector"], {"kubernetes.io/metadata.name": "kube-system"})
    assert selects(webhook["namespaceSelector"], {"kubernetes.io/metadata.name": "shop"})


def test_the_generated_webhook_certificate_is_trusted_through_the_ca_bundle(render: RenderFn) -> None:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    rendered = render(VALUE_SETS["injection"])
    secret = rendered.get("Secret", "maxine-webhook-tls")
    (webhook,) = rendered.get("MutatingWebhookConfiguration", "maxine-sidecar-injector", namespace=None)["webhooks"]

    ca = x509.load_pem_x509_certificate(base64.b64decode(webhook["clientConfig"]["caBundle"]))
    assert secret["data"]["ca.crt"] == webhook["clientConfig"]["caBundle"]
    serving = x509.load_pem_x509_certificate(decoded(secret, "tls.crt").encode())
    serving.verify_directly_issued_by(ca)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert "maxine-webhook.maxine.svc" in names
    key = serialization.load_pem_private_key(decoded(secret, "tls.key").encode(), password=None)
    assert key.public_key().public_numbers() == serving.public_key().public_numbers()  # type: ignore[union-attr]
    lifetime = serving.not_valid_after_utc - serving.not_valid_before_utc
    assert lifetime.days >= 3649


def test_cert_manager_issues_the_webhook_certificate_and_injects_its_ca(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["injection-cert-manager"])

    assert rendered.find("Secret", "maxine-webhook-tls") is None
    certificate = rendered.get("Certificate", "maxine-webhook")
    assert certificate["spec"]["secretName"] == "maxine-webhook-tls"
    assert "maxine-webhook.maxine.svc" in certificate["spec"]["dnsNames"]
    issuer = rendered.get("Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"] == {"selfSigned": {}}

    configuration = rendered.get("MutatingWebhookConfiguration", "maxine-sidecar-injector", namespace=None)
    assert configuration["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "maxine/maxine-webhook"}
    assert "caBundle" not in configuration["webhooks"][0]["clientConfig"]


def test_cert_manager_can_use_an_issuer_of_yours(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["injection-cert-manager-issuer"])

    assert rendered.of_kind("Issuer") == []
    assert rendered.get("Certificate", "maxine-webhook")["spec"]["issuerRef"] == {
        "name": "company-ca",
        "kind": "ClusterIssuer",
    }
    (webhook,) = rendered.get("MutatingWebhookConfiguration", "maxine-sidecar-injector", namespace=None)["webhooks"]
    assert webhook["failurePolicy"] == "Fail"


def test_injection_without_the_operator_is_refused(render: RenderFn) -> None:
    with pytest.raises(
        helm_python.HelmRenderError, match=re.escape("webhook.enabled=true needs operator.enabled=true")
    ):
        render({"webhook": {"enabled": True}, "operator": {"enabled": False}})


# The operator: settings, peering, permissions.


def test_operator_is_told_the_registry_meshes_and_catalog_settings(render: RenderFn) -> None:
    env = render({"operator": {"meshes": ["istio", "gateway"], "catalog": {"ttl": 45}}}).env(
        "maxine-operator", "operator"
    )

    assert env["MAXINE_URL"]["value"] == "http://maxine.maxine.svc:8080"
    assert env["MAXINE_OPERATOR_MESHES"]["value"] == "istio,gateway"
    assert env["MAXINE_OPERATOR_CATALOG_TTL"]["value"] == "45"
    assert env["MAXINE_OPERATOR_PEERING"]["value"] == "false"
    assert "MAXINE_OPERATOR_NAMESPACES" not in env


def test_several_operators_elect_one_through_a_cluster_peering(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["operator-ha"])

    env = rendered.env("maxine-operator", "operator")
    assert env["MAXINE_OPERATOR_PEERING"]["value"] == "true"
    peering = rendered.get("ClusterKopfPeering", env["MAXINE_OPERATOR_PEERING_NAME"]["value"], namespace=None)
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert rendered.get("PodDisruptionBudget", "maxine-operator")["spec"]["minAvailable"] == 1
    rules = rendered.get("ClusterRole", "maxine-operator", namespace=None)["rules"]
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    } in rules


def test_a_single_operator_is_never_run_twice_during_an_upgrade(render: RenderFn) -> None:
    assert render().get("Deployment", "maxine-operator")["spec"]["strategy"] == {"type": "Recreate"}


def test_cluster_wide_operator_may_do_what_its_handlers_do_and_no_more(render: RenderFn) -> None:
    from maxine_operator import crds  # noqa: PLC0415
    from maxine_operator.mesh import MESH_MARKERS  # noqa: PLC0415

    rules = render().get("ClusterRole", "maxine-operator", namespace=None)["rules"]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(
            group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"] for rule in rules
        )

    for custom_resource in crds.CUSTOM_RESOURCES:
        for verb in ("get", "list", "watch", "patch"):
            assert allowed(crds.GROUP, custom_resource.plural, verb), (custom_resource.plural, verb)
        assert allowed(crds.GROUP, f"{custom_resource.plural}/status", "patch")
    assert allowed("", "events", "create")
    assert allowed("apiextensions.k8s.io", "customresourcedefinitions", "watch")
    assert allowed("discovery.k8s.io", "endpointslices", "watch")
    assert allowed("", "services", "patch")
    for mesh, (group, _, plural) in MESH_MARKERS.items():
        for verb in ("get", "create", "patch", "delete"):
            assert allowed(group, plural, verb), (mesh, verb)

    # Least privilege: no wildcards, no secrets, no pods, nothing that changes the cluster's access.
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    forbidden = (("", "secrets"), ("", "pods"), ("rbac.authorization.k8s.io", "roles"), ("", "namespaces"))
    for group, resource in forbidden:
        assert not any(allowed(group, resource, verb) for verb in ("get", "list", "create", "patch", "delete")), (
            resource
        )


def test_operator_gets_rules_only_for_the_meshes_it_emits(render: RenderFn) -> None:
    rules = render({"operator": {"meshes": ["istio"]}}).get("ClusterRole", "maxine-operator", namespace=None)["rules"]

    groups = {group for rule in rules for group in rule["apiGroups"]}
    assert {"networking.istio.io", "security.istio.io"} <= groups
    assert not groups & {"linkerd.io", "policy.linkerd.io", "gateway.networking.k8s.io", "split.smi-spec.io"}


def test_operator_watching_one_namespace_gets_a_role_there_and_only_cluster_reads(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["one-namespace"])

    assert rendered.env("maxine-operator", "operator")["MAXINE_OPERATOR_NAMESPACES"]["value"] == "shop"
    role = rendered.get("Role", "maxine-operator", namespace="shop")
    assert any("maxineacls" in rule["resources"] for rule in role["rules"])
    binding = rendered.get("RoleBinding", "maxine-operator", namespace="shop")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "maxine-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "maxine-operator", "namespace": NAMESPACE}]

    cluster_rules = rendered.get("ClusterRole", "maxine-operator", namespace=None)["rules"]
    cluster_resources = {resource for rule in cluster_rules for resource in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in cluster_rules)


def test_operators_watching_namespaces_elect_one_per_namespace(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["operator-ha-one-namespace"])

    for namespace in ("shop", "billing"):
        assert rendered.get("KopfPeering", "maxine-operator", namespace=namespace)["apiVersion"] == "kopf.dev/v1"
        rules = rendered.get("Role", "maxine-operator", namespace=namespace)["rules"]
        assert any(rule["resources"] == ["kopfpeerings"] for rule in rules)
    assert rendered.of_kind("ClusterKopfPeering") == []


def test_without_the_operator_nothing_of_it_is_installed(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["no-operator"])

    assert [item["metadata"]["name"] for item in rendered.of_kind("Deployment")] == ["maxine"]
    assert rendered.of_kind("ClusterRole") == []
    assert rendered.of_kind("ClusterRoleBinding") == []


# Network policies and monitoring.


def test_network_policies_let_clients_reach_the_registry_and_only_registries_reach_redis(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["everything"])
    registry_labels = rendered.get("Deployment", "maxine")["spec"]["template"]["metadata"]["labels"]
    operator_labels = rendered.get("Deployment", "maxine-operator")["spec"]["template"]["metadata"]["labels"]
    redis_labels = rendered.get("Deployment", "maxine-redis")["spec"]["template"]["metadata"]["labels"]

    registry = rendered.get("NetworkPolicy", "maxine")
    assert selects(registry["spec"]["podSelector"], registry_labels)
    (rule,) = registry["spec"]["ingress"]
    assert {(port["port"], port["protocol"]) for port in rule["ports"]} == {
        ("http", "TCP"),
        ("grpc", "TCP"),
        ("heartbeat-udp", "UDP"),
    }
    assert rule["from"] == [{"namespaceSelector": {}}]

    redis = rendered.get("NetworkPolicy", "maxine-redis")
    assert selects(redis["spec"]["podSelector"], redis_labels)
    (peer,) = redis["spec"]["ingress"][0]["from"]
    assert selects(peer["podSelector"], registry_labels)
    assert not selects(peer["podSelector"], operator_labels)

    operator = rendered.get("NetworkPolicy", "maxine-operator")
    assert [port["port"] for port in operator["spec"]["ingress"][0]["ports"]] == ["webhook"]


def test_service_monitor_scrapes_the_registry_metrics_with_the_given_token(render: RenderFn) -> None:
    rendered = render(VALUE_SETS["everything"])

    monitor = rendered.get("ServiceMonitor", "maxine")
    service = rendered.get("Service", "maxine")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    for other in ("maxine-redis", "maxine-webhook"):
        assert not selects(monitor["spec"]["selector"], rendered.get("Service", other)["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics/prometheus"
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "scraper", "key": "token"}}


def test_service_monitor_with_auth_and_no_token_is_refused(render: RenderFn) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape("needs serviceMonitor.bearerTokenSecret")):
        render({"auth": AUTH, "serviceMonitor": {"enabled": True}})


def test_extra_registry_settings_become_environment_variables_in_a_stable_order(render: RenderFn) -> None:
    env = render(VALUE_SETS["everything"]).container("maxine", "registry")["env"]

    names = [variable["name"] for variable in env]
    assert names[-2:] == ["MAX_INSTANCES", "RATE_LIMIT_ENABLED"]
    assert {"name": "MAX_INSTANCES", "value": "5000"} in env
