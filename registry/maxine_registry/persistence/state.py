"""
The state persistence keeps, cut into keyed entries, and the changes that move it.

Both stores (the file journal and Redis) see the registry's state the same way: a few *kinds*, each
a mapping of *key* to a JSON *value*:

- ``node``: one entry per instance, keyed by node id, valued as a client would register it
  (``serviceName``, ``host``, ``port``, ``metadata``, ``ttl``). Leases, health and breakers are not
  kept: they are runtime observations, learnt again after a restart.
- ``traffic``: one entry per service with a traffic policy (``distribution``, ``retired``).
- every other snapshot part (configs, governance, dependencies, ...): entries as its
  ``PartLayout`` cuts the part's snapshot export (one per config entry, ACL, intention,
  blacklisted service, dependency list). A part without a layout is one opaque entry, key ``""``.

A ``Change`` says "this key now holds this value" (``None``: it is gone), or, with key ``None``,
"this whole kind is now this mapping" (what a ``/restore`` does). Changes carry state, not
operations, so applying one twice, or applying an older one and then a newer one, ends in the
same place: later changes to the same key win.

``ChangeTracker`` learns which keys changed without any feature having to call it: it listens to
the event bus (each kind has the events that name its keys), notes every registration before it
happens (a re-registration that changes metadata publishes no event), and wraps each snapshot
part so that a restore marks the whole part. The stores take the marked keys when they flush and
read their values *then*, from the live state: many changes to one key between two flushes cost
one record.

``StateModel`` reads the live state into changes, applies changes to it, and turns a snapshot
document into entries and back. Applying goes through the same validation and the same core
calls as requests do (``parse_registration`` then ``Registry.register``, a part's ``prepare``),
with the tracker suspended so that applied changes are not recorded again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from maxine_registry import events as ev
from maxine_registry.errors import InvalidInput, MaxineError
from maxine_registry.events import Event, EventBus
from maxine_registry.model import Instance, make_node_id
from maxine_registry.registration import Registration, parse_registration, parse_version
from maxine_registry.registry import Registry
from maxine_registry.snapshots import SNAPSHOT_FORMAT, SNAPSHOT_VERSION, Apply, SnapshotPart
from maxine_registry.traffic import parse_distribution

logger = logging.getLogger(__name__)

NODE = "node"
TRAFFIC = "traffic"
# The snapshot part that holds the two kinds above.
REGISTRY_PART = "registry"
# The key of a part kept as one opaque entry.
WHOLE = ""

Entries = dict[str, Any]
# Marked keys by kind; None marks the whole kind.
Dirty = dict[str, set[str] | None]


@dataclass(frozen=True, slots=True)
class Change:
    """One key's new value (None: removed), or with ``key`` None the whole kind's entries as ``value``."""

    kind: str
    key: str | None
    value: Any
    # A node removed because its lease ended, not by a deregistration: replicas publish another event.
    expired: bool = False

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"kind": self.kind, "key": self.key, "value": self.value}
        if self.expired:
            document["expired"] = True
        return document

    @classmethod
    def from_json(cls, document: object) -> Change:
        if not isinstance(document, dict) or not isinstance(document.get("kind"), str):
            raise InvalidInput(f"A change record must be an object with a kind, got {document!r:.200}.")
        key = document.get("key")
        if key is not None and not isinstance(key, str):
            raise InvalidInput(f"A change record's key must be a string or null, got {key!r:.200}.")
        value = document.get("value")
        if key is None and not isinstance(value, dict):
            raise InvalidInput("A change record for a whole kind must hold an object of entries.")
        return cls(kind=document["kind"], key=key, value=value, expired=bool(document.get("expired")))


# How snapshot parts cut into entries.


@dataclass(frozen=True, slots=True)
class PartLayout:
    """
    How one snapshot part splits into keyed entries, and which events name which key.

    ``key_of`` answers None when an event concerns the whole part (a restore). ``announce`` is for
    parts whose ``prepare``/apply publishes nothing: it publishes what a change of one key means, so
    that watchers on a replica see changes made on another one.
    """

    events: frozenset[str]
    key_of: Callable[[Event], str | None]
    split: Callable[[Any], Entries]
    join: Callable[[Mapping[str, Any]], Any]
    announce: Callable[[EventBus, str, Any, Any], None] | None = None


def _config_key(item: Mapping[str, Any]) -> str:
    # Scopes and service names hold no '/', so only the config key (last) may, and the join is unambiguous.
    return "/".join(
        (
            str(item.get("namespace") or "default"),
            str(item.get("region") or ""),
            str(item.get("zone") or ""),
            str(item.get("serviceName")),
            str(item.get("key")),
        )
    )


def _config_event_key(event: Event) -> str | None:
    data = event.data
    return _config_key(data) if "serviceName" in data and "key" in data else None


def _split_configs(data: Any) -> Entries:
    return {_config_key(item): item for item in data} if isinstance(data, list) else {}


def _join_configs(entries: Mapping[str, Any]) -> list[Any]:
    return [entries[key] for key in sorted(entries)]


def _announce_config(events: EventBus, key: str, old: Any, new: Any) -> None:
    """Publish what a config store publishes for a change of this entry (its restore publishes nothing)."""
    namespace, region, zone, service_name, config_key = key.split("/", 4)
    scope = {"namespace": namespace, "region": region, "zone": zone}
    old_current = old["versions"][-1] if old and old.get("versions") else None
    new_current = new["versions"][-1] if new and new.get("versions") else None
    if new_current is None and old_current is not None:
        data = {"serviceName": service_name, "key": config_key, "version": old_current.get("version"), **scope}
        events.publish(ev.CONFIG_DELETED, data)
    elif new_current is not None and new_current != old_current:
        data = {
            "serviceName": service_name,
            "key": config_key,
            "value": new_current.get("value"),
            "version": new_current.get("version"),
            **scope,
        }
        events.publish(ev.CONFIG_CHANGED, data)


def _governance_event_key(event: Event) -> str | None:
    data = event.data
    if data.get("change") == "restored":
        return None
    if event.event == "intention_changed":
        return f"intention/{data.get('source')}/{data.get('destination')}"
    prefix = "acl" if event.event == "acl_changed" else "blacklist"
    return f"{prefix}/{data.get('serviceName')}"


def _split_governance(data: Any) -> Entries:
    if not isinstance(data, dict):
        return {}
    entries: Entries = {}
    for acl in data.get("acls") or []:
        entries[f"acl/{acl.get('serviceName')}"] = acl
    for rule in data.get("intentions") or []:
        entries[f"intention/{rule.get('source')}/{rule.get('destination')}"] = rule
    for service_name in data.get("blacklist") or []:
        entries[f"blacklist/{service_name}"] = service_name
    return entries


def _join_governance(entries: Mapping[str, Any]) -> dict[str, Any]:
    ordered = sorted(entries)
    return {
        "acls": [entries[key] for key in ordered if key.startswith("acl/")],
        "intentions": [entries[key] for key in ordered if key.startswith("intention/")],
        "blacklist": [entries[key] for key in ordered if key.startswith("blacklist/")],
    }


def _dependency_event_key(event: Event) -> str | None:
    name = event.data.get("serviceName")
    return name if isinstance(name, str) else None


def _split_dependencies(data: Any) -> Entries:
    return {name: sorted(targets) for name, targets in data.items() if targets} if isinstance(data, dict) else {}


def _join_dependencies(entries: Mapping[str, Any]) -> dict[str, Any]:
    return {name: entries[name] for name in sorted(entries) if entries[name]}


def _announce_dependencies(events: EventBus, key: str, old: Any, new: Any) -> None:
    before, after = set(old or ()), set(new or ())
    for target in sorted(after - before):
        events.publish("dependency_added", {"serviceName": key, "dependsOn": target})
    for target in sorted(before - after):
        events.publish("dependency_removed", {"serviceName": key, "dependsOn": target})


# The parts this module knows how to cut into entries. A stateful feature that adds a snapshot part
# adds its layout here; until then its part is kept whole and recorded on restores only.
LAYOUTS: dict[str, PartLayout] = {
    "configs": PartLayout(
        events=frozenset({ev.CONFIG_CHANGED, ev.CONFIG_DELETED}),
        key_of=_config_event_key,
        split=_split_configs,
        join=_join_configs,
        announce=_announce_config,
    ),
    "governance": PartLayout(
        events=frozenset({"acl_changed", "intention_changed", "blacklist_changed"}),
        key_of=_governance_event_key,
        split=_split_governance,
        join=_join_governance,
    ),
    "dependencies": PartLayout(
        events=frozenset({"dependency_added", "dependency_removed"}),
        key_of=_dependency_event_key,
        split=_split_dependencies,
        join=_join_dependencies,
        announce=_announce_dependencies,
    ),
}

OPAQUE = PartLayout(
    events=frozenset(),
    key_of=lambda event: None,
    split=lambda data: {WHOLE: data},
    join=lambda entries: entries.get(WHOLE),
)


def node_value(instance: Instance) -> dict[str, Any]:
    """An instance as a node entry; its metadata is the client's JSON as it came (an orjson fragment)."""
    return {
        "serviceName": instance.service_name,
        "host": instance.host,
        "port": instance.port,
        "metadata": orjson.Fragment(instance.metadata_json),
        "ttl": instance.ttl,
    }


