"""
The operator's handlers, registered on one ``kopf.OperatorRegistry`` built from an ``OperatorConfig``.

What each custom resource goes through:

1. **Create, update, resume** (one function, three kopf causes): push the spec into the registry
   through its binding, after pruning what the last pushed record owned and the new one does not.
   Success writes ``status`` (``observedGeneration``, ``applied``, conditions ``Synced`` and
   ``Ready``) and emits the mesh objects of splits and intentions. A registry that cannot be
   reached is a ``kopf.TemporaryError`` (retried after ``retry_delay``); a registry that refuses the
   content is a ``kopf.PermanentError``. Both leave the reason in the conditions, and a Kubernetes
   Event when the condition flips.
2. **Resync** (a kopf timer every ``resync_interval``): the same push, so that drift heals.
3. **Delete** (behind kopf's finalizer): remove the record's entries from the registry; 404 counts
   as removed. An unreachable registry is retried, but never forever: after ``cleanup_timeout``
   the finalizer is released with a warning Event, and the annotation
   ``maxine.io/skip-registry-cleanup: "true"`` releases it at once.

Besides the custom resources: a watchdog that re-pushes everything when the registry restarts,
the catalog sync of annotated Services, and (when enabled) the sidecar injection webhook.

Handlers reach the shared runtime (registry client, Kubernetes client, desired states) through an
``OperatorState`` captured when the registry of handlers is built, not through globals, so that
several operators (in tests) can run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from maxine_operator import catalog, crds, status, webhook
from maxine_operator.bindings import BINDINGS, Binding, Record, TrafficSplitBinding, split_summary
from maxine_operator.config import OperatorConfig
from maxine_operator.kube import KubeClient, resource_path
from maxine_operator.mesh import IntentionOwner, MeshEmitter, MeshError, owner_reference
from maxine_operator.registry_api import RegistryApi, RegistryError, RegistryRejected, RegistryUnavailable
from maxine_operator.watchdog import RegistryWatchdog

logger = logging.getLogger(__name__)

SKIP_CLEANUP_ANNOTATION = "maxine.io/skip-registry-cleanup"
FINALIZER = "maxine.io/registry-cleanup"
PROGRESS_PREFIX = "operator.maxine.io"
WEBHOOK_ID = "inject-sidecar"

LoginFn = Callable[..., Awaitable[kopf.ConnectionInfo | None] | kopf.ConnectionInfo | None]
ObjectKey = tuple[str, str, str]  # (plural, namespace, name)


@dataclasses.dataclass(slots=True)
class Desired:
    """What one resource wants in the registry, as of its last successful push."""

    binding: Binding
    spec: dict[str, Any]
    # The resource as an owner reference, for the mesh objects that stand for it.
    reference: dict[str, Any]


class OperatorState:
    """The runtime the handlers share: clients, desired states, catalog pokes, the watchdog."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.api = RegistryApi(
            base_url=config.registry_url, token=config.registry_token, timeout=config.request_timeout
        )
        self.kube = KubeClient(discovery_ttl=config.discovery_ttl)
        self.mesh = MeshEmitter(kube=self.kube, meshes=config.meshes)
        self.desired: dict[ObjectKey, Desired] = {}
        self.pokes: dict[tuple[str, str], asyncio.Event] = {}
        # One writer at a time for the shared access objects of a destination, so the last write saw every rule.
        self.destination_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.watchdog = RegistryWatchdog(api=self.api, interval=config.health_interval, on_restart=self.push_all)

    def __repr__(self) -> str:
        return f"OperatorState(registry={self.api.base_url!r}, resources={len(self.desired)})"

    async def push_all(self, instance_id: str) -> None:
        """Push every known desired state again (the registry restarted), and wake every catalog loop."""
        pushed = failed = 0
        for (plural, namespace, name), desired in list(self.desired.items()):
            try:
                await desired.binding.push(self.api, desired.spec)
                pushed += 1
            except RegistryError as exc:
                failed += 1
                logger.warning("Could not push %s %s/%s again after the restart: %s", plural, namespace, name, exc)
        for poke in self.pokes.values():
            poke.set()
        logger.info("Pushed %d resource(s) to the restarted registry %s; %d failed.", pushed, instance_id, failed)

    async def close(self) -> None:
        await self.watchdog.stop()
        await self.api.close()
        await self.kube.close()


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def operator_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    # Progress and diff-base in annotations of our own, so that the status schema stays strict.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PROGRESS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PROGRESS_PREFIX, key="last-handled-configuration"
    )
    # Events for what a person must look at; the successes are in the status.
    settings.posting.level = logging.WARNING
    settings.peering.standalone = not config.peering
    settings.peering.name = config.peering_name
    settings.peering.clusterwide = config.clusterwide
    if config.webhook:
        settings.admission.server = kopf.WebhookServer(
            addr=config.webhook_host,
            port=config.webhook_port,
            certfile=config.webhook_cert,
            pkeyfile=config.webhook_key,
            insecure=config.webhook_insecure,
        )
    return settings


