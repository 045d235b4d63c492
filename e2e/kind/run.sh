#!/usr/bin/env bash
# End-to-end run of Maxine on a throwaway kind cluster: one command, on a machine with Docker.
#
#   e2e/kind/run.sh
#
# It creates a kind cluster, builds the image from the repository's Dockerfile, loads it into the
# cluster, installs the Helm chart with sidecar injection on, applies the example custom resources
# and waits until the operator has synced them, deploys a demo app annotated for injection, and
# checks through a port-forward that the registry discovers the demo pod by its IP. Mesh objects are
# checked for each mesh whose CRDs the cluster has (a plain kind cluster has none). The cluster is
# deleted at the end, whether the run passed or not, unless MAXINE_KEEP_CLUSTER=true.
#
# Needs: docker, kind, kubectl, helm, curl. Settings (environment):
#   MAXINE_KIND_CLUSTER   cluster name (default maxine-e2e); an existing cluster of that name is refused
#   MAXINE_IMAGE          image name:tag to build and load (default maxine:e2e)
#   MAXINE_LOCAL_PORT     local port of the port-forward (default 18080)
#   MAXINE_E2E_WAIT       seconds to wait for each condition (default 180)
#   MAXINE_KEEP_CLUSTER   true keeps the cluster for a look around afterwards
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${MAXINE_KIND_CLUSTER:-maxine-e2e}"
IMAGE="${MAXINE_IMAGE:-maxine:e2e}"
LOCAL_PORT="${MAXINE_LOCAL_PORT:-18080}"
WAIT_SECONDS="${MAXINE_E2E_WAIT:-180}"
KEEP_CLUSTER="${MAXINE_KEEP_CLUSTER:-false}"

RELEASE=maxine
NAMESPACE=maxine
DEMO_NAMESPACE=maxine-demo
DEMO_SERVICE=demo-echo
EXAMPLES_NAMESPACE=shop
CUSTOM_RESOURCES=maxineacls,maxineintentions,maxinetrafficsplits,maxineserviceconfigs,maxinedependencies
REGISTRY_URL="http://127.0.0.1:${LOCAL_PORT}"

CREATED_CLUSTER=false
PORT_FORWARD_PID=""
WORK_DIR="$(mktemp -d)"

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

# Every kubectl and helm call names the kind cluster's context, so the run never touches another cluster.
k() { kubectl --context "kind-${CLUSTER}" "$@"; }

require() {
    command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed; $2"
}

# Poll a command until it succeeds, for at most WAIT_SECONDS; $1 says what is awaited.
wait_for() {
    local what="$1"
    shift
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            fail "gave up after ${WAIT_SECONDS}s waiting for ${what}"
        fi
        sleep 2
    done
}

diagnose() {
    step "Diagnostics"
    k get pods --all-namespaces -o wide || true
    k --namespace "$NAMESPACE" logs "deployment/${RELEASE}" --tail=40 || true
    k --namespace "$NAMESPACE" logs "deployment/${RELEASE}-operator" --tail=40 || true
    k --namespace "$DEMO_NAMESPACE" logs "deployment/${DEMO_SERVICE}" --all-containers --tail=40 || true
}

cleanup() {
    local status=$?
    if [[ -n "$PORT_FORWARD_PID" ]]; then
        kill "$PORT_FORWARD_PID" 2>/dev/null || true
        wait "$PORT_FORWARD_PID" 2>/dev/null || true
    fi
    if [[ "$CREATED_CLUSTER" == true ]]; then
        if ((status != 0)); then
            diagnose
        fi
        if [[ "$KEEP_CLUSTER" == true ]]; then
            step "Keeping cluster ${CLUSTER} (delete it with: kind delete cluster --name ${CLUSTER})"
        else
            step "Deleting cluster ${CLUSTER}"
            kind delete cluster --name "$CLUSTER" || true
        fi
    fi
    rm -rf "$WORK_DIR"
    exit "$status"
}
trap cleanup EXIT

registry_answers() { curl -fsS --max-time 2 "${REGISTRY_URL}/health"; }

demo_is_discovered() {
    curl -fsS --max-time 2 "${REGISTRY_URL}/discover?serviceName=${DEMO_SERVICE}" >"${WORK_DIR}/discover.json" &&
        grep -q "\"host\":\"${DEMO_POD_IP}\"" "${WORK_DIR}/discover.json"
}

mesh_objects_exist() {
    [[ -n "$(k --namespace "$EXAMPLES_NAMESPACE" get "$1" -l app.kubernetes.io/managed-by=maxine-operator -o name)" ]]
}

