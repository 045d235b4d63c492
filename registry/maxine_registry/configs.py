"""
Configuration management: versioned key/value settings per service and scope, with history.

The model follows Nacos's configuration service. A config entry is addressed by a service name, a
key, and a scope of three parts: a ``namespace`` (default ``"default"``, for tenants or
environments) and an optional ``region`` and ``zone`` (a missing one is the empty scope ``""``).
Scopes are isolated: ``timeout`` of ``orders`` in ``us-east`` has nothing to do with the same key
in ``eu-west``, and a watch on one scope never sees another's changes.

Every ``set`` creates a new version, numbered from 1 and monotonic per key, and keeps the last
``MAX_HISTORY`` versions (value, metadata, timestamp) for ``history``. Versions stay monotonic
across a delete: the store remembers the last version of up to ``MAX_TOMBSTONES`` deleted keys, so
a key set again after a delete continues where it left off rather than restarting at 1, which a
watcher comparing versions would read as going backwards.

Values are any JSON. Everything is bounded: key length, the size of one value and of its
metadata, keys per service and scope, entries overall, and the bytes of every stored version
together. A refused ``set`` changes nothing and publishes nothing.

Each change is published on the registry's event bus (``config_changed``, ``config_deleted``),
which is what Server-Sent Event watches, WebSockets and MQTT feed from.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from maxine_registry.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from maxine_registry.events import Event, EventBus
from maxine_registry.model import validate_service_name
from maxine_registry.snapshots import Apply

logger = logging.getLogger(__name__)

CONFIG_CHANGED = "config_changed"
CONFIG_DELETED = "config_deleted"

DEFAULT_NAMESPACE = "default"
MAX_KEY_LENGTH = 256
MAX_SCOPE_LENGTH = 64
# A value must fit in a request body (64 KiB by default) together with its envelope.
MAX_VALUE_BYTES = 32 * 1024
MAX_METADATA_BYTES = 4 * 1024
MAX_KEYS_PER_SERVICE = 1000
MAX_ENTRIES = 100_000
MAX_HISTORY = 20
MAX_TOMBSTONES = 10_000
# Every kept version counts, history included: this is the memory the store may hold.
MAX_TOTAL_BYTES = 256 * 1024 * 1024

_KEY_RE = re.compile(r"[A-Za-z0-9._:/-]+")
_SCOPE_RE = re.compile(r"[A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True, order=True)
class ConfigScope:
    namespace: str = DEFAULT_NAMESPACE
    region: str = ""
    zone: str = ""

    def view(self) -> dict[str, str]:
        return {"namespace": self.namespace, "region": self.region, "zone": self.zone}


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    version: int
    value: Any
    metadata: dict[str, Any]
    timestamp: int  # milliseconds since the epoch
    size: int  # bytes of value and metadata as JSON, for the store's memory bound

    def view(self) -> dict[str, Any]:
        return {"version": self.version, "value": self.value, "metadata": self.metadata, "timestamp": self.timestamp}


@dataclass(slots=True)
class ConfigEntry:
    """One key of one service in one scope; ``versions[-1]`` is the current value."""

    service_name: str
    key: str
    scope: ConfigScope
    versions: deque[ConfigVersion] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))

    @property
    def current(self) -> ConfigVersion:
        return self.versions[-1]

    def view(self) -> dict[str, Any]:
        current = self.current
        return {
            "serviceName": self.service_name,
            "key": self.key,
            "value": current.value,
            "version": current.version,
            "metadata": current.metadata,
            "updatedAt": current.timestamp,
            **self.scope.view(),
        }


# Entries are grouped by (scope, service) so that "all keys of a service" is one lookup.
GroupKey = tuple[ConfigScope, str]
EntryKey = tuple[ConfigScope, str, str]


# Parsing what clients send.


def parse_key(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"key is required and must be a non-empty string, got {value!r}.")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidInput(f"key is longer than {MAX_KEY_LENGTH} characters.")
    if not _KEY_RE.fullmatch(value):
        raise InvalidInput(f"key {value!r} is not valid: use letters, digits, '.', '_', '-', ':' and '/'.")
    return sys.intern(value)


def _scope_part(value: object, *, name: str, default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {value!r}.")
    if len(value) > MAX_SCOPE_LENGTH or not _SCOPE_RE.fullmatch(value):
        raise InvalidInput(
            f"{name} {value!r} is not valid: use at most {MAX_SCOPE_LENGTH} letters, digits, '.', '_' and '-'."
        )
    return sys.intern(value)


def parse_scope(source: Mapping[str, Any]) -> ConfigScope:
    """The scope named in a body or a query; a missing namespace is ``default``, a missing region or zone is ``""``."""
    return ConfigScope(
        namespace=_scope_part(source.get("namespace"), name="namespace", default=DEFAULT_NAMESPACE),
        region=_scope_part(source.get("region"), name="region", default=""),
        zone=_scope_part(source.get("zone"), name="zone", default=""),
    )


def parse_address(source: Mapping[str, Any], *, with_key: bool = True) -> tuple[str, str, ConfigScope]:
    """The service name, key (``""`` when ``with_key`` is false) and scope that a body or a query names."""
    service_name = validate_service_name(source.get("serviceName"))
    key = parse_key(source.get("key")) if with_key else ""
    return service_name, key, parse_scope(source)


def _json_size(value: object, *, name: str) -> int:
    try:
        return len(orjson.dumps(value))
    except TypeError as exc:  # only reachable from transports that do not decode JSON themselves
        raise InvalidInput(f"{name} cannot be encoded as JSON: {exc}.") from None


def _parse_metadata(value: object) -> tuple[dict[str, Any], int]:
    if value is None:
        return {}, 2
    if not isinstance(value, dict):
        raise InvalidInput(f"metadata must be a JSON object, got {type(value).__name__}.")
    size = _json_size(value, name="metadata")
    if size > MAX_METADATA_BYTES:
        raise PayloadTooLarge(
            f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES} bytes.", code="metadata_too_large"
        )
    return value, size


def _parse_value(value: object) -> int:
    size = _json_size(value, name="value")
    if size > MAX_VALUE_BYTES:
        raise PayloadTooLarge(
            f"value is {size} bytes as JSON; the limit is {MAX_VALUE_BYTES} bytes.", code="value_too_large"
        )
    return size


class ConfigStore:
    def __init__(self, *, events: EventBus, wall: Callable[[], float] = time.time) -> None:
        self._events = events
        self._wall = wall
        self._groups: dict[GroupKey, dict[str, ConfigEntry]] = {}
        self._tombstones: OrderedDict[EntryKey, int] = OrderedDict()
        self._entry_count = 0
        self._bytes = 0

    def __repr__(self) -> str:
        return f"ConfigStore(entries={self._entry_count}, bytes={self._bytes})"

    @property
    def entry_count(self) -> int:
        return self._entry_count

    # Reads.

    def get(self, *, service_name: str, key: str, scope: ConfigScope) -> ConfigEntry:
        entry = self._groups.get((scope, service_name), {}).get(key)
        if entry is None:
            raise NotFound(
                f"Service {service_name!r} has no config {key!r} in {_describe(scope)}.", code="config_not_found"
            )
        return entry

    def all(self, *, service_name: str, scope: ConfigScope) -> list[ConfigEntry]:
        group = self._groups.get((scope, service_name), {})
        return [group[key] for key in sorted(group)]

    # Writes.

    def set(
        self, *, service_name: str, key: str, scope: ConfigScope, value: object, metadata: object = None
    ) -> ConfigEntry:
        """Store a new version of ``key``; raise before changing anything if a limit refuses it."""
        metadata_dict, metadata_size = _parse_metadata(metadata)
        size = _parse_value(value) + metadata_size

        group_key = (scope, service_name)
        group = self._groups.get(group_key)
        entry = group.get(key) if group is not None else None
        if entry is None:
            if group is not None and len(group) >= MAX_KEYS_PER_SERVICE:
                raise Conflict(
                    f"Service {service_name!r} holds {MAX_KEYS_PER_SERVICE} config keys in {_describe(scope)}, "
                    "the limit; delete one first.",
                    code="too_many_keys",
                )
            if self._entry_count >= MAX_ENTRIES:
                raise Unavailable(f"The config store holds its limit of {MAX_ENTRIES} entries.", code="config_full")
        # The oldest version leaves when history is full, which frees its bytes.
        freed = entry.versions[0].size if entry is not None and len(entry.versions) == MAX_HISTORY else 0
        if self._bytes - freed + size > MAX_TOTAL_BYTES:
            raise Unavailable(
                f"The config store holds its limit of {MAX_TOTAL_BYTES} bytes of values and history.",
                code="config_full",
            )

        # Nothing can fail from here on.
        if entry is None:
            entry = ConfigEntry(service_name=service_name, key=key, scope=scope)
            self._groups.setdefault(group_key, {})[key] = entry
            self._entry_count += 1
            last_version = self._tombstones.pop((scope, service_name, key), 0)
        else:
            last_version = entry.current.version
        version = ConfigVersion(
            version=last_version + 1,
            value=value,
            metadata=metadata_dict,
            timestamp=int(self._wall() * 1000),
            size=size,
        )
        self._bytes += size - freed
        entry.versions.append(version)

        self._events.publish(
            CONFIG_CHANGED,
            {"serviceName": service_name, "key": key, "value": value, "version": version.version, **scope.view()},
        )
        logger.debug("Config %s/%s is now at version %d in %s.", service_name, key, version.version, _describe(scope))
        return entry

    def delete(self, *, service_name: str, key: str, scope: ConfigScope) -> ConfigEntry:
        entry = self.get(service_name=service_name, key=key, scope=scope)
        group_key = (scope, service_name)
        group = self._groups[group_key]
        del group[key]
        if not group:
            del self._groups[group_key]
        self._entry_count -= 1
        self._bytes -= sum(version.size for version in entry.versions)
        self._remember_deleted((scope, service_name, key), entry.current.version)

        self._events.publish(
            CONFIG_DELETED,
            {"serviceName": service_name, "key": key, "version": entry.current.version, **scope.view()},
        )
        return entry

    def _remember_deleted(self, entry_key: EntryKey, version: int) -> None:
        self._tombstones[entry_key] = version
        self._tombstones.move_to_end(entry_key)
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)

    # Snapshots: the part named "configs".

    def export(self) -> list[dict[str, Any]]:
        """Every entry with its kept history, oldest version first, in a stable order."""
        return [
            {
                "serviceName": entry.service_name,
                "key": entry.key,
                **entry.scope.view(),
                "versions": [version.view() for version in entry.versions],
            }
            for group_key in sorted(self._groups)
            for entry in self.all(service_name=group_key[1], scope=group_key[0])
        ]

    def prepare(self, data: Any) -> Apply:
        """Validate a whole exported document; the returned function replaces the store's content with it."""
        if not isinstance(data, list):
            raise InvalidInput("The configs snapshot part must be a list of entries.")
        if len(data) > MAX_ENTRIES:
            raise InvalidInput(f"The configs snapshot holds {len(data)} entries; the limit is {MAX_ENTRIES}.")

        groups: dict[GroupKey, dict[str, ConfigEntry]] = {}
        total = 0
        for index, item in enumerate(data):
            entry = _entry_from_snapshot(item, index=index)
            group = groups.setdefault((entry.scope, entry.service_name), {})
            if entry.key in group:
                raise InvalidInput(f"configs[{index}] repeats key {entry.key!r} of {entry.service_name!r}.")
            if len(group) >= MAX_KEYS_PER_SERVICE:
                raise InvalidInput(
                    f"configs[{index}]: {entry.service_name!r} has more than {MAX_KEYS_PER_SERVICE} keys."
                )
            group[entry.key] = entry
            total += sum(version.size for version in entry.versions)
        if total > MAX_TOTAL_BYTES:
            raise InvalidInput(f"The configs snapshot holds {total} bytes; the limit is {MAX_TOTAL_BYTES}.")

        def apply() -> None:
            self._groups = groups
            self._tombstones.clear()
            self._entry_count = len(data)
            self._bytes = total
            logger.info("Configs restored from a snapshot: %d entries.", len(data))

        return apply