# Status.


def _new_status(
    *,
    body: kopf.Body,
    synced: status.Condition,
    ready: status.Condition,
    applied: Record | None,
    extra: Mapping[str, Any] = {},
) -> dict[str, Any]:
    current = body.get("status") or {}
    generation = body.metadata.get("generation")
    document: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": status.merge_conditions(
            current.get("conditions"), [synced, ready], generation=generation, now=status.now_rfc3339()
        ),
        **extra,
    }
    if applied is not None:
        document["applied"] = applied
    return document


def _patch_status(*, body: kopf.Body, patch: kopf.Patch, new: Mapping[str, Any]) -> bool:
    """Patch only what differs, so that a resync that changes nothing writes nothing; True if it patched."""
    current = body.get("status") or {}
    changes = {key: value for key, value in new.items() if current.get(key) != value}
    for key, value in changes.items():
        patch.status[key] = value
    return bool(changes)


def _announce_flip(*, body: kopf.Body, synced: status.Condition) -> None:
    """One Event when Synced flips or changes its reason, not one per retry."""
    previous = next(
        (item for item in (body.get("status") or {}).get("conditions") or () if item.get("type") == status.SYNCED), None
    )
    if (
        previous is not None
        and previous.get("reason") == synced.reason
        and previous.get("status") == str(synced.status)
    ):
        return
    if synced.status:
        kopf.info(body, reason=synced.reason, message=synced.message)
    else:
        kopf.warn(body, reason=synced.reason, message=synced.message)


# The custom resources.


def _spec_of(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body.get("spec") or {}))


def _key(binding: Binding, body: kopf.Body) -> ObjectKey:
    return (binding.resource.plural, str(body.metadata.namespace), str(body.metadata.name))


