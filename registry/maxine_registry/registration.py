"""
Turning a client's registration document into a validated ``Registration``, or refusing it.

Every transport hands the decoded body to ``parse_registration``; nothing reaches the registry
core unchecked. The checks are the registry's documented limits: name and host lengths, the port
range, the size of the metadata, and the shape of the metadata keys the registry itself reads
(``version``, ``tags``, ``weight``, ``healthCheck``). Other metadata keys are the client's own and kept as sent.

A fleet registers thousands of instances with byte-identical metadata (the same version and tags),
so what the registry reads out of metadata is worked out once per distinct JSON and shared: every
such instance holds the same bytes, version and tag set, and a registration whose metadata was seen
before skips re-checking it. Ports and lease lengths are shared the same way. A health check is the
exception: it is checked against each instance's own address, so it is checked every time.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from maxine_registry.errors import InvalidInput, PayloadTooLarge
from maxine_registry.health_checks import HealthCheckSpec
from maxine_registry.model import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_VERSION_LENGTH,
    MAX_WEIGHT,
    MIN_WEIGHT,
    ParsedMetadata,
    compact_bytes,
    intern_tags,
    normalize_host,
    validate_port,
    validate_service_name,
)

DEFAULT_MAX_METADATA_BYTES = 16 * 1024
MIN_TTL = 1.0
MAX_TTL = 24 * 3600.0

# Distinct metadata documents remembered for sharing, and the largest one remembered: past the count
# the table starts over, so metadata unique to each instance cannot grow it without bound, and
# large documents (rarely shared) are never held beyond the instances that carry them.
MAX_SHARED_METADATA = 4096
MAX_SHARED_METADATA_BYTES = 512
# Distinct lease lengths remembered for sharing; past this, new ones are simply not shared.
MAX_SHARED_TTLS = 256
# Distinct ports remembered for sharing (an int object above 256 is 32 bytes); past this the table starts over.
MAX_SHARED_PORTS = 4096
# Distinct sets of metadata keys remembered for sharing. Metadata unique to each instance (a pod
# name, say) still has the same keys across a fleet, and a set of them is 200 bytes or more.
MAX_SHARED_KEY_SETS = 1024


@dataclass(slots=True)
class Registration:
    """
    A validated registration, as registration guards and the registry core receive it; only ever read.

    Not frozen: a frozen dataclass sets each field through ``object.__setattr__``, which makes building
    one, once per registration, about three times slower; for the same reason it is built positionally.
    """

    service_name: str
    host: str
    port: int
    ttl: float | None
    metadata: ParsedMetadata


_shared_metadata: dict[bytes, ParsedMetadata] = {}
_shared_ttls: dict[float, float] = {}
_shared_ports: dict[int, int] = {}
_shared_key_sets: dict[frozenset[str], frozenset[str]] = {}


def parse_version(value: object, *, field: str = "metadata.version") -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput(f"{field} must be a string, got {value!r}.")
    version = str(value)
    if not version or len(version) > MAX_VERSION_LENGTH or not version.isprintable() or " " in version:
        raise InvalidInput(f"{field} must be 1 to {MAX_VERSION_LENGTH} printable characters without spaces.")
    return sys.intern(version)


def parse_tags(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise InvalidInput(f"metadata.tags must be a list of strings, got {value!r}.")
    if len(value) > MAX_TAGS:
        raise InvalidInput(f"metadata.tags holds {len(value)} tags; at most {MAX_TAGS} are allowed.")
    for tag in value:
        if not tag or len(tag) > MAX_TAG_LENGTH or "," in tag:
            raise InvalidInput(f"each tag must be 1 to {MAX_TAG_LENGTH} characters without commas, got {tag!r}.")
    return intern_tags(value)


def parse_weight(value: object) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"metadata.weight must be a number, got {value!r}.")
    if not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise InvalidInput(f"metadata.weight must be between {MIN_WEIGHT} and {MAX_WEIGHT:.0f}, got {value!r}.")
    return float(value)


def parse_ttl(value: object) -> float | None:
    if value is None:
        return None
    # A lease length seen before is valid (only valid ones are remembered): one lookup settles it.
    # ``type`` rather than ``isinstance``: a bool is an int in Python, and a list cannot be looked up.
    if type(value) is int or type(value) is float:
        shared = _shared_ttls.get(value)
        if shared is not None:
            return shared
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"ttl must be a number of seconds, got {value!r}.")
    if not MIN_TTL <= value <= MAX_TTL:
        raise InvalidInput(f"ttl must be between {MIN_TTL:.0f} and {MAX_TTL:.0f} seconds, got {value!r}.")
    ttl = float(value)
    if len(_shared_ttls) < MAX_SHARED_TTLS:
        _shared_ttls[ttl] = ttl
    return ttl


def parse_metadata(metadata: dict[str, Any], *, encoded: bytes) -> ParsedMetadata:
    """
    Read version, tags and weight out of metadata whose JSON is ``encoded``, or refuse it.

    For metadata not in the shared table yet (``parse_registration`` looks there first): the
    result is remembered for every registration whose metadata encodes to the same bytes, so the
    checks here run once per distinct document. ``encoded`` must already be within the size limit.
    """
    parsed = ParsedMetadata(
        metadata_json=compact_bytes(encoded),
        version=parse_version(metadata.get("version")),
        tags=parse_tags(metadata.get("tags")),
        weight=parse_weight(metadata.get("weight")),
        keys=_share_keys(frozenset(metadata)),
    )
    if len(encoded) <= MAX_SHARED_METADATA_BYTES:
        if len(_shared_metadata) >= MAX_SHARED_METADATA:
            _shared_metadata.clear()
        _shared_metadata[parsed.metadata_json] = parsed
    return parsed


def _share_keys(keys: frozenset[str]) -> frozenset[str]:
    shared = _shared_key_sets.get(keys)
    if shared is not None:
        return shared
    if len(_shared_key_sets) >= MAX_SHARED_KEY_SETS:
        _shared_key_sets.clear()
    _shared_key_sets[keys] = keys
    return keys


def parse_registration(body: object, *, max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> Registration:
    """Validate a decoded registration body; raise ``InvalidInput`` or ``PayloadTooLarge`` on the first problem."""
    if not isinstance(body, dict):
        raise InvalidInput("The registration must be a JSON object with serviceName, host and port.")

    # A known name or lease length is settled by one lookup inside its check (only valid ones are
    # remembered). Ports are looked up first here: the table also shares the int object.
    service_name = validate_service_name(body.get("serviceName"))
    host = normalize_host(body.get("host"))

    # Instances on one port (8080 across a fleet) share one int object instead of holding a copy each.
    # ``type`` rather than ``isinstance``: a bool is an int in Python (True would find port 1).
    value = body.get("port")
    port = _shared_ports.get(value) if type(value) is int else None
    if port is None:
        port = validate_port(value)
        if len(_shared_ports) >= MAX_SHARED_PORTS:
            _shared_ports.clear()
        _shared_ports[port] = port
    ttl = parse_ttl(body.get("ttl"))

    metadata: Any = body.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a JSON object, got {type(metadata).__name__}.")
    try:
        encoded = orjson.dumps(metadata)
    except TypeError as exc:  # only reachable from non-JSON transports; JSON input always re-encodes
        raise InvalidInput(f"metadata cannot be encoded as JSON: {exc}.") from None
    if len(encoded) > max_metadata_bytes:
        raise PayloadTooLarge(
            f"metadata is {len(encoded)} bytes as JSON; the limit is {max_metadata_bytes} bytes.",
            code="metadata_too_large",
        )
    health_check = metadata.get("healthCheck")
    if health_check is not None:
        HealthCheckSpec.parse(health_check, host=host, port=port)

    # Identical metadata is the rule: one lookup, and the checks only for a document not seen before.
    parsed = _shared_metadata.get(encoded)
    if parsed is None:
        parsed = parse_metadata(metadata, encoded=encoded)
    return Registration(service_name, host, port, ttl, parsed)
