"""
What the client hands back: a ``Registration`` after registering, a ``Lease`` after a heartbeat, an
``Instance`` from discovery.

These are plain frozen dataclasses built from the registry's JSON, with Python names. A
``Registration`` also keeps what was sent, because the keep-alive loop must be able to register the
very same node again when the registry has forgotten it. Metadata is exposed read-only, so that a
value handed out cannot be changed behind the client's back; it does not take part in hashing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from maxine_client._errors import MaxineError

_EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


def frozen_metadata(metadata: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(metadata)) if metadata else _EMPTY_METADATA


@dataclass(frozen=True, slots=True)
class Registration:
    """A node the registry accepted: its id, address and lease, and the request that registered it."""

    node_id: str
    address: str
    ttl: float
    service_name: str
    host: str
    port: int
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_METADATA, hash=False)
    # The ttl asked for; None lets the registry pick its default. ``ttl`` is the one granted.
    requested_ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """The registry's answer to a heartbeat: the node's lease runs for ``ttl`` seconds from now."""

    node_id: str
    ttl: float


@dataclass(frozen=True, slots=True)
class Instance:
    """One running copy of a service, as discovery returns it."""

    service_name: str
    node_id: str
    host: str
    port: int
    address: str
    version: str
    tags: tuple[str, ...]
    weight: float
    metadata: Mapping[str, Any] = field(hash=False)
    healthy: bool

    @classmethod
    def from_document(cls, document: object) -> Instance:
        """Read a discover answer; ``MaxineError`` (code ``invalid_response``) names what is missing."""
        if not isinstance(document, dict):
            raise MaxineError(
                f"A discover answer must be a JSON object, got {type(document).__name__}.", code="invalid_response"
            )
        try:
            return cls(
                service_name=str(document["serviceName"]),
                node_id=str(document["nodeId"]),
                host=str(document["host"]),
                port=int(document["port"]),
                address=str(document["address"]),
                version=str(document.get("version", "default")),
                tags=tuple(str(tag) for tag in document.get("tags") or ()),
                weight=float(document.get("weight", 1.0)),
                metadata=frozen_metadata(document.get("metadata")),
                healthy=bool(document.get("healthy", True)),
            )
        except KeyError as exc:
            raise MaxineError(f"A discover answer lacks the field {exc.args[0]!r}.", code="invalid_response") from None
        except (TypeError, ValueError) as exc:
            raise MaxineError(
                f"A discover answer has a field of the wrong type: {exc}.", code="invalid_response"
            ) from None

    def url(self, path: str = "/", *, scheme: str = "http") -> str:
        """The URL of ``path`` on this instance, e.g. ``http://10.0.0.7:8080/orders`` (IPv6 hosts in brackets)."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}.")
        return f"{scheme}://{self.address}{path}"