async def reconcile(state: OperatorState, binding: Binding, *, body: kopf.Body, patch: kopf.Patch) -> None:
    """Push one resource's spec into the registry and say how it went in its status."""
    spec = _spec_of(body)
    record = binding.record(spec)
    previous = (body.get("status") or {}).get("applied")

    # Registry first: what it holds is what the conditions report.
    try:
        if previous and previous != record:
            await binding.prune(state.api, previous=previous, current=record)
        await binding.push(state.api, spec)
    except RegistryError as exc:
        temporary = isinstance(exc, RegistryUnavailable)
        reason = status.REASON_REGISTRY_UNAVAILABLE if temporary else status.REASON_REJECTED
        message = f"The registry did not take {binding.describe(spec)}: {exc}"
        synced = status.Condition(status.SYNCED, False, reason, message)
        ready = status.Condition(status.READY, False, status.REASON_NOT_SYNCED, "Not in effect until synced.")
        _announce_flip(body=body, synced=synced)
        _patch_status(
            body=body,
            patch=patch,
            new=_new_status(body=body, synced=synced, ready=ready, applied=previous),
        )
        if temporary:
            raise kopf.TemporaryError(message, delay=state.config.retry_delay) from exc
        raise kopf.PermanentError(message) from exc
    state.desired[_key(binding, body)] = Desired(
        binding=binding, spec=spec, reference=owner_reference(body, controller=False)
    )

    # Then the meshes: a failure there keeps the resource synced but not ready.
    extra: dict[str, Any] = {}
    ready = status.Condition(status.READY, True, status.REASON_READY, "In effect in the registry.")
    if state.mesh.serves(binding.resource):
        try:
            extra["meshResources"] = await emit_mesh(state, binding, body=body, spec=spec)
            if extra["meshResources"]:
                ready = status.Condition(
                    status.READY,
                    True,
                    status.REASON_READY,
                    f"In effect in the registry and {len(extra['meshResources'])} mesh object(s).",
                )
        except MeshError as exc:
            ready = status.Condition(status.READY, False, status.REASON_MESH_FAILED, str(exc))
            kopf.warn(body, reason=status.REASON_MESH_FAILED, message=str(exc))
    if isinstance(binding, TrafficSplitBinding):
        extra["weights"] = split_summary(spec)
    if binding.resource == crds.SERVICE_CONFIG:
        extra["keyCount"] = len(record["keys"])

    synced = status.Condition(
        status.SYNCED, True, status.REASON_SYNCED, f"The registry holds {binding.describe(spec)}."
    )
    _announce_flip(body=body, synced=synced)
    new = _new_status(body=body, synced=synced, ready=ready, applied=record, extra=extra)
    if _patch_status(body=body, patch=patch, new=new):
        logger.debug("Status of %s %s/%s updated.", binding.resource.kind, body.metadata.namespace, body.metadata.name)


# Mesh objects.


def intention_owners(state: OperatorState, *, namespace: str) -> list[IntentionOwner]:
    """Every intention resource of a namespace the operator holds, as the mesh generators need them."""
    return [
        IntentionOwner(
            namespace=namespace,
            source=desired.spec["source"],
            destination=desired.spec["destination"],
            action=desired.spec["action"],
            reference=desired.reference,
        )
        for (plural, desired_namespace, _), desired in state.desired.items()
        if plural == crds.INTENTION.plural and desired_namespace == namespace
    ]


async def emit_destination(state: OperatorState, *, namespace: str, destination: str) -> list[str]:
    """Write the access objects of one destination from every intention about it; the objects written."""
    lock = state.destination_locks.setdefault((namespace, destination), asyncio.Lock())
    async with lock:
        # Read the rules inside the lock: whoever writes last has seen every rule written before it.
        owners = intention_owners(state, namespace=namespace)
        relevant = [owner for owner in owners if owner.destination in (destination, "*")]
        # Only the resources that name the destination own its objects: a wildcard rule outlives any one service.
        references = [owner.reference for owner in relevant if owner.destination == destination]
        if not references:
            return []
        objects = await state.mesh.access_objects(destination=destination, owners=relevant, namespace=namespace)
        return await state.mesh.apply(objects, owners=references)


async def emit_mesh(state: OperatorState, binding: Binding, *, body: kopf.Body, spec: Mapping[str, Any]) -> list[str]:
    """Create or patch the mesh objects of a split or an intention, and delete the ones it no longer needs."""
    namespace = str(body.metadata.namespace)
    previous: list[str] = list((body.get("status") or {}).get("meshResources") or [])
    if binding.resource == crds.TRAFFIC_SPLIT:
        objects = await state.mesh.split_objects(spec=spec, namespace=namespace)
        written = await state.mesh.apply(objects, owners=[owner_reference(body, controller=True)])
    else:
        destination = str(spec["destination"])
        # TODO: LATER: a wildcard destination would need access objects for every service of the namespace.
        written = (
            [] if destination == "*" else await emit_destination(state, namespace=namespace, destination=destination)
        )
        applied = (body.get("status") or {}).get("applied") or {}
        old_destination = applied.get("destination")
        if old_destination and old_destination not in (destination, "*"):
            # The rule moved to another service: the old one's objects are rebuilt from what is left.
            written_old = await emit_destination(state, namespace=namespace, destination=old_destination)
            previous = [item for item in previous if item not in written_old]
    await state.mesh.delete(previous, keep=written)
    return written