def _entry_from_snapshot(item: object, *, index: int) -> ConfigEntry:
    where = f"configs[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object.")
    try:
        service_name = validate_service_name(item.get("serviceName"))
        key = parse_key(item.get("key"))
        scope = parse_scope(item)
    except InvalidInput as error:
        raise InvalidInput(f"{where}: {error.message}") from None
    versions = item.get("versions")
    if not isinstance(versions, list) or not 1 <= len(versions) <= MAX_HISTORY:
        raise InvalidInput(f"{where}.versions must be a list of 1 to {MAX_HISTORY} versions.")

    entry = ConfigEntry(service_name=service_name, key=key, scope=scope)
    previous = 0
    for position, version in enumerate(versions):
        if not isinstance(version, dict):
            raise InvalidInput(f"{where}.versions[{position}] must be an object.")
        number, timestamp = version.get("version"), version.get("timestamp")
        if isinstance(number, bool) or not isinstance(number, int) or number <= previous:
            raise InvalidInput(f"{where}.versions[{position}].version must be an integer above {previous}.")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
            raise InvalidInput(f"{where}.versions[{position}].timestamp must be milliseconds since the epoch.")
        try:
            metadata, metadata_size = _parse_metadata(version.get("metadata"))
            size = _parse_value(version.get("value")) + metadata_size
        except (InvalidInput, PayloadTooLarge) as error:
            raise InvalidInput(f"{where}.versions[{position}]: {error.message}") from None
        entry.versions.append(
            ConfigVersion(version=number, value=version.get("value"), metadata=metadata, timestamp=timestamp, size=size)
        )
        previous = number
    return entry