step "Checking tools"
require docker "see https://docs.docker.com/engine/install/"
require kind "see https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
require kubectl "see https://kubernetes.io/docs/tasks/tools/"
require helm "see https://helm.sh/docs/intro/install/"
require curl "install it with your package manager"
docker info >/dev/null 2>&1 || fail "docker is installed but its engine does not answer (is the daemon running?)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    fail "a kind cluster named ${CLUSTER} exists already; delete it or set MAXINE_KIND_CLUSTER"
fi

step "Creating kind cluster ${CLUSTER}"
CREATED_CLUSTER=true
kind create cluster --name "$CLUSTER" --wait 120s

step "Building image ${IMAGE}"
docker build --tag "$IMAGE" "$ROOT"

step "Loading the image into the cluster"
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "Installing the Helm chart (release ${RELEASE}, namespace ${NAMESPACE}, sidecar injection on)"
helm install "$RELEASE" "${ROOT}/charts/maxine" \
    --kube-context "kind-${CLUSTER}" \
    --namespace "$NAMESPACE" --create-namespace \
    --set image.repository="${IMAGE%:*}" \
    --set image.tag="${IMAGE##*:}" \
    --set image.pullPolicy=Never \
    --set webhook.enabled=true \
    --wait --timeout "${WAIT_SECONDS}s"

step "Waiting for the registry and the operator to roll out"
k --namespace "$NAMESPACE" rollout status "deployment/${RELEASE}" --timeout "${WAIT_SECONDS}s"
k --namespace "$NAMESPACE" rollout status "deployment/${RELEASE}-operator" --timeout "${WAIT_SECONDS}s"

step "Applying the example custom resources (manifests/examples.yaml)"
k apply -f "${ROOT}/manifests/examples.yaml"
info "waiting until the operator has pushed each of them into the registry (condition Synced)"
k --namespace "$EXAMPLES_NAMESPACE" wait "$CUSTOM_RESOURCES" --all --for=condition=Synced --timeout "${WAIT_SECONDS}s"

step "Deploying the demo app ${DEMO_SERVICE}, annotated for sidecar injection"
# The demo app is Python's http.server from the Maxine image itself, so the run pulls no other image.
k create namespace "$DEMO_NAMESPACE"
cat >"${WORK_DIR}/demo.yaml" <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ${DEMO_SERVICE}
  namespace: ${DEMO_NAMESPACE}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: ${DEMO_SERVICE}
  template:
    metadata:
      labels:
        app: ${DEMO_SERVICE}
      annotations:
        maxine.io/inject: "true"
        maxine.io/service-name: ${DEMO_SERVICE}
        maxine.io/port: "8000"
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: app
          image: ${IMAGE}
          imagePullPolicy: Never
          command: ["python", "-m", "http.server", "8000", "--directory", "/tmp"]
          ports:
            - containerPort: 8000
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
EOF
k apply -f "${WORK_DIR}/demo.yaml"
k --namespace "$DEMO_NAMESPACE" rollout status "deployment/${DEMO_SERVICE}" --timeout "${WAIT_SECONDS}s"
CONTAINERS="$(k --namespace "$DEMO_NAMESPACE" get pods -l "app=${DEMO_SERVICE}" -o jsonpath='{.items[0].spec.containers[*].name}')"
info "containers of the demo pod: ${CONTAINERS}"
[[ " ${CONTAINERS} " == *" maxine-sidecar "* ]] || fail "the webhook did not inject maxine-sidecar into the demo pod"
DEMO_POD_IP="$(k --namespace "$DEMO_NAMESPACE" get pods -l "app=${DEMO_SERVICE}" -o jsonpath='{.items[0].status.podIP}')"
[[ -n "$DEMO_POD_IP" ]] || fail "the demo pod has no IP"
info "demo pod IP: ${DEMO_POD_IP}"

step "Checking discovery through a port-forward (${REGISTRY_URL})"
k --namespace "$NAMESPACE" port-forward "service/${RELEASE}" "${LOCAL_PORT}:8080" >"${WORK_DIR}/port-forward.log" 2>&1 &
PORT_FORWARD_PID=$!
wait_for "the registry to answer ${REGISTRY_URL}/health" registry_answers
wait_for "the registry to discover ${DEMO_SERVICE} at ${DEMO_POD_IP}" demo_is_discovered
info "discover answered: $(cat "${WORK_DIR}/discover.json")"

step "Checking mesh objects for the meshes whose CRDs are installed"
for mesh in virtualservices.networking.istio.io serviceprofiles.linkerd.io httproutes.gateway.networking.k8s.io trafficsplits.split.smi-spec.io; do
    if k get crd "$mesh" >/dev/null 2>&1; then
        wait_for "the operator to emit ${mesh} objects in ${EXAMPLES_NAMESPACE}" mesh_objects_exist "$mesh"
        info "${mesh}: present"
    else
        info "${mesh}: CRD not installed, skipped"
    fi
done

step "All checks passed"
