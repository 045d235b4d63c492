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

from collections.abc import Callable
from typing import Any, Protocol

SNAPSHOT_FORMAT = "maxine-snapshot"
SNAPSHOT_VERSION = 1

Apply = Callable[[], None]


class SnapshotPart(Protocol):
    def export(self) -> Any:
        """The part's state as JSON-ready data."""

    def prepare(self, data: Any) -> Apply:
        """Validate ``data`` completely (raise ``InvalidInput``) and return what applies it."""