def _describe(scope: ConfigScope) -> str:
    parts = [f"namespace {scope.namespace!r}"]
    if scope.region:
        parts.append(f"region {scope.region!r}")
    if scope.zone:
        parts.append(f"zone {scope.zone!r}")
    return ", ".join(parts)


# Watches: a bounded queue of one scope's changes, fed by the event bus.

WATCHED_EVENTS = frozenset({CONFIG_CHANGED, CONFIG_DELETED})
DEFAULT_WATCH_QUEUE = 256
MAX_WATCHES = 1000


class ConfigWatch:
    """
    The changes of one scope (optionally one key) waiting for one watcher to take them.

    ``offer`` runs inside ``EventBus.publish``, so it only filters and enqueues. The queue is
    bounded: a watcher that falls ``queue_size`` events behind is marked ``overflowed`` and its
    queue ends, so a slow client costs a fixed amount of memory and is then let go; it should
    reconnect and read the current values again.
    """

    def __init__(self, *, service_name: str, scope: ConfigScope, key: str | None, queue_size: int) -> None:
        self.service_name = service_name
        self.scope = scope
        self.key = key
        self.queue_size = queue_size
        # Unbounded in type, bounded by ``offer``: the slot past the bound is for the end marker.
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.overflowed = False
        self.closed = False
        # What ends the connection that carries this watch, set by the transport; shutdown uses it.
        self.cut: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (
            f"ConfigWatch(service_name={self.service_name!r}, scope={self.scope!r}, key={self.key!r}, "
            f"queued={self.queue.qsize()}, overflowed={self.overflowed}, closed={self.closed})"
        )

    def matches(self, event: Event) -> bool:
        data = event.data
        return (
            event.event in WATCHED_EVENTS
            and data.get("serviceName") == self.service_name
            and data.get("namespace") == self.scope.namespace
            and data.get("region") == self.scope.region
            and data.get("zone") == self.scope.zone
            and (self.key is None or data.get("key") == self.key)
        )

    def offer(self, event: Event) -> None:
        if self.closed or not self.matches(event):
            return
        if self.queue.qsize() >= self.queue_size:
            self.overflowed = True
            self.close()
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        """End the watch: whoever reads the queue gets what is queued, then ``None``."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class ConfigWatches:
    """Every open watch, so that each is unsubscribed when it ends and all end when the server stops."""

    def __init__(self, *, events: EventBus, queue_size: int = DEFAULT_WATCH_QUEUE, limit: int = MAX_WATCHES) -> None:
        self._events = events
        self.queue_size = queue_size
        self.limit = limit
        self._open: dict[ConfigWatch, Callable[[], None]] = {}
        self._released = asyncio.Event()

    def __len__(self) -> int:
        return len(self._open)

    def open(self, *, service_name: str, scope: ConfigScope, key: str | None) -> ConfigWatch:
        if len(self._open) >= self.limit:
            raise Unavailable(
                f"{self.limit} config watches are open, the limit; try again later.", code="too_many_watches"
            )
        watch = ConfigWatch(service_name=service_name, scope=scope, key=key, queue_size=self.queue_size)
        self._open[watch] = self._events.subscribe(watch.offer)
        return watch

    def release(self, watch: ConfigWatch) -> None:
        watch.close()
        unsubscribe = self._open.pop(watch, None)
        if unsubscribe is not None:
            unsubscribe()
            self._released.set()

    async def wait_released(self) -> None:
        """Return once no watch is open."""
        while self._open:
            self._released.clear()
            await self._released.wait()

    def close_all(self) -> None:
        for watch in list(self._open):
            watch.close()

    def cut_all(self) -> None:
        """End the connections of the watches still open; for shutdown, after ``close_all`` had its chance."""
        for watch in list(self._open):
            if watch.cut is not None:
                watch.cut()