def _same_registration(instance: Instance, value: Any) -> bool:
    """Does a node entry register exactly what the instance holds already?"""
    if not isinstance(value, dict) or value.get("ttl") != instance.ttl:
        return False
    try:
        metadata_json = orjson.dumps(value.get("metadata") or {})
    except TypeError:
        return False
    return metadata_json == instance.metadata_json


def node_key(value: Mapping[str, Any]) -> str:
    return make_node_id(str(value.get("serviceName")), str(value.get("host")), int(value.get("port") or 0))


# Knowing what changed.


class ChangeTracker:
    """
    The keys changed since the stores last took them, learnt from events, registrations and restores.

    ``marks`` counts every mark ever made, so a writer can tell whether a flush that started after
    its change covers it. ``on_mark`` wakes the store's flusher; it must only set a flag.
    """

    def __init__(self, *, events: EventBus) -> None:
        self.dirty: Dirty = {}
        self.marks = 0
        self.on_mark: Callable[[], None] | None = None
        self._suspended = 0
        self._kinds_by_event: dict[str, tuple[str, PartLayout]] = {}
        self._unsubscribe = events.subscribe(self._on_event)

    def __repr__(self) -> str:
        return f"ChangeTracker(dirty_kinds={sorted(self.dirty)}, marks={self.marks})"

    def close(self) -> None:
        self._unsubscribe()

    def watch_parts(self, names: Sequence[str]) -> None:
        """Listen for the events of these parts' layouts."""
        for name in names:
            layout = LAYOUTS.get(name)
            if layout is not None:
                for event_name in layout.events:
                    self._kinds_by_event[event_name] = (name, layout)

    @property
    def has_changes(self) -> bool:
        return bool(self.dirty)

    def mark(self, kind: str, key: str | None) -> None:
        if self._suspended:
            return
        keys = self.dirty.get(kind, set())
        if keys is not None:
            if key is None:
                self.dirty[kind] = None
            else:
                keys.add(key)
                self.dirty[kind] = keys
        self.marks += 1
        if self.on_mark is not None:
            self.on_mark()

    def take(self) -> Dirty:
        dirty, self.dirty = self.dirty, {}
        return dirty

    def give_back(self, dirty: Dirty) -> None:
        """Mark again what a failed flush had taken, so that the next flush writes it."""
        for kind, keys in dirty.items():
            if keys is None:
                self.dirty[kind] = None
            else:
                for key in keys:
                    self.mark(kind, key)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Changes made inside are not marked: they come from the store, which has them already."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def note_registration(self, registration: Registration) -> None:
        """A registration guard that refuses nothing: it marks the node before the registry changes it."""
        self.mark(NODE, make_node_id(registration.service_name, registration.host, registration.port))

    def _on_event(self, event: Event) -> None:
        name = event.event
        data = event.data
        if name in (ev.SERVICE_REGISTERED, ev.SERVICE_DEREGISTERED) or (
            name == ev.SERVICE_UNHEALTHY and data.get("reason") == "lease_expired"
        ):
            self.mark(NODE, data.get("nodeId"))
        elif name == ev.TRAFFIC_CHANGED:
            self.mark(TRAFFIC, data.get("serviceName"))
        else:
            found = self._kinds_by_event.get(name)
            if found is not None:
                kind, layout = found
                self.mark(kind, layout.key_of(event))


