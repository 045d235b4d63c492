"""
The audit log over HTTP: a request id for every request, a record for every change, and the export.

With ``AUDIT_LOG_FILE`` set, a middleware gives each request an id (the client's ``X-Request-Id``
when it is tame, else one of ours), echoes it in the response's ``X-Request-Id`` header, and after
the response is decided writes an audit record when the request changed state (any method but
GET, HEAD and OPTIONS on a known route) or was a security event (a 401 or 403 anywhere, or a
handler's note under ``AUDIT_DETAIL_KEY``, as sign-in does). Heartbeats and response-time reports
are lease renewals and telemetry, not changes anyone audits, and are left out unless
``AUDIT_LOG_HEARTBEATS`` is on.

The middleware sits outside ``json_errors``, so it sees every response as the client does,
errors already rendered, and can record the final status and error code. Without an audit file
nothing is installed and requests pay nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from maxine_registry.audit import AUDIT_RECENT_SIZE, CHANGE, REQUEST_ID_HEADER, SECURITY, AuditLog
from maxine_registry.errors import InvalidInput, NotFound
from maxine_registry.http.common import (
    AUDIT_DETAIL_KEY,
    IDENTITY_KEY,
    JSON,
    OPERATIONS_KEY,
    REQUEST_ID_KEY,
    SERVICEOPS_PREFIX,
    Handler,
    respond,
)
from maxine_registry.identity import Identity
from maxine_registry.operations import Operations, ok

logger = logging.getLogger(__name__)

AUDIT_KEY = web.AppKey("audit", AuditLog)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Routes (without the serviceops prefix) that renew leases or report telemetry: not audited by default.
QUIET_ROUTES = frozenset({"/heartbeat", "/record-response-time"})
# Fields of an answer that name what a change was about; nothing else of an answer is kept.
TARGET_FIELDS = ("nodeId", "serviceName", "namespace", "key", "source", "destination", "subject", "version")
# Answers larger than this are not read for target fields (a backup, a listing).
MAX_TARGET_SCAN_BYTES = 16 * 1024
DEFAULT_EXPORT_LIMIT = 1000
NDJSON = "application/x-ndjson"


def route_pattern(request: web.Request) -> str | None:
    """The pattern of the route a request matched (``/circuit-breaker/{nodeId}``), or None when none did."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _answer_fields(response: web.StreamResponse) -> dict[str, Any]:
    if not isinstance(response, web.Response) or response.content_type != JSON:
        return {}
    body = response.body
    if not isinstance(body, bytes) or len(body) > MAX_TARGET_SCAN_BYTES:
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def _record_for(request: web.Request, *, status: int, response: web.StreamResponse | None) -> dict[str, Any] | None:
    """The audit record this request deserves, or None when it deserves none."""
    settings = request.app[OPERATIONS_KEY].settings
    detail: dict[str, Any] | None = request.get(AUDIT_DETAIL_KEY)
    pattern = route_pattern(request)
    denied = status in (401, 403)
    if detail is None and not denied:
        if request.method in SAFE_METHODS or pattern is None:
            return None
        if not settings.audit_heartbeats and pattern.removeprefix(SERVICEOPS_PREFIX) in QUIET_ROUTES:
            return None

    operations = request.app[OPERATIONS_KEY]
    client_ip = operations.client_address(request.remote, request.headers.get("X-Forwarded-For"))
    identity: Identity | None = request.get(IDENTITY_KEY)
    verified = identity is not None and identity.verified
    answer = _answer_fields(response) if response is not None else {}
    target: dict[str, Any] = dict(request.match_info)
    if status < 400:
        target.update({name: answer[name] for name in TARGET_FIELDS if isinstance(answer.get(name), (str, int))})

    record: dict[str, Any] = {
        "kind": SECURITY if detail is not None or denied else CHANGE,
        "requestId": request.get(REQUEST_ID_KEY),
        "who": identity.subject if identity is not None and verified else client_ip,
        "roles": sorted(identity.roles) if identity is not None and verified else [],
        "clientIp": client_ip,
        "action": f"{request.method} {pattern or request.path}",
        "target": target,
        "status": status,
    }
    if status >= 400 and isinstance(answer.get("code"), str):
        record["code"] = answer["code"]
    if detail is not None:
        record.update(detail)
    return record


def audit_middleware(audit: AuditLog) -> Middleware:
    @web.middleware
    async def audit_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID_KEY] = audit.request_ids.take(request.headers.get(REQUEST_ID_HEADER))
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # Redirects and the like, which json_errors lets through as they are.
            record = _record_for(request, status=exc.status, response=None)
            if record is not None:
                audit.record(record)
            raise
        record = _record_for(request, status=response.status, response=response)
        if record is not None:
            audit.record(record)
        return response

    return audit_requests


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, streams included, carries the id its request was audited under."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def _int_query(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    text = request.query.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {text!r}.") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be from {low} to {high}, got {value}.")
    return value


async def export(request: web.Request) -> web.Response:
    audit = request.app.get(AUDIT_KEY)
    if audit is None:
        raise NotFound("The audit log is off; set AUDIT_LOG_FILE to turn it on.", code="audit_log_disabled")
    since = _int_query(request, "since", default=0, low=0, high=2**53)
    limit = _int_query(request, "limit", default=DEFAULT_EXPORT_LIMIT, low=1, high=AUDIT_RECENT_SIZE)
    output = request.query.get("format", "json")
    if output not in ("json", "jsonl"):
        raise InvalidInput(f"format must be 'json' or 'jsonl', got {output!r}.")

    records = audit.recent(since=since, limit=limit)
    if output == "jsonl":
        lines = b"".join(orjson.dumps(record) + b"\n" for record in records)
        return web.Response(body=lines, content_type=NDJSON)
    return respond(ok({"records": records, "count": len(records), "dropped": audit.dropped}))


def setup(app: web.Application, operations: Operations) -> None:
    app.router.add_route("GET", "/audit/export", export)
    settings = operations.settings
    if not settings.audit_log_file:
        return

    audit = AuditLog(
        path=Path(settings.audit_log_file),
        max_bytes=settings.audit_log_max_bytes,
        max_age=settings.audit_log_max_age,
        backups=settings.audit_log_backups,
    )
    app[AUDIT_KEY] = audit
    # Outermost, ahead of json_errors: it must see each response as the client gets it.
    app.middlewares.insert(0, audit_middleware(audit))
    app.on_response_prepare.append(echo_request_id)

    async def run_writer(app: web.Application) -> AsyncIterator[None]:
        audit.start()
        yield
        await asyncio.to_thread(audit.close)

    app.cleanup_ctx.append(run_writer)
