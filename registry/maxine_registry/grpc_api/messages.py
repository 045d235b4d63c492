"""
Between messages and the core's documents: requests become the bodies and queries the HTTP API would
send, and the JSON documents the core answers become messages.

Going through the HTTP API's shapes is what keeps the two transports one API: ``Operations`` sees
the same dictionary whichever transport it came from, so it validates, limits and refuses the same
way. An unset string field is the same as a field missing from a JSON body or a query string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from maxine_registry.errors import InvalidInput
from maxine_registry.grpc_api import maxine_pb2 as pb


def registration_body(request: pb.RegisterRequest) -> dict[str, Any]:
    """The JSON body of ``POST /register`` that says what ``request`` says."""
    body: dict[str, Any] = {"serviceName": request.service_name, "host": request.host, "port": request.port}
    if request.metadata_json:
        try:
            body["metadata"] = orjson.loads(request.metadata_json)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"metadata_json is not valid JSON: {exc}.", code="invalid_json") from None
    if request.HasField("ttl"):
        body["ttl"] = request.ttl
    return body


def discover_query(request: pb.DiscoverRequest) -> dict[str, str]:
    """The query string of ``GET /discover`` that says what ``request`` says."""
    query = {"serviceName": request.service_name}
    optional = {
        "loadBalancing": request.load_balancing,
        "version": request.version,
        "tags": ",".join(request.tags),
        "key": request.key,
        "region": request.region,
        "zone": request.zone,
    }
    query.update((name, value) for name, value in optional.items() if value)
    return query


def node_body(node_id: str) -> dict[str, str]:
    """The JSON body of ``POST /heartbeat`` and ``DELETE /deregister``."""
    return {"nodeId": node_id}


def instance_message(view: Mapping[str, Any]) -> pb.Instance:
    """An instance from its discovery document (``Instance.view()``, or the JSON of a discover answer)."""
    return pb.Instance(
        service_name=view["serviceName"],
        node_id=view["nodeId"],
        host=view["host"],
        port=view["port"],
        address=view["address"],
        version=view["version"],
        tags=view["tags"],
        weight=view["weight"],
        metadata_json=orjson.dumps(view["metadata"]).decode(),
        healthy=view["healthy"],
    )