def _deletion_age(body: kopf.Body) -> float:
    stamp = body.metadata.get("deletionTimestamp")
    if not stamp:
        return 0.0
    moment = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return (datetime.datetime.now(tz=datetime.UTC) - moment).total_seconds()


async def clean_up(state: OperatorState, binding: Binding, *, body: kopf.Body) -> None:
    """Remove the resource's entries from the registry before Kubernetes lets it go."""
    state.desired.pop(_key(binding, body), None)
    if body.metadata.annotations.get(SKIP_CLEANUP_ANNOTATION) == "true":
        kopf.warn(
            body,
            reason="CleanupSkipped",
            message=f"{SKIP_CLEANUP_ANNOTATION} is set: registry entries are left as they are.",
        )
        return

    applied = (body.get("status") or {}).get("applied")
    record = applied if applied else binding.record(_spec_of(body))
    try:
        await binding.prune(state.api, previous=record, current=None)
    except RegistryUnavailable as exc:
        if _deletion_age(body) > state.config.cleanup_timeout:
            kopf.warn(
                body,
                reason="CleanupAbandoned",
                message=f"The registry was unreachable for {state.config.cleanup_timeout:g} s; entries are left: {exc}",
            )
            return
        raise kopf.TemporaryError(
            f"The registry cannot remove the entries yet: {exc}", delay=state.config.retry_delay
        ) from exc
    except RegistryRejected as exc:
        # Retrying a refused removal cannot help; holding the finalizer would block the namespace forever.
        kopf.warn(
            body, reason="CleanupRejected", message=f"The registry refused the removal; entries may be left: {exc}"
        )

    if binding.resource == crds.INTENTION and state.mesh.serves(binding.resource):
        # Objects this resource owned alone go with it (garbage collection); shared ones are rebuilt without it.
        destination = str(record.get("destination"))
        try:
            if destination != "*":
                rebuilt = await emit_destination(state, namespace=str(body.metadata.namespace), destination=destination)
                previous = (body.get("status") or {}).get("meshResources") or []
                await state.mesh.delete(previous, keep=rebuilt)
        except MeshError as exc:
            kopf.warn(body, reason=status.REASON_MESH_FAILED, message=str(exc))


