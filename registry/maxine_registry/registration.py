"""
Turning a client's registration document into a validated ``Registration``, or refusing it.

Every transport hands the decoded body to ``parse_registration``; nothing reaches the registry
core unchecked. The checks are the registry's documented limits: name and host lengths, the port
range, the size of the metadata, and the shape of the metadata keys the registry itself reads
(``version``, ``tags``, ``weight``, ``healthCheck``). Other metadata keys are the client's own and kept as sent.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from maxine_registry.errors import InvalidInput, PayloadTooLarge
from maxine_registry.health_checks import HealthCheckSpec
from maxine_registry.model import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_VERSION_LENGTH,
    MAX_WEIGHT,
    MIN_WEIGHT,
    compact_json,
    intern_tags,
    normalize_host,
    validate_port,
    validate_service_name,
)

DEFAULT_MAX_METADATA_BYTES = 16 * 1024
MIN_TTL = 1.0
MAX_TTL = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Registration:
    service_name: str
    host: str
    port: int
    metadata_json: bytes
    version: str | None
    tags: frozenset[str]
    weight: float
    ttl: float | None


def parse_version(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput(f"metadata.version must be a string, got {value!r}.")
    version = str(value)
    if not version or len(version) > MAX_VERSION_LENGTH or not version.isprintable() or " " in version:
        raise InvalidInput(f"metadata.version must be 1 to {MAX_VERSION_LENGTH} printable characters without spaces.")
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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"ttl must be a number of seconds, got {value!r}.")
    if not MIN_TTL <= value <= MAX_TTL:
        raise InvalidInput(f"ttl must be between {MIN_TTL:.0f} and {MAX_TTL:.0f} seconds, got {value!r}.")
    return float(value)


def parse_registration(body: object, *, max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> Registration:
    """Validate a decoded registration body; raise ``InvalidInput`` or ``PayloadTooLarge`` on the first problem."""
    if not isinstance(body, dict):
        raise InvalidInput("The registration must be a JSON object with serviceName, host and port.")

    service_name = validate_service_name(body.get("serviceName"))
    host = normalize_host(body.get("host"))
    port = validate_port(body.get("port"))
    ttl = parse_ttl(body.get("ttl"))

    metadata: Any = body.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a JSON object, got {type(metadata).__name__}.")
    try:
        metadata_json = compact_json(metadata)
    except TypeError as exc:  # only reachable from non-JSON transports; JSON input always re-encodes
        raise InvalidInput(f"metadata cannot be encoded as JSON: {exc}.") from None
    if len(metadata_json) > max_metadata_bytes:
        raise PayloadTooLarge(
            f"metadata is {len(metadata_json)} bytes as JSON; the limit is {max_metadata_bytes} bytes.",
            code="metadata_too_large",
        )
    if metadata.get("healthCheck") is not None:
        HealthCheckSpec.parse(metadata["healthCheck"], host=host, port=port)

    return Registration(
        service_name=service_name,
        host=host,
        port=port,
        metadata_json=metadata_json,
        version=parse_version(metadata.get("version")),
        tags=parse_tags(metadata.get("tags")),
        weight=parse_weight(metadata.get("weight")),
        ttl=ttl,
    )
