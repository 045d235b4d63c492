"""
The file store: a snapshot plus an append-only journal, safe against a crash at any moment.

On disk, beside each other::

    registry.json           a snapshot document (the ``GET /backup`` format) with ``"journal": G``
    registry.json.journal   line 1: a header naming generation G; then one change per line
    registry.json.lock      held (flock) while a server uses the files

Each journal line is ``<crc32 as 8 hex digits> <change as JSON>\\n``. Loading reads the snapshot,
then replays the journal if its generation is the snapshot's, and stops at the first line that is
torn (no newline), fails its checksum or does not parse: everything before it was fsynced whole,
and nothing after it can have been acknowledged, because each write is fsynced before the next
begins and a failed write is cut off again before the journal is appended to.

Compaction writes a new snapshot of the whole state to a temporary file, fsyncs it, renames it
over the old one and fsyncs the directory; then it starts a new journal the same way, with the
next generation. A crash between the two renames leaves a snapshot of generation G+1 and the
journal of G: the journal is ignored, as everything in it is in the snapshot already. The server
compacts at start (so each run begins with a fresh journal and a torn tail is dropped) and when
the journal has grown past both ``MIN_COMPACT_BYTES`` and the size of the last snapshot, which
keeps replay time proportional to the state, whatever the write rate.

Heartbeats are not journaled: leases are not durable. A restored instance starts a fresh lease of
its ttl, and leaves discovery then unless its owner heartbeats or registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from maxine_registry.errors import InvalidInput
from maxine_registry.persistence.state import Change, ChangeTracker, Dirty, Entries, StateModel, apply_to_state
from maxine_registry.persistence.state import state_from_document as read_state
from maxine_registry.persistence.store import PersistenceStartError, Store

logger = logging.getLogger(__name__)

DEFAULT_FILE_NAME = "registry.json"
JOURNAL_SUFFIX = ".journal"
TEMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".lock"
JOURNAL_FORMAT = "maxine-journal"
JOURNAL_VERSION = 1
# The journal is compacted into a new snapshot once it is larger than this and than the last snapshot.
MIN_COMPACT_BYTES = 4 * 1024 * 1024
CHECKSUM_DIGITS = 8


class PersistenceFileError(PersistenceStartError):
    """The persistence files cannot be used; the server does not start rather than lose or overwrite them."""


def resolve_path(setting: str) -> Path:
    """``PERSISTENCE_FILE`` as a path: a directory (existing, or ending with a slash) holds ``registry.json``."""
    path = Path(setting).expanduser()
    if setting.endswith(("/", os.sep)) or path.is_dir():
        path = path / DEFAULT_FILE_NAME
    return path.absolute()


def encode_line(change: Change) -> bytes:
    payload = orjson.dumps(change.to_json())
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def decode_line(line: bytes) -> Any:
    """The JSON a journal line holds; ``ValueError`` when it is torn or corrupt."""
    if len(line) <= CHECKSUM_DIGITS + 1 or line[CHECKSUM_DIGITS : CHECKSUM_DIGITS + 1] != b" ":
        raise ValueError("the line has no checksum")
    payload = line[CHECKSUM_DIGITS + 1 :]
    if int(line[:CHECKSUM_DIGITS], 16) != zlib.crc32(payload):
        raise ValueError("the checksum does not match")
    return orjson.loads(payload)


@dataclass(slots=True)
class Loaded:
    """What the files held: the state, the generation to continue from, and what a crash cut off."""

    state: dict[str, Entries]
    generation: int
    snapshot_bytes: int
    replayed: int
    dropped_bytes: int


def load_files(path: Path) -> Loaded:
    """Read the snapshot and replay its journal (blocking: run it in a thread)."""
    journal_path = path.with_name(path.name + JOURNAL_SUFFIX)
    state: dict[str, Entries] = {}
    generation = 0
    snapshot_bytes = 0
    if path.exists():
        raw = path.read_bytes()
        snapshot_bytes = len(raw)
        try:
            document = orjson.loads(raw)
            state = read_state(document)
        except (orjson.JSONDecodeError, InvalidInput) as exc:
            raise PersistenceFileError(f"The snapshot {path} cannot be read: {exc}. It was left untouched.") from None
        generation = int(document.get("journal") or 0)

    replayed = 0
    dropped = 0
    if journal_path.exists():
        data = journal_path.read_bytes()
        lines = data.split(b"\n")
        # The piece after the last newline is a line that was never finished.
        complete, torn = lines[:-1], lines[-1]
        dropped = len(torn)
        header_ok = False
        offset = 0
        for index, line in enumerate(complete):
            try:
                document = decode_line(line)
                if index == 0:
                    header_ok = (
                        isinstance(document, dict)
                        and document.get("format") == JOURNAL_FORMAT
                        and document.get("generation") == generation
                    )
                    if not header_ok:
                        break
                else:
                    apply_to_state(state, Change.from_json(document))
                    replayed += 1
            except (ValueError, InvalidInput) as exc:
                logger.warning(
                    "The journal %s ends with a damaged line at byte %d (%s); replay stops there.",
                    journal_path,
                    offset,
                    exc,
                )
                dropped = len(data) - offset
                break
            offset += len(line) + 1
        if complete and not header_ok:
            logger.warning(
                "The journal %s belongs to another snapshot (generation %s expected); it is ignored.",
                journal_path,
                generation,
            )
    return Loaded(
        state=state, generation=generation, snapshot_bytes=snapshot_bytes, replayed=replayed, dropped_bytes=dropped
    )


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename over ``path``, fsync the directory."""
    temporary = path.with_name(path.name + TEMP_SUFFIX)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    _fsync_directory(path.parent)