def _register_custom_resources(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    config = state.config
    for binding in BINDINGS:
        resource = (crds.GROUP, crds.VERSION, binding.resource.plural)

        def make_sync(bound: Binding) -> Callable[..., Awaitable[None]]:
            async def push(*, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
                await reconcile(state, bound, body=body, patch=patch)

            return push

        def make_cleanup(bound: Binding) -> Callable[..., Awaitable[None]]:
            async def cleanup(*, body: kopf.Body, **_: Any) -> None:
                await clean_up(state, bound, body=body)

            return cleanup

        sync = make_sync(binding)
        kopf.on.resume(*resource, registry=registry, id="sync-on-resume")(sync)
        kopf.on.create(*resource, registry=registry, id="sync-on-create")(sync)
        kopf.on.update(*resource, registry=registry, id="sync-on-update")(sync)
        kopf.timer(
            *resource,
            registry=registry,
            id="resync",
            interval=config.resync_interval,
            initial_delay=config.resync_interval,
        )(sync)
        kopf.on.delete(*resource, registry=registry, id="cleanup")(make_cleanup(binding))


# The catalog of annotated Services.


def _register_catalog(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    config = state.config

    @kopf.daemon("v1", "services", registry=registry, id="catalog", annotations={catalog.REGISTER_ANNOTATION: "true"})
    async def sync_service(*, body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        namespace, name = str(body.metadata.namespace), str(body.metadata.name)
        poke = state.pokes.setdefault((namespace, name), asyncio.Event())
        service = catalog.ServiceCatalog(api=state.api, namespace=namespace, name=name, ttl=config.catalog_ttl)
        slices_path = resource_path(
            group=catalog.ENDPOINTSLICE_GROUP,
            version=catalog.ENDPOINTSLICE_VERSION,
            plural="endpointslices",
            namespace=namespace,
        )
        try:
            while not stopped:
                poke.clear()
                annotations = body.metadata.annotations
                try:
                    slices = await state.kube.list(slices_path, label_selector=f"{catalog.SERVICE_NAME_LABEL}={name}")
                    # The selector is applied here too: an API server (or an emulator) may ignore it.
                    own = [
                        item
                        for item in slices
                        if (item.get("metadata", {}).get("labels") or {}).get(catalog.SERVICE_NAME_LABEL) == name
                    ]
                    endpoints = catalog.ready_endpoints(own, port=annotations.get(catalog.PORT_ANNOTATION))
                    service_name = catalog.maxine_service_name(name=name, annotations=annotations)
                    await service.sync(service_name=service_name, endpoints=endpoints)
                except Exception as exc:
                    logger.warning("Catalog sync of Service %s/%s failed this round: %s", namespace, name, exc)
                # Whichever comes first: the next round, or a change of the Service's EndpointSlices.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), timeout=config.catalog_refresh)
        finally:
            state.pokes.pop((namespace, name), None)
            leaving = stopped.reason is not None and bool(
                stopped.reason
                & (kopf.DaemonStoppingReason.RESOURCE_DELETED | kopf.DaemonStoppingReason.FILTERS_MISMATCH)
            )
            if leaving:
                await service.deregister_all()

    @kopf.on.event(
        catalog.ENDPOINTSLICE_GROUP,
        catalog.ENDPOINTSLICE_VERSION,
        "endpointslices",
        registry=registry,
        id="catalog-poke",
    )
    def poke_service(*, body: kopf.Body, **_: Any) -> None:
        service_name = body.metadata.labels.get(catalog.SERVICE_NAME_LABEL)
        poke = state.pokes.get((str(body.metadata.namespace), str(service_name)))
        if poke is not None:
            poke.set()


# Sidecar injection.


def _register_webhook(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    config = state.config
    registry_url = config.sidecar_registry_url or config.registry_url

    @kopf.on.mutate(
        "v1",
        "pods",
        registry=registry,
        id=WEBHOOK_ID,
        operations={"CREATE"},
        annotations={webhook.INJECT_ANNOTATION: "true"},
    )
    def inject_sidecar(*, body: kopf.Body, patch: kopf.Patch, warnings: list[str], **_: Any) -> None:
        container, notes = webhook.injection(body, image=config.sidecar_image, registry_url=registry_url)
        warnings.extend(notes)
        if container is None:
            return
        patch.fns.append(lambda pod: pod.setdefault("spec", {}).setdefault("containers", []).append(container))


# Lifecycle.


def build_registry(
    config: OperatorConfig, *, state: OperatorState, login: LoginFn | None = None
) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a registry of its own (kopf's global one is left alone)."""
    registry = kopf.OperatorRegistry()
    login_fn: LoginFn = login if login is not None else default_login

    @kopf.on.login(registry=registry, id="login")
    async def log_in(**kwargs: Any) -> kopf.ConnectionInfo:
        info = login_fn(**kwargs)
        if asyncio.iscoroutine(info):
            info = await info
        if not isinstance(info, kopf.ConnectionInfo):
            raise kopf.LoginError("No Kubernetes credentials: neither a service account nor a kubeconfig was found.")
        # The operator's own client speaks with the same credentials as kopf.
        await state.kube.connect(info)
        return info

    @kopf.on.startup(registry=registry, id="start-watchdog")
    async def start(**_: Any) -> None:
        logger.info("Maxine operator starting: %r", config)
        state.watchdog.start()

    @kopf.on.cleanup(registry=registry, id="close")
    async def stop(**_: Any) -> None:
        await state.close()

    @kopf.on.probe(registry=registry, id="registry")
    def registry_probe(**_: Any) -> dict[str, Any]:
        return {"reachable": state.watchdog.reachable, "instanceId": state.watchdog.instance_id}

    _register_custom_resources(registry, state)
    if config.catalog:
        _register_catalog(registry, state)
    if config.webhook:
        _register_webhook(registry, state)
    return registry
