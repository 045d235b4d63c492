"""
Status conditions in the Kubernetes style, kept on every resource the operator serves.

Two conditions, each with a machine reason and a sentence for people:

- ``Synced``: the registry holds what the spec of ``observedGeneration`` says.
- ``Ready``: the resource is fully in effect: synced, and every mesh object it needs is in place.

A condition's ``lastTransitionTime`` moves only when its status flips, as ``kubectl wait`` and
dashboards expect; a new reason or message with the same status keeps the old time.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

SYNCED = "Synced"
READY = "Ready"

# Reasons, as they appear in status and in events.
REASON_SYNCED = "Synced"
REASON_READY = "Ready"
REASON_REGISTRY_UNAVAILABLE = "RegistryUnavailable"
REASON_REJECTED = "RejectedByRegistry"
REASON_NOT_SYNCED = "NotSynced"
REASON_MESH_FAILED = "MeshEmissionFailed"

# A message longer than the CRD allows would make the whole status patch fail.
MAX_MESSAGE_LENGTH = 4096


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str

    def as_dict(self, *, generation: int | None, previous: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
        status = "True" if self.status else "False"
        unchanged = previous is not None and previous.get("status") == status and previous.get("lastTransitionTime")
        condition: dict[str, Any] = {
            "type": self.type,
            "status": status,
            "reason": self.reason,
            "message": self.message[:MAX_MESSAGE_LENGTH],
            "lastTransitionTime": previous["lastTransitionTime"] if unchanged and previous is not None else now,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        return condition


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None, updates: Sequence[Condition], *, generation: int | None, now: str
) -> list[dict[str, Any]]:
    """The condition list with ``updates`` applied; conditions of other types are kept as they were."""
    by_type = {str(item.get("type")): dict(item) for item in previous or () if isinstance(item, Mapping)}
    for condition in updates:
        by_type[condition.type] = condition.as_dict(
            generation=generation, previous=by_type.get(condition.type), now=now
        )
    return [by_type[key] for key in sorted(by_type)]


def condition_status(status: Mapping[str, Any] | None, condition_type: str) -> str | None:
    """``"True"``, ``"False"``, ``"Unknown"`` or None (absent), as stored."""
    for item in (status or {}).get("conditions") or ():
        if item.get("type") == condition_type:
            value = item.get("status")
            return str(value) if value is not None else None
    return None
