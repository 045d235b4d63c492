"""
The operator's configuration: one frozen object built by the command line (or by tests) and read everywhere.

Every knob has a named default here, so that the command line, the README and the tests agree on
what "not set" means. The registry token is a secret: it is kept out of ``repr`` so that no log
line, traceback or test failure ever shows it.
"""

from __future__ import annotations

import dataclasses

# Meshes the operator can emit objects for; each is used only when its CRDs are installed too.
MESHES = ("istio", "linkerd", "gateway", "smi")

DEFAULT_REGISTRY_URL = "http://127.0.0.1:8080"
# How often every resource is pushed again, so that drift in the registry heals by itself.
DEFAULT_RESYNC_INTERVAL = 30.0
# How often the registry's /health is read to notice a restart (a new instanceId).
DEFAULT_HEALTH_INTERVAL = 2.0
# The wait before retrying a push that failed because the registry could not be reached.
DEFAULT_RETRY_DELAY = 5.0
# How long a deletion keeps retrying against an unreachable registry before it lets the resource go.
DEFAULT_CLEANUP_TIMEOUT = 600.0
# The lease of instances the catalog sync registers; they are refreshed every third of it.
DEFAULT_CATALOG_TTL = 30.0
# How long the operator waits for one registry request.
DEFAULT_REQUEST_TIMEOUT = 5.0
DEFAULT_PEERING_NAME = "maxine-operator"
DEFAULT_SIDECAR_IMAGE = "ghcr.io/maxine/maxine-sidecar:latest"
DEFAULT_WEBHOOK_PORT = 9443
# How long the list of installed mesh CRDs is trusted before the cluster is asked again.
DEFAULT_DISCOVERY_TTL = 60.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatorConfig:
    """Everything ``maxine-operator`` can be told; see ``cli.py`` for the flags and their environment variables."""

    registry_url: str = DEFAULT_REGISTRY_URL
    registry_token: str | None = dataclasses.field(default=None, repr=False)
    # Empty means every namespace (cluster-wide).
    namespaces: tuple[str, ...] = ()
    meshes: tuple[str, ...] = ()
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    retry_delay: float = DEFAULT_RETRY_DELAY
    cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    discovery_ttl: float = DEFAULT_DISCOVERY_TTL
    catalog: bool = True
    catalog_ttl: float = DEFAULT_CATALOG_TTL
    # Several replicas elect one active operator through kopf's peering objects; standalone skips that.
    peering: bool = False
    peering_name: str = DEFAULT_PEERING_NAME
    # The replica with the highest priority acts; None draws one at random, so replicas of one Deployment differ.
    peering_priority: int | None = None
    liveness_endpoint: str | None = None
    webhook: bool = False
    webhook_host: str = "0.0.0.0"
    webhook_port: int = DEFAULT_WEBHOOK_PORT
    webhook_cert: str | None = None
    webhook_key: str | None = None
    # Plain HTTP for the webhook; for tests and tunnels only, the API server requires HTTPS.
    webhook_insecure: bool = False
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE
    # The registry URL written into injected sidecars; the operator's own URL when not set.
    sidecar_registry_url: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.meshes) - set(MESHES))
        if unknown:
            raise ValueError(f"Unknown mesh(es) {', '.join(unknown)}; choose from {', '.join(MESHES)}.")
        for name in ("resync_interval", "health_interval", "retry_delay", "cleanup_timeout", "request_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
        if not self.catalog_ttl >= 1:
            raise ValueError(f"catalog_ttl must be at least 1 second, got {self.catalog_ttl!r}.")
        if not 0 < self.webhook_port < 65536:
            raise ValueError(f"webhook_port must be a TCP port, got {self.webhook_port!r}.")
        if self.webhook and not self.webhook_insecure and not (self.webhook_cert and self.webhook_key):
            raise ValueError("The webhook needs webhook_cert and webhook_key (or webhook_insecure for local tests).")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def catalog_refresh(self) -> float:
        """Registrations are renewed three times per lease, so one lost refresh never expires them."""
        return self.catalog_ttl / 3
