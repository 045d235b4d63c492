"""
The audit log: one JSON line for every change made through the API and for every security event.

A record says who (the verified subject, else the client's address), what (the action: method and
route pattern), on what (the target: path parameters and the ids the answer named), with which
outcome (status and error code), and under which request id, so a line can be matched with the
client's own logs. Records are built from what the server decided and answered, never from the
request body: no password, token or payload can reach the log that way, and a last scrub drops
any field whose name says it holds a secret, whoever built the record.

Writing must never hold up a request. ``record`` only appends to an in-memory ring (served by
``GET /audit/export``) and puts the record on a bounded queue; a writer thread drains the queue
into the file. When the disk cannot keep up and the queue is full, records are dropped from the
file (not from the ring), counted, and a warning is logged now and then: an audit log that slowed
down the registry would be switched off by its operators, which is worse than a counted gap.

The file rotates by size and by age, like a logrotate setup: ``audit.log`` is current,
``audit.log.1`` the newest rotated file, up to ``audit.log.N`` for N backups.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

logger = logging.getLogger(__name__)

AUDIT_QUEUE_SIZE = 10_000
# Records kept in memory for GET /audit/export; older ones are only in the files.
AUDIT_RECENT_SIZE = 10_000
# Records the writer thread takes from the queue before it writes and flushes once.
WRITE_BATCH = 1000
DROP_WARNING_INTERVAL = 60.0
CLOSE_TIMEOUT = 5.0

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID_LENGTH = 128
# A client's request id is kept only if it is this tame; anything else is replaced by our own.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

CHANGE = "change"
SECURITY = "security"

# A field whose name contains one of these is never written, whatever put it in a record.
SECRET_MARKERS = ("token", "password", "secret", "authorization", "hash", "credential")
REDACTED = "[redacted]"

_STOP = object()


def scrub(value: Any) -> Any:
    """``value`` with every field whose name marks a secret replaced, at any depth."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if any(marker in str(key).lower() for marker in SECRET_MARKERS) else scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    return value


class RequestIds:
    """Request ids: the client's own when it sent a tame one, else a short unique one of ours."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def __repr__(self) -> str:
        return f"RequestIds(prefix={self._prefix!r})"

    def take(self, offered: str | None) -> str:
        if offered and REQUEST_ID_PATTERN.fullmatch(offered):
            return offered
        return f"{self._prefix}-{next(self._counter):x}"


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RotatingFile:
    """
    An append-only file that moves aside when it grows past ``max_bytes`` or gets older than ``max_age``.

    The age of a file counts from its first record (read back from the file when it already
    exists), so restarting the server does not reset it. ``backups`` rotated files are kept;
    with 0, a rotation simply starts the file over. Used by one thread only.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age: float,
        backups: int,
        wall: Callable[[], float] = time.time,  # injectable for tests that move time
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.backups = backups
        self._wall = wall
        self._file: IO[bytes] | None = None
        self._size = 0
        self._started_at = 0.0

    def __repr__(self) -> str:
        return f"RotatingFile(path={str(self.path)!r}, size={self._size}, backups={self.backups})"

    def write(self, data: bytes) -> None:
        if self._file is None:
            self._open()
        if self._size and self._due(len(data)):
            self._rotate()
        assert self._file is not None
        if not self._size:
            self._started_at = self._wall()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _due(self, incoming: int) -> bool:
        too_big = self._size + incoming > self.max_bytes
        too_old = self.max_age > 0 and self._wall() - self._started_at >= self.max_age
        return too_big or too_old

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._size = self._file.tell()
        self._started_at = self._first_record_time() if self._size else self._wall()

    def _first_record_time(self) -> float:
        try:
            with self.path.open("rb") as existing:
                first = orjson.loads(existing.readline())
            return datetime.datetime.fromisoformat(first["ts"]).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            # Not a file we wrote, or damaged: let it age from now.
            return self._wall()

    def _rotate(self) -> None:
        self.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for number in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{number + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()


class AuditLog:
    """Takes audit records on the event loop and writes them to a ``RotatingFile`` from a thread."""

    def __init__(
        self,
        *,
        path: Path,
        max_bytes: int,
        max_age: float,
        backups: int,
        wall: Callable[[], float] = time.time,
        queue_size: int = AUDIT_QUEUE_SIZE,
        recent_size: int = AUDIT_RECENT_SIZE,
    ) -> None:
        self.file = RotatingFile(path, max_bytes=max_bytes, max_age=max_age, backups=backups, wall=wall)
        self._wall = wall
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=recent_size)
        self._writer: threading.Thread | None = None
        self._last_drop_warning = 0.0
        self.request_ids = RequestIds()
        self.recorded = 0
        self.dropped = 0
        self.write_errors = 0

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self.file.path)!r}, recorded={self.recorded}, dropped={self.dropped})"

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_forever, name="maxine-audit-writer", daemon=True)
        self._writer.start()
        logger.info("The audit log writes to %s.", self.file.path)

    def close(self, *, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write what is queued, then stop the writer; blocking, so call it from a thread."""
        if self._writer is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._writer.join(timeout)
        self._writer = None
        self.file.close()

    def flush(self, *, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Wait until everything recorded so far is in the file; blocking, so call it from a thread."""
        if self._writer is None:
            return False
        written = threading.Event()
        try:
            self._queue.put(written, timeout=timeout)
        except queue.Full:
            return False
        return written.wait(timeout)

    def record(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Add one record (``ts`` is set here); never blocks. Returns the record as it is written."""
        now = self._wall()
        record = {"ts": _iso(now), **scrub(entry)}
        self._recent.append((int(now * 1000), record))
        self.recorded += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if now - self._last_drop_warning >= DROP_WARNING_INTERVAL:
                self._last_drop_warning = now
                logger.warning(
                    "The audit log cannot keep up; records are missing from the file (they stay in memory).",
                    extra={"dropped": self.dropped},
                )
        return record

    def recent(self, *, since: int = 0, limit: int = AUDIT_RECENT_SIZE) -> list[dict[str, Any]]:
        """Records from after ``since`` (milliseconds since the epoch), oldest first, at most ``limit``."""
        found = [record for at, record in self._recent if at > since]
        return found[:limit]

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break

            lines = b"".join(orjson.dumps(item) + b"\n" for item in batch if isinstance(item, dict))
            if lines:
                self._write(lines)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in batch):
                return

    def _write(self, lines: bytes) -> None:
        try:
            self.file.write(lines)
        except OSError as exc:
            # A full or read-only disk must not kill the writer: it tries again with the next batch.
            self.write_errors += 1
            logger.error("The audit log could not write to %s: %s.", self.file.path, os.strerror(exc.errno or 0))
