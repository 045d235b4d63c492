"""
Snapshots of registry state, part by part, for backup, restore and file persistence.

Each feature that holds state (the registry's instances and traffic policies, configs, ACLs,
intentions, dependencies, ...) registers a ``SnapshotPart`` under a stable name. A snapshot is a
versioned document ``{"format": "maxine-snapshot", "version": 1, "parts": {name: data}}``.

Restoring is two-phase so that a bad document changes nothing: every part first ``prepare``s its
data, validating all of it and returning a function that applies it; only when every part has
prepared does any apply run. Applying must not fail for data that prepared cleanly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from maxine_registry.errors import InvalidInput, MaxineError

SNAPSHOT_FORMAT = "maxine-snapshot"
SNAPSHOT_VERSION = 1

Apply = Callable[[], None]


class SnapshotPart(Protocol):
    def export(self) -> Any:
        """The part's state as JSON-ready data."""

    def prepare(self, data: Any) -> Apply:
        """Validate ``data`` completely (raise ``InvalidInput``) and return what applies it."""


def export_snapshot(parts: Mapping[str, SnapshotPart], *, created_at: int) -> dict[str, Any]:
    """The whole state as one document; ``created_at`` is in milliseconds since the epoch."""
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "createdAt": created_at,
        "parts": {name: part.export() for name, part in sorted(parts.items())},
    }


def restore_snapshot(parts: Mapping[str, SnapshotPart], document: object) -> list[str]:
    """
    Put the state a snapshot holds in place of the current one; return the names of the parts restored.

    Each part in the document replaces that part's state; a known part the document lacks is left
    as it is. Every part is prepared (validated) before any is applied, so a document with one bad
    part, an unknown part, or another format or version raises ``InvalidInput`` and changes nothing.
    """
    if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
        raise InvalidInput(
            f"The body must be a snapshot: a JSON object with format {SNAPSHOT_FORMAT!r}.", code="invalid_snapshot"
        )
    version = document.get("version")
    if version != SNAPSHOT_VERSION:
        raise InvalidInput(
            f"Snapshot version {version!r} is not supported; this server reads version {SNAPSHOT_VERSION}.",
            code="unsupported_snapshot_version",
        )
    contents = document.get("parts")
    if not isinstance(contents, dict):
        raise InvalidInput("The snapshot's parts must be an object of part name to data.", code="invalid_snapshot")
    unknown = sorted(set(contents) - set(parts))
    if unknown:
        raise InvalidInput(
            f"The snapshot holds parts this server does not have: {', '.join(unknown)} "
            f"(it has {', '.join(sorted(parts))}).",
            code="unknown_snapshot_part",
        )

    applies: list[Apply] = []
    for name, data in contents.items():
        try:
            applies.append(parts[name].prepare(data))
        except MaxineError as error:
            raise InvalidInput(f"Snapshot part {name!r}: {error.message}", code=error.code) from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InvalidInput(f"Snapshot part {name!r} is malformed: {exc}.", code="invalid_snapshot") from None
    for apply in applies:
        apply()
    return sorted(contents)