class TrackedPart:
    """A snapshot part whose restores mark its kinds whole, so that a ``/restore`` is persisted like any write."""

    def __init__(self, part: SnapshotPart, *, on_restored: Callable[[], None]) -> None:
        self.part = part
        self._on_restored = on_restored

    def __repr__(self) -> str:
        return f"TrackedPart({self.part!r})"

    def export(self) -> Any:
        return self.part.export()

    def prepare(self, data: Any) -> Apply:
        apply = self.part.prepare(data)

        def tracked() -> None:
            apply()
            self._on_restored()

        return tracked


# Reading and changing the live state.


class StateModel:
    """The live state seen as kinds of keyed entries; ``parts`` are the snapshot parts as features made them."""

    def __init__(
        self,
        *,
        registry: Registry,
        parts: Mapping[str, SnapshotPart],
        tracker: ChangeTracker,
        max_metadata_bytes: int,
    ) -> None:
        self.registry = registry
        self._parts = parts
        self.tracker = tracker
        self.max_metadata_bytes = max_metadata_bytes

    def __repr__(self) -> str:
        return f"StateModel(kinds={self.kinds})"

    @property
    def parts(self) -> dict[str, SnapshotPart]:
        """The snapshot parts other than the registry's own, as they are now (features add theirs at setup)."""
        return {name: part for name, part in self._parts.items() if name != REGISTRY_PART}

    @property
    def kinds(self) -> list[str]:
        return [NODE, TRAFFIC, *sorted(self.parts)]

    def layout(self, kind: str) -> PartLayout:
        return LAYOUTS.get(kind, OPAQUE)

    # Reading.

    def read(self, dirty: Dirty) -> list[Change]:
        """The current value of every marked key, as changes; a kind marked whole becomes one change."""
        changes: list[Change] = []
        parts = self.parts
        for kind, keys in dirty.items():
            entries = self._part_entries(kind) if kind in parts else None
            if keys is None:
                changes.append(Change(kind=kind, key=None, value=self.entries(kind)))
                continue
            for key in sorted(keys):
                if kind == NODE:
                    instance = self.registry.get_instance(key)
                    value: Any = node_value(instance) if instance is not None else None
                elif kind == TRAFFIC:
                    policy = self.registry.traffic(key)
                    value = policy.view() if policy is not None and not policy.is_empty else None
                elif entries is not None:
                    value = entries.get(key)
                else:
                    continue
                changes.append(Change(kind=kind, key=key, value=value))
        return changes

    def entries(self, kind: str) -> Entries:
        """Every entry of one kind, from the live state."""
        if kind == NODE:
            return {
                instance.node_id: node_value(instance)
                for service in self.registry.services()
                for instance in service.instances.values()
            }
        if kind == TRAFFIC:
            return dict(self.registry.export_traffic())
        return self._part_entries(kind) if kind in self.parts else {}

    def state(self) -> dict[str, Entries]:
        return {kind: self.entries(kind) for kind in self.kinds}

    def _part_entries(self, kind: str) -> Entries:
        return self.layout(kind).split(self.parts[kind].export())

    # Snapshot documents, as ``GET /backup`` writes them and ``POST /restore`` reads them.

    def document(self, *, created_at: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        state = self.state()
        return document_from_state(state, created_at=created_at, extra=extra)

    # Changing.

    def apply(self, changes: Sequence[Change], *, strict: bool = False) -> None:
        """
        Apply changes to the live state in their order, without marking them.

        A node entry that no longer validates (a limit was lowered since it was written) raises
        ``InvalidInput`` when ``strict``, and is otherwise skipped with a warning: a replica cannot
        refuse what the shared store already holds.
        """
        by_part: dict[str, list[Change]] = {}
        parts = self.parts
        with self.tracker.suspended():
            for change in changes:
                if change.kind == NODE:
                    self._apply_node(change, strict=strict)
                elif change.kind == TRAFFIC:
                    self._apply_traffic(change, strict=strict)
                elif change.kind in parts:
                    by_part.setdefault(change.kind, []).append(change)
                else:
                    logger.warning("A change for the unknown part %r was skipped.", change.kind)
            for kind, part_changes in by_part.items():
                self._apply_part(kind, part_changes, strict=strict)

    def replace(self, state: Mapping[str, Mapping[str, Any]], *, strict: bool = False) -> None:
        """Make the live state equal ``state`` (kinds it lacks are left alone), publishing the differences."""
        self.apply([Change(kind=kind, key=None, value=dict(entries)) for kind, entries in state.items()], strict=strict)

    def _apply_node(self, change: Change, *, strict: bool) -> None:
        registry = self.registry
        if change.key is None:
            wanted: Mapping[str, Any] = change.value
            for service in registry.services():
                for instance in list(service.instances.values()):
                    if instance.node_id not in wanted:
                        registry.deregister(instance.node_id)
            for key, value in wanted.items():
                self._apply_node(Change(kind=NODE, key=key, value=value), strict=strict)
            return

        if change.value is None:
            if registry.get_instance(change.key) is None:
                return
            if change.expired:
                registry.expire(change.key)
            else:
                registry.deregister(change.key)
            return
        existing = registry.get_instance(change.key)
        if existing is not None and _same_registration(existing, change.value):
            # Nothing to change, and leases here are not what the change is about: skip the validation.
            return
        try:
            registry.register(self._registration(change.value))
        except MaxineError as error:
            if strict:
                raise InvalidInput(f"node {change.key!r}: {error.message}", code=error.code) from None
            logger.warning("Node %s could not be restored and was skipped: %s", change.key, error.message)

    def _registration(self, value: Any) -> Registration:
        return parse_registration(value, max_metadata_bytes=self.max_metadata_bytes)

    def _apply_traffic(self, change: Change, *, strict: bool) -> None:
        registry = self.registry
        if change.key is None:
            wanted: Mapping[str, Any] = change.value
            for service_name in list(registry.export_traffic()):
                if service_name not in wanted:
                    registry.put_traffic(service_name, distribution={}, retired=())
            for key, value in wanted.items():
                self._apply_traffic(Change(kind=TRAFFIC, key=key, value=value), strict=strict)
            return

        try:
            distribution, retired = parse_policy(change.value)
        except MaxineError as error:
            if strict:
                raise InvalidInput(f"traffic {change.key!r}: {error.message}", code=error.code) from None
            logger.warning("The traffic policy of %s could not be applied and was skipped: %s", change.key, error)
            return
        registry.put_traffic(change.key, distribution=distribution, retired=retired)

    def _apply_part(self, kind: str, changes: Sequence[Change], *, strict: bool) -> None:
        # TODO: LATER: a part is exported, changed and prepared whole for each batch of changes, which costs
        # time in proportion to the part (fine for ACLs and dependencies, slow for a config store of 100k
        # entries); per-key apply methods on the parts would make it proportional to the change.
        layout = self.layout(kind)
        part = self.parts[kind]
        before = layout.split(part.export())
        after = dict(before)
        for change in changes:
            if change.key is None:
                after = dict(change.value)
            elif change.value is None:
                after.pop(change.key, None)
            else:
                after[change.key] = change.value
        if after == before:
            return

        try:
            apply = part.prepare(layout.join(after))
        except MaxineError as error:
            if strict:
                raise InvalidInput(f"part {kind!r}: {error.message}", code=error.code) from None
            logger.error("Changes to the %s part could not be applied and were skipped: %s", kind, error.message)
            return
        apply()

        if layout.announce is not None:
            for key in sorted(set(before) | set(after)):
                if before.get(key) != after.get(key):
                    layout.announce(self.registry.events, key, before.get(key), after.get(key))


def parse_policy(value: Any) -> tuple[dict[str, float], set[str]]:
    """A traffic entry (None: no policy) as the distribution and retired versions it holds, validated."""
    if value is None:
        return {}, set()
    if not isinstance(value, dict):
        raise InvalidInput("a traffic policy must be an object with distribution and retired.")
    split = value.get("distribution") or {}
    distribution = parse_distribution(split) if split else {}
    retired_versions = value.get("retired") or []
    if not isinstance(retired_versions, list):
        raise InvalidInput("retired must be a list of versions.")
    retired = {version for version in map(parse_version, retired_versions) if version is not None}
    return distribution, retired


# Snapshot documents and entries.


def state_from_document(document: object) -> dict[str, Entries]:
    """The entries a snapshot document holds, by kind; ``InvalidInput`` when it is not a snapshot."""
    if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
        raise InvalidInput(f"The file is not a snapshot (format {SNAPSHOT_FORMAT!r}).", code="invalid_snapshot")
    if document.get("version") != SNAPSHOT_VERSION:
        raise InvalidInput(
            f"Snapshot version {document.get('version')!r} is not supported; this server reads {SNAPSHOT_VERSION}.",
            code="unsupported_snapshot_version",
        )
    parts = document.get("parts")
    if not isinstance(parts, dict):
        raise InvalidInput("The snapshot's parts must be an object.", code="invalid_snapshot")

    state: dict[str, Entries] = {}
    for name, data in parts.items():
        if name == REGISTRY_PART:
            if not isinstance(data, dict):
                raise InvalidInput("The registry part must be an object.", code="invalid_snapshot")
            instances = data.get("instances") or []
            traffic = data.get("traffic") or {}
            if not isinstance(instances, list) or not isinstance(traffic, dict):
                raise InvalidInput("The registry part must hold a list of instances and traffic by service.")
            state[NODE] = {node_key(item): item for item in instances if isinstance(item, dict)}
            state[TRAFFIC] = dict(traffic)
        else:
            state[name] = LAYOUTS.get(name, OPAQUE).split(data)
    return state


def document_from_state(
    state: Mapping[str, Mapping[str, Any]], *, created_at: int, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A snapshot document holding these entries; the same format ``GET /backup`` answers with."""
    parts: dict[str, Any] = {}
    if NODE in state or TRAFFIC in state:
        parts[REGISTRY_PART] = {
            "instances": list(state.get(NODE, {}).values()),
            "traffic": dict(state.get(TRAFFIC, {})),
        }
    for kind, entries in state.items():
        if kind in (NODE, TRAFFIC):
            continue
        data = LAYOUTS.get(kind, OPAQUE).join(entries)
        if data is not None:
            parts[kind] = data
    document: dict[str, Any] = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "createdAt": created_at}
    document.update(extra or {})
    document["parts"] = parts
    return document


def apply_to_state(state: dict[str, Entries], change: Change) -> None:
    """Fold one change into entries held as plain data (a journal replay)."""
    if change.key is None:
        state[change.kind] = dict(change.value)
        return
    entries = state.setdefault(change.kind, {})
    if change.value is None:
        entries.pop(change.key, None)
    else:
        entries[change.key] = change.value