class FileStore(Store):
    kind = "file"

    def __init__(self, *, path: Path, model: StateModel, tracker: ChangeTracker, flush_interval: float = 0.0) -> None:
        super().__init__(model=model, tracker=tracker, flush_interval=flush_interval)
        self.path = path
        self.journal_path = path.with_name(path.name + JOURNAL_SUFFIX)
        self.generation = 0
        self.snapshot_bytes = 0
        self.journal_bytes = 0
        self.compactions = 0
        self._journal: int | None = None
        self._lock: int | None = None
        # A write that failed half-way and could not be cut off again: only a compaction makes the journal whole.
        self._broken = False

    def __repr__(self) -> str:
        return f"FileStore(path={str(self.path)!r}, generation={self.generation}, journal_bytes={self.journal_bytes})"

    async def start(self) -> None:
        """Take the lock, load the files into the live state, start a fresh journal, and begin flushing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        started = time.monotonic()
        loaded = await asyncio.to_thread(load_files, self.path)
        try:
            self.model.replace(loaded.state, strict=True)
        except InvalidInput as error:
            raise PersistenceFileError(f"The state in {self.path} cannot be restored: {error.message}") from None
        self.tracker.take()
        self.generation = loaded.generation
        logger.info(
            "Restored the state from %s: %d node(s), %d journal record(s) replayed in %.0f ms.",
            self.path,
            len(loaded.state.get("node", {})),
            loaded.replayed,
            (time.monotonic() - started) * 1000,
            extra={"droppedBytes": loaded.dropped_bytes, "generation": loaded.generation},
        )
        await self.compact()
        self.start_flushing()

    async def stop(self) -> None:
        await self.stop_flushing()
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise PersistenceFileError(
                f"Another process uses {self.path} (it holds {lock_path}); two servers must not share one file."
            ) from None
        self._lock = descriptor

    # Writing.

    async def write(self, changes: list[Change]) -> None:
        if self._broken:
            # The journal's end is unknown; a new snapshot holds everything, these changes included.
            await self.compact()
            return
        data = b"".join(encode_line(change) for change in changes)
        await asyncio.to_thread(self._append, data)
        self.journal_bytes += len(data)

    def _append(self, data: bytes) -> None:
        assert self._journal is not None
        good = self.journal_bytes
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._journal, view)
                view = view[written:]
            os.fdatasync(self._journal)
        except OSError:
            # Cut the half-written lines off, or the next write would land after a damaged line and be lost.
            try:
                os.ftruncate(self._journal, good)
            except OSError:
                self._broken = True
            raise

    def write_failed(self, dirty: Dirty, error: BaseException) -> None:
        logger.error("Could not write the journal %s: %s. Writes answer 503 until it works.", self.journal_path, error)
        self.tracker.give_back(dirty)

    async def after_write(self) -> None:
        if self.journal_bytes > max(MIN_COMPACT_BYTES, self.snapshot_bytes):
            try:
                await self.compact()
            except OSError as exc:
                logger.error("Could not compact %s: %s. The journal keeps growing meanwhile.", self.path, exc)

    async def compact(self) -> None:
        """Replace the snapshot by the live state and start a new journal, each step atomic."""
        started = time.monotonic()
        generation = self.generation + 1
        created_at = int(time.time() * 1000)
        # TODO: LATER: the document is built on the loop thread (about 90 ms per 100k instances, plus 45 ms to
        # encode), which stalls requests that long once per compaction; building it from a copy-on-write view
        # of the state, or in slices, would need the core to offer one.
        document = self.model.document(created_at=created_at, extra={"journal": generation})
        data = orjson.dumps(document)
        await asyncio.to_thread(self._install, data, generation)
        self.generation = generation
        self.snapshot_bytes = len(data)
        self.compactions += 1
        self._broken = False
        logger.debug(
            "Compacted %s: %d bytes, generation %d, in %.0f ms.",
            self.path,
            len(data),
            generation,
            (time.monotonic() - started) * 1000,
        )

    def _install(self, snapshot: bytes, generation: int) -> None:
        _write_atomically(self.path, snapshot)
        header = orjson.dumps(
            {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "generation": generation, "snapshot": self.path.name}
        )
        first_line = b"%08x " % zlib.crc32(header) + header + b"\n"
        _write_atomically(self.journal_path, first_line)
        journal = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
        if self._journal is not None:
            with contextlib.suppress(OSError):
                os.close(self._journal)
        self._journal = journal
        self.journal_bytes = len(first_line)

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "file": str(self.path),
            "generation": self.generation,
            "snapshotBytes": self.snapshot_bytes,
            "journalBytes": self.journal_bytes,
            "compactions": self.compactions,
        }
