"""
Admin routes: ``GET /backup``, ``POST /restore`` and ``GET /heapdump``.

A backup is one versioned snapshot document holding every part registered in
``Operations.snapshot_parts``: this module registers the registry's own (instances and traffic
policies) and every other stateful feature adds its own, so a backup grows with the features and
this module never needs to know them. A restore validates the whole document before it changes
anything (see ``snapshots``), and replaces the state of each part the document holds. A snapshot
can be far larger than an API request, so ``/restore`` reads up to ``MAX_RESTORE_BYTES``.

``/heapdump`` is a summary of where Python memory was allocated, from ``tracemalloc``: the top
allocation sites by file and line, and the totals. ``tracemalloc`` is started by the first call
and only sees allocations made after that, so the first answer says so; it then slows every
allocation (by a third or more) until ``?stop=true`` turns it off again. It is off unless
``HEAPDUMP_ENABLED`` is set, then served to admins with auth on, and only to loopback clients
with auth off. Taking the snapshot runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
import tracemalloc
from typing import Any

import orjson
from aiohttp import web

from maxine_registry.errors import Forbidden, InvalidInput, NotFound, PayloadTooLarge
from maxine_registry.http.common import OPERATIONS_KEY, respond
from maxine_registry.operations import Operations, decode_body, ok
from maxine_registry.registry_snapshot import PART_NAME, RegistrySnapshotPart
from maxine_registry.snapshots import export_snapshot, restore_snapshot

logger = logging.getLogger(__name__)

HEAPDUMP_TOP_DEFAULT = 25
HEAPDUMP_TOP_MAX = 200
# Frames kept per allocation: one is enough to name the line, and the cheapest.
TRACEMALLOC_FRAMES = 1


async def backup(request: web.Request) -> web.Response:
    operations = request.app[OPERATIONS_KEY]
    created_at = int(time.time() * 1000)
    document = export_snapshot(operations.snapshot_parts, created_at=created_at)
    response = web.Response(body=orjson.dumps(document), content_type="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="maxine-backup-{created_at}.json"'
    return response


async def _read_snapshot(request: web.Request, *, limit: int) -> object:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The snapshot is {request.content_length} bytes; the limit is {limit} bytes.")
    try:
        raw = await request.clone(client_max_size=limit).read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"The snapshot is larger than the limit of {limit} bytes.") from None
    return decode_body(raw)


async def restore(request: web.Request) -> web.Response:
    operations = request.app[OPERATIONS_KEY]
    document = await _read_snapshot(request, limit=operations.settings.max_restore_bytes)
    restored = restore_snapshot(operations.snapshot_parts, document)
    summary = {
        "restored": restored,
        "services": operations.registry.service_count,
        "nodes": operations.registry.node_count,
    }
    logger.warning("The registry's state was replaced from a snapshot.", extra=summary)
    return respond(ok(summary))


def memory_summary(*, top: int, stop: bool) -> dict[str, Any]:
    """Where traced memory sits now, by file and line; starts tracing first if it is off."""
    started_now = not tracemalloc.is_tracing()
    if started_now:
        tracemalloc.start(TRACEMALLOC_FRAMES)
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__),)
    )
    statistics = snapshot.statistics("lineno")
    current, peak = tracemalloc.get_traced_memory()
    if stop:
        tracemalloc.stop()

    summary: dict[str, Any] = {
        "tracing": not stop,
        "startedNow": started_now,
        "tracedBytes": current,
        "peakTracedBytes": peak,
        "allocationSites": len(statistics),
        "maxResidentBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "top": [
            {
                "where": f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}",
                "bytes": stat.size,
                "blocks": stat.count,
            }
            for stat in statistics[:top]
        ],
    }
    if started_now:
        summary["note"] = "Tracing started with this call; it sees allocations from now on. Ask again later."
    return summary


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def heapdump(request: web.Request) -> web.Response:
    settings = request.app[OPERATIONS_KEY].settings
    if not settings.heapdump_enabled:
        raise NotFound("The heap dump is off; set HEAPDUMP_ENABLED to turn it on.", code="heapdump_disabled")
    # With auth on, the auth middleware already let only admins through; without it, only this machine.
    if not settings.auth_enabled and not _is_loopback(request.remote):
        raise Forbidden("With auth off, the heap dump answers loopback clients only.", code="heapdump_forbidden")

    text = request.query.get("top", "")
    try:
        top = int(text) if text else HEAPDUMP_TOP_DEFAULT
    except ValueError:
        raise InvalidInput(f"top must be an integer, got {text!r}.") from None
    if not 1 <= top <= HEAPDUMP_TOP_MAX:
        raise InvalidInput(f"top must be from 1 to {HEAPDUMP_TOP_MAX}, got {top}.")
    stop = request.query.get("stop", "").lower() in ("1", "true", "yes")

    summary = await asyncio.to_thread(memory_summary, top=top, stop=stop)
    return respond(ok(summary))


def setup(app: web.Application, operations: Operations) -> None:
    operations.snapshot_parts.setdefault(
        PART_NAME,
        RegistrySnapshotPart(operations.registry, max_metadata_bytes=operations.settings.max_metadata_bytes),
    )
    app.router.add_route("GET", "/backup", backup)
    app.router.add_route("POST", "/restore", restore)
    app.router.add_route("GET", "/heapdump", heapdump)
