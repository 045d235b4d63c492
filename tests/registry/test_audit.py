"""
The audit log: a JSON line per change and per security event, with its request id, and no secrets.

Rotation by size and by age is checked on the file writer with a hand-driven clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from maxine_registry.audit import AuditLog, RotatingFile
from maxine_registry.http.audit import AUDIT_KEY
from maxine_registry.settings import Settings
from tests.registry.conftest import ADMIN_PASSWORD, FakeClock

Client = TestClient[object, object]
ORDERS = {"serviceName": "orders", "host": "10.0.0.5", "port": 8080}


async def audit_lines(api: Client) -> list[dict[str, Any]]:
    """Every record in the app's audit file, once the writer has caught up."""
    audit = api.app[AUDIT_KEY]
    assert await asyncio.to_thread(audit.flush)
    return [json.loads(line) for line in audit.file.path.read_text().splitlines()]


async def test_register_and_deregister_are_audited_under_their_request_ids(
    app_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    api = await app_client(Settings(audit_log_file=str(tmp_path / "audit.log")))

    registered = await api.post("/register", json=ORDERS, headers={"X-Request-Id": "deploy-42"})
    deregistered = await api.delete("/deregister", json={"nodeId": "orders:10.0.0.5:8080"})
    lines = await audit_lines(api)

    assert registered.headers["X-Request-Id"] == "deploy-42"
    generated = deregistered.headers["X-Request-Id"]
    assert generated and generated != "deploy-42"
    assert [(line["action"], line["requestId"]) for line in lines] == [
        ("POST /register", "deploy-42"),
        ("DELETE /deregister", generated),
    ]
    assert lines[0]["target"] == {"nodeId": "orders:10.0.0.5:8080"}
    assert lines[0]["kind"] == "change" and lines[0]["status"] == 200
    assert lines[0]["who"] == lines[0]["clientIp"] == "127.0.0.1"
    assert datetime.datetime.fromisoformat(lines[0]["ts"]).tzinfo is not None


async def test_a_refused_change_is_audited_with_its_code_and_never_with_its_body(
    app_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    api = await app_client(Settings(audit_log_file=str(tmp_path / "audit.log")))

    await api.post("/register", json={**ORDERS, "port": 0, "metadata": {"password": "hunter2"}})
    lines = await audit_lines(api)

    assert [(line["status"], line["code"]) for line in lines] == [(400, "invalid_input")]
    assert "hunter2" not in (tmp_path / "audit.log").read_text()


async def test_reads_and_heartbeats_are_not_audited_unless_asked(
    app_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    quiet = await app_client(Settings(audit_log_file=str(tmp_path / "quiet.log")))
    noisy = await app_client(Settings(audit_log_file=str(tmp_path / "noisy.log"), audit_heartbeats=True))

    for api in (quiet, noisy):
        await api.post("/register", json=ORDERS)
        await api.post("/heartbeat", json={"nodeId": "orders:10.0.0.5:8080"})
        await api.get("/servers")
        await api.get("/discover", params={"serviceName": "orders"})

    assert [line["action"] for line in await audit_lines(quiet)] == ["POST /register"]
    assert [line["action"] for line in await audit_lines(noisy)] == ["POST /register", "POST /heartbeat"]


async def test_failed_sign_ins_are_security_events_counted_per_address(
    app_client: Callable[..., Awaitable[Client]], auth_settings: Settings, tmp_path: Path
) -> None:
    api = await app_client(dataclasses.replace(auth_settings, audit_log_file=str(tmp_path / "audit.log")))

    for password in ("guess-one", "guess-two"):
        await api.post("/signin", json={"username": "admin", "password": password})
    await api.post("/signin", json={"username": "my-password-by-mistake", "password": "x"})
    signed_in = await api.post("/signin", json={"username": "admin", "password": ADMIN_PASSWORD})
    token = (await signed_in.json())["token"]
    lines = await audit_lines(api)
    text = (tmp_path / "audit.log").read_text()

    failures = [line for line in lines if line.get("event") == "signin_failed"]
    assert [(line["kind"], line["status"], line["username"]) for line in failures] == [
        ("security", 401, "admin"),
        ("security", 401, "admin"),
        ("security", 401, None),
    ]
    assert [line["failuresFromAddress"] for line in failures] == [1, 2, 3]
    assert [line["event"] for line in lines][-1] == "signin"
    for secret in ("guess-one", "guess-two", "my-password-by-mistake", ADMIN_PASSWORD, token):
        assert secret not in text


async def test_requests_refused_for_want_of_a_token_or_role_are_security_events(
    app_client: Callable[..., Awaitable[Client]], auth_settings: Settings, tmp_path: Path
) -> None:
    api = await app_client(dataclasses.replace(auth_settings, audit_log_file=str(tmp_path / "audit.log")))

    await api.get("/servers")
    await api.get("/backup", headers={"Authorization": "Bearer not-a-token"})
    lines = await audit_lines(api)

    assert [(line["kind"], line["action"], line["status"], line["code"]) for line in lines] == [
        ("security", "GET /servers", 401, "missing_token"),
        ("security", "GET /backup", 401, "invalid_token"),
    ]
    assert "not-a-token" not in (tmp_path / "audit.log").read_text()


async def test_admins_export_recent_records_as_json_or_json_lines(
    app_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    api = await app_client(Settings(audit_log_file=str(tmp_path / "audit.log")))
    for port in (8080, 8081, 8082):
        await api.post("/register", json={**ORDERS, "port": port})

    everything = await (await api.get("/audit/export")).json()
    last_two = await (await api.get("/audit/export", params={"limit": "2"})).json()
    lines = await (await api.get("/audit/export", params={"format": "jsonl"})).text()
    later = await (await api.get("/audit/export", params={"since": str(2**52)})).json()
    bad = await api.get("/audit/export", params={"limit": "0"})

    assert everything["count"] == 3
    assert [record["target"]["nodeId"] for record in everything["records"]][-1] == "orders:10.0.0.5:8082"
    assert last_two["count"] == 2
    assert [json.loads(line) for line in lines.splitlines()] == everything["records"]
    assert later["count"] == 0
    assert bad.status == 400


async def test_without_an_audit_file_there_is_no_export_and_no_request_id(
    app_client: Callable[..., Awaitable[Client]],
) -> None:
    api = await app_client(Settings())

    export = await api.get("/audit/export")
    registered = await api.post("/register", json=ORDERS)

    assert export.status == 404
    assert (await export.json())["code"] == "audit_log_disabled"
    assert "X-Request-Id" not in registered.headers


# The file: rotation by size and by age, and a queue that never blocks.


def test_the_file_rotates_by_size_keeping_the_configured_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit_file = RotatingFile(path, max_bytes=100, max_age=0, backups=2)

    for number in range(10):
        audit_file.write(f'{{"n": {number}, "pad": "{"x" * 30}"}}\n'.encode())
    audit_file.close()

    names = sorted(item.name for item in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    numbers = [json.loads(line)["n"] for name in names[::-1] for line in (tmp_path / name).read_text().splitlines()]
    assert numbers == list(range(4, 10))
    assert all((tmp_path / name).stat().st_size <= 100 for name in names)


def test_the_file_rotates_by_age_on_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    path = tmp_path / "audit.log"
    audit_file = RotatingFile(path, max_bytes=10**6, max_age=60, backups=3, wall=clock)

    audit_file.write(b'{"n": 1}\n')
    clock.advance(59)
    audit_file.write(b'{"n": 2}\n')
    clock.advance(2)
    audit_file.write(b'{"n": 3}\n')
    audit_file.close()

    assert (tmp_path / "audit.log.1").read_text() == '{"n": 1}\n{"n": 2}\n'
    assert path.read_text() == '{"n": 3}\n'


def test_a_restarted_writer_ages_the_file_from_its_first_record(tmp_path: Path) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    path = tmp_path / "audit.log"
    two_hours_ago = datetime.datetime.fromtimestamp(clock.now - 7200, tz=datetime.UTC).isoformat()
    path.write_text(json.dumps({"ts": two_hours_ago, "action": "POST /register"}) + "\n")

    audit_file = RotatingFile(path, max_bytes=10**6, max_age=3600, backups=1, wall=clock)
    audit_file.write(b'{"n": "after restart"}\n')
    audit_file.close()

    assert "POST /register" in (tmp_path / "audit.log.1").read_text()
    assert path.read_text() == '{"n": "after restart"}\n'


def test_without_backups_a_rotation_starts_the_file_over(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit_file = RotatingFile(path, max_bytes=20, max_age=0, backups=0)

    audit_file.write(b'{"n": "first"}\n')
    audit_file.write(b'{"n": "second"}\n')
    audit_file.close()

    assert sorted(item.name for item in tmp_path.iterdir()) == ["audit.log"]
    assert path.read_text() == '{"n": "second"}\n'


async def test_the_audit_log_writes_in_the_background_and_rotates_by_age(tmp_path: Path) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    audit = AuditLog(path=tmp_path / "audit.log", max_bytes=10**6, max_age=60, backups=2, wall=clock)
    audit.start()
    try:
        audit.record({"action": "POST /register", "target": {"nodeId": "a:h:1"}})
        assert await asyncio.to_thread(audit.flush)
        clock.advance(61)
        audit.record({"action": "DELETE /deregister", "target": {"nodeId": "a:h:1"}})
    finally:
        await asyncio.to_thread(audit.close)

    rotated = [json.loads(line) for line in (tmp_path / "audit.log.1").read_text().splitlines()]
    current = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [record["action"] for record in rotated] == ["POST /register"]
    assert [record["action"] for record in current] == ["DELETE /deregister"]


def test_a_full_queue_drops_records_from_the_file_but_counts_and_keeps_them(tmp_path: Path) -> None:
    # The writer is not started, so the queue only fills: record() must still return at once.
    audit = AuditLog(path=tmp_path / "audit.log", max_bytes=10**6, max_age=0, backups=1, queue_size=2)

    for number in range(5):
        audit.record({"action": "POST /register", "target": {"n": number}})

    assert audit.dropped == 3
    assert [record["target"]["n"] for record in audit.recent()] == [0, 1, 2, 3, 4]


def test_fields_named_like_secrets_are_redacted_whoever_built_the_record(tmp_path: Path) -> None:
    audit = AuditLog(path=tmp_path / "audit.log", max_bytes=10**6, max_age=0, backups=1)

    record = audit.record({"action": "POST /x", "detail": {"accessToken": "abc", "Password": "p", "name": "ok"}})

    assert record["detail"] == {"accessToken": "[redacted]", "Password": "[redacted]", "name": "ok"}
